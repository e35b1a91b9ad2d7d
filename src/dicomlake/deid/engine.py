"""The de-identification engine: PS3.15 Table E.1-1 applied recursively with keyed replacements."""

from __future__ import annotations

import copy
import importlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any, Self

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID
from pydicom.valuerep import PersonName

from dicomlake import __version__
from dicomlake.deid.profile import BurnedInPolicy, DeidProfile, load_profile
from dicomlake.deid.pseudonym import ExternalMap, Keyring, parse_key
from dicomlake.deid.settings import DeidSettings
from dicomlake.deid.table import (
    Action,
    RetainOption,
    StandardTables,
    TableRow,
    resolve_compound,
    standard_tables,
)
from dicomlake.deid.text import (
    REDACTED,
    Scrubber,
    name_terms,
    postcode_area,
    postcode_district,
    shift_by,
    zip3,
)
from dicomlake.deid.vault import Vault
from dicomlake.errors import DeidError
from dicomlake.security.phi import identifying_terms

log = logging.getLogger(__name__)

# SOP classes whose pixels often carry burned-in text (PS3.15 E.1.1 note: screen captures, US).
RISKY_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image (Retired)",
}

# UI attributes that hold well-known (persistent) UIDs: never remapped (seed 004, pixelmed isTransient).
PERSISTENT_UID_KEYWORDS = {
    "TransferSyntaxUID",
    "CodingSchemeUID",
    "ContextGroupExtensionCreatorUID",
    "MappingResourceUID",
    "ContextUID",
    "PrivateInformationCreatorUID",
    "ImplementationClassUID",
    "EncryptedContentTransferSyntaxUID",
    "MACCalculationTransferSyntaxUID",
    "CodingSchemeRegistry",
    "InstanceCoercionDateTime",
}

_TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC", "PN"}
_DUMMY: dict[str, Any] = {
    "AE": "ANON",
    "AS": "000D",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "UR": "urn:dicomlake:removed",
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "SS": 0,
    "US": 0,
    "SL": 0,
    "UL": 0,
    "FL": 0.0,
    "FD": 0.0,
    "SV": 0,
    "UV": 0,
    "AT": 0,
}
_PSEUDONYM_PREFIX = {
    "OperatorsName": "OP",
    "PerformingPhysicianName": "PH",
    "ReferringPhysicianName": "PH",
    "InstitutionName": "SITE",
    "InstitutionalDepartmentName": "DEPT",
    "StationName": "STN",
    "DeviceSerialNumber": "SN",
}
_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_CONTENT_SEQUENCE = 0x0040A730


@dataclass
class DeidReport:
    """Counts of one Deidentifier's work; flagged and excluded instances are named."""

    instances: int = 0
    excluded: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    removed_elements: int = 0
    kept_text: dict[str, set[str]] = field(default_factory=dict)
    """Cleaned free text that was kept (Clean Descriptors / Structured Content), by keyword:
    what a reviewer should read before release (``deid --report``)."""

    def keep_text(self, keyword: str, value: str) -> None:
        """Remember one kept cleaned value (at most 50 distinct values per keyword)."""
        values = self.kept_text.setdefault(keyword, set())
        if len(values) < 50:
            values.add(value)


@dataclass
class _Ctx:
    sop_class: str
    offset_days: int
    scrubber: Scrubber
    patient_pseudonym: str
    animal: bool = False


def settings_from_env() -> DeidSettings:
    """DeidSettings from ``DICOMLAKE_DEID__*`` variables (until the main Settings embeds it)."""
    values = {}
    for name in DeidSettings.model_fields:
        env = os.environ.get(f"DICOMLAKE_DEID__{name.upper()}")
        if env is not None:
            values[name] = env
    return DeidSettings.model_validate(values)


class Deidentifier:
    """De-identify datasets per PS3.15 Table E.1-1 under a profile, with keyed replacements.

    Parameters
    ----------
    profile
        Built-in name (``basic``, ``research``, ``dose-audit``), a TOML path, or a profile.
    settings
        Keys and places; by default read from ``DICOMLAKE_DEID__*``. Without a secret a random
        one is drawn and pseudonyms differ from run to run.
    vault
        Where original ↔ pseudonym pairs go; by default opened from settings when both
        ``vault_path`` and ``vault_key`` are set.
    """

    def __init__(
        self,
        profile: str | Path | DeidProfile,
        settings: DeidSettings | None = None,
        vault: Vault | None = None,
    ):
        self.profile = profile if isinstance(profile, DeidProfile) else load_profile(profile)
        self.settings = settings if settings is not None else settings_from_env()
        if self.settings.secret is None:
            log.warning(
                "no de-identification secret (DICOMLAKE_DEID__SECRET): using a random per-run key; "
                "pseudonyms and UIDs will differ between runs"
            )
            secret = secrets.token_bytes(32)
        else:
            secret = self.settings.secret.get_secret_value().encode()
        external = ExternalMap.read_csv(self.settings.map_file) if self.settings.map_file else None
        self.keys = Keyring(secret, external, self.settings.map_strict)
        if vault is None and self.settings.vault_path and self.settings.vault_key:
            vault = Vault(
                self.settings.vault_path,
                parse_key(self.settings.vault_key.get_secret_value(), "DICOMLAKE_DEID__VAULT_KEY"),
            )
        self.vault = vault
        self.tables: StandardTables = standard_tables()
        self.options = frozenset(self.profile.options)
        self.report = DeidReport()
        self._row_actions: dict[int, tuple[Action, RetainOption | None]] = {}
        self._kw_tags = {kw: _tag(kw) for kw in (*self.profile.keep, *self.profile.remove)}
        self._keep = {_tag(k) for k in self.profile.keep}
        self._remove = {_tag(k) for k in self.profile.remove}
        self._pseudo = {_tag(k): k for k in self.profile.pseudonymize}
        self._generalize = {_tag(k): _generaliser(v) for k, v in self.profile.generalize.items()}
        self._special = (
            self._keep | self._remove | set(self._pseudo) | set(self._generalize) | {_PATIENT_ID, _PATIENT_NAME}
        )
        self._deviations = self.profile.deviations(self.tables)
        self._dates = (
            "full"
            if RetainOption.RETAIN_LONGITUDINAL_FULL_DATES in self.options
            else "modified"
            if RetainOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options
            else "removed"
        )

    # --- public API ---------------------------------------------------------------------------

    def deidentify(self, ds: Dataset, *, burned_in: str | None = None, screened: bool = False) -> Dataset | None:
        """A de-identified copy of ``ds``, or None when the profile excludes the instance.

        The input is not modified. File meta information is rebuilt for the new SOP Instance.

        Parameters
        ----------
        burned_in
            Burned In Annotation of the output (``deid --pixels``: ``YES`` for an image that
            was not screened or is on the review list); None keeps the value as declared.
        screened
            The pixels were OCR-screened and found free of PHI (``deid --pixels``): the
            profile's burned-in exclusion does not apply.
        """
        sop_class = str(ds.get("SOPClassUID", "") or "")
        label = str(getattr(ds, "filename", "") or ds.get("SOPInstanceUID", "?"))
        if not screened and self._excluded(ds, sop_class, label):
            return None
        ctx = self._context(ds, sop_class)
        out = self._dataset(ds, None, ctx, "normal", ())
        if burned_in is not None and "PixelData" in ds:
            out.BurnedInAnnotation = burned_in
        self._finish(ds, out, ctx)
        self.report.instances += 1
        return out

    def deidentify_bytes(
        self, data: bytes, *, source: str | None = None, burned_in: str | None = None, screened: bool = False
    ) -> bytes | None:
        """Part-10 bytes in, de-identified Part-10 bytes out (None when excluded).

        Parameters
        ----------
        data
            A DICOM Part-10 file (or a bare dataset, explicit or implicit VR).
        source
            Name of the input, used in reports and errors.
        burned_in, screened
            As for :meth:`deidentify`.
        """
        label = source or f"<{len(data)} bytes>"
        _refuse_truncated(data, label)
        try:
            ds = pydicom.dcmread(BytesIO(data), force=True)
        except Exception as exc:
            raise DeidError(f"{label}: cannot read as DICOM: {exc}") from exc
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise DeidError(f"{label}: not a DICOM instance (no SOP Class/Instance UID); pass DICOM files only")
        if source:
            ds.filename = source
        try:
            out = self.deidentify(ds, burned_in=burned_in, screened=screened)
            if out is None:
                return None
            return write_bytes(out)
        except DeidError:
            raise
        except Exception as exc:
            # pydicom decodes values lazily: a malformed one (unknown VR, bad number, torn
            # sequence) surfaces here, not in dcmread (fuzz regressions in tests/data/fuzz/deid)
            raise DeidError(f"{label}: cannot be de-identified: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Flush and close the vault."""
        if self.vault is not None:
            self.vault.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- burned-in annotation -----------------------------------------------------------------

    def _excluded(self, ds: Dataset, sop_class: str, label: str) -> bool:
        declared = str(ds.get("BurnedInAnnotation", "") or "").upper()
        risky = sop_class in RISKY_SOP_CLASSES
        if declared != "YES" and not risky:
            return False
        why = "Burned In Annotation YES" if declared == "YES" else RISKY_SOP_CLASSES[sop_class]
        self.report.flagged.append(f"{label}: {why}")
        policy = self.profile.burned_in
        drop = (
            (declared == "YES" and policy is not BurnedInPolicy.FLAG)
            or (risky and policy is BurnedInPolicy.EXCLUDE_ALL_RISKY)
            or (risky and policy is BurnedInPolicy.EXCLUDE and declared != "NO")
        )
        if drop:
            self.report.excluded.append(f"{label}: {why}")
            log.info("excluded %s (%s) under profile %s", label, why, self.profile.name)
        return drop

    # --- per-instance context -------------------------------------------------------------------

    def _context(self, ds: Dataset, sop_class: str) -> _Ctx:
        pid = str(ds.get("PatientID", "") or "").strip()
        patient_key = pid or str(ds.get("PatientName", "") or "").strip() or str(ds.get("StudyInstanceUID", ""))
        low, high = self.profile.date_shift_days
        offset = self.keys.date_offset(patient_key, low, high, self.profile.keep_weekday)
        shift = shift_by(offset) if self._dates == "modified" else None
        terms = self._identifying_terms(ds, sop_class)
        pseudo = self.keys.code("PatientID", patient_key, self.profile.patient_id_prefix)
        animal = bool(ds.get("PatientSpeciesDescription") or ds.get("PatientSpeciesCodeSequence"))
        # the PHI detector the burned-in text screen uses, with this instance's identifying values
        phi_terms = identifying_terms(ds)
        return _Ctx(sop_class, offset, Scrubber(terms, shift, phi_terms), pseudo, animal)

    def _identifying_terms(self, ds: Dataset, sop_class: str) -> list[str]:
        """Values this profile removes or replaces: they must not survive inside free text."""
        terms: list[str] = []
        stack: list[tuple[Dataset, int | None]] = [(ds, None)]
        while stack:
            item, _parent = stack.pop()
            for raw in item.elements():
                tag = int(raw.tag)
                vr = raw.VR or _dict_vr(tag)
                if vr != "SQ" and (tag >> 16) % 2 == 0 and self.tables.row_for(tag) is None:
                    continue  # nothing to collect; leave the value unconverted
                elem = item[tag]
                if elem.VR == "SQ":
                    stack.extend((sub, tag) for sub in elem.value or ())
                    continue
                if elem.VR not in _TEXT_VRS and elem.VR not in ("AE", "DA", "DT"):
                    continue
                if tag in self._keep or elem.value in (None, ""):
                    continue
                row = self.tables.row_for(tag)
                if row is None:
                    continue
                action, _ = self._row_action(row, tag)
                if action in (Action.K, Action.C, Action.U):
                    continue
                values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
                for v in values:
                    text = str(v)
                    if elem.VR == "PN":
                        terms.extend(name_terms(text))
                    elif elem.VR in ("DA", "DT"):
                        if len(text) >= 8 and text[:8].isdigit():
                            d = text[:8]
                            terms.extend(
                                [
                                    d,
                                    f"{d[:4]}-{d[4:6]}-{d[6:8]}",
                                    f"{d[6:8]}/{d[4:6]}/{d[:4]}",
                                    f"{d[6:8]}.{d[4:6]}.{d[:4]}",
                                ]
                            )
                    else:
                        terms.append(text)
                        terms.extend(part for part in text.replace(",", " ").split() if len(part) >= 4)
        return terms

    # --- the walk -------------------------------------------------------------------------------

    def _row_action(self, row: TableRow, tag: int) -> tuple[Action, RetainOption | None]:
        hit = self._row_actions.get(row.index)
        if hit is None:
            hit = row.action(self.options)
            self._row_actions[row.index] = hit
        return hit

    def _dataset(self, src: Dataset, parent: int | None, ctx: _Ctx, mode: str, sig: tuple[str, ...]) -> Dataset:
        out = Dataset()
        creators: dict[int, DataElement] = {}
        used_blocks: set[int] = set()
        for raw in src.elements():
            tag = int(raw.tag)
            group, number = tag >> 16, tag & 0xFFFF
            if number == 0 or group == 0x0002 or group == 0xFFFC:
                continue  # group lengths, file meta, trailing padding
            if mode != "dummy" and group % 2 == 0 and tag not in self._special:
                vr = raw.VR or _dict_vr(tag)
                if vr in _PASS_VRS and self.tables.row_for(tag) is None:
                    # Not in Table E.1-1, not text, date or UID: kept as read if the IOD has it,
                    # or if the pixel data cannot be read without it (Number of Frames in an
                    # MR, US or SC file whose IOD table lacks the Multi-frame Module).
                    if (
                        tag not in _PIXEL_DESCRIPTION
                        and not (parent is None and self._overlay_structure(tag))
                        and self.tables.iod_type(ctx.sop_class, tag, parent) is None
                    ):
                        self.report.removed_elements += 1
                    else:
                        out[tag] = raw
                    continue
            elem = src[tag]
            if group % 2 == 1:
                if 0x0010 <= number <= 0x00FF:
                    creators[tag] = elem
                    continue
                new = self._private(src, elem, parent, ctx, sig)
                if new is not None:
                    out.add(new)
                    used_blocks.add((group << 16) | (number >> 8))
                else:
                    self.report.removed_elements += 1
                continue
            new = self._element(elem, tag, parent, ctx, mode, sig)
            if new is None:
                self.report.removed_elements += 1
            else:
                out.add(new)
        for tag, elem in creators.items():
            if tag in used_blocks:
                out.add(DataElement(tag, "LO", elem.value))
        return out

    def _sequence(self, elem: DataElement, ctx: _Ctx, mode: str, sig: tuple[str, ...]) -> DataElement:
        tag = int(elem.tag)
        items = [self._dataset(item, tag, ctx, mode, sig) for item in (elem.value or ())]
        return DataElement(tag, "SQ", Sequence(items))

    def _element(
        self, elem: DataElement, tag: int, parent: int | None, ctx: _Ctx, mode: str, sig: tuple[str, ...]
    ) -> DataElement | None:
        vr = elem.VR
        if tag in self._remove:
            return None
        if tag in self._keep:
            return self._sequence(elem, ctx, "keep", sig) if vr == "SQ" else _copy(elem)
        if tag in (_PATIENT_ID, _PATIENT_NAME):
            return self._patient_pseudonym(elem, tag, ctx)
        if tag in self._generalize and vr != "SQ":
            return self._generalised(elem, tag)
        if tag in self._pseudo and vr != "SQ":
            return self._pseudonymised(elem, self._pseudo[tag])
        if mode == "keep":
            return self._sequence(elem, ctx, mode, sig) if vr == "SQ" else _copy(elem)
        row = self.tables.row_for(tag)
        if row is None:
            return self._unlisted(elem, tag, parent, ctx, mode, sig)
        action, option = self._row_action(row, tag)
        if action is Action.XZU and self.profile.keep_references and vr == "SQ":
            action = Action.U
        if "/" in action.value:
            action = resolve_compound(action, self.tables.iod_type(ctx.sop_class, tag, parent))
        if action is Action.X and ctx.animal and parent is None and tag in _ANIMAL_TYPE_2C:
            action = Action.Z  # Patient Module: Type 2C when the patient is an animal
        return self._apply(action, option, elem, tag, ctx, mode, sig)

    def _overlay_structure(self, tag: int) -> bool:
        """Overlay Rows/Columns/Type/Origin/Bits…: kept with the zeroed Overlay Data (Clean Graphics)."""
        group = tag >> 16
        return (
            RetainOption.CLEAN_GRAPHICS in self.options
            and 0x6000 <= group <= 0x601E
            and group % 2 == 0
            and (tag & 0xFFFF) in _OVERLAY_STRUCTURE
        )

    def _apply(
        self,
        action: Action,
        option: RetainOption | None,
        elem: DataElement,
        tag: int,
        ctx: _Ctx,
        mode: str,
        sig: tuple[str, ...],
    ) -> DataElement | None:
        vr = elem.VR
        if action is Action.X:
            return None
        if action is Action.Z:
            return DataElement(tag, vr, Sequence() if vr == "SQ" else _empty(vr))
        if action is Action.U:
            if vr == "SQ":
                return self._sequence(elem, ctx, mode, sig)
            return self._uid_element(elem, force=True)
        if action is Action.D:
            if vr == "SQ":
                # A sequence replaced by a dummy keeps its structure (IOD conformance) with every
                # text value inside replaced, UIDs remapped and dates dummied.
                return self._sequence(elem, ctx, "dummy", sig)
            if vr == "UI":
                return self._uid_element(elem, force=True)
            return DataElement(tag, vr, _DUMMY.get(vr, b"\x00\x00"))
        if action is Action.K:
            if vr == "SQ":
                return self._sequence(elem, ctx, mode, sig)  # PS3.15: sequences are cleaned
            if tag == 0x00101010 and self.profile.age_band_years:
                return DataElement(tag, vr, _age_band(str(elem.value or ""), self.profile.age_band_years))
            return _copy(elem)
        # Action.C: what cleaning means depends on the option that asked for it.
        if option in (RetainOption.RETAIN_LONGITUDINAL_MODIFIED_DATES, None) and vr in ("DA", "DT", "TM"):
            return self._shift_element(elem, ctx)
        if option is RetainOption.RETAIN_LONGITUDINAL_MODIFIED_DATES and vr != "SQ":
            return _copy(elem)  # e.g. Timezone Offset From UTC: no date to shift
        if vr == "SQ":
            sub = "clean" if option is not None else mode
            return self._sequence(elem, ctx, sub, sig)
        if option is RetainOption.CLEAN_GRAPHICS and vr in ("OB", "OW", "OF"):
            # Overlay/curve bit planes: same size, no content (no text can survive in them).
            raw = elem.value or b""
            return DataElement(tag, vr, bytes(len(raw)) if isinstance(raw, bytes) else raw)
        if option is RetainOption.RETAIN_DEVICE_IDENTITY and vr == "AE":
            return DataElement(tag, vr, self.keys.code("AE", str(elem.value or ""), "AE", 10))
        if vr in _TEXT_VRS:
            if option in (RetainOption.CLEAN_DESCRIPTORS, RetainOption.CLEAN_STRUCTURED_CONTENT):
                return self._scrubbed(elem, ctx, clean=True)
            return self._scrubbed(elem, ctx)
        if vr == "UI":
            return self._uid_element(elem, force=True)
        if vr in ("DA", "DT", "TM"):
            return self._shift_element(elem, ctx)
        return _copy(elem)

    def _unlisted(
        self, elem: DataElement, tag: int, parent: int | None, ctx: _Ctx, mode: str, sig: tuple[str, ...]
    ) -> DataElement | None:
        """Attributes not in Table E.1-1: kept only when the IOD has them (whitelist)."""
        vr = elem.VR
        iod_type = self.tables.iod_type(ctx.sop_class, tag, parent)
        if iod_type is None:
            return None
        if vr == "SQ":
            return self._sequence(elem, ctx, mode, sig)
        if vr == "UI":
            return self._uid_element(elem, force=False)
        if vr in ("DA", "DT") or (vr == "TM" and self._dates == "removed"):
            # Dates the table does not list are handled like those it lists (E.1-1 note 1).
            if self._dates == "full":
                return _copy(elem)
            if self._dates == "modified":
                return self._shift_element(elem, ctx)
            action = resolve_compound(Action.XZD, iod_type)
            return self._apply(action, None, elem, tag, ctx, mode, sig)
        if vr in _TEXT_VRS:
            if mode == "dummy" and tag not in _CODE_ITEM_TAGS:
                return DataElement(tag, vr, _DUMMY[vr])
            if mode == "clean" and tag not in _CODE_ITEM_TAGS:
                return self._scrubbed(elem, ctx, clean=True)  # e.g. Text Value in cleaned SR content
            return self._scrubbed(elem, ctx) if self.profile.scrub_free_text else _copy(elem)
        return _copy(elem)

    # --- private attributes -----------------------------------------------------------------------

    def _private(
        self, src: Dataset, elem: DataElement, parent: int | None, ctx: _Ctx, sig: tuple[str, ...]
    ) -> DataElement | None:
        if RetainOption.RETAIN_SAFE_PRIVATE not in self.options:
            return None  # PS3.15 E.1-1: private attributes X unless Retain Safe Private
        tag = int(elem.tag)
        group, number = tag >> 16, tag & 0xFFFF
        creator_elem = src.get((group << 16) | (number >> 8))
        if creator_elem is None or not creator_elem.value:
            return None
        creator = str(creator_elem.value).strip().upper()
        here = (*sig, f"{group:04x},{creator},{number & 0xFF:02x}")
        disposition = self.tables.safe_private.get("/".join(here))
        if disposition is None:
            return None
        vr = elem.VR
        if disposition == "k":
            if vr == "SQ":
                items = [self._dataset(item, tag, ctx, "normal", here) for item in (elem.value or ())]
                return DataElement(tag, vr, Sequence(items))
            return _copy(elem)
        if disposition == "h":
            return self._uid_element(elem, force=True) if vr == "UI" else None
        if disposition in ("o", "oi"):
            if self._dates == "full":
                return _copy(elem)
            if self._dates == "removed":
                return None
            if vr in ("DA", "DT"):
                return self._shift_element(elem, ctx)
            if vr in ("SL", "UL", "FD", "FL") and isinstance(elem.value, (int, float)):
                return DataElement(tag, vr, type(elem.value)(elem.value + ctx.offset_days * 86400))
            return None
        return None

    # --- replacements -------------------------------------------------------------------------

    def _patient_pseudonym(self, elem: DataElement, tag: int, ctx: _Ctx) -> DataElement:
        pseudo = ctx.patient_pseudonym
        if self.vault is not None and elem.value:
            kind = "PatientID" if tag == _PATIENT_ID else "PatientName"
            self.vault.record(kind, str(elem.value), pseudo)
        return DataElement(tag, elem.VR, pseudo)

    def _pseudonymised(self, elem: DataElement, keyword: str) -> DataElement:
        prefix = _PSEUDONYM_PREFIX.get(keyword, "PS")
        values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
        out = []
        for v in values:
            if v in (None, ""):
                out.append("")
                continue
            text = str(v)
            code = self.keys.code(keyword, text.strip().upper(), prefix + "-", 8)
            if self.vault is not None:
                self.vault.record(keyword, text, code)
            out.append(code)
        return DataElement(elem.tag, elem.VR, out if len(out) > 1 else out[0])

    def _generalised(self, elem: DataElement, tag: int) -> DataElement | None:
        fn = self._generalize[tag]
        values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
        out = [fn(str(v)) for v in values if v not in (None, "")]
        kept = [v for v in out if v]
        if not kept:
            return None
        return DataElement(tag, elem.VR, kept if len(kept) > 1 else kept[0])

    def _uid_element(self, elem: DataElement, force: bool) -> DataElement:
        if RetainOption.RETAIN_UIDS in self.options and force:
            return _copy(elem)
        keyword = elem.keyword or ""
        if not force and (keyword.endswith("ClassUID") or keyword in PERSISTENT_UID_KEYWORDS):
            return _copy(elem)
        if not force and RetainOption.RETAIN_UIDS in self.options:
            return _copy(elem)
        values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
        out = [self._uid(str(v)) if v else "" for v in values]
        return DataElement(elem.tag, "UI", out if len(out) > 1 else out[0])

    def _uid(self, value: str) -> str:
        value = value.strip("\x00 ")
        if _well_known(value):
            return value
        new = self.keys.uid(value)
        if self.vault is not None:
            self.vault.record("UID", value, new)
        return new

    def _shift_element(self, elem: DataElement, ctx: _Ctx) -> DataElement:
        vr = elem.VR
        if self._dates == "full" or vr == "TM":
            return _copy(elem)
        if self._dates == "removed":
            return DataElement(elem.tag, vr, _empty(vr))
        values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
        out = [_shift_text(str(v or ""), vr, ctx.offset_days) for v in values]
        return DataElement(elem.tag, vr, out if len(out) > 1 else out[0])

    def _scrubbed(self, elem: DataElement, ctx: _Ctx, clean: bool = False) -> DataElement:
        """Text with identifying values out; ``clean``: PS3.15 cleaning of a descriptor or of
        structured content (names and identifiers of anyone), the kept text reported."""
        vr = elem.VR
        values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
        out: list[Any] = []
        for v in values:
            if v in (None, ""):
                out.append(v if v is not None else "")
                continue
            text = str(v)
            new = ctx.scrubber.clean(text) if clean else ctx.scrubber.scrub(text)
            if clean and new.replace(REDACTED, "").strip(" .,;:-"):
                self.report.keep_text(elem.keyword or f"{int(elem.tag):08X}", new)
            out.append(PersonName(new) if vr == "PN" else new)
        return DataElement(elem.tag, vr, out if len(out) > 1 else out[0])

    # --- the end of an instance ---------------------------------------------------------------

    def _finish(self, src: Dataset, out: Dataset, ctx: _Ctx) -> None:
        # PS3.15 E.1.1: Patient Identity Removed YES, De-identification Method (Code Sequence).
        out.PatientIdentityRemoved = "YES"
        method = (f"dicomlake {__version__} PS3.15 E.1-1 {self.tables.edition} profile {self.profile.name}")[:64]
        # deviations from Table E.1-1 are named: one value each (LO, VM 1-n), and one code each
        out.DeidentificationMethod = [method, *(f"deviation: {d}"[:64] for d in self._deviations)]
        if len(out.DeidentificationMethod) == 1:
            out.DeidentificationMethod = method
        codes = [self.tables.cid7050["BasicApplicationConfidentialityProfile"]]
        codes += [self.tables.cid7050[o] for o in sorted(self.options, key=lambda o: o.value)]
        codes += [(f"DEV{n:02d}", "99DICOMLAKE", d[:64]) for n, d in enumerate(self._deviations, 1)]
        items = []
        for value, scheme, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = scheme
            item.CodeMeaning = meaning
            items.append(item)
        out.DeidentificationMethodCodeSequence = Sequence(items)
        out.LongitudinalTemporalInformationModified = {
            "full": "UNMODIFIED",
            "modified": "MODIFIED",
            "removed": "REMOVED",
        }[self._dates]
        if "PatientID" not in out:
            out.PatientID = ctx.patient_pseudonym
        if ctx.animal and "ResponsiblePersonRole" in out and not out.get("ResponsiblePerson"):
            del out.ResponsiblePersonRole  # Type 1C: only with a Responsible Person value
        if "SpecificCharacterSet" in src and "SpecificCharacterSet" not in out:
            out.SpecificCharacterSet = src.SpecificCharacterSet
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = out.get("SOPClassUID", ctx.sop_class or "1.2.840.10008.5.1.4.1.1.7")
        meta.MediaStorageSOPInstanceUID = out.get("SOPInstanceUID", self._uid(str(src.get("SOPInstanceUID", ""))))
        src_meta = getattr(src, "file_meta", None)
        ts = getattr(src_meta, "TransferSyntaxUID", None) if src_meta is not None else None
        meta.TransferSyntaxUID = ts or pydicom.uid.ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"DICOMLAKE_{__version__}"[:16]
        out.file_meta = meta
        out.set_original_encoding(*(_encoding_of(UID(meta.TransferSyntaxUID))), out.get("SpecificCharacterSet", None))


# --- helpers -----------------------------------------------------------------------------------

# VRs whose unlisted values are copied without being decoded (no text, date, UID or sequence).
_PASS_VRS = {
    "CS",
    "DS",
    "IS",
    "US",
    "SS",
    "UL",
    "SL",
    "FL",
    "FD",
    "SV",
    "UV",
    "AT",
    "OB",
    "OW",
    "OF",
    "OD",
    "OL",
    "OV",
    "US or SS",
    "OB or OW",
    "US or OW",
    "US or SS or OW",
}


# Patient Module attributes of Type 2C "required if the patient is an animal" that Table E.1-1
# removes (X): emptied instead for an animal, so the IOD stays conformant.
_ANIMAL_TYPE_2C = {
    0x00102297,  # Responsible Person
    0x00102299,  # Responsible Organization
}

# Overlay Plane Module attributes describing the bit plane (no content): kept beside the
# zeroed Overlay Data under Clean Graphics (Overlay Rows, Columns, Type, Origin are Type 1).
_OVERLAY_STRUCTURE = {
    0x0010,  # Overlay Rows
    0x0011,  # Overlay Columns
    0x0015,  # Number of Frames in Overlay
    0x0040,  # Overlay Type
    0x0045,  # Overlay Subtype
    0x0050,  # Overlay Origin
    0x0051,  # Image Frame Origin
    0x0100,  # Overlay Bits Allocated
    0x0102,  # Overlay Bit Position
}

# Attributes the pixel data (or overlay data) depends on: never removed, whatever the IOD table
# says; all are numbers or defined terms, none identifies anyone.
_PIXEL_DESCRIPTION = {
    0x00280002,  # Samples per Pixel
    0x00280004,  # Photometric Interpretation
    0x00280006,  # Planar Configuration
    0x00280008,  # Number of Frames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280034,  # Pixel Aspect Ratio
    0x00280100,  # Bits Allocated
    0x00280101,  # Bits Stored
    0x00280102,  # High Bit
    0x00280103,  # Pixel Representation
    0x00280120,  # Pixel Padding Value
    0x00280121,  # Pixel Padding Range Limit
    0x00281101,  # Red Palette Color Lookup Table Descriptor
    0x00281102,  # Green Palette Color Lookup Table Descriptor
    0x00281103,  # Blue Palette Color Lookup Table Descriptor
    0x00281104,  # Alpha Palette Color Lookup Table Descriptor
    0x00281201,  # Red Palette Color Lookup Table Data
    0x00281202,  # Green Palette Color Lookup Table Data
    0x00281203,  # Blue Palette Color Lookup Table Data
    0x00281204,  # Alpha Palette Color Lookup Table Data
    0x00281221,  # Segmented Red Palette Color Lookup Table Data
    0x00281222,  # Segmented Green Palette Color Lookup Table Data
    0x00281223,  # Segmented Blue Palette Color Lookup Table Data
    0x00281224,  # Segmented Alpha Palette Color Lookup Table Data
    0x7FE00001,  # Extended Offset Table
    0x7FE00002,  # Extended Offset Table Lengths
    0x7FE00008,  # Float Pixel Data
    0x7FE00009,  # Double Float Pixel Data
    0x7FE00010,  # Pixel Data
}


def _refuse_truncated(data: bytes, label: str) -> None:
    """DeidError for a file cut short (pydicom reads one silently and the output would look whole).

    The structural walk of the lake's reader checks every element, sequence item and fragment
    length against the bytes present; other complaints of that reader are left to pydicom.
    """
    from dicomlake.dicom.reader import parse_all
    from dicomlake.errors import ExtractionError

    try:
        parse_all(data)
    except ExtractionError as exc:
        if "truncated" in str(exc):
            raise DeidError(f"{label}: refused, the file is incomplete ({exc}); nothing written") from exc


def _dict_vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


_CODE_ITEM_TAGS = {
    0x00080100,
    0x00080102,
    0x00080103,
    0x00080104,
    0x00080119,
    0x00080120,
    0x0040A043,
    0x0040A168,
    0x0040A010,
    0x0040A040,
    0x00080105,
    0x00080106,
    0x0040A30A,
    0x004008EA,
}


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        raise DeidError(f"{keyword!r} is not a DICOM keyword")
    return int(tag)


def _well_known(uid: str) -> bool:
    return uid.startswith("1.2.840.10008.") or uid in pydicom.uid.UID_dictionary


def _empty(vr: str) -> Any:
    if vr in ("OB", "OW", "UN", "OD", "OF", "OL", "OV"):
        return b""
    if vr in ("SS", "US", "SL", "UL", "FL", "FD", "SV", "UV", "AT"):
        return None
    return ""


def _copy(elem: DataElement) -> DataElement:
    return copy.copy(elem)  # keeps the value as read: nothing re-validated, nothing lost


def _shift_text(value: str, vr: str, days: int) -> str:
    """Shift a DA or DT value by whole days; what cannot be parsed is emptied (never kept)."""
    value = value.strip()
    if not value:
        return ""
    digits = value[:8]
    if len(digits) < 8 or not digits.isdigit():
        if vr == "DA" and len(value) == 10 and value[4] == "." and value[7] == ".":
            digits = value.replace(".", "")
        else:
            return ""
    try:
        d = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])) + timedelta(days=days)
    except ValueError:
        return ""
    if d.year < 1:
        return ""
    new = f"{d.year:04d}{d.month:02d}{d.day:02d}"
    return new if vr == "DA" else new + value[8:]


def _age_band(value: str, years: int) -> str:
    """'047Y' → '045Y' for 5-year bands; 90 and over in one band; other units → '' (removed)."""
    if len(value) != 4 or not value[:3].isdigit() or value[3] not in "DWMY":
        return ""
    n = int(value[:3])
    if value[3] != "Y":
        return "000Y"
    if n >= 90:
        return "090Y"
    return f"{n - n % years:03d}Y"


def _generaliser(name: str) -> Callable[[str], str | None]:
    builtin: dict[str, Callable[[str], str | None]] = {
        "postcode-district": postcode_district,
        "postcode-area": postcode_area,
        "zip3": zip3,
        "year": lambda v: v[:4] + "0101" if v[:4].isdigit() else None,
        "remove": lambda v: None,
    }
    if name in builtin:
        return builtin[name]
    module, _, func = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise DeidError(f"generaliser {name!r} cannot be imported: {exc}") from exc
    if not callable(fn):
        raise DeidError(f"generaliser {name!r} is not callable")
    return fn  # type: ignore[no-any-return]


def _encoding_of(ts: UID) -> tuple[bool, bool]:
    if ts.is_private or not ts.is_transfer_syntax:
        return True, True
    return ts.is_implicit_VR, ts.is_little_endian


def write_bytes(ds: Dataset) -> bytes:
    """Part-10 bytes of a de-identified dataset (pydicom enforces the VRs on write).

    Ambiguous VRs are resolved once over the whole tree, and every item is marked as
    already in the output's encoding. Otherwise pydicom's writer, seeing an item built from
    scratch (no original encoding), runs its ambiguous-VR walk again over that item's whole
    subtree at every nesting level and converts every raw element: O(elements × depth),
    the hot spot of a large RDSR (docs/explanation/deid.md, "Speed of large SRs").
    """
    from pydicom.filewriter import correct_ambiguous_vr

    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    implicit, little = _encoding_of(UID(ts or pydicom.uid.ExplicitVRLittleEndian))
    if ts is not None and UID(ts).is_transfer_syntax:
        correct_ambiguous_vr(ds, little)
        _mark_encoded(ds, implicit, little)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _mark_encoded(ds: Dataset, implicit: bool, little: bool) -> None:
    """Mark *ds* and every item below it as read in (implicit, little) and its own character set.

    Raw elements are converted here, once (as pydicom's writer did per level): values are
    written as pydicom encodes them, never the input's padding bytes.
    """
    stack = [ds]
    while stack:
        item = stack.pop()
        item.set_original_encoding(implicit, little, item._character_set)
        for tag in list(item.keys()):
            elem = item[tag]
            if elem.VR == "SQ":
                stack.extend(elem.value or ())


def iter_terms(values: Iterable[str]) -> list[str]:
    """Split values into words for scrubbing (kept for callers that scrub other text)."""
    return [w for v in values for w in v.split() if len(w) >= 3]
