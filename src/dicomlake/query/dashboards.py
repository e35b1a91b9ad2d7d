"""The lake queries behind the web UI: searches, counts, dashboard charts, ingest status, rejects, quality flags.

:mod:`dicomlake.web.ui` calls these with typed values — filters in the syntax of
:mod:`dicomlake.query.filters` (``StationName = CT1``), a level, columns, a page, the
analyst's :class:`~dicomlake.query.qido.Restriction` — and a *reader* (a Store, or
:class:`dicomlake.store.reads.LakeReads`); each returns Arrow tables or plain values. The
restriction is compiled into each statement (``Lake.build_query(restrict=…)`` checks it is
there); a query it cannot be applied to is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from dicomlake.errors import QueryError
from dicomlake.events import distinct_events_sql
from dicomlake.lakeschema import element_join_of
from dicomlake.query.filters import where_clause
from dicomlake.query.qido import Reader, Restriction

LEVEL_KEY = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
    "patient": "PatientID",
}
CHARTS = ("ct-dose", "ct-dlp", "mg-agd", "mg-force", "modality", "quality")
DOSE_CHARTS = ("ct-dose", "ct-dlp", "mg-agd", "mg-force")
EVENTS = distinct_events_sql()
"""``dose_events`` with each irradiation event once per study (cumulative RDSRs repeat them)."""
CHART_ROWS = 100_000
"""Most points of one dose chart."""


# ---- searches ---------------------------------------------------------------------------


def select(
    reader: Reader,
    where: Sequence[str],
    columns: Sequence[str],
    level: str,
    *,
    limit: int | None,
    offset: int = 0,
    sort: str | None = None,
    restrict: Restriction | None = None,
) -> tuple[str, list[object]]:
    """The statement of one page of a search (:meth:`dicomlake.query.lake.Lake.build_query`)."""
    from dicomlake.query.lake import Lake

    lake = Lake(reader)
    limit_n = (offset + limit) if limit else None
    sql, params, _ = lake.build_query(
        list(where), list(columns), level, limit_n, sort, restrict=restrict.sql("i") if restrict is not None else None
    )
    if offset:
        sql = f"SELECT * FROM ({sql}) AS page LIMIT {int(limit or 0) or 'ALL'} OFFSET {int(offset)}"
    return sql, params


def table(reader: Reader, where: Sequence[str], columns: Sequence[str], level: str, **kw: Any) -> pa.Table:
    """One page of a search (arguments of :func:`select`)."""
    sql, params = select(reader, where, columns, level, **kw)
    return reader.query(sql, params)


def batches(
    reads: Any, where: Sequence[str], columns: Sequence[str], level: str, *, rows: int = 5000, **kw: Any
) -> Generator[pa.RecordBatch, None, None]:
    """A whole search in record batches (an export); ``reads`` is a :class:`~dicomlake.store.reads.LakeReads`."""
    sql, params = select(reads, where, columns, level, limit=None, **kw)
    yield from reads.batches(sql, params, rows)


def count(reader: Reader, where: Sequence[str], level: str, restrict: Restriction | None = None) -> int:
    """How many distinct entities of ``level`` match."""
    cond, params, _ = where_clause(list(where), reader.columns, element_join_of(reader))
    if restrict is not None:
        cond = f"{restrict.sql('i')} AND {cond}"
    k = LEVEL_KEY[level]
    t = reader.query(f'SELECT count(DISTINCT i."{k}") AS n FROM instances i WHERE {cond}', params)
    return int(t.column(0)[0].as_py())


# ---- dashboards -------------------------------------------------------------------------


def _dose_where(reader: Reader, where: Sequence[str], modalities: Sequence[str]) -> tuple[str, list[object]]:
    """The filters for dose charts: a ``Modality = X`` filter also matches the study's dose reports.

    A CT study's dose is in an RDSR whose Modality is SR; a Modality filter therefore matches a
    dose event when its instance, its dose family (CT, MG, DX, RF) or any instance of its study
    has that modality."""
    cond, params, _ = where_clause(list(where), reader.columns, element_join_of(reader))
    if not modalities:
        return cond, params
    # ORed below with the dose family and the study's other instances (an RDSR is SR, in the SR
    # partition): a Parquet lake's partition condition would not be implied, so none here
    plain = dataclasses.replace(element_join_of(reader), partitions=False)
    mcond, mparams, _ = where_clause(list(modalities), reader.columns, plain)
    family = mcond.replace('i."Modality"', "d.modality_family")
    study = mcond.replace('i."', 'j."')
    widened = (
        f'({mcond} OR {family} OR i."StudyInstanceUID" IN (SELECT j."StudyInstanceUID" FROM instances j WHERE {study}))'
    )
    return f"({cond}) AND {widened}", [*params, *mparams, *mparams, *mparams]


def chart(
    reader: Reader,
    name: str,
    where: Sequence[str],
    *,
    modalities: Sequence[str] = (),
    restrict: Restriction | None = None,
    tables: set[str] | frozenset[str] = frozenset({"dose_events", "quality_flags"}),
) -> pa.Table:
    """The rows of one dashboard chart: ``group``/``y`` (box plots), ``group``/``x``/``y`` (scatter)
    or ``x``/``y`` (bars).

    ``where`` are the filters other than ``Modality = X`` ones, which come in ``modalities``
    (dose charts widen them to the study's dose reports); ``tables`` the lake's tables (a chart
    over a table the lake does not have is empty)."""
    if name not in CHARTS:
        raise QueryError(f"chart {name!r}: choose one of {', '.join(CHARTS)}")
    if name in DOSE_CHARTS:
        cond, params = _dose_where(reader, where, modalities)
        if "dose_events" not in tables:
            return pa.table({})
    else:
        cond, params, _ = where_clause([*where, *modalities], reader.columns, element_join_of(reader))
    if restrict is not None:
        cond = f"{restrict.sql('i')} AND {cond}"
    col = {"ct-dose": "CTDIvol_mGy", "ct-dlp": "DLP_mGycm", "mg-force": "compression_force_N"}.get(name)
    if col is not None:
        fam = "CT" if name.startswith("ct") else "MG"
        sql = (
            f'SELECT coalesce(i."StationName", \'(none)\') AS "group", d."{col}" AS y FROM ({EVENTS}) d '
            f'JOIN instances i ON i."SOPInstanceUID" = d."SOPInstanceUID" WHERE {cond} AND d.modality_family = \'{fam}\' '
            f"AND d.record = 'event' AND d.\"{col}\" IS NOT NULL "
            f'ORDER BY coalesce(i."StationName", \'(none)\') COLLATE "C", d."{col}", d."SOPInstanceUID" COLLATE "C" '
            f"LIMIT {CHART_ROWS}"
        )
    elif name == "mg-agd":
        sql = (
            'SELECT coalesce(d.view, \'\') AS "group", d.compressed_breast_thickness_mm AS x, d."agd_mGy" AS y '
            f'FROM ({EVENTS}) d JOIN instances i ON i."SOPInstanceUID" = d."SOPInstanceUID" WHERE {cond} '
            f"AND d.modality_family = 'MG' AND d.record = 'event' AND d.\"agd_mGy\" IS NOT NULL "
            f'ORDER BY coalesce(d.view, \'\') COLLATE "C", d.compressed_breast_thickness_mm, d."agd_mGy", '
            f'd."SOPInstanceUID" COLLATE "C" LIMIT {CHART_ROWS}'
        )
    elif name == "modality":
        sql = (
            f"SELECT coalesce(i.\"Modality\", '(none)') AS x, count(*) AS y FROM instances i WHERE {cond} "
            f'GROUP BY 1 ORDER BY 2 DESC, coalesce(i."Modality", \'(none)\') COLLATE "C"'
        )
    else:
        if "quality_flags" not in tables:
            return pa.table({})
        sql = (
            'SELECT q.rule AS x, count(*) AS y FROM quality_flags q JOIN instances i ON i."SOPInstanceUID" = q."SOPInstanceUID" '
            f'WHERE {cond} GROUP BY 1 ORDER BY 2 DESC, q.rule COLLATE "C"'
        )
    return reader.query(sql, params)


# ---- one instance ------------------------------------------------------------------------


def instance(reader: Reader, uid: str, restrict: Restriction | None = None) -> dict[str, Any] | None:
    """``uid``, ``study`` and ``path`` (source_path) of one instance, None when absent or hidden."""
    from dicomlake.query.qido import instances_by_uid

    rows = instances_by_uid(reader, [uid], ("uid", "study", "path"), restrict)
    return rows[0] if rows else None


# ---- ingest status, rejects, quality flags ----------------------------------------------


def ingest_counts(reader: Reader) -> dict[str, Any]:
    """Instances in the lake, received in the last minute and hour, the last receipt; rejects."""
    q: dict[str, Any] = reader.query(
        "SELECT count(*) AS instances, "
        "count(*) FILTER (WHERE received_at >= now()::TIMESTAMP - INTERVAL 1 MINUTE) AS last_minute, "
        "count(*) FILTER (WHERE received_at >= now()::TIMESTAMP - INTERVAL 1 HOUR) AS last_hour, "
        "max(received_at) AS last_received FROM instances"
    ).to_pylist()[0]
    q["rejects"] = rejects_total(reader)
    return q


def ingest_runs(reader: Reader, n: int = 20) -> pa.Table:
    """The last ``n`` ingest runs, newest first."""
    return reader.query(f"SELECT * FROM ingest_runs ORDER BY started_at DESC LIMIT {int(n)}")


def recent_rejects(reader: Reader, n: int = 10) -> pa.Table:
    """The last ``n`` rejects (time, source, reason, path), newest first."""
    return reader.query(
        f"SELECT rejected_at, source, reason, source_path FROM rejects ORDER BY rejected_at DESC LIMIT {int(n)}"
    )


def rejects_total(reader: Reader) -> int:
    return int(reader.query("SELECT count(*) AS n FROM rejects").column(0)[0].as_py())


def rejects_page(reader: Reader, limit: int, offset: int) -> pa.Table:
    return reader.query("SELECT * FROM rejects ORDER BY rejected_at DESC LIMIT ? OFFSET ?", [int(limit), int(offset)])


QUALITY_KEYS = ("rule", "severity", "attribute")


def quality_page(reader: Reader, equal: Mapping[str, str], limit: int, offset: int) -> tuple[pa.Table, int]:
    """Quality flags newest first, filtered by exact ``rule``/``severity``/``attribute``; and their total."""
    conds, params = [], []
    for col in QUALITY_KEYS:
        v = equal.get(col)
        if v:
            conds.append(f"{col} = ?")
            params.append(v)
    where = " AND ".join(conds) or "TRUE"
    t = reader.query(
        f"SELECT * FROM quality_flags WHERE {where} "
        'ORDER BY flagged_at DESC NULLS LAST, "SOPInstanceUID" COLLATE "C", rule COLLATE "C", attribute COLLATE "C" '
        "LIMIT ? OFFSET ?",
        [*params, int(limit), int(offset)],
    )
    total = int(reader.query(f"SELECT count(*) AS n FROM quality_flags WHERE {where}", params).column(0)[0].as_py())
    return t, total
