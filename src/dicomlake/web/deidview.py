"""What the analyst role sees: the lake de-identified on the fly by the analyst profile.

Everything an analyst receives — DICOM JSON, QIDO-RS results, UI tables, charts, exports —
passes through one :class:`AnalystView`, which runs the de-identification engine
(:class:`dicomlake.deid.Deidentifier`, PS3.15 Table E.1-1 under the configured profile)
over each instance or row. Instances the profile excludes (burned-in annotation, risky SOP
classes) are filtered out in the query before anything is read (:meth:`AnalystView.restriction`).
UIDs come out as keyed ``2.25`` pseudonyms; the pairs are remembered in the access
database so an analyst can come back with a pseudonym (and only with one seen before).
Analysts may filter only on attributes the profile keeps unchanged (or UIDs, through
their pseudonyms), so a search cannot be used to test for an identifying value.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
from pydicom.dataset import Dataset

from dicomlake.deid import Deidentifier, DeidSettings
from dicomlake.deid.engine import PERSISTENT_UID_KEYWORDS, RISKY_SOP_CLASSES
from dicomlake.deid.profile import BurnedInPolicy
from dicomlake.deid.table import Action, RetainOption, standard_tables
from dicomlake.dicom.dictionary import keyword_to_tag, lookup
from dicomlake.query.qido import Restriction
from dicomlake.store.accounts import AccessDB

_TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC", "PN"}
KEY_UIDS = {"0020000D": "study", "0020000E": "series", "00080018": "instance"}

SAFE_DERIVED = {
    "size_bytes", "header_bytes", "pixel_data_bytes", "element_count", "TransferSyntaxUID",
    "n_instances", "n_series", "n_studies", "ModalitiesInStudy",
}  # fmt: skip
"""Non-DICOM columns analysts may see as they are (sizes, counts). Others are emptied."""

CONTEXT_KEYWORDS = ("PatientID", "PatientName", "SOPClassUID", "StudyInstanceUID", "BurnedInAnnotation")
"""Columns the engine needs per row (date offsets per patient, IOD whitelists, scrub terms)."""


def _no_bulk(_elem: Any) -> str:
    return ""


def to_json(ds: Dataset) -> dict[str, Any]:
    """DICOM JSON of a dataset, bulk data left out (as in the lake)."""
    out = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=_no_bulk)
    return {k: v for k, v in out.items() if "BulkDataURI" not in v and not k.startswith("0002")}


def from_json(js: dict[str, Any]) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Dataset.from_json(js)


class AnalystView:
    """The analyst profile applied to instances and rows."""

    def __init__(self, profile: str, secret: bytes, db: AccessDB | None) -> None:
        # a key of its own, derived from the web secret (or the project's de-identification
        # secret when set, so served pseudonyms match exported ones)
        from dicomlake.deid.engine import settings_from_env

        env = settings_from_env()
        key = (
            env.secret.get_secret_value()
            if env.secret is not None
            else hmac.new(secret, b"dicomlake analyst view", hashlib.sha256).hexdigest()
        )
        self.settings = DeidSettings.model_validate(
            {"secret": key, "map_file": env.map_file, "map_strict": env.map_strict}
        )
        self.engine = Deidentifier(profile, self.settings, vault=None)
        self.profile = self.engine.profile
        self.db = db
        self._lock = threading.Lock()
        self._tables = standard_tables()
        self._policy: dict[int, str | None] = {}

    # ---- which instances ---------------------------------------------------------------

    def restriction(self) -> Restriction:
        """The row restriction of the profile: which instances it excludes (compiled by :mod:`dicomlake.query`)."""
        policy = self.profile.burned_in
        return Restriction(
            drop_burned_in=policy is not BurnedInPolicy.FLAG,
            risky_classes=tuple(RISKY_SOP_CLASSES),
            exclude_all_risky=policy is BurnedInPolicy.EXCLUDE_ALL_RISKY,
            exclude_unless_no=policy is BurnedInPolicy.EXCLUDE,
        )

    # ---- which attributes ----------------------------------------------------------------

    def filter_policy(self, tag: int | None, vr: str | None = None) -> str | None:
        """``keep`` (match as is), ``uid`` (match through pseudonyms) or None (refused)."""
        if tag is None or (tag >> 16) & 1:
            return None
        if tag in self._policy:
            return self._policy[tag]
        entry = lookup(tag)
        keyword = entry[2] if entry else ""
        vr = vr or (entry[0] if entry else None)
        verdict: str | None
        if keyword in self.profile.remove or keyword in self.profile.pseudonymize or keyword in self.profile.generalize:
            verdict = None
        elif keyword in self.profile.keep or keyword.endswith("ClassUID") or keyword in PERSISTENT_UID_KEYWORDS:
            verdict = "keep"
        else:
            row = self._tables.row_for(tag)
            if row is not None:
                action, _ = row.action(self.engine.options)
                if action is Action.K:
                    verdict = "keep"
                elif action is Action.U and RetainOption.RETAIN_UIDS not in self.engine.options:
                    verdict = "uid"
                else:
                    verdict = None
            elif vr == "UI":
                verdict = "uid"
            elif vr in ("DA", "DT") or vr in _TEXT_VRS or vr == "SQ":
                verdict = None  # shifted, scrubbed or nested: not safe to match on
            elif self._tables.any_iod_types.get(tag) is None:
                verdict = None  # not in any IOD: the engine removes it
            else:
                verdict = "keep"
        self._policy[tag] = verdict
        return verdict

    def keyword_allowed(self, keyword: str) -> bool:
        tag = keyword_to_tag().get(keyword)
        return tag is not None and self.filter_policy(tag) is not None

    # ---- UIDs ----------------------------------------------------------------------------

    def pseudo_uid(self, uid: str) -> str:
        return self.engine.keys.uid(uid)

    def original_uid(self, pseudo: str) -> str | None:
        """The real UID behind a pseudonym this service handed out, else None."""
        if self.db is None:
            return None
        return self.db.original_uid(pseudo)

    def _remember(self, pairs: Iterable[tuple[str, str, str]]) -> None:
        if self.db is not None:
            self.db.remember_uids(pairs)

    # ---- instances -----------------------------------------------------------------------

    def dataset_json(self, js: dict[str, Any] | str) -> dict[str, Any] | None:
        """The de-identified DICOM JSON of one instance, None when the profile excludes it."""
        return self.many_json([js])[0]

    def many_json(self, items: Sequence[dict[str, Any] | str]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        pairs: list[tuple[str, str, str]] = []
        for js in items:
            src = json.loads(js) if isinstance(js, str) else js
            ds = from_json(src)
            with self._lock:
                new = self.engine.deidentify(ds)
                self._trim_report()
            if new is None:
                out.append(None)
                continue
            res = to_json(new)
            for tag, level in KEY_UIDS.items():
                orig = (src.get(tag) or {}).get("Value") or []
                pseu = (res.get(tag) or {}).get("Value") or []
                if orig and pseu and orig[0] != pseu[0]:
                    pairs.append((str(pseu[0]), str(orig[0]), level))
            out.append(res)
        self._remember(pairs)
        return out

    def _trim_report(self) -> None:
        rep = self.engine.report
        if len(rep.flagged) > 1000:
            rep.flagged.clear()
            rep.excluded.clear()
            rep.kept_text.clear()

    # ---- rows ----------------------------------------------------------------------------

    def table(self, t: pa.Table, drop: Sequence[str] = (), keep: Sequence[str] = ()) -> pa.Table:
        """De-identify a table whose columns are keywords (plus derived/aggregate columns).

        Each row becomes a dataset of the keyword columns, goes through the engine and comes
        back in the column's own type; other columns are kept only when they are in
        :data:`SAFE_DERIVED`. Rows of excluded instances are dropped; ``drop`` names context
        columns to leave out of the result.
        """
        k2t = keyword_to_tag()
        names = t.column_names
        kw_cols = [n for n in names if n in k2t and not (k2t[n] >> 16) & 1 and n not in SAFE_DERIVED and n not in keep]
        rows = t.to_pylist()
        out_rows: list[dict[str, Any]] = []
        pairs: list[tuple[str, str, str]] = []
        for row in rows:
            ds = Dataset()
            for n in kw_cols:
                v = row.get(n)
                if v is None:
                    continue
                entry = lookup(k2t[n])
                if entry is None:
                    continue
                vr = entry[0].split(" or ")[0]
                text = _dicom_text(v, vr)
                if text is None:
                    continue
                value: Any = text.split("\\") if "\\" in text and vr != "SQ" else text
                if vr in ("FL", "FD", "US", "SS", "UL", "SL", "UV", "SV"):
                    conv = float if vr in ("FL", "FD") else int
                    try:
                        value = [conv(float(x)) for x in value] if isinstance(value, list) else conv(float(value))
                    except ValueError:
                        continue
                try:
                    ds.add_new(k2t[n], vr, value)
                except Exception:
                    continue
            with self._lock:
                new = self.engine.deidentify(ds)
                self._trim_report()
            if new is None:
                continue
            res: dict[str, Any] = {}
            for n in names:
                if n in drop:
                    continue
                if n in k2t and n in kw_cols:
                    el = new.get(k2t[n])
                    res[n] = None if el is None or el.value in (None, "", b"") else _python_value(el.value)
                    if n in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") and row.get(n) and res[n]:
                        pairs.append(
                            (
                                str(res[n]),
                                str(row[n]),
                                {"StudyInstanceUID": "study", "SeriesInstanceUID": "series"}.get(n, "instance"),
                            )
                        )
                elif n in SAFE_DERIVED or n in keep:
                    res[n] = row.get(n)
                else:
                    res[n] = None
            out_rows.append(res)
        self._remember(pairs)
        fields = [f for f in t.schema if f.name not in drop]
        cols: dict[str, pa.Array] = {}
        for f in fields:
            vals = [_coerce(r.get(f.name), f.type) for r in out_rows]
            try:
                cols[f.name] = pa.array(vals, type=f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                cols[f.name] = pa.array([None if v is None else str(v) for v in vals], type=pa.string())
        return pa.table(cols) if cols else pa.table({})


def _dicom_text(v: Any, vr: str) -> str | None:
    if isinstance(v, dt.datetime):
        return v.strftime("%Y%m%d%H%M%S.%f") if vr == "DT" else v.strftime("%Y%m%d")
    if isinstance(v, dt.date):
        return v.strftime("%Y%m%d")
    if isinstance(v, dt.time):
        return v.strftime("%H%M%S.%f")
    if isinstance(v, float):
        if vr in ("FL", "FD"):
            return repr(v)
        s = f"{v:.10g}"
        return s if len(s) <= 16 else f"{v:.6g}"
    if isinstance(v, (int, str)):
        return str(v)
    return None


def _python_value(v: Any) -> Any:
    from pydicom.multival import MultiValue

    if isinstance(v, (MultiValue, list)):
        return "\\".join(str(x) for x in v)
    return str(v)


def _coerce(v: Any, typ: pa.DataType) -> Any:
    """A DICOM text value back into the column's Arrow type."""
    if v is None or not isinstance(v, str):
        return v
    s = v.strip()
    if not s:
        return None
    try:
        if pa.types.is_date(typ):
            return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
        if pa.types.is_time(typ):
            s = s.replace(":", "")
            hh, mm, ss = int(s[:2]), int(s[2:4] or 0), float(s[4:] or 0)
            return dt.time(hh, mm, int(ss), round((ss % 1) * 1e6) % 1_000_000)
        if pa.types.is_timestamp(typ):
            return dt.datetime.strptime(s[:14].ljust(14, "0"), "%Y%m%d%H%M%S")
        if pa.types.is_integer(typ):
            return int(float(s))
        if pa.types.is_floating(typ):
            return float(s)
    except (ValueError, IndexError):
        return None
    return s
