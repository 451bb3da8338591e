"""Job description and job bookkeeping: the YAML spec, ids, and the Redis-backed state a job leaves behind.

Kept apart from the frame path so `sanstream status` can read a job's state without importing a model.
"""
