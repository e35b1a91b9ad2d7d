"""The lake queries behind DICOMweb (PS3.18): QIDO-RS searches and the lookups of WADO-RS/STOW-RS.

:mod:`dicomlake.web.dicomweb` parses a request into typed values (matching keys, the URL's
study/series/instance, the analyst's :class:`Restriction`, ``limit``/``offset``) and calls
these functions with a *reader*: a Store, or anything with ``query(sql, params) -> Arrow``
and ``columns``. The SQL is written once here, in the dialect every engine runs (DuckDB as
is; PostgreSQL through sqlglot, :func:`dicomlake.store.lakesql.to_postgres`): no DuckDB-only
list functions, text keys and representatives compared byte-wise (``COLLATE "C"``) so that both engines choose
the same representative instance of a study and page in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from dicomlake.errors import QueryError
from dicomlake.lakeschema import InstanceColumns
from dicomlake.query.filters import Key, parse_filter

LEVELS = ("study", "series", "instance")
LEVEL_KEY = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
CHUNK = 2000
"""UIDs bound in one ``IN (…)`` list."""


class Reader(Protocol):
    """What these queries need of a Store: its instance columns and read-only statements."""

    columns: InstanceColumns

    def query(self, sql: str, params: Any = None) -> pa.Table: ...


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled predicate over ``instances i`` with its bound parameters."""

    sql: str
    params: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class Restriction:
    """The analyst's row restriction: instances the de-identification profile excludes are never read.

    ``drop_burned_in``: instances whose Burned In Annotation is YES are hidden;
    ``risky_classes``: SOP classes hidden outright (``exclude_all_risky``) or unless Burned In
    Annotation says NO (``exclude_unless_no``).
    """

    drop_burned_in: bool
    risky_classes: tuple[str, ...] = ()
    exclude_all_risky: bool = False
    exclude_unless_no: bool = False

    def sql(self, alias: str = "i") -> str:
        """A predicate over ``instances`` true for the instances the analyst may see."""
        bia = f"upper(coalesce(trim({alias}.\"BurnedInAnnotation\"), ''))"
        risky = ", ".join("'" + u.replace("'", "''") + "'" for u in self.risky_classes) or "''"
        cls = f"coalesce({alias}.\"SOPClassUID\", '') IN ({risky})"
        drops = []
        if self.drop_burned_in:
            drops.append(f"{bia} = 'YES'")
        if self.exclude_all_risky:
            drops.append(cls)
        elif self.exclude_unless_no:
            drops.append(f"({cls} AND {bia} != 'NO')")
        return f"NOT ({' OR '.join(drops)})" if drops else "TRUE"


# ---- matching keys -----------------------------------------------------------------------


def fuzzy_person_name(key: Key, value: str) -> Condition:
    """Person name fuzzy matching: case-insensitive; the value may start any name component."""
    v = value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%").replace("?", "_")
    pats = [f"{v}%", f"%^{v}%", f"% {v}%", f"%={v}%"]
    if key.column is not None:
        col = f'lower(i."{key.column}")'
        return Condition("(" + " OR ".join(f"{col} LIKE ? ESCAPE '\\'" for _ in pats) + ")", tuple(pats))
    loc, params = ("e.path_key = ?", [key.path_key]) if key.path_key else ("e.tag = ? AND e.depth = 0", [key.tag])
    cond = " OR ".join("lower(e.value_text) LIKE ? ESCAPE '\\'" for _ in pats)
    return Condition(
        f'i."SOPInstanceUID" IN (SELECT e."SOPInstanceUID" FROM elements e WHERE {loc} AND ({cond}))',
        (*params, *pats),
    )


def match(key_text: str, key: Key, value: str, columns: InstanceColumns, *, vr: str | None, fuzzy: bool) -> Condition:
    """One ``{attributeID}={value}`` matching key (PS3.4 C.2.2.2) as a predicate; QueryError when invalid.

    ``key_text`` is the key in :mod:`dicomlake.query.filters` syntax, ``key`` its resolution;
    UI values take ``\\`` as well as ``,`` between UIDs; person names with ``fuzzy`` match
    case-insensitively from the start of any name component.
    """
    if vr == "UI":
        value = value.replace("\\", ",")
    if vr == "PN" and fuzzy:
        return fuzzy_person_name(key, value)
    f = parse_filter(f"{key_text} = {value}", columns)
    return Condition(f.sql, tuple(f.params))


def scope(
    *, study: str | None = None, series: str | None = None, instance: str | None = None, restrict: Restriction | None
) -> list[Condition]:
    """The URL's study/series/instance and the analyst's restriction, as predicates."""
    out: list[Condition] = []
    for col, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", instance)):
        if uid is not None:
            out.append(Condition(f'i."{col}" = ?', (uid,)))
    if restrict is not None:
        out.append(Condition(restrict.sql("i")))
    return out


def _where(conds: Iterable[Condition]) -> tuple[str, list[object]]:
    conds = list(conds)
    params: list[object] = []
    for c in conds:
        params.extend(c.params)
    return " AND ".join(f"({c.sql})" for c in conds) or "TRUE", params


# ---- QIDO-RS -----------------------------------------------------------------------------


@dataclass
class Search:
    """One QIDO-RS search: its level, matching keys and page."""

    level: str
    matches: Sequence[Condition] = ()
    study: str | None = None
    series: str | None = None
    restrict: Restriction | None = None
    limit: int = 100
    offset: int = 0


@dataclass
class Page:
    """The entities of one page: each key with its representative instance, and whether more match."""

    keys: list[str] = field(default_factory=list)
    representatives: list[str] = field(default_factory=list)
    cut: bool = False


def search(reader: Reader, q: Search) -> Page:
    """The entities of ``q.level`` that match, one page of them, in a stable order.

    Studies newest first (StudyDate/Time), series by Series Number, instances by Instance
    Number, then by key; each entity's representative is its smallest SOP Instance UID
    (byte-wise), whose DICOM JSON gives the attributes of the response.
    """
    if q.level not in LEVELS:
        raise QueryError(f"level {q.level!r}: choose one of {', '.join(LEVELS)}")
    where, params = _where([*scope(study=q.study, series=q.series, restrict=q.restrict), *q.matches])
    k = LEVEL_KEY[q.level]
    first = {
        "study": 'min(i."study_datetime") DESC NULLS LAST',
        "series": 'min(i."SeriesNumber") NULLS LAST',
        "instance": 'min(i."InstanceNumber") NULLS LAST',
    }[q.level]
    sql = (
        f'SELECT i."{k}" AS k, min(i."SOPInstanceUID" COLLATE "C") AS rep FROM instances i WHERE {where} '
        f'GROUP BY i."{k}" ORDER BY {first}, i."{k}" COLLATE "C" '
        f"LIMIT {int(q.limit) + 1} OFFSET {int(q.offset)}"
    )
    rows = reader.query(sql, params).to_pylist()
    cut = len(rows) > q.limit
    rows = rows[: q.limit]
    return Page([r["k"] for r in rows], [r["rep"] for r in rows], cut)


def counts(reader: Reader, level: str, keys: Sequence[str], restrict: Restriction | None) -> dict[str, dict[str, Any]]:
    """Per study or series key: ``n`` instances, ``n_series`` and the sorted ``mods`` (ModalitiesInStudy)."""
    if not keys or level == "instance":
        return {}
    k = LEVEL_KEY[level]
    vis = f" AND {restrict.sql('i')}" if restrict is not None else ""
    out: dict[str, dict[str, Any]] = {}
    mods: dict[str, set[str]] = {}
    for i in range(0, len(keys), CHUNK):
        part = list(keys[i : i + CHUNK])
        marks = ",".join("?" for _ in part)
        for r in reader.query(
            f'SELECT i."{k}" AS k, count(*) AS n, count(DISTINCT i."SeriesInstanceUID") AS n_series '
            f'FROM instances i WHERE i."{k}" IN ({marks}){vis} GROUP BY i."{k}"',
            part,
        ).to_pylist():
            out[r["k"]] = {"k": r["k"], "n": int(r["n"]), "n_series": int(r["n_series"]), "mods": []}
        for r in reader.query(
            f'SELECT i."{k}" AS k, i."Modality" AS m FROM instances i WHERE i."{k}" IN ({marks}){vis} '
            f'AND i."Modality" IS NOT NULL GROUP BY i."{k}", i."Modality"',
            part,
        ).to_pylist():
            mods.setdefault(r["k"], set()).add(str(r["m"]))
    for key, ms in mods.items():
        if key in out:
            out[key]["mods"] = sorted(ms)
    return out


def json_by_uid(reader: Reader, uids: Sequence[str]) -> dict[str, str]:
    """DICOM JSON text of instances, by SOP Instance UID."""
    out: dict[str, str] = {}
    for i in range(0, len(uids), CHUNK):
        part = list(uids[i : i + CHUNK])
        marks = ",".join("?" for _ in part)
        t = reader.query(f'SELECT "SOPInstanceUID", json FROM dicom_json WHERE "SOPInstanceUID" IN ({marks})', part)
        out.update(zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True))
    return out


# ---- WADO-RS and STOW-RS lookups ---------------------------------------------------------

FIELDS = {
    "uid": "SOPInstanceUID",
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "path": "source_path",
    "pix": "pixel_data_bytes",
    "ts": "TransferSyntaxUID",
}
"""The instance fields the DICOMweb routes read, by the name they use."""


def _fields(names: Sequence[str]) -> str:
    bad = [n for n in names if n not in FIELDS]
    if bad:
        raise QueryError(f"unknown instance field(s) {bad}; choose from {', '.join(FIELDS)}")
    return ", ".join(f'i."{FIELDS[n]}" AS "{n}"' for n in names)


def instances(
    reader: Reader,
    fields: Sequence[str],
    *,
    study: str | None,
    series: str | None = None,
    instance: str | None = None,
    restrict: Restriction | None = None,
) -> list[dict[str, Any]]:
    """``fields`` (names of :data:`FIELDS`) of the instances of a study, series or instance,
    by Series Number, series, Instance Number and SOP Instance UID."""
    where, params = _where(scope(study=study, series=series, instance=instance, restrict=restrict))
    rows: list[dict[str, Any]] = reader.query(
        f"SELECT {_fields(fields)} FROM instances i WHERE {where} "
        'ORDER BY i."SeriesNumber" NULLS LAST, i."SeriesInstanceUID" COLLATE "C", i."InstanceNumber" NULLS LAST, '
        'i."SOPInstanceUID" COLLATE "C"',
        params,
    ).to_pylist()
    return rows


def instances_by_uid(
    reader: Reader, uids: Sequence[str], fields: Sequence[str], restrict: Restriction | None = None
) -> list[dict[str, Any]]:
    """``fields`` of the instances with these SOP Instance UIDs (those the lake holds)."""
    out: list[dict[str, Any]] = []
    vis = f" AND {restrict.sql('i')}" if restrict is not None else ""
    for i in range(0, len(uids), CHUNK):
        part = list(uids[i : i + CHUNK])
        marks = ",".join("?" for _ in part)
        out.extend(
            reader.query(
                f'SELECT {_fields(fields)} FROM instances i WHERE i."SOPInstanceUID" IN ({marks}){vis}', part
            ).to_pylist()
        )
    return out


def binary_elements(reader: Reader, uids: Sequence[str], vrs: Iterable[str]) -> list[dict[str, Any]]:
    """Top-level elements of binary VRs (bulk data candidates): ``u`` (SOP Instance UID), ``t`` (tag), ``vr``."""
    vr_list = sorted(set(vrs))
    out: list[dict[str, Any]] = []
    for i in range(0, len(uids), CHUNK):
        part = list(uids[i : i + CHUNK])
        marks = ",".join("?" for _ in part)
        vmarks = ",".join("?" for _ in vr_list)
        out.extend(
            reader.query(
                f'SELECT "SOPInstanceUID" AS u, tag AS t, "VR" AS vr FROM elements WHERE depth = 0 AND "VR" IN ({vmarks}) '
                f'AND "SOPInstanceUID" IN ({marks}) ORDER BY 1, 2',
                [*vr_list, *part],
            ).to_pylist()
        )
    return out
