"""A parsed header to lake rows: the instance row, one row per element, and DICOM JSON.

One walk over the raw elements produces all three, so each value is decoded once:

- ``elements``: every element at every depth, keyed by ``(SOPInstanceUID, path)`` where
  ``path`` is keyword pathing with item indices (``CTDIPhantomTypeCodeSequence[0].CodeMeaning``)
  and ``path_key`` the same without indices (what a filter names). Private elements are
  named ``(gggg,"CREATOR",ee)`` and carry their creator; unknown public ones ``(gggg,eeee)``.
- the DICOM JSON model of PS3.18 §F.2 with bulk data left out (binary values longer
  than ``inline_max`` bytes, pixel data), group 0002 excluded as in WADO-RS metadata.
- typed columns for the keywords of :mod:`dicomlake.lakeschema` (``instance_columns.toml``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from dicomlake.dicom import values as V
from dicomlake.dicom.dictionary import lookup, private_vr, tag_text
from dicomlake.dicom.reader import Element, Header
from dicomlake.errors import ExtractionError
from dicomlake.lakeschema import ARROW_TYPES, ELEMENT_SCHEMA, JSON_SCHEMA, InstanceColumns

_TAG_CACHE: dict[int, tuple[str, str | None, str, str]] = {}
_TAG_CACHE_MAX = 1 << 16


def _tag_info(tag: int) -> tuple[str, str | None, str, str]:
    """Path segment, keyword, tag text and JSON key prefix of a public tag (cached)."""
    hit = _TAG_CACHE.get(tag)
    if hit is None:
        if len(_TAG_CACHE) >= _TAG_CACHE_MAX:  # tags come from input: stay bounded
            _TAG_CACHE.clear()
        entry = lookup(tag)
        kw = entry[2] if entry and entry[2] else None
        text = f"{tag:08X}"
        hit = (kw or f"({tag >> 16:04X},{tag & 0xFFFF:04X})", kw, text, '"' + text + '":{"vr":"')
        _TAG_CACHE[tag] = hit
    return hit


def _js(s: str) -> str:
    """A JSON string literal; the common case needs no escaping and skips json.dumps."""
    if s.isprintable() and '"' not in s and "\\" not in s:
        return '"' + s + '"'
    return json.dumps(s, ensure_ascii=False)


def _pn_json(part: str) -> str:
    groups = part.split("=")
    names = ("Alphabetic", "Ideographic", "Phonetic")
    inner = ",".join(f'"{names[i]}":{_js(g)}' for i, g in enumerate(groups[:3]) if g)
    return "{" + inner + "}"


_ELEMENT_FIELDS = tuple(f.name for f in ELEMENT_SCHEMA)

# Decoded elements, keyed by their raw bytes and place: within a series, and across a site's
# protocols, most of a header repeats byte for byte (equipment, protocol, technique, codes),
# and decoding it again — text, numbers, path, JSON — was most of the walk's cost. One cache
# per (endianness, character set), since both change what the same bytes mean. Bounded, in
# two generations: when the young one is full it becomes the old one and the old one is
# dropped; a hit in the old generation moves back to the young. Values met once (UIDs,
# positions) age out, values that keep coming stay; at most 2 × 4,096 entries (~4 MB).
_VALUE_CACHE_MAX = 4096
_VALUE_MAX_BYTES = 128  # longer values rarely repeat; hashing them costs more than it saves
_ValueCache = list[dict[tuple[Any, ...], tuple[Any, ...]]]  # [young, old]
_VALUE_CACHES: dict[tuple[bool, str | None], _ValueCache] = {}


def _value_cache(little: bool, charset: str | None) -> _ValueCache:
    key = (little, charset)
    cache = _VALUE_CACHES.get(key)
    if cache is None:
        if len(_VALUE_CACHES) >= 8:  # character sets come from input: stay bounded
            _VALUE_CACHES.clear()
        cache = _VALUE_CACHES[key] = [{}, {}]
    return cache


def _remember(cache: _ValueCache, key: tuple[Any, ...], entry: tuple[Any, ...]) -> None:
    young = cache[0]
    if len(young) >= _VALUE_CACHE_MAX:
        cache[1] = young
        young = cache[0] = {}
    young[key] = entry


class ElementColumns:
    """Element rows of a batch of instances, transposed at the end.

    A row is the tuple of every column but the first (the SOP Instance UID), so that a
    cached element's row is appended as it is, not copied; the UID column is rebuilt from
    ``(uid, number of rows)`` runs, one per instance.
    """

    __slots__ = ("rows", "runs")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.runs: list[tuple[str, int]] = []

    def end_instance(self, uid: str, mark: int) -> None:
        """The rows from ``mark`` on are the instance ``uid``'s."""
        self.runs.append((uid, len(self.rows) - mark))

    def table(self) -> pa.Table:
        if not self.rows:
            return ELEMENT_SCHEMA.empty_table()
        uids = list(itertools.chain.from_iterable(itertools.repeat(u, n) for u, n in self.runs))
        cols = [uids, *zip(*self.rows, strict=True)]
        return pa.Table.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(cols, ELEMENT_SCHEMA, strict=True)], schema=ELEMENT_SCHEMA
        )

    def __len__(self) -> int:
        return len(self.rows)

    def truncate(self, mark: int) -> None:
        del self.rows[mark:]


_TEXT_VRS = V.TEXT_VRS
_NUMBER_TEXT_VRS = V.NUMBER_TEXT_VRS
_SINGLE_VALUED_TEXT = V.SINGLE_VALUED_TEXT
_BINARY_NUMBER_FORMATS = V.BINARY_NUMBER_FORMATS
_KEEP_LEADING = V.LEADING_SPACE_SIGNIFICANT
# PS3.18 §F.2.7: InlineBinary holds the little endian encoding; words are swapped from big endian
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _to_little_endian(value: bytes, width: int) -> bytes:
    import array

    code = {2: "H", 4: "I", 8: "Q"}[width]
    n = len(value) - len(value) % width
    arr = array.array(code, value[:n])
    arr.byteswap()
    return arr.tobytes() + value[n:]


class _Walk:
    """State of one instance's walk: decoder, endianness, output rows, wanted keywords."""

    __slots__ = ("cache", "count", "decoder", "inline_max", "little", "rows", "typed", "wanted")

    def __init__(
        self,
        decoder: V.TextDecoder,
        little: bool,
        cols: ElementColumns,
        wanted: dict[str, str],
        inline_max: int,
        charset: str | None = None,
    ) -> None:
        self.cache: _ValueCache = _value_cache(little, charset)
        self.decoder = decoder
        self.little = little
        self.rows = cols.rows
        self.wanted = wanted
        self.typed: dict[str, Any] = {}
        self.inline_max = inline_max
        self.count = 0

    def walk(self, elements: Sequence[Element], prefix: str, key_prefix: str, depth: int, json_out: bool) -> str:
        add = self.rows.append
        decoder = self.decoder
        little = self.little
        wanted = self.wanted if depth == 0 else None
        typed = self.typed
        parts: list[str] = []
        put = parts.append
        creators: dict[int, str] = {}
        tag_cache = _TAG_CACHE
        vcache = self.cache if json_out else None
        young = vcache[0] if vcache is not None else None
        iso2022 = decoder.iso2022  # 7-bit values may hold escape sequences: decode them
        for tag, vr, value, length in elements:
            group = tag >> 16
            ckey = None
            if young is not None and not group & 1 and vr != "SQ" and value is not None and length <= _VALUE_MAX_BYTES:
                ckey = (tag, vr, value, length, prefix, key_prefix)
                hit = young.get(ckey)
                if hit is None:
                    hit = vcache[1].get(ckey)  # type: ignore[index]
                    if hit is not None:
                        _remember(vcache, ckey, hit)  # type: ignore[arg-type]
                        young = vcache[0]  # type: ignore[index]
                if hit is not None:
                    row_tail, fragment, kw, text = hit
                    add(row_tail)
                    if wanted is not None and text is not None and kw in wanted:
                        typed[kw] = text
                    if fragment is not None:
                        put(fragment)
                    continue
            creator = None
            if group & 1:
                elem = tag & 0xFFFF
                kw = None
                tagtext = f"{tag:08X}"
                jkey = '"' + tagtext + '":{"vr":"'
                if 0x0010 <= elem < 0x0100:
                    seg = f"({group:04X},{elem:04X})"
                    if isinstance(value, bytes):
                        creators[group << 8 | elem] = value.decode("latin-1").strip(" \x00")
                else:
                    creator = creators.get(group << 8 | elem >> 8)
                    if creator is not None:
                        seg = f'({group:04X},"{creator}",{elem & 0xFF:02X})'
                        if vr == "UN" and isinstance(value, bytes):
                            pvr = private_vr(group, creator, elem & 0xFF, elem)
                            if pvr not in ("UN", "SQ"):
                                vr = pvr  # as for public elements: read with the dictionary's VR
                    else:
                        seg = f"({group:04X},{elem:04X})"
            else:
                info = tag_cache.get(tag) or _tag_info(tag)
                seg, kw, tagtext, jkey = info
                if vr == "UN" and isinstance(value, bytes):
                    entry = lookup(tag)
                    if entry and entry[0] not in ("UN", "SQ"):
                        vr = entry[0]  # PS3.5 §6.2.2: a UN of a known tag is read with its VR
            path = prefix + seg
            text = None  # str | None (Any: first bound by a cache hit above)
            num: float | None = None
            jval: str | None = None  # the JSON "Value"/"InlineBinary" part, or None for none
            if vr in _TEXT_VRS:
                if value:
                    if value.isascii() and not (iso2022 and b"\x1b" in value):  # type: ignore[operator]
                        t = value.decode("ascii")  # type: ignore[union-attr]
                        if vr in _KEEP_LEADING or vr == "UI":
                            t = t.rstrip("\x00 ")
                        elif "\\" in t:
                            t = "\\".join([p.strip("\x00 ") for p in t.split("\\")])
                        else:
                            t = t.strip("\x00 ")
                    else:
                        t = decoder.text(value, vr)  # type: ignore[arg-type]
                    if t:
                        text = t
                        if vr in _NUMBER_TEXT_VRS:
                            num = V.first_number(t)
                            if json_out:
                                jval = (
                                    '"Value":['
                                    + ",".join(
                                        [V.json_number_text(p, vr) if p.strip() else "null" for p in t.split("\\")]
                                    )
                                    + "]"
                                )
                        elif json_out:
                            if vr in _SINGLE_VALUED_TEXT:
                                jval = '"Value":[' + _js(t) + "]"
                            elif vr == "PN":
                                jval = (
                                    '"Value":[' + ",".join([_pn_json(p) if p else "null" for p in t.split("\\")]) + "]"
                                )
                            elif "\\" in t:
                                jval = '"Value":[' + ",".join([_js(p) if p else "null" for p in t.split("\\")]) + "]"
                            else:
                                jval = '"Value":[' + _js(t) + "]"
            elif vr == "SQ":
                items = value or []
                num = float(len(items))  # type: ignore[arg-type]
                sub_key = (key_prefix + seg + ".") if depth else (seg + ".")
                if json_out:
                    item_json = [
                        self.walk(item, f"{path}[{i}].", sub_key, depth + 1, True)
                        for i, item in enumerate(items)  # type: ignore[arg-type]
                    ]
                    jval = '"Value":[' + ",".join(item_json) + "]"
                else:
                    for i, item in enumerate(items):  # type: ignore[arg-type]
                        self.walk(item, f"{path}[{i}].", sub_key, depth + 1, False)
            elif value is None:
                pass  # bulk data: only the length is kept
            elif vr in _BINARY_NUMBER_FORMATS:
                nums = V.binary_numbers(value, vr, little)
                if nums and vr == "FL":
                    # single precision: the shortest text that reads back as the same float32
                    # (0.8, not 0.800000011920929), so that `= 0.8` finds it
                    texts = [V.float32_text(x) for x in nums]
                    text = "\\".join(texts)
                    first = nums[0]
                    num = float(texts[0]) if math.isfinite(first) else None
                    if json_out:  # JSON keeps the double that the float32 is (as pydicom writes it)
                        jval = '"Value":[' + ",".join([repr(x) if math.isfinite(x) else "null" for x in nums]) + "]"
                elif nums:
                    text = "\\".join(map(str, nums))
                    first = nums[0]
                    num = float(first) if math.isfinite(first) else None
                    if json_out:
                        if vr == "FD":
                            jval = '"Value":[' + ",".join([repr(x) if math.isfinite(x) else "null" for x in nums]) + "]"
                        else:
                            jval = '"Value":[' + ",".join(map(str, nums)) + "]"
            elif vr == "AT":
                tags = V.attribute_tags(value, little)
                if tags:
                    text = "\\".join(tags)
                    if json_out:
                        jval = '"Value":[' + ",".join([f'"{t}"' for t in tags]) + "]"
            elif value and json_out:
                if not little and vr in _SWAP_WIDTH:
                    value = _to_little_endian(value, _SWAP_WIDTH[vr])  # type: ignore[arg-type]
                jval = '"InlineBinary":"' + V.inline_binary(value) + '"'
            row_tail = (path, (key_prefix + seg) if depth else seg, depth, tagtext, kw, vr, creator, text, num, length)
            add(row_tail)
            if wanted is not None and text is not None and kw in wanted:
                typed[kw] = text
            # group 0002 (file meta) and group lengths (gggg,0000; retired, PS3.5 §7.2) are
            # not part of the DICOM JSON model of a dataset (PS3.18 §F.2)
            # nor is Data Set Trailing Padding (FFFC,FFFC), which carries no information
            fragment = None
            if (
                json_out
                and group != 0x0002
                and tag & 0xFFFF
                and (value is not None or vr == "SQ")
                and tag != 0xFFFCFFFC
            ):
                fragment = jkey + vr + ('",' + jval + "}" if jval else '"}')
                put(fragment)
            if ckey is not None:
                _remember(vcache, ckey, (row_tail, fragment, kw, text))  # type: ignore[arg-type]
                young = vcache[0]  # type: ignore[index]
        self.count += len(elements)
        return "{" + ",".join(parts) + "}"


def _typed_value(kind: str, text: str) -> Any:
    if kind == "text":
        return text
    if kind == "date":
        return V.parse_da(text)
    if kind == "time":
        return V.parse_tm(text)
    if kind == "datetime":
        return V.parse_dt(text)
    if kind == "float":
        return V.first_number(text)
    if kind == "int":
        x = V.first_number(text)
        if x is None or not x.is_integer() or abs(x) >= 2**63:
            return None
        return int(x)
    return text


def _meta_text(meta: Sequence[Element], tag: int) -> str | None:
    for t, _vr, value, _len in meta:
        if t == tag and isinstance(value, bytes):
            return value.decode("ascii", "replace").strip(" \x00") or None
    return None


def _charset(elements: Sequence[Element]) -> str | None:
    for tag, _vr, value, _len in elements:
        if tag == 0x00080005 and isinstance(value, bytes):
            return value.decode("ascii", "replace").strip(" \x00")
        if tag > 0x00080005:
            break
    return None


class BatchBuilder:
    """Accumulates rows of many instances and hands them over as Arrow tables."""

    def __init__(self, columns: InstanceColumns, *, inline_max: int = 1024) -> None:
        self.columns = columns
        self.schema = columns.arrow_schema()
        self.inline_max = inline_max
        self.elements = ElementColumns()
        self.instance_rows: dict[str, list[Any]] = {f.name: [] for f in self.schema}
        self.json_uids: list[str] = []
        self.json_texts: list[str] = []
        self.uids: list[str] = []

    def __len__(self) -> int:
        return len(self.uids)

    def add(
        self,
        header: Header,
        *,
        source: str,
        source_path: str,
        size_bytes: int,
        received_at: dt.datetime,
    ) -> str:
        """Add one instance; returns its SOP Instance UID. Raises ExtractionError when unkeyable."""
        charset = _charset(header.elements)
        decoder = V.TextDecoder(charset)
        mark = len(self.elements)
        w = _Walk(decoder, header.little_endian, self.elements, self.columns.kinds, self.inline_max, charset)
        # the instance is keyed by its UID: find it before the walk (no UID, no rows)
        uid = None
        for tag, _vr, value, _len in header.elements:
            if tag == 0x00080018 and isinstance(value, bytes):
                uid = value.decode("ascii", "replace").strip(" \x00")
                break
            if tag > 0x00080018:
                break
        if not uid:
            uid = _meta_text(header.meta, 0x00020003)
        if not uid:
            raise ExtractionError(
                "no SOP Instance UID (0008,0018) and no Media Storage SOP Instance UID (0002,0003): "
                "the instance cannot be keyed"
            )
        try:
            if header.meta:
                w.walk(header.meta, "", "", 0, False)
            json_text = w.walk(header.elements, "", "", 0, True)
        except Exception:
            self._truncate_elements(mark)
            raise
        self.elements.end_instance(uid, mark)
        kinds = self.columns.kinds
        row = self.instance_rows
        typed = w.typed
        vals: dict[str, Any] = {kw: _typed_value(kinds[kw], typed[kw]) for kw in typed}
        vals["SOPInstanceUID"] = uid
        study_date = vals.get("StudyDate") if "StudyDate" in kinds else V.parse_da(typed.get("StudyDate"))
        vals["study_datetime"] = V.combine(study_date, vals.get("StudyTime"))
        vals["series_datetime"] = V.combine(vals.get("SeriesDate"), vals.get("SeriesTime"))
        acq = vals.get("AcquisitionDateTime")
        if acq is None:
            acq = V.combine(vals.get("AcquisitionDate"), vals.get("AcquisitionTime"))
        vals["acquisition_datetime"] = acq
        vals["content_datetime"] = V.combine(vals.get("ContentDate"), vals.get("ContentTime"))
        age = V.age_in_years(typed.get("PatientAge"))
        if age is None:
            age = V.years_between(vals.get("PatientBirthDate"), study_date)
        vals["patient_age_years"] = age
        vals["TransferSyntaxUID"] = header.transfer_syntax
        vals["size_bytes"] = size_bytes
        vals["header_bytes"] = header.header_bytes
        vals["pixel_data_bytes"] = header.pixel_data_length
        vals["element_count"] = w.count
        vals["source"] = source
        vals["source_path"] = source_path
        vals["received_at"] = received_at
        for name, col in row.items():
            col.append(vals.get(name))
        self.json_uids.append(uid)
        self.json_texts.append(json_text)
        self.uids.append(uid)
        return uid

    def _truncate_elements(self, mark: int) -> None:
        self.elements.truncate(mark)

    def tables(self) -> dict[str, pa.Table]:
        """The batch as Arrow tables: instances, elements, dicom_json."""
        inst = pa.table(
            {name: pa.array(col, type=self.schema.field(name).type) for name, col in self.instance_rows.items()},
            schema=self.schema,
        )
        js = pa.table({"SOPInstanceUID": self.json_uids, "json": self.json_texts}, schema=JSON_SCHEMA)
        return {"instances": inst, "elements": self.elements.table(), "dicom_json": js}


def empty_tables(columns: InstanceColumns) -> dict[str, pa.Table]:
    """Empty tables with the lake's schemas (for creating the store)."""
    return BatchBuilder(columns).tables()


__all__ = ["ARROW_TYPES", "ELEMENT_SCHEMA", "JSON_SCHEMA", "BatchBuilder", "empty_tables", "tag_text"]
