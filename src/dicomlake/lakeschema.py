"""The lake's schema: every table dicomlake writes, its columns and their types.

One module below both the extractors (:mod:`dicomlake.extract`, which fill the tables) and
the stores (:mod:`dicomlake.store`, which create and hold them), so neither imports the other:

- ``instances``: the typed DICOM columns declared in ``data/instance_columns.toml`` (plus a
  user's ``columns_file``), typed from PS3.6 (:class:`InstanceColumns`, :func:`instance_columns`),
  and the derived columns (:data:`DERIVED`);
- ``elements`` (:data:`ELEMENT_SCHEMA`), ``dicom_json`` (:data:`JSON_SCHEMA`),
  ``dose_events`` (:data:`DOSE_COLUMNS`, :data:`DOSE_EVENT_COLUMNS`), ``rejects``
  (:data:`REJECT_SCHEMA`), ``ingest_runs`` (:data:`INGEST_RUNS_SCHEMA`) and the pull state
  (``pull_runs``, ``pull_studies``: :data:`PULL_SCHEMAS`).

:func:`table_schemas` gives the batch tables in the order a batch is written; each store
turns these Arrow schemas into its engine's DDL.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class ElementJoin:
    """How an engine's any-attribute filters reach ``instances i`` from its element rows:
    ``i.<instance_column> IN (SELECT e.<relation_column> FROM <relation> e WHERE …)``, or, with
    :attr:`word_masks` (PostgreSQL), a bit per instance in 64-instance words.

    Every engine has the ``elements`` relation keyed by ``SOPInstanceUID``
    (:data:`ELEMENTS_BY_UID`). DuckDB and PostgreSQL lakes also number their instances:
    ``instances._iid`` and the element store's ``element_index`` (its rows with the attribute
    columns, keyed by that number; docs/explanation/lake.md, "The element store"), so their
    filters join integers, not UID text.
    """

    instance_column: str = "SOPInstanceUID"
    relation: str = "elements"
    relation_column: str = "SOPInstanceUID"
    lookup_by_uid: bool = False
    """One instance's attribute (a select-list column without a typed column) is looked up in
    ``elements`` by ``SOPInstanceUID``, not in the relation by number: a PostgreSQL lake finds
    an instance's runs through ``elements`` (the ``span`` index), where ``element_index``
    would unnest every run of the attribute for each row."""
    word_masks: bool = False
    """PostgreSQL: a filter reads ``element_nums``, ``element_texts`` or ``element_values``
    (the values its condition needs), whose rows carry their instance number as a ``word``
    (number >> 6) and a 64-bit ``mask``; it ORs the masks of each word and tests an instance's
    bit, ``EXISTS (… g.word = i._iid >> 6 AND (g.mask >> (i._iid & 63)) & 1 = 1)``: a hash
    join on one row per 64 instances, where ``i._iid IN (…)`` (whose matches PostgreSQL cannot
    estimate) probed ``instances`` once per match (docs/explanation/lake.md, "Element filters
    in PostgreSQL")."""
    sparse: Callable[[str | None, str | None], bool] | None = field(default=None, compare=False, repr=False)
    """With :attr:`word_masks`: ``(path_key, tag)`` → whether the lake holds so few values of the
    attribute (PostgreSQL: fewer than one per word, :func:`dicomlake.store.pg_elements.is_sparse`)
    that ``IN``, probing ``instances`` once per match, beats reading all of ``instances`` once."""
    partitions: bool = False
    """``instances i`` and the element relation carry a Parquet lake's partition columns
    (:data:`PARTITION_COLUMNS`): a filter on ``Modality`` or ``StudyDate`` then also names the
    partitions it can match, so a scan opens only their folders' files."""


ELEMENTS_BY_UID = ElementJoin()
"""The join every engine can do: ``elements`` by SOP Instance UID."""


PARTITION_COLUMNS = ("part_modality", "part_month")
"""A Parquet lake's hive partition keys (Modality, ``_none`` when empty; StudyDate as ``YYYY-MM``):
folders, not file columns; its ``instances`` and ``elements`` views show them."""

INTERNAL_COLUMNS = frozenset({"_iid", *PARTITION_COLUMNS})
"""Columns an engine keeps for itself (a DuckDB or PostgreSQL lake's instance numbers, a Parquet lake's partition
keys): never exported or copied as data."""


def element_join_of(store: object) -> ElementJoin:
    """The ``element_join`` of a store or a reader of one (:data:`ELEMENTS_BY_UID` when it has none)."""
    join = getattr(store, "element_join", None)
    return join if isinstance(join, ElementJoin) else ELEMENTS_BY_UID


# ---- elements, dicom_json ---------------------------------------------------------------

ELEMENT_SCHEMA = pa.schema(
    [
        pa.field("SOPInstanceUID", pa.string()),
        pa.field("path", pa.string()),
        pa.field("path_key", pa.string()),
        pa.field("depth", pa.int8()),
        pa.field("tag", pa.string()),
        pa.field("keyword", pa.string()),
        pa.field("VR", pa.string()),
        pa.field("private_creator", pa.string()),
        pa.field("value_text", pa.string()),
        pa.field("value_num", pa.float64()),
        pa.field("length", pa.int64()),
    ]
)
"""One row per element of a header, at any depth (:mod:`dicomlake.extract.rows`)."""

JSON_SCHEMA = pa.schema([pa.field("SOPInstanceUID", pa.string()), pa.field("json", pa.string())])
"""One DICOM JSON header per instance, bulk data left out."""


# ---- dose_events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DoseColumn:
    """One column of ``dose_events``: its name, Arrow type and unit (numeric columns)."""

    name: str
    type: pa.DataType
    unit: str | None = None  # a key of [units] in dose_codes.toml, for numeric columns


_S, _F, _I, _T = pa.string(), pa.float64(), pa.int64(), pa.timestamp("us")
DOSE_COLUMNS: tuple[DoseColumn, ...] = (
    DoseColumn("SOPInstanceUID", _S),
    DoseColumn("StudyInstanceUID", _S),
    DoseColumn("PatientID", _S),
    DoseColumn("source", _S),
    DoseColumn("template", _S),
    DoseColumn("record", _S),
    DoseColumn("modality_family", _S),
    DoseColumn("IrradiationEventUID", _S),
    DoseColumn("event_datetime", _T),
    DoseColumn("irradiation_event_type", _S),
    DoseColumn("acquisition_protocol", _S),
    DoseColumn("target_region", _S),
    DoseColumn("acquisition_plane", _S),
    DoseColumn("reference_point_definition", _S),
    DoseColumn("ct_acquisition_type", _S),
    DoseColumn("CTDIvol_mGy", _F, "mGy"),
    DoseColumn("DLP_mGycm", _F, "mGy.cm"),
    DoseColumn("phantom", _S),
    DoseColumn("scanning_length_mm", _F, "mm"),
    DoseColumn("pitch_factor", _F, "{ratio}"),
    DoseColumn("total_collimation_width_mm", _F, "mm"),
    DoseColumn("number_of_xray_sources", _I, "1"),
    DoseColumn("exposure_time_per_rotation_s", _F, "s"),
    DoseColumn("kvp", _F, "kV"),
    DoseColumn("tube_current_mA", _F, "mA"),
    DoseColumn("kvp_values", _S),
    DoseColumn("tube_current_mA_values", _S),
    DoseColumn("exposure_time_ms", _F, "ms"),
    DoseColumn("exposure_mAs", _F, "mAs"),
    DoseColumn("pulse_rate", _F, "/s"),
    DoseColumn("pulse_width_ms", _F, "ms"),
    DoseColumn("number_of_pulses", _I, "1"),
    DoseColumn("irradiation_duration_s", _F, "s"),
    DoseColumn("half_value_layer_mm", _F, "mm"),
    DoseColumn("anode_target", _S),
    DoseColumn("filter_material", _S),
    DoseColumn("dap_Gym2", _F, "Gy.m2"),
    DoseColumn("dose_rp_Gy", _F, "Gy"),
    DoseColumn("entrance_exposure_mGy", _F, "mGy"),
    DoseColumn("distance_source_to_rp_mm", _F, "mm"),
    DoseColumn("agd_mGy", _F, "mGy"),
    DoseColumn("compressed_breast_thickness_mm", _F, "mm"),
    DoseColumn("compression_force_N", _F, "N"),
    DoseColumn("laterality", _S),
    DoseColumn("view", _S),
    DoseColumn("exposure_index", _F, "1"),
    DoseColumn("target_exposure_index", _F, "1"),
    DoseColumn("deviation_index", _F, "1"),
    DoseColumn("effective_dose_mSv", _F, "mSv"),
    DoseColumn("device_observer_uid", _S),
    DoseColumn("device_observer_name", _S),
    DoseColumn("device_observer_manufacturer", _S),
    DoseColumn("device_observer_model", _S),
    DoseColumn("device_observer_serial_number", _S),
    DoseColumn("start_of_xray_irradiation", _T),
    DoseColumn("end_of_xray_irradiation", _T),
    DoseColumn("ct_dose_length_product_total_mGycm", _F, "mGy.cm"),
    DoseColumn("ct_effective_dose_total_mSv", _F, "mSv"),
    DoseColumn("total_number_of_events", _I, "1"),
    DoseColumn("dap_total_Gym2", _F, "Gy.m2"),
    DoseColumn("dose_rp_total_Gy", _F, "Gy"),
    DoseColumn("fluoro_dap_total_Gym2", _F, "Gy.m2"),
    DoseColumn("fluoro_dose_rp_total_Gy", _F, "Gy"),
    DoseColumn("acquisition_dap_total_Gym2", _F, "Gy.m2"),
    DoseColumn("acquisition_dose_rp_total_Gy", _F, "Gy"),
    DoseColumn("total_fluoro_time_s", _F, "s"),
    DoseColumn("total_acquisition_time_s", _F, "s"),
    DoseColumn("total_number_of_radiographic_frames", _I, "1"),
    DoseColumn("agd_total_mGy", _F, "mGy"),
    DoseColumn("radiopharmaceutical", _S),
    DoseColumn("radionuclide", _S),
    DoseColumn("administered_activity_MBq", _F, "MBq"),
    DoseColumn("route_of_administration", _S),
    DoseColumn("radiopharmaceutical_start_datetime", _T),
)

DOSE_EVENT_COLUMNS: dict[str, pa.DataType] = {c.name: c.type for c in DOSE_COLUMNS}
"""Ordered schema of one ``dose_events`` row; :mod:`dicomlake.extract.dose` documents each column."""


def dose_schema() -> pa.Schema:
    """The ``dose_events`` schema, from :data:`DOSE_EVENT_COLUMNS`."""
    return pa.schema([pa.field(k, v) for k, v in DOSE_EVENT_COLUMNS.items()])


# ---- rejects, ingest_runs, pull state -------------------------------------------------------

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source_path", pa.string()),
        pa.field("source", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("quarantine_path", pa.string()),
        pa.field("rejected_at", pa.timestamp("us")),
    ]
)

INGEST_RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("started_at", pa.timestamp("us")),
        pa.field("finished_at", pa.timestamp("us")),
        pa.field("sources", pa.string()),
        pa.field("files", pa.int64()),
        pa.field("instances", pa.int64()),
        pa.field("rejected", pa.int64()),
        pa.field("skipped", pa.int64()),
        pa.field("status", pa.string()),
    ]
)

PULL_SCHEMAS: dict[str, tuple[pa.Schema, tuple[str, ...]]] = {
    "pull_runs": (
        pa.schema(
            [
                pa.field("run_id", pa.string()),
                pa.field("pacs", pa.string()),
                pa.field("method", pa.string()),
                pa.field("query", pa.string()),
                pa.field("started_at", pa.timestamp("us")),
                pa.field("finished_at", pa.timestamp("us")),
                pa.field("status", pa.string()),
                pa.field("studies", pa.int64()),
                pa.field("received", pa.int64()),
                pa.field("failed", pa.int64()),
            ]
        ),
        ("run_id",),
    ),
    "pull_studies": (
        pa.schema(
            [
                pa.field("run_id", pa.string()),
                pa.field("StudyInstanceUID", pa.string()),
                pa.field("PatientID", pa.string()),
                pa.field("StudyDate", pa.string()),
                pa.field("ModalitiesInStudy", pa.string()),
                pa.field("NumberOfStudyRelatedInstances", pa.int64()),
                pa.field("state", pa.string()),
                pa.field("status", pa.string()),
                pa.field("reason", pa.string()),
                pa.field("completed", pa.int64()),
                pa.field("failed", pa.int64()),
                pa.field("warning", pa.int64()),
                pa.field("received", pa.int64()),
                pa.field("updated_at", pa.timestamp("us")),
            ]
        ),
        ("run_id", "StudyInstanceUID"),
    ),
}
"""The pull state (``dicomlake pull``): table → (schema, primary key)."""

PULL_STATES = ("found", "requested", "received", "failed")
"""What ``pull_studies.state`` holds."""

TABLES = ("instances", "elements", "dicom_json", "dose_events", "rejects")
"""The tables of one ingest batch, in the order a batch is written."""


def table_schemas(columns: InstanceColumns) -> dict[str, pa.Schema]:
    """The schema of each table of :data:`TABLES`, with ``columns`` as the instance columns."""
    return {
        "instances": columns.arrow_schema(),
        "elements": ELEMENT_SCHEMA,
        "dicom_json": JSON_SCHEMA,
        "dose_events": dose_schema(),
        "rejects": REJECT_SCHEMA,
    }


__all__ = [
    "ARROW_TYPES",
    "DERIVED",
    "DOSE_COLUMNS",
    "DOSE_EVENT_COLUMNS",
    "ELEMENTS_BY_UID",
    "ELEMENT_SCHEMA",
    "INGEST_RUNS_SCHEMA",
    "INTERNAL_COLUMNS",
    "JSON_SCHEMA",
    "PARTITION_COLUMNS",
    "PULL_SCHEMAS",
    "PULL_STATES",
    "REJECT_SCHEMA",
    "SQL_TYPES",
    "TABLES",
    "DoseColumn",
    "ElementJoin",
    "InstanceColumns",
    "dose_schema",
    "element_join_of",
    "instance_columns",
    "kind_for_keyword",
    "table_schemas",
]
