"""Filters on any attribute, written as people write them, turned into SQL over the lake.

A filter is ``KEY OP VALUE``:

- KEY: a keyword (``CompressionForce``), a tag (``(0018,11A2)``), a derived column
  (``patient_age_years``), a nested path (``CTDIPhantomTypeCodeSequence.CodeMeaning``; any
  item matches) or a private element by creator (``(0019,"GEMS_ACQU_01",10)``).
- OP: ``= != < <= > >=``.
- VALUE: text or a number; ``*`` and ``?`` are wildcards (PS3.4 C.2.2.2.4); ``a,b,c`` is a
  list (any matches); for dates and times a range ``20240101-20241231`` with either end
  open (PS3.4 C.2.2.2.5), ISO dates (``2024-01-01``) accepted too.

Typed columns of ``instances`` are compared directly; anything else is matched in
``elements`` through a semi-join, so a filter on a nested or private attribute is as
cheap as a scan of one column pair.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dicomlake.dicom.dictionary import keyword_to_tag, lookup, parse_tag
from dicomlake.errors import QueryError
from dicomlake.lakeschema import DERIVED, ELEMENTS_BY_UID, ElementJoin, InstanceColumns

OPS = ("!=", "<=", ">=", "=", "<", ">")
_FILTER = re.compile(r"^\s*(?P<key>.+?)\s*(?P<op>!=|<=|>=|=|<|>)\s*(?P<value>.*?)\s*$", re.S)
_PRIVATE = re.compile(r'^\(\s*([0-9A-Fa-f]{4})\s*,\s*"([^"]*)"\s*,\s*([0-9A-Fa-f]{2})\s*\)$')
_DATE_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NUM = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True, slots=True)
class Key:
    """A resolved filter key: a typed column, or a path in ``elements``."""

    text: str
    column: str | None = None  # instances column
    kind: str | None = None  # column kind (text/int/float/date/time/datetime)
    path_key: str | None = None  # elements.path_key
    tag: str | None = None  # elements.tag at depth 0 (private without creator)
    vr: str | None = None
    multi: bool = False  # VM allows several values


@dataclass(frozen=True, slots=True)
class Filter:
    """One parsed filter with its SQL."""

    text: str
    key: Key
    op: str
    value: str
    sql: str
    params: tuple[object, ...]

    def sentence(self) -> str:
        return f"{self.key.text} {self.op} {self.value}"


def _segment(seg: str, where: str) -> tuple[str, str | None, str | None]:
    """Normalise one path segment → (path_key segment, VR, VM)."""
    seg = seg.strip()
    m = _PRIVATE.match(seg)
    if m:
        return f'({m.group(1).upper()},"{m.group(2)}",{m.group(3).upper()})', None, None
    tag = parse_tag(seg)
    if tag is not None:
        entry = lookup(tag)
        if entry and entry[2] and not (tag >> 16) & 1:
            return entry[2], entry[0], entry[1]
        return f"({tag >> 16:04X},{tag & 0xFFFF:04X})", entry[0] if entry else None, entry[1] if entry else None
    tag = keyword_to_tag().get(seg)
    if tag is None:
        raise QueryError(
            f"{where}: {seg!r} is neither a DICOM keyword (PS3.6, e.g. CompressionForce), "
            'a tag like (0018,11A2), nor a private element like (0019,"GEMS_ACQU_01",10)'
        )
    entry = lookup(tag)
    return seg, entry[0] if entry else None, entry[1] if entry else None


def _split_outside(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it stands outside parentheses and double quotes."""
    parts, cur, depth, quote = [], "", 0, False
    for ch in text:
        if ch == '"':
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth = max(depth - 1, 0)
        if ch == sep and depth == 0 and not quote:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def _split_path(text: str) -> list[str]:
    """Split a nested path on dots that are outside parentheses and quotes."""
    return _split_outside(text, ".")


def split_keys(text: str) -> list[str]:
    """Split a ``--select`` list on commas outside parentheses and quotes, so that tags
    ``(0010,0010)`` and private keys ``(0019,"GEMS_ACQU_01",10)`` stay whole."""
    return [p.strip() for p in _split_outside(text, ",") if p.strip()]


def resolve_key(text: str, columns: InstanceColumns) -> Key:
    """Resolve what a user named into a typed column or an elements path."""
    t = text.strip()
    derived = {k: v for k, v in DERIVED.items()}
    if t in columns.kinds:
        tag = keyword_to_tag().get(t)
        entry = lookup(tag) if tag is not None else None
        return Key(
            t, column=t, kind=columns.kinds[t], vr=entry[0] if entry else None, multi=bool(entry and entry[1] != "1")
        )
    if t in derived:
        return Key(t, column=t, kind=derived[t])
    parts = _split_path(t)
    if len(parts) == 1:
        seg, vr, vm = _segment(parts[0], t)
        if seg in columns.kinds:
            return Key(t, column=seg, kind=columns.kinds[seg], vr=vr, multi=bool(vm and vm != "1"))
        if seg.startswith("(") and '"' not in seg:
            tag = parse_tag(seg)
            if tag is not None and (tag >> 16) & 1:
                return Key(t, tag=f"{tag:08X}", vr=vr)
        return Key(t, path_key=seg, vr=vr, multi=bool(vm and vm != "1"))
    segs = [_segment(p, t) for p in parts]
    return Key(t, path_key=".".join(s[0] for s in segs), vr=segs[-1][1], multi=bool(segs[-1][2] and segs[-1][2] != "1"))


def _like(pattern: str) -> str:
    esc = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return esc.replace("*", "%").replace("?", "_")


def _like_sql(expr: str, pattern: str) -> str:
    """``expr LIKE ?`` for a :func:`_like` pattern. The ``ESCAPE '\\'`` clause only when the
    pattern escapes something: without one, DuckDB runs a plain substring or prefix match (a
    filter over 10 M element rows: 46 vs 256 ms), and a pattern without a backslash means the
    same on DuckDB (no escape character) and PostgreSQL (``\\`` by default)."""
    return f"{expr} LIKE ? ESCAPE '\\'" if "\\" in pattern else f"{expr} LIKE ?"


def _dicom_date(v: str) -> str | None:
    v = v.strip()
    if _DATE_ISO.match(v):
        return v.replace("-", "")
    if len(v) == 8 and v.isdigit():
        return v
    return None


def _iso_date(v: str) -> str:
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}"


def _range(value: str, vr: str | None, kind: str | None) -> tuple[str, str] | None:
    """A DICOM range ``a-b`` (PS3.4 C.2.2.2.5) for dates/times, else None."""
    if kind not in ("date", "time", "datetime") and vr not in ("DA", "TM", "DT"):
        return None
    v = value.strip()
    # ISO dates contain '-' themselves: accept 'YYYY-MM-DD..YYYY-MM-DD' and ' - ' too
    for sep in ("..", " - ", " to "):
        if sep in v:
            a, _, b = v.partition(sep)
            return a.strip(), b.strip()
    if _DATE_ISO.match(v):
        return None
    if "-" in v:
        a, _, b = v.partition("-")
        return a.strip(), b.strip()
    return None


def _typed_literal(kind: str, v: str, where: str) -> object:
    v = v.strip()
    if kind == "date":
        d = _dicom_date(v)
        if d is None:
            raise QueryError(f"{where}: {v!r} is not a date; write YYYYMMDD or YYYY-MM-DD")
        return _iso_date(d)
    if kind == "time":
        from dicomlake.dicom.values import parse_tm

        tm = parse_tm(v)
        if tm is None:
            raise QueryError(f"{where}: {v!r} is not a time; write HHMMSS or HH:MM:SS")
        return tm.isoformat()
    if kind == "datetime":
        from dicomlake.dicom.values import parse_dt

        d = _dicom_date(v[:10]) if _DATE_ISO.match(v[:10]) else None
        val = parse_dt((d + v[10:].replace(":", "").replace("T", "").replace(" ", "")) if d else v)
        if val is None:
            raise QueryError(f"{where}: {v!r} is not a date-time; write YYYYMMDD[HHMMSS] or ISO 8601")
        return val.isoformat(sep=" ")
    if kind in ("int", "float"):
        if not _NUM.match(v):
            raise QueryError(f"{where}: {v!r} is not a number")
        return float(v)
    return v


_CAST = {"date": "DATE", "time": "TIME", "datetime": "TIMESTAMP", "int": "DOUBLE", "float": "DOUBLE"}


def _column_sql(key: Key, op: str, value: str, where: str) -> tuple[str, list[object]]:
    col = f'i."{key.column}"'
    kind = key.kind or "text"
    rng = _range(value, key.vr, kind)
    if rng is not None:
        if op not in ("=",):
            raise QueryError(f"{where}: a range takes '=', e.g. StudyDate = 20240101-20241231")
        lo, hi = rng
        conds, params = [], []
        if lo:
            conds.append(f"{col} >= CAST(? AS {_CAST.get(kind, 'VARCHAR')})")
            params.append(_typed_literal(kind, lo, where))
        if hi:
            if kind == "datetime" and len(hi.replace("-", "")) == 8:
                conds.append(f"{col} < CAST(? AS DATE) + INTERVAL 1 DAY")
                params.append(_iso_date(_dicom_date(hi) or hi))
            else:
                conds.append(f"{col} <= CAST(? AS {_CAST.get(kind, 'VARCHAR')})")
                params.append(_typed_literal(kind, hi, where))
        if not conds:
            raise QueryError(f"{where}: a range needs at least one end")
        return "(" + " AND ".join(conds) + ")", params
    values = [p for p in value.split(",")] if "," in value and op in ("=", "!=") else [value]
    if kind == "text":
        parts, params = [], []
        for v in values:
            v = v.strip()
            if "*" in v or "?" in v:
                pattern = _like(v)
                parts.append(_like_sql(col, pattern))
                params.append(pattern)
            elif key.multi and op == "=":
                parts.append(f"(list_contains(string_split({col}, '\\'), ?) OR {col} = ?)")
                params += [v, v]
            elif op in ("=", "!="):
                parts.append(f"{col} = ?")
                params.append(v)
            else:
                parts.append(f"{col} {op} ?")
                params.append(v)
        sql = "(" + " OR ".join(parts) + ")"
        return (f"NOT {sql}" if op == "!=" else sql), params
    cast = _CAST.get(kind, "VARCHAR")
    if kind == "datetime" and op == "=" and len(value.replace("-", "").strip()) == 8:
        d = _dicom_date(value)
        if d:
            return f"(CAST({col} AS DATE) = CAST(? AS DATE))", [_iso_date(d)]
    parts, params = [], []
    for v in values:
        parts.append(f"{col} {'=' if op == '!=' else op} CAST(? AS {cast})")
        params.append(_typed_literal(kind, v, where))
    sql = "(" + " OR ".join(parts) + ")"
    return (f"NOT {sql}" if op == "!=" else sql), params


def _element_sql(
    key: Key, op: str, value: str, where: str, join: ElementJoin, restrict: tuple[str, list[object]] | None = None
) -> tuple[str, list[object]]:
    params: list[object]
    if key.path_key is not None:
        loc, params = "e.path_key = ?", [key.path_key]
    else:
        loc, params = "e.tag = ? AND e.depth = 0", [key.tag]
    rng = _range(value, key.vr, None)
    conds: list[str] = []
    if rng is not None:
        if op != "=":
            raise QueryError(f"{where}: a range takes '=', e.g. StudyDate = 20240101-20241231")
        lo, hi = rng
        if key.vr == "DA":
            lo, hi = _dicom_date(lo) or lo, _dicom_date(hi) or hi
        if lo:
            conds.append("e.value_text >= ?")
            params.append(lo)
        if hi:
            conds.append("e.value_text <= ?")
            params.append(hi if key.vr != "DT" else hi + "\uffff")
    else:
        values = value.split(",") if "," in value and op in ("=", "!=") else [value]
        alts = []
        for v in values:
            v = v.strip()
            if "*" in v or "?" in v:
                pattern = _like(v)
                alts.append(_like_sql("e.value_text", pattern))
                params.append(pattern)
            elif _NUM.match(v) and (
                op not in ("=", "!=")
                or key.vr in (None, "DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "UN")
            ):
                if op in ("=", "!="):
                    alts.append("(e.value_num = ? OR e.value_text = ?)")
                    params += [float(v), v]
                else:
                    alts.append(f"e.value_num {op} ?")
                    params.append(float(v))
            elif op in ("=", "!="):
                if key.multi:
                    alts.append("(e.value_text = ? OR list_contains(string_split(e.value_text, '\\'), ?))")
                    params += [v, v]
                else:
                    alts.append("e.value_text = ?")
                    params.append(v)
            else:
                alts.append(f"e.value_text {op} ?")
                params.append(v)
        conds.append("(" + " OR ".join(alts) + ")")
    if restrict is not None:  # the partitions the instance filters allow: an element lives in its instance's
        conds.append(restrict[0].format(a="e"))
        params += restrict[1]
    used = set(re.findall(r"\be\.(\w+)", " ".join(conds)))
    views = {"value_num": "element_nums", "value_text": "element_texts"}
    # (the filter views hold the values only: a condition on another column takes IN; so does
    # an attribute with few values, where probing instances per match is cheaper)
    words = join.word_masks and used <= set(views)
    if words and not (join.sparse is not None and join.sparse(key.path_key, None if key.path_key else key.tag)):
        rel = views[used.pop()] if len(used) == 1 else "element_values"
        num = f'i."{join.instance_column}"'
        masks = (
            f"SELECT e.word, bit_or(e.mask) AS mask FROM {rel} e WHERE {loc} AND {' AND '.join(conds)} GROUP BY e.word"
        )
        test = (
            f"EXISTS (SELECT 1 FROM ({masks}) g WHERE g.word = ({num} >> 6) "
            f"AND ((g.mask >> CAST({num} & 63 AS INTEGER)) & 1) = 1)"
        )
        return ("NOT " + test if op == "!=" else test), params
    inner = f'SELECT e."{join.relation_column}" FROM {join.relation} e WHERE {loc} AND ' + " AND ".join(conds)
    outer = f'i."{join.instance_column}"'
    if op == "!=":
        return f"{outer} NOT IN ({inner})", params
    return f"{outer} IN ({inner})", params


def parse_filter(
    text: str,
    columns: InstanceColumns,
    join: ElementJoin = ELEMENTS_BY_UID,
    restrict: tuple[str, list[object]] | None = None,
) -> Filter:
    """Parse ``KEY OP VALUE`` into SQL over ``instances i``; a filter on an attribute without
    a typed column reads the engine's element rows through ``join`` (the store's
    ``element_join``), within the partitions ``restrict`` names (:func:`partition_sql`)."""
    m = _FILTER.match(text)
    if not m:
        raise QueryError(
            f"filter {text!r}: expected KEY OP VALUE with OP one of {' '.join(OPS)}, "
            "e.g. 'CompressionForce > 120' or 'StudyDate = 20240101-20241231'"
        )
    key_text, op, value = m.group("key"), m.group("op"), m.group("value")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    key = resolve_key(key_text, columns)
    where = f"filter {text!r}"
    if key.column is not None:
        sql, params = _column_sql(key, op, value, where)
    else:
        sql, params = _element_sql(key, op, value, where, join, restrict)
    return Filter(text=text, key=key, op=op, value=value, sql=sql, params=tuple(params))


def where_clause(
    filters: list[str], columns: InstanceColumns, join: ElementJoin = ELEMENTS_BY_UID
) -> tuple[str, list[object], list[Filter]]:
    """AND of all filters: ``(sql, params, parsed)``; ``TRUE`` when there are none.

    ``join`` is the store's ``element_join`` (how its element rows reach ``instances``).
    """
    parsed = [parse_filter(f, columns, join) for f in filters]
    if not parsed:
        return "TRUE", [], []
    parts = partition_sql(parsed) if join.partitions else None
    if parts is not None:  # element filters read only the partitions the others allow
        parsed = [
            parse_filter(f, columns, join, parts) if p.key.column is None else p
            for f, p in zip(filters, parsed, strict=True)
        ]
    sql = " AND ".join(f.sql for f in parsed)
    params = [p for f in parsed for p in f.params]
    if parts is not None:
        sql += " AND " + parts[0].format(a="i")
        params += parts[1]
    return sql, params, parsed


_PARTITION_MODALITY = re.compile(r"^[A-Za-z0-9_]+$")  # written as is in a folder name (no encoding)


def _month(v: str) -> str | None:
    d = _dicom_date(v)
    return f"{d[:4]}-{d[4:6]}" if d else None


def partition_sql(parsed: list[Filter]) -> tuple[str, list[object]] | None:
    """The Parquet partitions (``part_modality``, ``part_month``) that filters on ``Modality``
    and ``StudyDate`` can match, as a condition on alias ``{a}``; None when they name none.

    Always implied by the filters (it may keep more partitions, never fewer): a study month
    of ``_none`` (no StudyDate) sorts after every ``YYYY-MM``, so ``>=`` keeps it and a row
    without a date fails the filter anyway. So it holds only where the filters are ANDed over
    ``instances i``: a caller that ORs a filter's SQL with other conditions compiles it with
    ``partitions=False`` (``query/dashboards._dose_where``). Columns are quoted (``i."…"``), so
    callers that rename the alias by ``i."`` rename these too (``audit/common.Selection``).

    >>> from dicomlake.lakeschema import instance_columns
    >>> cols = instance_columns()
    >>> partition_sql([parse_filter("Modality = MG,CT", cols), parse_filter("StudyDate = 20240105-20240320", cols)])
    ('{a}."part_modality" IN (?, ?) AND {a}."part_month" >= ? AND {a}."part_month" <= ?', ['MG', 'CT', '2024-01', '2024-03'])
    >>> partition_sql([parse_filter("Modality = M*", cols), parse_filter("StudyDate != 20240105", cols)]) is None
    True
    """
    conds: list[str] = []
    params: list[object] = []
    for f in parsed:
        col, op = f.key.column, f.op
        if col == "Modality" and op == "=":
            values = [v.strip() for v in f.value.split(",")]
            if values and all(_PARTITION_MODALITY.match(v) for v in values):
                conds.append('{a}."part_modality" IN (' + ", ".join("?" for _ in values) + ")")
                params += values
        elif col == "StudyDate" and op in ("=", ">", ">=", "<", "<="):
            rng = _range(f.value, f.key.vr, f.key.kind) if op == "=" else None
            if rng is not None:
                for bound, cmp in ((rng[0], ">="), (rng[1], "<=")):
                    m = _month(bound) if bound else None
                    if m:
                        conds.append(f'{{a}}."part_month" {cmp} ?')
                        params.append(m)
            elif op == "=":
                months = [_month(v) for v in f.value.split(",")]
                if months and all(months):
                    conds.append('{a}."part_month" IN (' + ", ".join("?" for _ in months) + ")")
                    params += [m for m in months if m]
            else:
                m = _month(f.value)
                if m:
                    conds.append(f'{{a}}."part_month" {">=" if op in (">", ">=") else "<="} ?')
                    params.append(m)
    return (" AND ".join(conds), params) if conds else None
