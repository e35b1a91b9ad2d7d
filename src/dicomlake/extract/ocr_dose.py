"""CT dose numbers read from dose report screenshots → ``dose_events`` rows with ``source = 'ocr'``.

Where a site kept only a screenshot of the scanner's dose page (GE "Dose Report", Siemens
"Patient Protocol", …), the per-series CTDIvol and DLP and the total DLP are read from
the OCR words: the header row naming CTDIvol and DLP gives the columns, each following
row gives one irradiating series (rows without numbers, such as a scout shown as ``-``,
are left out), and the row naming "Total … DLP" gives the total. The reading is checked
by the rule that the series DLPs add up to the total (to the rounding the screen shows);
the confidence combines tesseract's word confidences with that check.

The rows have exactly :data:`dicomlake.extract.dose.DOSE_EVENT_COLUMNS`; the confidence
and the check live in the ``sc_analysis`` table (``dose_confidence``, ``dose_check``).
When the study has a Radiation Dose SR, the SR's rows win and OCR rows are not stored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from dicomlake.extract.ocr import OcrResult, Word

_NUMBER = re.compile(r"^\d{1,6}(?:\.\d{1,3})?$")
_FOLD = str.maketrans({"O": "0", "o": "0", "l": "1", "I": "1", "|": "1", "S": "5", "$": "5", ",": "."})
SUM_TOLERANCE = 0.005
"""Relative difference allowed between the series DLP sum and the total (rounding on screen). Default: 0.5 %."""


@dataclass(frozen=True)
class DoseSeries:
    """One irradiating series read from the screen."""

    number: int | None
    label: str
    """Row label: scan type or body part (``Helical``, ``Head``)."""
    CTDIvol_mGy: float | None
    DLP_mGycm: float | None
    conf: float
    """Mean tesseract confidence of the numbers, 0…100."""
    phantom: str | None = None


@dataclass
class DoseReading:
    """What was read from one screenshot."""

    series: list[DoseSeries] = field(default_factory=list)
    total_DLP_mGycm: float | None = None
    check: str = "no-table"
    """``sum-ok``, ``sum-mismatch``, ``no-total`` or ``no-table``."""
    confidence: float = 0.0
    """0…1: mean word confidence × 1 (sum ok), 0.5 (mismatch) or 0.7 (no total)."""

    @property
    def found(self) -> bool:
        return bool(self.series) or self.total_DLP_mGycm is not None

    def doubts(self) -> list[str]:
        """Why this reading must not be stored as fact (empty: it may be).

        Only a reading whose series DLPs add up to the total shown, where every series has
        both a CTDIvol and a DLP and no CTDIvol exceeds its own DLP (a scan shorter than
        1 cm: a DLP read into the CTDIvol column), is trusted. Anything else goes to review
        and stays out of ``dose_events`` (and so out of the audits) until confirmed.
        """
        if not self.found:
            return []
        out: list[str] = []
        if self.check != "sum-ok":
            out.append(f"dose check {self.check} (confidence {self.confidence:.2f})")
        for s in self.series:
            name = f"series {s.number}" if s.number is not None else f"row {s.label or '?'}"
            if s.CTDIvol_mGy is None or s.DLP_mGycm is None:
                out.append(f"{name}: CTDIvol or DLP not read")
            elif s.CTDIvol_mGy > s.DLP_mGycm:
                out.append(f"{name}: CTDIvol {s.CTDIvol_mGy:g} > DLP {s.DLP_mGycm:g}")
        numbers = [s.number for s in self.series if s.number is not None]
        if len(numbers) != len(set(numbers)):
            out.append("a series number read twice")
        return out


def number(text: str) -> float | None:
    """A number from an OCR token, folding letters OCR confuses with digits (l2.O5 → 12.05)."""
    t = text.strip().rstrip(".:;,)").lstrip("(").translate(_FOLD)
    if not _NUMBER.match(t):
        return None
    return float(t)


def _cx(w: Word) -> float:
    return (w.upright[0] + w.upright[2]) / 2


@dataclass(frozen=True)
class _Column:
    x0: float
    x1: float

    def distance(self, w: Word) -> float:
        """0 when the word overlaps the column's header span, else the gap."""
        a, b = w.upright[0], w.upright[2]
        if b >= self.x0 and a <= self.x1:
            return 0.0
        return min(abs(a - self.x1), abs(self.x0 - b))


def _header(lines: Sequence[Sequence[Word]]) -> tuple[int, _Column, _Column, _Column | None] | None:
    """(row index, CTDIvol column, DLP column, series column) of the table header."""
    for i, line in enumerate(lines):
        texts = [w.text.upper() for w in line]
        if any("TOTAL" in t for t in texts):
            continue
        ctdi = [w for w in line if "CTDI" in w.text.upper()]
        dlp = [w for w in line if w.text.upper().startswith("DLP")]
        if not ctdi or not dlp:
            continue
        series = [w for w in line if w.text.upper().rstrip(":") in ("SERIES", "SER", "SE", "SCAN", "#")]

        def span(w: Word, line: Sequence[Word] = line) -> _Column:
            # the unit in brackets that follows widens the column: "CTDIvol (mGy)"
            j = line.index(w)
            x1 = w.upright[2]
            if j + 1 < len(line) and line[j + 1].text.startswith("("):
                x1 = line[j + 1].upright[2]
            return _Column(w.upright[0], x1)

        return i, span(ctdi[0]), span(dlp[0]), span(series[0]) if series else None
    return None


def _total(line: Sequence[Word]) -> tuple[float, float] | None:
    """(total DLP, its confidence) from a row naming Total and DLP."""
    texts = [w.text.upper() for w in line]
    if not any("TOTAL" in t for t in texts):
        return None
    dlp_at = [k for k, t in enumerate(texts) if t.startswith("DLP")]
    if not dlp_at:
        return None
    for w in line[dlp_at[0] + 1 :]:
        v = number(w.text)
        if v is not None:
            return v, w.conf
    return None


def read_dose_table(result: OcrResult, *, pass_no: int = 0) -> DoseReading:
    """Read the series table and the total DLP from the OCR words of a dose screen."""
    reading = DoseReading()
    lines = result.lines(pass_no=pass_no)
    head = _header(lines)
    confs: list[float] = []
    total: tuple[float, float] | None = None
    for line in lines:
        t = _total(line)
        if t is not None:
            total = t
    if head is not None:
        start, ctdi_col, dlp_col, series_col = head
        for line in lines[start + 1 :]:
            if _total(line) is not None or any("TOTAL" in w.text.upper() for w in line):
                break
            numbers = [(w, v) for w in line if (v := number(w.text)) is not None]
            if not numbers:
                continue

            def in_column(col: _Column, numbers: list[tuple[Word, float]] = numbers) -> tuple[Word, float] | None:  # type: ignore[assignment]
                best = min(numbers, key=lambda nv: (col.distance(nv[0]), abs(_cx(nv[0]) - (col.x0 + col.x1) / 2)))
                width = max(col.x1 - col.x0, 1.0)
                return best if col.distance(best[0]) <= width * 0.5 else None

            c, d = in_column(ctdi_col), in_column(dlp_col)
            if c is None and d is None:
                continue
            if c is not None and d is not None and c[0] is d[0]:
                continue
            series_no: int | None = None
            if series_col is not None:
                s = in_column(series_col)
                if s is not None and float(s[1]).is_integer():
                    series_no = int(s[1])
            if series_no is None and series_col is None:
                # no series column: the row's leading integer, if it leads the row
                first = number(line[0].text)
                series_no = int(first) if first is not None and first.is_integer() else None
            label = " ".join(
                w.text
                for w in line
                if number(w.text) is None
                and any(ch.isalpha() for ch in w.text)
                and not re.match(r"^[S$I1][\d.]+", w.text)
            )[:64]
            phantom = None
            m = re.search(r"\b(body|head)\s*(32|16)\b", " ".join(w.text for w in line), re.IGNORECASE)
            if m:
                phantom = m.group(2)
                label = re.sub(rf"\s*\b{m.group(1)}\b", "", label).strip()
            used = [x for x in (c, d) if x is not None]
            conf = sum(w.conf for w, _ in used) / len(used)
            confs.extend(w.conf for w, _ in used)
            reading.series.append(DoseSeries(series_no, label, c[1] if c else None, d[1] if d else None, conf, phantom))
    if total is not None:
        reading.total_DLP_mGycm = total[0]
        confs.append(total[1])
    mean_conf = (sum(confs) / len(confs) / 100.0) if confs else 0.0
    if not reading.found:
        reading.check = "no-table"
        reading.confidence = 0.0
    elif reading.total_DLP_mGycm is None or not reading.series:
        reading.check = "no-total"
        reading.confidence = round(mean_conf * 0.7, 3)
    else:
        dlps = [s.DLP_mGycm for s in reading.series if s.DLP_mGycm is not None]
        total_v = reading.total_DLP_mGycm
        ok = len(dlps) == len(reading.series) and abs(sum(dlps) - total_v) <= max(SUM_TOLERANCE * total_v, 0.15)
        reading.check = "sum-ok" if ok else "sum-mismatch"
        reading.confidence = round(mean_conf * (1.0 if ok else 0.5), 3)
    return reading


def dose_rows(ds: Dataset, reading: DoseReading) -> list[dict[str, object]]:
    """``dose_events`` rows (every column of :data:`DOSE_EVENT_COLUMNS`) for a reading."""
    from dicomlake.extract.dose import DOSE_EVENT_COLUMNS

    def blank() -> dict[str, object]:
        row: dict[str, object] = dict.fromkeys(DOSE_EVENT_COLUMNS)
        row.update(
            SOPInstanceUID=str(ds.get("SOPInstanceUID", "")),
            StudyInstanceUID=str(ds.get("StudyInstanceUID", "")),
            PatientID=str(ds.get("PatientID", "")),
            source="ocr",
            modality_family="CT",
        )
        return row

    rows = []
    for s in reading.series:
        row = blank()
        row.update(
            record="event",
            acquisition_protocol=s.label or None,
            CTDIvol_mGy=s.CTDIvol_mGy,
            DLP_mGycm=s.DLP_mGycm,
            phantom=s.phantom,
        )
        if s.label and re.search(r"helical|spiral", s.label, re.IGNORECASE):
            row["ct_acquisition_type"] = "Spiral Acquisition"
        elif s.label and re.search(r"axial|sequence", s.label, re.IGNORECASE):
            row["ct_acquisition_type"] = "Sequenced Acquisition"
        rows.append(row)
    if reading.total_DLP_mGycm is not None:
        row = blank()
        row.update(
            record="accumulated",
            ct_dose_length_product_total_mGycm=reading.total_DLP_mGycm,
            total_number_of_events=len(reading.series) or None,
        )
        rows.append(row)
    return rows
