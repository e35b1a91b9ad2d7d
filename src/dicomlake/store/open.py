"""Open any lake by what it is: a DuckDB folder, a ``postgresql://`` URL, or a Parquet lake folder."""

from __future__ import annotations

import os
from pathlib import Path

from dicomlake.errors import ConfigError
from dicomlake.lakeschema import InstanceColumns
from dicomlake.store.base import Store
from dicomlake.store.duckdb import DB_NAME, DuckDBStore
from dicomlake.store.parquet import ParquetStore, is_parquet_lake
from dicomlake.store.postgres import PostgresStore, is_postgres_url, normalise_url
from dicomlake.store.remote import RemoteStore

AnyStore = DuckDBStore | PostgresStore | ParquetStore


def lake_kind(url_or_path: str | os.PathLike[str]) -> str:
    """``"postgres"``, ``"duckdb"`` or ``"parquet"``: which back end a lake location names.

    A folder holding ``lake.duckdb`` is DuckDB; a folder with a Parquet lake marker or an
    ``instances/`` of Parquet files is Parquet; a new or empty folder becomes DuckDB.
    """
    text = os.fspath(url_or_path)
    if is_postgres_url(text):
        return "postgres"
    p = Path(text)
    if (p / DB_NAME).exists():
        return "duckdb"
    if is_parquet_lake(p):
        return "parquet"
    return "duckdb"


def open_store(
    url_or_path: str | os.PathLike[str],
    *,
    read_only: bool = False,
    columns: InstanceColumns | None = None,
) -> Store:
    """Open the lake at ``url_or_path`` with the back end it needs.

    Parameters
    ----------
    url_or_path
        ``postgresql://user@host/db`` (PostgreSQL), a folder with ``lake.duckdb`` (DuckDB,
        created when missing unless ``read_only``), or a Parquet lake folder (read-only).
    read_only
        Open for reading only (a Parquet lake always is).
    columns
        The typed instance columns (default: the shipped list).
    """
    kind = lake_kind(url_or_path)
    if kind == "postgres":
        return PostgresStore(normalise_url(os.fspath(url_or_path)), read_only=read_only, columns=columns)
    if kind == "parquet":
        return ParquetStore(Path(url_or_path), columns=columns)
    p = Path(url_or_path)
    if p.exists() and not p.is_dir():
        raise ConfigError(
            f"{p} is a file; a lake is a folder (DuckDB: holding {DB_NAME}; Parquet: a folder of tables) "
            "or a postgresql:// URL"
        )
    return DuckDBStore(p, read_only=read_only, columns=columns)


def _every_back_end_is_a_store(d: DuckDBStore, p: PostgresStore, q: ParquetStore, r: RemoteStore) -> list[Store]:
    """Never called: mypy checks here that each back end implements the whole :class:`Store`
    protocol, so a back end that drifts (a method missing, another signature) fails the gate."""
    return [d, p, q, r]


__all__ = ["AnyStore", "lake_kind", "open_store"]
