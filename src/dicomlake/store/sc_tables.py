"""``sc_analysis`` and the OCR dose rows in the lake, on DuckDB and PostgreSQL: every statement
``sc analyse`` and ``sc confirm-dose`` run.

:mod:`dicomlake.extract.sc` keeps the analysis and its decisions (a dose reading stored, in
review, or superseded by a Radiation Dose SR) and hands in the rows and the table's schema;
``extract/`` and ``store/`` are one layer and import neither each other, so the caller
(``cli/``) passes this object (``store.sc_tables()``). Statements are written once in DuckDB's
dialect and translated for PostgreSQL by sqlglot (:mod:`dicomlake.store.lakesql`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from dicomlake.errors import ConfigError
from dicomlake.store.lakesql import LakeSql, duckdb_type, lake_sql

TABLE = "sc_analysis"


class LakeSC:
    """The SC-analysis door of one open lake."""

    def __init__(self, sql: LakeSql) -> None:
        self.sql = sql

    @classmethod
    def of(cls, store: Any) -> LakeSC:
        return cls(lake_sql(store))

    def _writable(self, what: str) -> None:
        if not self.sql.writable:
            raise ConfigError(
                f"{what} writes to the lake, and this lake is read-only (a Parquet lake, a read-only open or a "
                "running service's lake)"
            )

    def ensure_table(self, schema: pa.Schema) -> None:
        """``sc_analysis`` with ``schema``'s columns (keyed by SOPInstanceUID); columns a newer
        version added are added."""
        if not self.sql.writable:
            return
        cols = ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in schema)
        self.sql.run(f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols}, PRIMARY KEY (SOPInstanceUID))")
        have = self.sql.columns(TABLE)
        for f in schema:
            if f.name not in have:
                self.sql.run(f'ALTER TABLE {TABLE} ADD COLUMN "{f.name}" {duckdb_type(f.type)}')

    def candidates(self, sop_classes: Sequence[str], *, only_missing: bool) -> list[tuple[str, str | None]]:
        """``(SOPInstanceUID, source_path)`` of the instances of ``sop_classes`` (not yet analysed)."""
        marks = ", ".join("?" for _ in sop_classes)
        sql = f"SELECT SOPInstanceUID, source_path FROM instances WHERE SOPClassUID IN ({marks})"
        if only_missing:
            sql += f" AND SOPInstanceUID NOT IN (SELECT SOPInstanceUID FROM {TABLE})"
        return [(str(u), p) for u, p in self.sql.rows(sql + " ORDER BY SOPInstanceUID", list(sop_classes))]

    def study_has_rdsr(self, study_uid: str | None) -> bool:
        rows = self.sql.rows(
            "SELECT count(*) FROM dose_events WHERE StudyInstanceUID = ? AND source = 'rdsr'", [study_uid]
        )
        return bool(rows and rows[0][0])

    def replace_analysis(self, row: pa.Table, ocr_rows: pa.Table | None) -> None:
        """In one transaction: the instance's ``sc_analysis`` row and OCR dose rows replaced by
        ``row`` and ``ocr_rows`` (None: none stored)."""
        self._writable("sc analyse")
        uid = row.column("SOPInstanceUID")[0].as_py()
        with self.sql.transaction():
            self.sql.run(f"DELETE FROM {TABLE} WHERE SOPInstanceUID = ?", [uid])
            self.sql.run("DELETE FROM dose_events WHERE SOPInstanceUID = ? AND source = 'ocr'", [uid])
            if ocr_rows is not None and ocr_rows.num_rows:
                self.sql.append("dose_events", ocr_rows)
            self.sql.append(TABLE, row)

    def resolve_dose_sources(self) -> int:
        """Remove OCR dose rows of studies that now have a Radiation Dose SR (the SR wins); how many."""
        self._writable("sc analyse")
        cond = "StudyInstanceUID IN (SELECT StudyInstanceUID FROM dose_events WHERE source = 'rdsr')"
        rows = self.sql.rows(f"SELECT count(*) FROM dose_events WHERE source = 'ocr' AND {cond}")
        count = int(rows[0][0]) if rows else 0
        if count:
            with self.sql.transaction():
                self.sql.run(f"DELETE FROM dose_events WHERE source = 'ocr' AND {cond}")
                self.sql.run(
                    f"UPDATE {TABLE} SET dose_status = 'rdsr-wins', dose_pending = NULL "
                    f"WHERE dose_status IN ('stored', 'review', 'confirmed') AND {cond}"
                )
        return count

    def pending_dose(self, uid: str) -> str | None:
        """The JSON dose reading of ``uid`` in review, None when there is none."""
        if not self.sql.columns(TABLE):
            return None
        rows = self.sql.rows(
            f"SELECT dose_pending FROM {TABLE} WHERE SOPInstanceUID = ? AND dose_status = 'review'", [uid]
        )
        return str(rows[0][0]) if rows and rows[0][0] else None

    def confirm_dose(self, uid: str, ocr_rows: pa.Table) -> None:
        """Store a reviewed reading in ``dose_events`` and mark it confirmed, in one transaction."""
        self._writable("sc confirm-dose")
        with self.sql.transaction():
            self.sql.run("DELETE FROM dose_events WHERE SOPInstanceUID = ? AND source = 'ocr'", [uid])
            self.sql.append("dose_events", ocr_rows)
            self.sql.run(
                f"UPDATE {TABLE} SET dose_status = 'confirmed', dose_pending = NULL WHERE SOPInstanceUID = ?", [uid]
            )


def sc_tables_of(store: Any) -> LakeSC:
    """The SC-analysis door of any open store."""
    own = getattr(store, "sc_tables", None)
    return own() if callable(own) else LakeSC.of(store)


__all__ = ["LakeSC", "sc_tables_of"]
