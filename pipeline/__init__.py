"""sanstream's frame path: model, decoding, aggregation, storage and job state, with no Ray inside.

Everything here runs in a plain Python process; `actors/` wraps these pieces for Ray.
"""
