"""URL filters of the UI, declared once as data: a SQL template (through :mod:`dicomlake.query.filters`)
and a human sentence, in the manner of datasette's ``TemplatedFilter``.

A filter lives in the query string as ``KEY[__OP]=VALUE`` (``StationName=CT1``,
``CTDIvol__gt=20``, ``StudyDate=20240101-20241231``); parameters starting with ``_`` steer the
page (``_level``, ``_col``, ``_sort``, ``_limit``, ``_offset``). The same :class:`UIFilters`
drives the table, the counts, the charts and the exports, so none of them can disagree.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

from dicomlake.dicom.dictionary import keyword_to_tag
from dicomlake.errors import QueryError
from dicomlake.lakeschema import InstanceColumns
from dicomlake.query.filters import parse_filter, resolve_key, where_clause


@dataclass(frozen=True)
class FilterOp:
    """One operator a URL filter may use."""

    suffix: str
    op: str
    words: str
    """How the sentence says it."""


OPS = {
    "": FilterOp("", "=", "="),
    "exact": FilterOp("exact", "=", "="),
    "not": FilterOp("not", "!=", "≠"),
    "gt": FilterOp("gt", ">", ">"),
    "gte": FilterOp("gte", ">=", "≥"),
    "lt": FilterOp("lt", "<", "<"),
    "lte": FilterOp("lte", "<=", "≤"),
}
"""The operators, by URL suffix (``KEY__gt=20``)."""

UNITS = {
    "CTDIvol": "mGy", "KVP": "kV", "CompressionForce": "N", "BodyPartThickness": "mm", "Exposure": "mAs",
    "ExposureTime": "ms", "XRayTubeCurrent": "mA", "OrganDose": "dGy", "EntranceDoseInmGy": "mGy",
    "DistanceSourceToDetector": "mm", "DistanceSourceToPatient": "mm", "SliceThickness": "mm",
    "ImageAndFluoroscopyAreaDoseProduct": "dGy·cm²", "PatientWeight": "kg", "PatientSize": "m",
    "patient_age_years": "years", "size_bytes": "bytes", "ExposureInuAs": "µAs",
    "CTDIvol_mGy": "mGy", "DLP_mGycm": "mGy·cm", "agd_mGy": "mGy", "compressed_breast_thickness_mm": "mm",
}  # fmt: skip
"""Units shown after a value in the sentence (PS3.3 units of the attribute)."""

LEVEL_WORDS = {
    "study": ("study", "studies"),
    "series": ("series", "series"),
    "instance": ("instance", "instances"),
    "patient": ("patient", "patients"),
}


@dataclass(frozen=True)
class UIFilter:
    key: str
    op: FilterOp
    value: str

    @property
    def text(self) -> str:
        """The filter in the query package's syntax."""
        return f"{self.key} {self.op.op} {self.value}"

    def sentence(self) -> str:
        unit = UNITS.get(self.key.split(".")[-1])
        value = self.value
        if re.fullmatch(r"\d{8}-\d{8}", value):
            value = f"{value[:8]} to {value[9:]}"
        elif re.fullmatch(r"\d{8}-", value):
            value = f"{value[:8]} or later"
        elif re.fullmatch(r"-\d{8}", value):
            value = f"{value[1:]} or earlier"
        return f"{self.key} {self.op.words} {value}" + (f" {unit}" if unit else "")

    def param(self) -> tuple[str, str]:
        return (self.key + (f"__{self.op.suffix}" if self.op.suffix else ""), self.value)


@dataclass
class UIFilters:
    """The filters and view settings of a page, parsed from its query string."""

    filters: list[UIFilter] = field(default_factory=list)
    level: str = "study"
    columns: list[str] = field(default_factory=list)
    sort: str | None = None
    limit: int = 50
    offset: int = 0

    @property
    def where(self) -> list[str]:
        return [f.text for f in self.filters]

    def sentence(self, n: int | None, level: str | None = None) -> str:
        """ "1,204 CT studies where StationName = CT1 and CTDIvol > 20 mGy"."""
        level = level or self.level
        one, many = LEVEL_WORDS.get(level, (level, level))
        mods = [
            f.value
            for f in self.filters
            if f.key == "Modality" and f.op.op == "=" and "," not in f.value and "*" not in f.value
        ]
        rest = [f for f in self.filters if not (f.key == "Modality" and f.op.op == "=" and f.value in mods)]
        noun = (mods[0] + " " if mods else "") + (one if n == 1 else many)
        head = f"{n:,} {noun}" if n is not None else noun.capitalize()
        if not rest:
            return head
        return head + " where " + " and ".join(f.sentence() for f in rest)

    def query_string(self, **overrides: object) -> str:
        params: list[tuple[str, str]] = [f.param() for f in self.filters]
        view: dict[str, object] = {
            "_level": self.level,
            "_sort": self.sort,
            "_limit": self.limit,
            "_offset": self.offset,
        }
        view.update(overrides)
        for k, v in view.items():
            if v is None or (k == "_offset" and not v) or (k == "_level" and v == "study"):
                continue
            params.append((k, str(v)))
        for c in self.columns:
            params.append(("_col", c))
        return urllib.parse.urlencode(params)

    def check(self, columns: InstanceColumns) -> None:
        """Parse every filter now, so a bad one is a 400 listing all problems."""
        problems = []
        for f in self.filters:
            try:
                parse_filter(f.text, columns)
            except QueryError as exc:
                problems.append(str(exc))
        for c in self.columns:
            try:
                resolve_key(c, columns)
            except QueryError as exc:
                problems.append(f"_col={c!r}: {exc}")
        if problems:
            raise QueryError("; ".join(problems))

    def where_sql(self, columns: InstanceColumns) -> tuple[str, list[object]]:
        sql, params, _ = where_clause(self.where, columns)
        return sql, params


RESERVED = {"_level", "_col", "_sort", "_limit", "_offset", "_chart", "csrf_token", "_format"}


def parse_ui_filters(items: list[tuple[str, str]], *, page_size: int, page_max: int, level: str = "study") -> UIFilters:
    """Parse ``request.query_params.multi_items()`` into :class:`UIFilters` (400 on bad input)."""
    out = UIFilters(level=level, limit=page_size)
    problems: list[str] = []
    for name, value in items:
        if name.startswith("_") or name in RESERVED:
            if name == "_level":
                if value not in LEVEL_WORDS:
                    problems.append(f"_level={value!r}: choose study, series, instance or patient")
                else:
                    out.level = value
            elif name == "_col":
                out.columns.extend(c.strip() for c in value.split(",") if c.strip())
            elif name == "_sort":
                out.sort = value or None
            elif name in ("_limit", "_offset"):
                if not value.isdigit():
                    problems.append(f"{name}={value!r}: a non-negative integer")
                elif name == "_limit":
                    out.limit = max(1, min(int(value), page_max))
                else:
                    out.offset = int(value)
            elif name in ("_chart", "csrf_token", "_format"):
                continue
            else:
                problems.append(f"unknown page parameter {name!r}: use _level, _col, _sort, _limit, _offset")
            continue
        if value == "":
            continue
        key, _, suffix = name.partition("__")
        op = OPS.get(suffix)
        if op is None:
            problems.append(
                f"filter {name!r}: operator {suffix!r} unknown; use one of " + ", ".join(f"__{k}" for k in OPS if k)
            )
            continue
        out.filters.append(UIFilter(key, op, value))
    if problems:
        raise QueryError("; ".join(problems))
    return out


def is_keyword(name: str) -> bool:
    return name in keyword_to_tag()
