"""Metadata-only pulls over DICOMweb: QIDO-RS to find, WADO-RS ``…/metadata`` per series (PS3.18).

No pixel data moves: the metadata resource answers DICOM JSON in which bulk data are
``BulkDataURI`` references (PS3.18 §8.7.3.3.2), which are dropped. Each instance's JSON
becomes a header-only Part-10 object in the spool (label ``dicomweb``) and goes through the
same extraction as every other source.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dicomlake.dicom.reader import VALID_VRS
from dicomlake.errors import AssociationError
from dicomlake.ingest.spool import Spool

LOG = logging.getLogger("dicomlake.dicomweb")
DICOM_JSON = "application/dicom+json"
PAGE = 500


@dataclass
class DicomwebReport:
    """Counts of one DICOMweb pull; ``bytes_received`` counts every response body."""

    url: str
    studies: int = 0
    series: int = 0
    instances: int = 0
    done: int = 0
    failed: int = 0
    bytes_received: int = 0
    pixel_bytes: int = 0
    """Pixel data bytes found inline in the answers (0 when the server sent BulkDataURIs only)."""
    requests: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class DicomwebClient:
    """A few PS3.18 transactions over httpx, counting the bytes received."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 120.0,
        verify: bool | str = True,
    ) -> None:
        import httpx

        headers = {"Accept": DICOM_JSON}
        auth = None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif user is not None:
            auth = httpx.BasicAuth(user, password or "")
        self.url = url.rstrip("/")
        self.http = httpx.Client(headers=headers, auth=auth, timeout=timeout, verify=verify, follow_redirects=True)
        self.bytes_received = 0
        self.requests = 0

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        import httpx

        try:
            resp = self.http.get(self.url + path, params=params)
        except httpx.HTTPError as exc:
            raise AssociationError(f"GET {self.url}{path}: {exc} — check the URL and that the server is up") from exc
        self.requests += 1
        self.bytes_received += len(resp.content)
        if resp.status_code == 204:
            return []
        if resp.status_code in (401, 403):
            raise AssociationError(
                f"GET {self.url}{path} → HTTP {resp.status_code}: the server refused our credentials "
                "(give --token or --user/--password)"
            )
        if resp.status_code != 200:
            raise AssociationError(f"GET {self.url}{path} → HTTP {resp.status_code}: {resp.text[:200]}")
        ctype = resp.headers.get("content-type", "")
        if "json" not in ctype:
            raise AssociationError(f"GET {self.url}{path} answered {ctype!r}, not {DICOM_JSON}")
        return resp.json()

    def search_for_studies(self, filters: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """QIDO-RS ``/studies`` with paging (PS3.18 §8.3.4.4: limit and offset)."""
        offset = 0
        while True:
            page = self._get(
                "/studies",
                {**filters, "limit": PAGE, "offset": offset, "includefield": "NumberOfStudyRelatedInstances"},
            )
            yield from page
            if len(page) < PAGE:
                return
            offset += len(page)

    def search_for_series(self, study_instance_uid: str) -> list[dict[str, Any]]:
        return list(self._get(f"/studies/{study_instance_uid}/series"))

    def retrieve_series_metadata(self, study_instance_uid: str, series_instance_uid: str) -> list[dict[str, Any]]:
        return list(self._get(f"/studies/{study_instance_uid}/series/{series_instance_uid}/metadata"))

    def close(self) -> None:
        self.http.close()


def _value(js: Mapping[str, Any], tag: str) -> str | None:
    v = js.get(tag, {}).get("Value")
    return str(v[0]) if v else None


def strip_bulk(js: dict[str, Any]) -> dict[str, Any]:
    """Drop every element given as BulkDataURI (pixel data and other bulk), nested ones too."""
    out: dict[str, Any] = {}
    for tag, el in js.items():
        if "BulkDataURI" in el:
            continue
        if el.get("vr") == "SQ" and el.get("Value"):
            el = {**el, "Value": [strip_bulk(item) for item in el["Value"]]}
        out[tag] = el
    return out


_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_NUM = {"FL": "f", "FD": "d", "SL": "i", "SS": "h", "UL": "I", "US": "H", "SV": "q", "UV": "Q"}
_BIN_WORD = {"OB": "B", "UN": "B", "OW": "H", "OL": "I", "OF": "f", "OD": "d", "OV": "Q"}


def _pn(v: Any) -> str:
    if isinstance(v, dict):
        parts = [v.get("Alphabetic", ""), v.get("Ideographic", ""), v.get("Phonetic", "")]
        while parts and not parts[-1]:
            parts.pop()
        return "=".join(parts)
    return str(v)


def _num_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def _encode_value(vr: str, el: Mapping[str, Any]) -> bytes:
    import base64
    import struct

    if "InlineBinary" in el:
        raw = base64.b64decode(el["InlineBinary"])
    elif vr in _NUM:
        raw = struct.pack(f"<{len(el.get('Value', []))}{_NUM[vr]}", *el.get("Value", []))
    elif vr in _BIN_WORD:
        vals = el.get("Value", [])
        raw = struct.pack(f"<{len(vals)}{_BIN_WORD[vr]}", *vals) if vals else b""
    elif vr == "AT":
        vals = el.get("Value", [])
        raw = b"".join(struct.pack("<HH", int(t[:4], 16), int(t[4:], 16)) for t in vals)
    else:
        vals = el.get("Value", [])
        if vr == "PN":
            text = "\\".join(_pn(v) for v in vals)
        elif vr in ("DS", "IS"):
            text = "\\".join(_num_text(v) for v in vals if v is not None)
        else:
            text = "\\".join("" if v is None else str(v) for v in vals)
        raw = text.encode("utf-8")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
    if len(raw) % 2:
        raw += b"\x00"
    return raw


class InvalidDicomJson(ValueError):
    """DICOM JSON that no encoder can turn into valid Part-10 (an unknown VR, a bad tag key)."""


_HEX = frozenset("0123456789abcdefABCDEF")


def _tag_of(key: Any) -> int:
    """The tag of a DICOM JSON key (PS3.18 F.2.1.1: eight hex digits), or InvalidDicomJson."""
    if not isinstance(key, str) or len(key) != 8 or not _HEX.issuperset(key):
        raise InvalidDicomJson(f"{str(key)!r:.40} is not a DICOM JSON tag (eight hex digits)")
    tag = int(key, 16)
    if tag >> 16 == 0xFFFE:
        raise InvalidDicomJson(f"({key[:4]},{key[4:]}) is an item or delimitation tag, not a data element")
    return tag


def _encode_dataset(js: Mapping[str, Any], out: list[bytes]) -> None:
    import struct

    for key in sorted(js, key=_tag_of):
        el = js[key]
        if "BulkDataURI" in el:
            continue
        tag = _tag_of(key)
        vr = el.get("vr") or "UN"
        group, elem = tag >> 16, tag & 0xFFFF
        if not isinstance(vr, str) or vr.encode("ascii", "replace") not in VALID_VRS:
            raise InvalidDicomJson(f"({group:04X},{elem:04X}) has VR {str(vr)!r:.20}, not a DICOM VR")
        if tag == 0x00080005:
            el = {"vr": "CS", "Value": ["ISO_IR 192"]}  # PS3.18 F.2: JSON text is UTF-8
        if vr == "SQ":
            out.append(struct.pack("<HH2sHI", group, elem, b"SQ", 0, 0xFFFFFFFF))
            for item in el.get("Value", []) or []:
                out.append(struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
                _encode_dataset(item, out)
                out.append(struct.pack("<HHI", 0xFFFE, 0xE00D, 0))
            out.append(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
            continue
        raw = _encode_value(vr, el)
        if vr in _LONG:
            out.append(struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(raw)))
        else:
            if len(raw) > 0xFFFF:
                raise InvalidDicomJson(
                    f"({group:04X},{elem:04X}) {vr} value of {len(raw)} bytes: too long for the VR's 16-bit length"
                )
            out.append(struct.pack("<HH2sH", group, elem, vr.encode(), len(raw)))
        out.append(raw)


def _single_uid(js: dict[str, Any], tag: str, name: str) -> str:
    """The one UID value of an element, or ValueError naming what is wrong (PS3.5 §9.1)."""
    el = js.get(tag)
    if not isinstance(el, dict):
        raise ValueError(f"{name} ({tag[:4]},{tag[4:]}) missing")
    values = el.get("Value") or []
    if el.get("vr") != "UI" or len(values) != 1 or not isinstance(values[0], str):
        raise ValueError(f"{name} ({tag[:4]},{tag[4:]}) must be one UI value, got vr={el.get('vr')!r} {values!r:.80}")
    uid = values[0].strip(" \x00")
    # tolerant like the rest of ingest: a malformed but single UID still keys the instance
    # (PACS hold such files; the spool names them by hash); only no UID, or several, is refused
    if not uid or "\\" in uid:
        raise ValueError(f"{name} ({tag[:4]},{tag[4:]}) {uid!r:.80} is not one UID")
    return uid


def _instance_uids(js: dict[str, Any]) -> tuple[str, str]:
    """``(SOP Instance UID, SOP Class UID or "")`` under the rule C-STORE follows (:func:`instance_uid_problem`).

    The instance must have one SOP Instance UID that is a UID; a missing SOP Class UID is
    accepted as C-STORE accepts a data set without one (Orthanc's WADO-RS metadata omits
    it when the stored file has none).
    """
    from dicomlake.ingest.spool import instance_uid_problem

    uid = _single_uid(js, "00080018", "SOP Instance UID")
    sop_class = _single_uid(js, "00080016", "SOP Class UID") if "00080016" in js else ""
    problem = instance_uid_problem(uid, sop_class)
    if problem:
        raise ValueError(problem)
    return uid, sop_class


def json_to_part10_fast(js: dict[str, Any]) -> tuple[str, bytes]:
    """DICOM JSON → Explicit VR Little Endian Part-10 without pydicom (PS3.18 F.2 in reverse)."""
    from dicomlake.ingest.spool import encode_file_meta

    uid, sop_class = _instance_uids(js)
    if "00080005" not in js and any(el.get("vr") in ("PN", "LO", "SH", "LT", "ST", "UT", "UC") for el in js.values()):
        js = {**js, "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}}
    out: list[bytes] = [encode_file_meta(sop_class, uid, "1.2.840.10008.1.2.1")]
    _encode_dataset(_without_meta(js), out)
    return uid, b"".join(out)


def _without_meta(js: dict[str, Any]) -> dict[str, Any]:
    """``js`` without File Meta elements (group 0002): ours are written instead (PS3.10 §7.1)."""
    if not any(isinstance(k, str) and k.startswith("0002") for k in js):
        return js
    return {k: v for k, v in js.items() if not (isinstance(k, str) and k.startswith("0002"))}


def json_to_part10(js: dict[str, Any]) -> tuple[str, bytes]:
    """One instance's DICOM JSON as ``(SOPInstanceUID, Part-10 bytes)`` without bulk data.

    Raises ValueError, naming the element, when the JSON cannot become valid Part-10: the
    SOP Instance or Class UID is not one UID (the instance cannot be keyed), a tag or VR is
    not DICOM, or a value does not fit its VR (a number out of range, a value too long for
    a 16-bit length). The pull reports such a study as failed with the reason instead of
    spooling corrupt bytes. Over-long text within 64 KiB (an LO of 70 characters) is kept,
    as the rest of ingest keeps it.
    """
    uid, _sop_class = _instance_uids(js)
    try:
        _uid, data = json_to_part10_fast(js)
    except InvalidDicomJson:
        raise
    except Exception as exc:
        LOG.debug("fast JSON encoding failed (%s); using pydicom", exc)
        data = _part10_pydicom(js, uid)
    _check_written(js, uid, data)
    return uid, data


def _part10_pydicom(js: dict[str, Any], uid: str) -> bytes:
    """Part-10 bytes written by pydicom (it reads more JSON spellings than the fast path)."""
    import warnings

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each problem that matters is raised below
        try:
            ds = Dataset.from_json(strip_bulk(_without_meta(js)))
        except Exception as exc:
            raise ValueError(f"DICOM JSON not readable: {type(exc).__name__}: {str(exc)[:200]}") from exc
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID if "SOPClassUID" in ds else UID("")
        meta.MediaStorageSOPInstanceUID = uid  # type: ignore[assignment]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        buf = io.BytesIO()
        try:
            ds.save_as(buf, enforce_file_format=True)
        except Exception as exc:
            # pydicom names the element: "With tag (0028,0010) got exception: …"
            raise ValueError(f"DICOM JSON not encodable: {str(exc).splitlines()[0][:200]}") from exc
    return buf.getvalue()


def _check_written(js: Mapping[str, Any], uid: str, data: bytes) -> None:
    """ValueError naming the element unless our reader reads ``data`` back as ``js`` says.

    Every top-level element of the JSON (bulk data and File Meta aside) must be there with
    the VR the JSON gave: pydicom silently turns a value too long for a 16-bit length
    into UN and drops what it cannot encode; either is a value that did not fit its VR.
    """
    from dicomlake.dicom.reader import PIXEL_TAGS, parse_all
    from dicomlake.errors import ExtractionError

    try:
        header = parse_all(data)
    except ExtractionError as exc:
        raise ValueError(f"DICOM JSON encodes as unreadable Part-10: {exc}") from exc
    written = {t: vr for t, vr, _v, _n in header.elements}
    if header.pixel_data_length is not None:  # the reader stops at pixel data and notes its length
        written.update(dict.fromkeys(PIXEL_TAGS, None))
    sop = next((v for t, _vr, v, _n in header.elements if t == 0x00080018), None)
    if not isinstance(sop, bytes) or sop.strip(b"\x00 ").decode("utf-8", "replace") != uid:
        raise ValueError(f"SOP Instance UID {uid!r:.80} does not survive encoding (written: {sop!r:.80})")
    for key, el in js.items():
        if "BulkDataURI" in el or key.startswith("0002"):
            continue
        tag = _tag_of(key)
        name = f"({key[:4]},{key[4:]})"
        if tag not in written:
            raise ValueError(f"{name} {el.get('vr')} could not be encoded")
        vr = el.get("vr")
        if vr and written[tag] not in (vr, None) and not (tag == 0x00080005 and written[tag] == "CS"):
            raise ValueError(f"{name} value does not fit VR {vr} (written as {written[tag]})")


def encode_tolerant(ds: Any) -> bytes:
    """Part-10 bytes of ``ds``; elements whose value cannot be encoded are left out (and logged)."""
    from pydicom.filewriter import write_dataset

    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    except Exception:
        pass
    from pydicom.filebase import DicomBytesIO

    for elem in list(ds):
        probe = DicomBytesIO()
        probe.is_little_endian, probe.is_implicit_VR = True, False
        try:
            write_dataset(probe, ds.__class__({elem.tag: elem}))
        except Exception as exc:
            LOG.warning(
                "%s: element %s (%s) cannot be encoded (%s); left out",
                getattr(ds, "SOPInstanceUID", "?"),
                elem.tag,
                elem.keyword or "private",
                exc,
            )
            del ds[elem.tag]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def qido_filters(keys: Mapping[str, str]) -> dict[str, str]:
    """Matching keys as QIDO-RS query parameters (dates keep the DICOM range syntax)."""
    return {k: v for k, v in keys.items() if v != ""}


def pull_dicomweb(
    url: str,
    lake: str,
    *,
    keys: Mapping[str, str] | None = None,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    settings: Any = None,
    progress: Callable[[DicomwebReport], None] | None = None,
    service: Any = None,
    verify: bool | str = True,
) -> DicomwebReport:
    """Search ``url`` (QIDO-RS) and bring every matching instance's metadata into ``lake``.

    Parameters
    ----------
    url
        The DICOMweb root (``…/dicom-web``).
    keys
        QIDO-RS matching keys: ``{"ModalitiesInStudy": "MG", "StudyDate": "20240101-20241231"}``.
    token, user, password
        Bearer token, or HTTP basic credentials.
    """
    from dicomlake.config import get_settings
    from dicomlake.ingest.service import Service

    settings = settings or get_settings()
    t0 = time.perf_counter()
    rep = DicomwebReport(url=url)
    client = DicomwebClient(url, token=token, user=user, password=password, verify=verify)
    own = service is None
    svc = service or Service(lake, settings, listen=False).start()
    try:
        assert svc.spool is not None
        spool: Spool = svc.spool
        studies = list(client.search_for_studies(qido_filters(keys or {})))
        rep.studies = len(studies)
        for st in studies:
            study_uid = _value(st, "0020000D")
            if not study_uid:
                continue
            refused: list[str] = []
            try:
                for se in client.search_for_series(study_uid):
                    series_uid = _value(se, "0020000E")
                    if not series_uid:
                        continue
                    rep.series += 1
                    for js in client.retrieve_series_metadata(study_uid, series_uid):
                        for ptag in ("7FE00010", "7FE00008", "7FE00009"):
                            pel = js.get(ptag) or {}
                            rep.pixel_bytes += len(pel.get("InlineBinary", "")) * 3 // 4 + len(
                                pel.get("Value", []) or []
                            )
                        try:
                            uid, data = json_to_part10(js)
                        except ValueError as exc:  # this instance only; the rest of the study still comes
                            refused.append(f"instance {_value(js, '00080018')!r:.80}: {exc}")
                            continue
                        spool.put(uid, data, "dicomweb")
                        rep.instances += 1
                if refused:
                    rep.failed += 1
                    rep.failures.append(f"{study_uid}: {len(refused)} instance(s) refused — {'; '.join(refused[:3])}")
                else:
                    rep.done += 1
            except Exception as exc:
                rep.failed += 1
                rep.failures.append(f"{study_uid}: {exc}")
            rep.bytes_received, rep.requests = client.bytes_received, client.requests
            rep.seconds = time.perf_counter() - t0
            if progress:
                progress(rep)
        if svc.drainer is not None:
            svc.drainer.wait_idle(timeout=120)
    finally:
        client.close()
        if own:
            svc.stop()
    rep.bytes_received, rep.requests = client.bytes_received, client.requests
    rep.seconds = time.perf_counter() - t0
    return rep


__all__ = ["DicomwebClient", "DicomwebReport", "dt", "json_to_part10", "pull_dicomweb", "strip_bulk"]
