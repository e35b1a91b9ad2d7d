"""``dose_events`` seen once per irradiation event: the rows every audit (and any other
consumer that counts or sums doses per study) should read instead of the raw table.

A modality may send several Radiation Dose SRs for one study:

- **cumulative** reports (Siemens sends a new SR after each acquisition; each repeats the
  events of the previous one): events recur under the same Irradiation Event UID, and
  only the newest report's accumulated totals describe the whole study;
- **continued** reports (one study split over two SRs with different events): the events
  and the accumulated totals of both count.

:func:`distinct_events_sql` keeps one ``record = 'event'`` row per (study, Irradiation
Event UID), the one of the newest report (Content Date/Time, then Instance Number, then
SOP Instance UID: the same on every engine), and keeps ``record = 'accumulated'`` rows
only of reports no other report of the study *supersedes* (another report holds every
event of this one, and more events, or as many and is newer). Rows without an event UID
(image headers, templates without one) are kept as they are.

:func:`study_totals` then gives a study's total from the kept accumulated rows when the
kept reports do not share events (their totals add), else from the distinct events.
"""

from __future__ import annotations

import polars as pl

RANK_COLUMNS = ("_report_rank", "_report_events", "_report_kept", "_copy")


def distinct_events_sql(table: str = "dose_events", instances: str = "instances") -> str:
    """A ``SELECT`` with the columns of ``table`` plus ``_report_rank`` (1 = newest report
    of its study), ``_report_events`` (distinct events of the row's report) and
    ``_report_kept`` (the report is not superseded) and ``_copy`` (always 1), one row per
    distinct irradiation event (no ``EXCLUDE``: the text runs on PostgreSQL too)."""
    return f"""
    WITH _rep AS (
      SELECT r.SOPInstanceUID, r.StudyInstanceUID,
             row_number() OVER (PARTITION BY r.StudyInstanceUID
                                ORDER BY i.content_datetime DESC NULLS LAST, i.InstanceNumber DESC NULLS LAST,
                                         r.SOPInstanceUID DESC) AS rnk
      FROM (SELECT DISTINCT SOPInstanceUID, StudyInstanceUID FROM {table} WHERE source = 'rdsr') r
      LEFT JOIN {instances} i ON i.SOPInstanceUID = r.SOPInstanceUID),
    _evs AS (
      SELECT DISTINCT StudyInstanceUID, SOPInstanceUID, IrradiationEventUID FROM {table}
      WHERE source = 'rdsr' AND record = 'event' AND IrradiationEventUID IS NOT NULL),
    _size AS (SELECT SOPInstanceUID, count(*) AS n FROM _evs GROUP BY SOPInstanceUID),
    _sup AS (
      SELECT a.SOPInstanceUID
      FROM _evs a
      JOIN _evs b ON b.StudyInstanceUID = a.StudyInstanceUID AND b.IrradiationEventUID = a.IrradiationEventUID
                 AND b.SOPInstanceUID <> a.SOPInstanceUID
      JOIN _size sa ON sa.SOPInstanceUID = a.SOPInstanceUID
      JOIN _size sb ON sb.SOPInstanceUID = b.SOPInstanceUID
      JOIN _rep ra ON ra.SOPInstanceUID = a.SOPInstanceUID
      JOIN _rep rb ON rb.SOPInstanceUID = b.SOPInstanceUID
      GROUP BY a.SOPInstanceUID, b.SOPInstanceUID, sa.n, sb.n, ra.rnk, rb.rnk
      HAVING count(*) = sa.n AND (sb.n > sa.n OR (sb.n = sa.n AND rb.rnk < ra.rnk))),
    _tagged AS (
      SELECT d.*, rp.rnk AS _report_rank, coalesce(sz.n, 0) AS _report_events,
             (d.source <> 'rdsr' OR d.SOPInstanceUID NOT IN (SELECT SOPInstanceUID FROM _sup)) AS _report_kept,
             CASE WHEN d.source = 'rdsr' AND d.record = 'event' AND d.IrradiationEventUID IS NOT NULL
                  THEN row_number() OVER (PARTITION BY d.StudyInstanceUID, d.source, d.record, d.IrradiationEventUID
                                          ORDER BY rp.rnk)
                  ELSE 1 END AS _copy
      FROM {table} d
      LEFT JOIN _rep rp ON rp.SOPInstanceUID = d.SOPInstanceUID
      LEFT JOIN _size sz ON sz.SOPInstanceUID = d.SOPInstanceUID)
    SELECT * FROM _tagged
    WHERE _copy = 1 AND (record <> 'accumulated' OR _report_kept)"""


def study_totals(events: pl.DataFrame, acc: pl.DataFrame, event_value: str, acc_value: str, alias: str,
                 scale: float = 1.0) -> pl.DataFrame:  # fmt: skip
    """Per study: ``alias`` = the sum of the kept reports' accumulated ``acc_value`` when those
    reports share no event (their distinct events add up to the study's), else the sum of the
    distinct events' ``event_value``; both × ``scale``. A report's accumulated rows add (one
    per acquisition plane of a biplane system). Also ``{alias}_from`` says which was used."""
    n_events = events.group_by("StudyInstanceUID").agg(
        pl.col("IrradiationEventUID").drop_nulls().n_unique().alias("_distinct"),
        (pl.col(event_value).sum() * scale).alias("_ev_sum"),
        pl.col(event_value).is_not_null().any().alias("_has_ev"),
    )
    per_report = (
        acc.filter(pl.col(acc_value).is_not_null())
        .group_by("StudyInstanceUID", "SOPInstanceUID")
        .agg(pl.col(acc_value).sum().alias("_tot"), pl.col("_report_events").first().alias("_n"))
    )
    acc_sum = per_report.group_by("StudyInstanceUID").agg(
        (pl.col("_tot").sum() * scale).alias("_acc_sum"), pl.col("_n").sum().alias("_acc_n")
    )
    out = n_events.join(acc_sum, on="StudyInstanceUID", how="full", coalesce=True)
    disjoint = pl.col("_acc_sum").is_not_null() & (
        (pl.col("_acc_n") == pl.col("_distinct")) | pl.col("_distinct").is_null() | (pl.col("_distinct") == 0)
    )
    return out.select(
        "StudyInstanceUID",
        pl.when(disjoint)
        .then(pl.col("_acc_sum"))
        .when(pl.col("_has_ev"))
        .then(pl.col("_ev_sum"))
        .otherwise(None)
        .alias(alias),
        pl.when(disjoint)
        .then(pl.lit("accumulated"))
        .when(pl.col("_has_ev"))
        .then(pl.lit("sum of events"))
        .otherwise(None)
        .alias(f"{alias}_from"),
    )
