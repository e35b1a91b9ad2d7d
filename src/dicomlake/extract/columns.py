"""The typed columns of `instances`: declared in data/instance_columns.toml, typed from PS3.6."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import pyarrow as pa

from dicomlake.dicom.dictionary import keyword_to_tag, lookup
from dicomlake.errors import ConfigError

# Column kinds and their Arrow / SQL types.
ARROW_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "datetime": pa.timestamp("us"),
    "bool": pa.bool_(),
}
SQL_TYPES = {
    "text": "VARCHAR",
    "int": "BIGINT",
    "float": "DOUBLE",
    "date": "DATE",
    "time": "TIME",
    "datetime": "TIMESTAMP",
    "bool": "BOOLEAN",
}

_VR_KIND = {
    "DA": "date",
    "TM": "time",
    "DT": "datetime",
    "DS": "float",
    "FL": "float",
    "FD": "float",
    "IS": "int",
    "US": "int",
    "SS": "int",
    "UL": "int",
    "SL": "int",
    "SV": "int",
    "UV": "int",
}

# Derived columns (lower snake_case, DESIGN.md "The lake"), filled by extract.rows.
DERIVED: dict[str, str] = {
    "study_datetime": "datetime",
    "series_datetime": "datetime",
    "acquisition_datetime": "datetime",
    "content_datetime": "datetime",
    "patient_age_years": "float",
    "TransferSyntaxUID": "text",
    "size_bytes": "int",
    "header_bytes": "int",
    "pixel_data_bytes": "int",
    "element_count": "int",
    "source": "text",
    "source_path": "text",
    "received_at": "datetime",
}


@dataclass(frozen=True, slots=True)
class InstanceColumns:
    """The typed DICOM columns: keyword → kind, in declaration order."""

    kinds: dict[str, str]

    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field(k, ARROW_TYPES[v]) for k, v in self.kinds.items()]
        fields += [pa.field(k, ARROW_TYPES[v]) for k, v in DERIVED.items() if k not in self.kinds]
        return pa.schema(fields)

    def sql_columns(self) -> list[tuple[str, str]]:
        return [(f.name, _sql_of(f.type)) for f in self.arrow_schema()]


def _sql_of(t: pa.DataType) -> str:
    for kind, at in ARROW_TYPES.items():
        if at == t:
            return SQL_TYPES[kind]
    raise TypeError(t)


def kind_for_keyword(keyword: str) -> str:
    """The column kind PS3.6 implies for a keyword (VR, and VM = 1 for scalar kinds)."""
    tag = keyword_to_tag().get(keyword)
    if tag is None:
        raise KeyError(keyword)
    vr, vm, _ = lookup(tag) or ("UN", "1", keyword)
    if vm != "1":
        return "text"
    return _VR_KIND.get(vr, "text")


def _read_toml(data: dict, where: str) -> dict[str, str]:
    groups = data.get("groups", {})
    overrides = data.get("types", {})
    kinds: dict[str, str] = {}
    problems: list[str] = []
    for keywords in groups.values():
        for kw in keywords:
            try:
                kinds[kw] = overrides.get(kw) or kind_for_keyword(kw)
            except KeyError:
                problems.append(f"{kw!r} is not a DICOM keyword")
    for kw, kind in overrides.items():
        if kind not in ARROW_TYPES:
            problems.append(f"type {kind!r} for {kw} is not one of {', '.join(ARROW_TYPES)}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems) + " (fix the names, see PS3.6)")
    return kinds


@cache
def instance_columns(extra_file: str | None = None) -> InstanceColumns:
    """Load the shipped column list, plus a user's file of the same shape."""
    text = resources.files("dicomlake.data").joinpath("instance_columns.toml").read_text("utf-8")
    kinds = _read_toml(tomllib.loads(text), "instance_columns.toml")
    if extra_file:
        path = Path(extra_file)
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"columns_file {path}: cannot read it ({exc})") from exc
        kinds.update(_read_toml(data, str(path)))
    return InstanceColumns(kinds)
