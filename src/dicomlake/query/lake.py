"""The lake as Python sees it: ``dicomlake.open(DIR)`` → queries returning DataFrames."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from dicomlake.config import get_settings
from dicomlake.errors import QueryError
from dicomlake.extract.columns import DERIVED, instance_columns
from dicomlake.query.filters import Filter, resolve_key, where_clause
from dicomlake.store.duckdb import DuckDBStore

LEVELS = ("instance", "series", "study", "patient")
LEVEL_KEY = {
    "instance": "SOPInstanceUID",
    "series": "SeriesInstanceUID",
    "study": "StudyInstanceUID",
    "patient": "PatientID",
}
DEFAULT_SELECT = {
    "instance": ["PatientID", "StudyDate", "Modality", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"],
    "series": ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription"],
    "study": ["PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "AccessionNumber", "StudyDescription"],
    "patient": ["PatientID", "PatientName", "PatientBirthDate", "PatientSex"],
}


class Lake:
    """A lake folder opened for reading (and for writing by ingest)."""

    def __init__(self, store: DuckDBStore | Any) -> None:
        self.store = store
        self.columns = store.columns

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, read_only: bool = False) -> Lake:
        """Open the lake at ``path`` (default: the ``lake`` setting); created when missing
        unless ``read_only``.

        ``path`` is a DuckDB lake folder, a ``postgresql://`` URL or a Parquet lake folder
        (see :func:`dicomlake.store.open.open_store`).

        .. versionchanged:: 0.2
            PostgreSQL URLs and Parquet lake folders.
        """
        from dicomlake.store.open import lake_kind, open_store

        settings = get_settings()
        lake = path if path is not None else settings.lake
        cols = instance_columns(str(settings.columns_file) if settings.columns_file else None)
        if read_only and lake_kind(lake) == "duckdb":
            # A running `dicomlake serve` holds the DuckDB file: ask it (store/remote.py).
            from dicomlake.store.remote import RemoteStore, live_service

            info = live_service(lake)
            if info is not None:
                return cls(RemoteStore(lake, info, columns=cols))
        return cls(open_store(lake, read_only=read_only, columns=cols))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- SQL ----------------------------------------------------------------------------

    def sql_arrow(self, sql: str, params: Sequence[object] | None = None, *, max_rows: int | None = None) -> pa.Table:
        """Run one read-only statement in the user-SQL sandbox (:mod:`dicomlake.store.sandbox`);
        an Arrow table of at most ``max_rows`` rows (default ``query.max_rows``; 0: all).
        :func:`dicomlake.store.sandbox.truncated` says whether rows were cut.

        On a DuckDB lake the first call takes file and network access away from the lake's
        DuckDB instance for good (``enable_external_access = false``).
        """
        return self.store.query_readonly(  # type: ignore[no-any-return]
            sql, list(params) if params is not None else None, max_rows=max_rows
        )

    def sql(self, sql: str, params: Sequence[object] | None = None, *, max_rows: int | None = None) -> pl.DataFrame:
        """Run one read-only statement in the sandbox; a polars DataFrame (see :meth:`sql_arrow`)."""
        return pl.from_arrow(self.sql_arrow(sql, params, max_rows=max_rows))  # type: ignore[return-value]

    # ---- filters ------------------------------------------------------------------------

    def build_query(
        self,
        where: Sequence[str] = (),
        select: Sequence[str] | None = None,
        level: str = "instance",
        limit: int | None = None,
        order_by: str | None = None,
    ) -> tuple[str, list[object], list[Filter]]:
        """The SQL for a filtered selection at a level (instance, series, study, patient)."""
        if level not in LEVELS:
            raise QueryError(f"level {level!r}: choose one of {', '.join(LEVELS)}")
        cond, params, parsed = where_clause(list(where), self.columns)
        names = list(select) if select else DEFAULT_SELECT[level]
        exprs: list[str] = []
        sel_params: list[object] = []
        for name in names:
            key = resolve_key(name, self.columns)
            if key.column is not None:
                expr = f'i."{key.column}"'
            else:
                loc = "e.path_key = ?" if key.path_key is not None else "e.tag = ? AND e.depth = 0"
                sel_params.append(key.path_key if key.path_key is not None else key.tag)
                expr = (
                    f"(SELECT first(e.value_text ORDER BY e.path) FROM elements e "
                    f"WHERE e.SOPInstanceUID = i.SOPInstanceUID AND {loc})"
                )
            alias = _qident(name)
            if level == "instance":
                exprs.append(f"{expr} AS {alias}")
            elif name == LEVEL_KEY[level]:
                exprs.append(f'i."{name}" AS {alias}')
            else:
                exprs.append(f"any_value({expr}) AS {alias}")
        if level == "instance":
            sql = f"SELECT {', '.join(exprs)} FROM instances i WHERE {cond}"
            default_order = 'i."study_datetime", i."SeriesInstanceUID", i."InstanceNumber", i."SOPInstanceUID"'
        else:
            k = LEVEL_KEY[level]
            extra = ["count(*) AS n_instances"]
            if level in ("study", "patient"):
                extra.append('count(DISTINCT i."SeriesInstanceUID") AS n_series')
                extra.append('string_agg(DISTINCT i."Modality", \'\\\' ORDER BY i."Modality") AS ModalitiesInStudy')
            if level == "patient":
                extra.append('count(DISTINCT i."StudyInstanceUID") AS n_studies')
            if k not in names:
                exprs.insert(0, f'i."{k}" AS "{k}"')
            sql = f'SELECT {", ".join(exprs + extra)} FROM instances i WHERE {cond} GROUP BY i."{k}"'
            default_order = f'"{k}"'
        if order_by:
            okey = resolve_key(order_by.lstrip("-"), self.columns)
            if okey.column is None:
                raise QueryError(f"order by {order_by!r}: only typed columns can order results")
            sql += f' ORDER BY "{okey.column}"' + (" DESC" if order_by.startswith("-") else "")
        else:
            sql += f" ORDER BY {default_order}" if level != "instance" else ""
        max_rows = get_settings().query.max_rows
        n = min(limit, max_rows) if limit else max_rows
        sql += f" LIMIT {int(n)}"
        return sql, sel_params + params, parsed

    def query_arrow(
        self,
        where: Sequence[str] = (),
        select: Sequence[str] | None = None,
        level: str = "instance",
        limit: int | None = None,
        order_by: str | None = None,
    ) -> pa.Table:
        sql, params, _ = self.build_query(where, select, level, limit, order_by)
        return self.store.query(sql, params)

    def query(
        self,
        where: Sequence[str] | str = (),
        select: Sequence[str] | str | None = None,
        level: str = "instance",
        limit: int | None = None,
        order_by: str | None = None,
    ) -> pl.DataFrame:
        """Filter on any attribute; a polars DataFrame with DICOM keywords as columns.

        >>> import dicomlake, tempfile
        >>> dicomlake.open(tempfile.mkdtemp()).query("Modality = MG", select="PatientID").height
        0
        """
        if isinstance(where, str):
            where = [where]
        if isinstance(select, str):
            select = [s.strip() for s in select.split(",") if s.strip()]
        return pl.from_arrow(self.query_arrow(where, select, level, limit, order_by))  # type: ignore[return-value]

    def count(self, table: str = "instances") -> int:
        row = self.store.query(f'SELECT count(*) AS n FROM "{table}"').column("n")[0].as_py()
        return int(row)

    def instance_json(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The DICOM JSON of one instance (PS3.18 F.2), bulk data left out."""
        import json

        t = self.store.query("SELECT json FROM dicom_json WHERE SOPInstanceUID = ?", [sop_instance_uid])
        if not t.num_rows:
            return None
        return json.loads(t.column("json")[0].as_py())  # type: ignore[no-any-return]

    # ---- export -------------------------------------------------------------------------

    def export(
        self, out: str | os.PathLike[str], fmt: str = "parquet", tables: Sequence[str] | None = None
    ) -> list[Path]:
        """Write every table of the lake to ``out`` (one file per table) with the same columns.

        ``fmt="lake"`` writes a partitioned Parquet lake instead (:mod:`dicomlake.store.parquet`),
        which ``dicomlake import`` reads back into DuckDB or PostgreSQL without loss.
        """
        if fmt not in ("parquet", "csv", "lake"):
            raise QueryError(f"export format {fmt!r}: choose parquet, csv or lake")
        if fmt == "lake":
            from dicomlake.store.parquet import ParquetLakeWriter
            from dicomlake.store.transfer import copy_lake

            writer = ParquetLakeWriter(out)
            copy_lake(self.store, writer)
            return sorted(Path(f) for f in writer.files)
        return self._export_streamed(Path(out), fmt, tables)

    def _export_streamed(self, dest: Path, fmt: str, tables: Sequence[str] | None) -> list[Path]:
        """Table by table as Arrow batches, written here by pyarrow (any back end: the lake's
        DuckDB instance needs no file access, and a PostgreSQL lake streams ``COPY … TO STDOUT``)."""
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        from dicomlake.store.transfer import iter_table, table_schema

        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for name in list(tables) if tables else ["instances", "elements", "dicom_json", "dose_events", "rejects"]:
            schema = table_schema(self.store, name)
            if schema is None:
                continue
            target = dest / f"{name}.{fmt}"
            tmp = target.with_name(f".{target.name}.tmp")
            writer: Any = (
                pq.ParquetWriter(tmp, schema, compression="zstd") if fmt == "parquet" else pacsv.CSVWriter(tmp, schema)
            )
            with writer:
                for batch in iter_table(self.store, name, schema):
                    writer.write_batch(batch)
            os.replace(tmp, target)
            written.append(target)
        return written


def _qident(name: str) -> str:
    """A SQL identifier for any column label (keywords, paths, private element names)."""
    return '"' + name.replace('"', '""') + '"'


__all__ = ["DERIVED", "LEVELS", "Lake"]
