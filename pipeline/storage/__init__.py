"""Parquet output: schemas, row building, crash-safe part files and DuckDB queries over them.

Output must be readable by DuckDB, Polars and pandas while a job is still writing, so every module here
is about never exposing a half-written or ambiguous file.
"""
