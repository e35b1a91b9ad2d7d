"""Secondary Capture analysis of one instance or a whole lake → the ``sc_analysis`` table.

One pass per instance: content class (:mod:`~dicomlake.extract.sc_class`), OCR
(:mod:`~dicomlake.extract.ocr`), quality (:mod:`~dicomlake.extract.sc_quality`),
burned-in PHI found (:mod:`dicomlake.deid.pixels`) and, for dose screens, the dose
numbers (:mod:`~dicomlake.extract.ocr_dose`) as ``dose_events`` rows with ``source =
'ocr'``. The OCR is done once and shared by all of them.

``sc_analysis`` is keyed by SOP Instance UID (re-analysis replaces the row) and is created
here with ``CREATE TABLE IF NOT EXISTS``; :func:`sc_catalogue` joins it to ``instances``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomlake.extract.ocr import OcrResult, Variant, ocr
from dicomlake.extract.ocr_dose import DoseReading, dose_rows, read_dose_table
from dicomlake.extract.sc_class import (
    SC_LIKE_SOP_CLASSES,
    Classification,
    ContentClass,
    DecidedBy,
    PixelStats,
    decide,
    header_evidence,
    ocr_evidence,
    pixel_evidence,
    pixel_stats,
)
from dicomlake.extract.sc_quality import Quality, assess

log = logging.getLogger(__name__)

_S, _F, _I, _B, _T = pa.string(), pa.float64(), pa.int64(), pa.bool_(), pa.timestamp("us")
SC_ANALYSIS_SCHEMA = pa.schema(
    [
        pa.field("SOPInstanceUID", _S),
        pa.field("StudyInstanceUID", _S),
        pa.field("SOPClassUID", _S),
        pa.field("content_class", _S),
        pa.field("decided_by", _S),
        pa.field("class_confidence", _F),
        pa.field("class_reasons", _S),
        pa.field("colourfulness", _F),
        pa.field("distinct_colours", _I),
        pa.field("white_share", _F),
        pa.field("dark_share", _F),
        pa.field("texture_share", _F),
        pa.field("rows", _I),
        pa.field("columns", _I),
        pa.field("aspect_ratio", _F),
        pa.field("megapixels", _F),
        pa.field("blur_laplacian_var", _F),
        pa.field("noise_sigma", _F),
        pa.field("jpeg_blockiness", _F),
        pa.field("skew_degrees", _F),
        pa.field("orientation_rotate", _I),
        pa.field("orientation_confidence", _F),
        pa.field("quality_flags", _S),
        pa.field("insufficient_for_diagnosis", _B),
        pa.field("rotated", _B),
        pa.field("heavily_compressed", _B),
        pa.field("ocr_words", _I),
        pa.field("phi_words", _I),
        pa.field("phi_reasons", _S),
        pa.field("redaction_policy", _S),
        pa.field("review", _B),
        pa.field("review_reasons", _S),
        pa.field("dose_series", _I),
        pa.field("dose_total_DLP_mGycm", _F),
        pa.field("dose_check", _S),
        pa.field("dose_confidence", _F),
        pa.field("dose_status", _S),
        pa.field("dose_review", _S),
        pa.field("dose_pending", _S),
        pa.field("ocr_seconds", _F),
        pa.field("analysed_at", _T),
        pa.field("error", _S),
    ]
)
"""Columns of ``sc_analysis`` (one row per SOP Instance UID)."""

_DUCK_TYPES = {_S: "VARCHAR", _F: "DOUBLE", _I: "BIGINT", _B: "BOOLEAN", _T: "TIMESTAMP"}


@dataclass
class SCAnalysis:
    """Everything learnt about one instance."""

    SOPInstanceUID: str
    StudyInstanceUID: str
    SOPClassUID: str
    classification: Classification
    stats: PixelStats | None = None
    quality: Quality | None = None
    ocr: OcrResult | None = None
    phi_reasons: dict[str, int] = field(default_factory=dict)
    phi_words: int = 0
    policy: str = ""
    review: list[str] = field(default_factory=list)
    dose: DoseReading | None = None
    dose_rows: list[dict[str, object]] = field(default_factory=list)
    dose_status: str | None = None
    dose_doubts: list[str] = field(default_factory=list)
    """Why the dose reading is not trusted (empty: stored as fact); see :meth:`DoseReading.doubts`."""
    error: str | None = None
    plan: Any = None
    """The :class:`~dicomlake.deid.pixels.RedactionPlan` (boxes to fill), not stored in the lake."""

    def row(self) -> dict[str, Any]:
        """The ``sc_analysis`` row."""
        s, q, d = self.stats, self.quality, self.dose
        flags = list(q.flags) if q else []
        return {
            "SOPInstanceUID": self.SOPInstanceUID,
            "StudyInstanceUID": self.StudyInstanceUID,
            "SOPClassUID": self.SOPClassUID,
            "content_class": self.classification.klass.value,
            "decided_by": self.classification.decided_by.value,
            "class_confidence": self.classification.confidence,
            "class_reasons": "; ".join(self.classification.reasons)[:2000],
            "colourfulness": s.colourfulness if s else None,
            "distinct_colours": s.distinct_colours if s else None,
            "white_share": s.white_share if s else None,
            "dark_share": s.dark_share if s else None,
            "texture_share": s.texture_share if s else None,
            "rows": q.rows if q else None,
            "columns": q.columns if q else None,
            "aspect_ratio": q.aspect_ratio if q else None,
            "megapixels": q.megapixels if q else None,
            "blur_laplacian_var": q.blur_laplacian_var if q else None,
            "noise_sigma": q.noise_sigma if q else None,
            "jpeg_blockiness": q.jpeg_blockiness if q else None,
            "skew_degrees": q.skew_degrees if q else None,
            "orientation_rotate": q.orientation_rotate if q else None,
            "orientation_confidence": q.orientation_confidence if q else None,
            "quality_flags": ",".join(flags),
            "insufficient_for_diagnosis": "insufficient_for_diagnosis" in flags,
            "rotated": "rotated" in flags,
            "heavily_compressed": "heavily_compressed" in flags,
            "ocr_words": len(self.ocr.words) if self.ocr else 0,
            "phi_words": self.phi_words,
            "phi_reasons": json.dumps(self.phi_reasons, sort_keys=True) if self.phi_reasons else None,
            "redaction_policy": self.policy or None,
            "review": bool(self.review),
            "review_reasons": "; ".join(self.review) or None,
            "dose_series": len(d.series) if d and d.found else None,
            "dose_total_DLP_mGycm": d.total_DLP_mGycm if d else None,
            "dose_check": d.check if d else None,
            "dose_confidence": d.confidence if d else None,
            "dose_status": self.dose_status,
            "dose_review": "; ".join(self.dose_doubts)[:2000] or None,
            "dose_pending": None,
            "ocr_seconds": round(self.ocr.seconds, 3) if self.ocr else None,
            "analysed_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            "error": self.error,
        }


def _frame(ds: Dataset) -> np.ndarray:
    from dicomlake.deid.pixels import first_frame

    return first_frame(ds)


def analyse_dataset(ds: Dataset) -> SCAnalysis:
    """Classify, OCR, assess and look for PHI and dose numbers in one instance."""
    from dicomlake.deid.pixels import ocr_for_class, plan_redaction

    where = str(getattr(ds, "filename", "") or ds.get("SOPInstanceUID", "instance"))
    ev = header_evidence(ds)
    result = SCAnalysis(
        str(ds.get("SOPInstanceUID", "")),
        str(ds.get("StudyInstanceUID", "")),
        str(ds.get("SOPClassUID", "")),
        Classification(ContentClass.UNKNOWN, DecidedBy.NONE, 0.0),
    )
    c = decide(ev, DecidedBy.HEADER)
    arr = _frame(ds) if "PixelData" in ds else None
    if arr is None:
        result.classification = c or decide(ev, DecidedBy.HEADER, final=True)  # type: ignore[assignment]
        plan = plan_redaction(ds, result.classification.klass)
        result.plan = plan
        result.review = plan.review
        return result
    result.stats = pixel_stats(arr)
    if c is None:
        pixel_evidence(result.stats, ev)
        c = decide(ev, DecidedBy.PIXELS)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if c is not None:
        text = ocr_for_class(arr, c.klass, photometric, where)
    else:
        colour = arr.ndim == 3
        text = ocr(
            arr,
            photometric=photometric,
            psm=11,
            variants=(Variant.LUMA, Variant.MIN_CHANNEL) if colour else (Variant.LUMA,),
            where=where,
        )
        ocr_evidence([w.text for w in text.words if w.conf >= 50], arr.shape, ev)
        c = decide(ev, DecidedBy.OCR, final=True)
        assert c is not None
    result.classification = c
    result.ocr = text
    klass = c.klass
    ratio = ds.get("LossyImageCompressionRatio")
    try:
        ratio_f = (
            max(
                float(v)
                for v in (
                    ratio if isinstance(ratio, (list, tuple)) or type(ratio).__name__ == "MultiValue" else [ratio]
                )
            )
            if ratio
            else None
        )  # type: ignore[union-attr]
    except (TypeError, ValueError):
        ratio_f = None
    result.quality = assess(
        arr,
        klass.value,
        orientation=text.orientation,
        compression_ratio=ratio_f,
        text_like=klass
        in (ContentClass.DOCUMENT, ContentClass.DOSE_REPORT, ContentClass.SCREENSHOT, ContentClass.UNKNOWN),
    )
    plan = plan_redaction(ds, klass, arr=arr, result=text)
    result.plan = plan
    result.policy = plan.policy
    result.review = plan.review
    reasons: dict[str, int] = {}
    for h in plan.hits:
        key = h.reason.split(":")[0] if h.reason.startswith("policy") else h.reason
        reasons[key] = reasons.get(key, 0) + 1
    result.phi_reasons = reasons
    result.phi_words = len(plan.hits)
    if klass is ContentClass.DOSE_REPORT:
        result.dose = read_dose_table(text)
        result.dose_rows = dose_rows(ds, result.dose) if result.dose.found else []
        result.dose_doubts = result.dose.doubts()
        if result.dose_doubts:
            result.review = [
                *result.review,
                "dose screen read with doubts, not stored until confirmed: " + "; ".join(result.dose_doubts),
            ]
    return result


# --- the lake ---------------------------------------------------------------------------------


class SCLake(Protocol):
    """What SC analysis needs from the lake: :class:`dicomlake.store.sc_tables.LakeSC`
    (``store.sc_tables()``), passed in by the caller (``extract/`` does not import ``store/``)."""

    def ensure_table(self, schema: pa.Schema) -> None: ...

    def candidates(self, sop_classes: Sequence[str], *, only_missing: bool) -> list[tuple[str, str | None]]: ...

    def study_has_rdsr(self, study_uid: str | None) -> bool: ...

    def replace_analysis(self, row: pa.Table, ocr_rows: pa.Table | None) -> None: ...

    def resolve_dose_sources(self) -> int: ...

    def pending_dose(self, uid: str) -> str | None: ...

    def confirm_dose(self, uid: str, ocr_rows: pa.Table) -> None: ...


def ensure_sc_table(con: Any) -> None:
    """``CREATE TABLE IF NOT EXISTS sc_analysis`` (and any column a newer version added), through
    the lake's SC door (:class:`SCLake`), or on a bare DuckDB connection (the data dictionary)."""
    if hasattr(con, "ensure_table"):
        con.ensure_table(SC_ANALYSIS_SCHEMA)
        return
    cols = ", ".join(f'"{f.name}" {_DUCK_TYPES[f.type]}' for f in SC_ANALYSIS_SCHEMA)
    con.execute(f"CREATE TABLE IF NOT EXISTS sc_analysis ({cols}, PRIMARY KEY (SOPInstanceUID))")
    have = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'sc_analysis'"
        ).fetchall()
    }
    for f in SC_ANALYSIS_SCHEMA:
        if f.name not in have:
            con.execute(f'ALTER TABLE sc_analysis ADD COLUMN "{f.name}" {_DUCK_TYPES[f.type]}')


@dataclass
class AnalyseReport:
    """Counts of one ``sc analyse`` run."""

    instances: int = 0
    analysed: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    review: int = 0
    dose_rows: int = 0
    dose_superseded: int = 0
    dose_review: int = 0
    """Dose screens whose reading is in review (rows kept out of ``dose_events``)."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _write(lake: SCLake, analysis: SCAnalysis, report: AnalyseReport) -> None:
    from dicomlake.lakeschema import DOSE_EVENT_COLUMNS

    row = analysis.row()
    ocr_rows = None
    rows = analysis.dose_rows
    if rows:
        if lake.study_has_rdsr(analysis.StudyInstanceUID):
            row["dose_status"] = "rdsr-wins"
            report.dose_superseded += 1
        elif analysis.dose_doubts:
            # never a doubtful reading stored as fact: kept aside until `sc confirm-dose`
            row["dose_status"] = "review"
            row["dose_pending"] = json.dumps(rows, default=str)
            report.dose_review += 1
        else:
            ocr_rows = pa.Table.from_pylist(rows, schema=pa.schema(list(DOSE_EVENT_COLUMNS.items())))
            row["dose_status"] = "stored"
            report.dose_rows += len(rows)
    lake.replace_analysis(pa.Table.from_pylist([row], schema=SC_ANALYSIS_SCHEMA), ocr_rows)


def resolve_dose_sources(lake: SCLake) -> int:
    """Remove OCR dose rows of studies that now have a Radiation Dose SR (the SR wins); return how many."""
    return lake.resolve_dose_sources()


def analyse_lake(
    lake: SCLake,
    *,
    only_missing: bool = False,
    progress: Callable[[AnalyseReport, int], None] | None = None,
) -> AnalyseReport:
    """Analyse every SC-like instance of a DuckDB lake, reading pixels from ``source_path``.

    Parameters
    ----------
    lake
        The lake's SC door, writable (``store.sc_tables()`` of a DuckDB or PostgreSQL lake).
    only_missing
        Skip instances that already have an ``sc_analysis`` row.
    progress
        Called after each instance with the report and the total.
    """
    t0 = time.perf_counter()
    report = AnalyseReport()
    ensure_sc_table(lake)
    todo = lake.candidates(list(SC_LIKE_SOP_CLASSES), only_missing=only_missing)
    report.instances = len(todo)
    for uid, source_path in todo:
        where = source_path or uid
        try:
            if not source_path or not Path(source_path).is_file():
                raise FileNotFoundError(
                    f"{uid}: its file {source_path!r} is not there any more (or is inside a zip); "
                    "re-ingest from a folder to analyse its pixels"
                )
            ds = dcmread(source_path)
            analysis = analyse_dataset(ds)
        except Exception as exc:
            report.failed.append((str(where), f"{where}: {type(exc).__name__}: {exc}"))
            failed = SCAnalysis(str(uid), "", "", Classification(ContentClass.UNKNOWN, DecidedBy.NONE, 0.0))
            failed.error = f"{type(exc).__name__}: {exc}"[:2000]
            failed.review = ["analysis failed"]
            _write(lake, failed, report)
            continue
        _write(lake, analysis, report)
        report.analysed += 1
        k = analysis.classification.klass.value
        report.by_class[k] = report.by_class.get(k, 0) + 1
        report.review += bool(analysis.review)
        if progress:
            progress(report, len(todo))
    report.dose_superseded += resolve_dose_sources(lake)
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def confirm_dose(lake: SCLake, sop_instance_uids: Sequence[str]) -> list[tuple[str, int]]:
    """Move reviewed dose readings into ``dose_events``; return (UID, rows stored) per UID.

    A person has compared the screen with the values in ``sc_analysis.dose_pending``;
    from now on the audits use them. A UID without a pending reading raises ValueError.
    """
    from dicomlake.lakeschema import DOSE_EVENT_COLUMNS

    ensure_sc_table(lake)
    done: list[tuple[str, int]] = []
    for uid in sop_instance_uids:
        pending = lake.pending_dose(uid)
        if not pending:
            raise ValueError(f"{uid}: no dose reading in review for this SOP Instance UID (see sc catalogue --review)")
        rows = json.loads(pending)
        lake.confirm_dose(uid, pa.Table.from_pylist(rows, schema=pa.schema(list(DOSE_EVENT_COLUMNS.items()))))
        done.append((uid, len(rows)))
    return done


CATALOGUE_COLUMNS = (
    "PatientID",
    "StudyDate",
    "Modality",
    "SeriesDescription",
    "content_class",
    "decided_by",
    "class_confidence",
    "rows",
    "columns",
    "quality_flags",
    "phi_words",
    "review",
    "review_reasons",
    "dose_total_DLP_mGycm",
    "dose_check",
    "dose_status",
    "dose_review",
    "SOPInstanceUID",
)
"""Columns of :func:`sc_catalogue`, in order."""


def sc_catalogue(store: Any, *, where: str | None = None) -> pa.Table:
    """The SC catalogue: every analysed instance with its class, quality and PHI figures.

    Parameters
    ----------
    store
        An open store holding ``sc_analysis`` (the caller creates it: ``store.sc_tables()``).
    where
        Optional SQL condition over the catalogue's columns (e.g. ``"review"``).
    """
    cols = ", ".join(
        f'i."{c}"' if c in ("PatientID", "StudyDate", "Modality", "SeriesDescription") else f'a."{c}"'
        for c in CATALOGUE_COLUMNS
    )
    sql = (
        f"SELECT {cols} FROM sc_analysis a LEFT JOIN instances i USING (SOPInstanceUID)"
        + (f" WHERE {where}" if where else "")
        + " ORDER BY a.content_class, i.PatientID, a.SOPInstanceUID"
    )
    return store.query(sql)


def analyse_files(paths: Sequence[Path]) -> list[SCAnalysis]:
    """Analyse DICOM files without a lake (for scripts and tests)."""
    return [analyse_dataset(dcmread(p)) for p in paths]
