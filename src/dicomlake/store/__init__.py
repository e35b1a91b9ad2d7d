"""Stores: the Store protocol, DuckDB (default) and PostgreSQL back ends, Parquet lake."""
