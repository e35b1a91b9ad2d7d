"""DICOMweb (PS3.18) under ``/dicomweb``: QIDO-RS on any attribute, WADO-RS, STOW-RS.

- QIDO-RS (§10.6): studies, series and instances, at every level of the URL hierarchy.
  Matching (PS3.4 C.2.2.2): single value, UID lists (``,`` or ``\\``), ``*``/``?`` wildcards,
  date/time ranges with open ends, fuzzy matching of person names (``fuzzymatching=true``:
  case-insensitive, any name component may start with the value), sequence matching
  (``Seq.Attr``), on **any** attribute the lake holds: typed columns directly, the rest through
  ``elements`` (nested and private ones too: ``(0019,"CREATOR",10)``). ``includefield``
  (``all`` or keywords/tags), ``limit``/``offset`` (a ``Warning: 299`` header when results are
  cut). Any other parameter is a 400 naming the supported ones.
- WADO-RS (§10.4): metadata of a study, series or instance straight from the lake's DICOM
  JSON; instances (``multipart/related; type="application/dicom"``) when the files are kept.
- STOW-RS (§10.5): ``multipart/related; type="application/dicom"`` into the ingest pipeline,
  with a per-instance result (Referenced/Failed SOP Sequence).

Results for the analyst role are de-identified by :class:`dicomlake.web.deidview.AnalystView`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response

from dicomlake.dicom.dictionary import keyword_to_tag, lookup, parse_tag
from dicomlake.errors import DicomlakeError, QueryError
from dicomlake.query import qido
from dicomlake.query.filters import Key, resolve_key
from dicomlake.web.audit_log import AuditEvent
from dicomlake.web.auth import Role
from dicomlake.web.context import WebContext, WebError, audit, ctx_of, require

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])

DICOM_JSON = "application/dicom+json"
LEVEL_KEY = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}

# PS3.18 Table 10.6.3-3/-4/-5: attributes a QIDO-RS response includes at each level.
STUDY_RETURN = (
    "00080005", "00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00080201",
    "00081190", "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206",
    "00201208",
)  # fmt: skip
SERIES_RETURN = (
    "00080005", "00080060", "00080201", "0008103E", "00081190", "0020000E", "00200011", "00201209",
    "00400244", "00400245", "00400275", "0020000D",
)  # fmt: skip
INSTANCE_RETURN = (
    "00080005", "00080016", "00080018", "00080056", "00080201", "00081190", "00200013", "00280010",
    "00280011", "00280100", "00280008", "0020000D", "0020000E",
)  # fmt: skip
COMPUTED = {
    "00080061": "ModalitiesInStudy",
    "00201206": "NumberOfStudyRelatedSeries",
    "00201208": "NumberOfStudyRelatedInstances",
    "00201209": "NumberOfSeriesRelatedInstances",
    "00080056": "InstanceAvailability",
    "00081190": "RetrieveURL",
}
CONTROL_PARAMS = ("limit", "offset", "fuzzymatching", "includefield", "accept", "charset")
IGNORED_PARAMS = ("emptyvaluematching", "multiplevaluematching")
"""PS3.18 §8.3.4.5/§8.3.4.6: optional; a server that does not support them ignores them with a Warning."""
SUPPORTED_HELP = (
    "supported QIDO-RS parameters: limit, offset, fuzzymatching, includefield, accept, "
    "emptyvaluematching and multiplevaluematching (ignored, with a Warning header), and "
    "{attributeID}={value} for any attribute by keyword or tag (PatientName, 00100010, "
    'CTDIPhantomTypeCodeSequence.CodeMeaning, (0019,"CREATOR",10))'
)
# includefield=all (PS3.18 §8.3.4.3) returns the attributes of the level searched and the levels above
# it: the Patient (PS3.3 C.7.1.1, C.7.1.3), General Study (C.7.2.1), Patient Study (C.7.2.2) and
# Clinical Trial Study (C.7.2.3) modules at the study level; General Series (C.7.3.1), Frame of
# Reference (C.7.4.1) and General Equipment (C.7.5.1) at the series level in addition.
PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet", "TimezoneOffsetFromUTC",
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "OtherPatientIDs",
    "OtherPatientNames", "PatientComments", "EthnicGroup", "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence", "PatientBreedDescription", "PatientBreedCodeSequence", "ResponsiblePerson",
    "ResponsiblePersonRole", "ResponsibleOrganization", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "QualityControlSubject", "PatientBirthName", "PatientMotherBirthName",
    "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "PatientReligiousPreference",
    "CountryOfResidence", "RegionOfResidence", "MilitaryRank", "BranchOfService", "StrainDescription",
    "ReferencedPatientSequence", "PatientAlternativeCalendar", "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar", "ClinicalTrialSponsorName", "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "ConsultingPhysicianIdentificationSequence",
    "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "RequestingServiceCodeSequence", "ReferencedStudySequence",
    "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence", "OtherStudyNumbers",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientWeight", "PatientBodyMassIndex", "MeasuredAPDimension", "MeasuredLateralDimension",
    "PatientSizeCodeSequence", "MedicalAlerts", "Allergies", "SmokingStatus", "PregnancyStatus",
    "LastMenstrualDate", "PatientState", "Occupation", "AdditionalPatientHistory", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence",
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription", "ConsentForClinicalTrialUseSequence",
)  # fmt: skip
SERIES_KEYWORDS = (
    "Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate", "SeriesTime",
    "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence", "ProtocolName", "SeriesDescription",
    "SeriesDescriptionCodeSequence", "OperatorsName", "OperatorIdentificationSequence",
    "ReferencedPerformedProcedureStepSequence", "RelatedSeriesSequence", "BodyPartExamined", "PatientPosition",
    "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "RequestAttributesSequence",
    "PerformedProcedureStepID", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime", "PerformedProcedureStepDescription",
    "PerformedProtocolCodeSequence", "CommentsOnThePerformedProcedureStep", "AnatomicalOrientationType",
    "TreatmentSessionUID", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Manufacturer", "InstitutionName", "InstitutionAddress", "StationName", "InstitutionalDepartmentName",
    "InstitutionalDepartmentTypeCodeSequence", "ManufacturerModelName", "ManufacturerDeviceClassUID",
    "DeviceSerialNumber", "SoftwareVersions", "GantryID", "UDISequence", "DeviceUID", "SpatialResolution",
    "DateOfManufacture", "DateOfInstallation", "DateOfLastCalibration", "TimeOfLastCalibration",
    "PixelPaddingValue",
)  # fmt: skip


@functools.cache
def _level_tags(keywords: tuple[str, ...]) -> frozenset[str]:
    k2t = keyword_to_tag()
    return frozenset(f"{k2t[k]:08X}" for k in keywords if k in k2t)


# STOW-RS failure reasons (PS3.18 Table 10.5.3-2 / PS3.4 Annex B)
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
STUDY_MISMATCH = 0xA900  # Data Set does not match the target (study in the URL)


CONFORMANCE_NOTES = """\
**Matching (PS3.4 C.2.2.2).** Single value and wildcard matching are **case-sensitive** for every
attribute, Person Names (Patient Name, Referring Physician's Name, …) included:
`PatientName=doe^jane` does not match `DOE^JANE`. With `fuzzymatching=true` (PS3.18 §8.3.4.1,
PS3.4 C.2.2.2.1.1) person-name matching is **case-insensitive** and the value may start any name
component (`PatientName=jan` matches `DOE^JANE`). A value of `*` alone, like an empty value, is
universal matching (PS3.4 C.2.2.2.4): entities with the attribute empty or absent match too.
`includefield=all` returns the attributes of the level searched and of the levels above it (study:
the Patient, General Study, Patient Study and Clinical Trial modules; series: also General Series,
Frame of Reference and General Equipment), never one instance's. `emptyvaluematching` and
`multiplevaluematching` (PS3.18 §8.3.4.5, §8.3.4.6) are not supported: they are ignored and the
response says so in a `Warning: 299 {+service}: "…"` header.

**Values that are not valid for their VR.** DS and IS values are served as JSON Numbers, or as
JSON Strings when they are not valid numbers (PS3.18 F.2.3.1 allows both), exactly as received
(`"1.06,0.206"`). For the analyst role, whose responses go through de-identification, such a
value is left out and the response carries a `Warning: 299` header naming the attribute; one bad
value never fails a page.

**WADO-RS metadata (PS3.18 §10.4.1.1.2)** is served as DICOM JSON (`application/dicom+json`) or as
the Native DICOM Model (`Accept: application/dicom+xml`, PS3.19 §A.1: `multipart/related;
type="application/dicom+xml"`, one document per instance). Top-level bulk data (Pixel Data, large
binary values) is given as a `BulkDataURI` when the instance's file is kept (STOW-RS with
`web.stow_keep_files`, default true, also under `dicomlake serve`; `dimse.keep_files`; files
ingested in place); `…/instances/{uid}/bulkdata/{tag}` returns it as `multipart/related;
type="application/octet-stream"`. Bulk data nested in sequences is not offered. The analyst role
is offered the de-identified instance's Pixel Data only.

**URLs in responses** (RetrieveURL, BulkDataURI) take their scheme, host and port from the
request (its `Host` header). dicomweb-client 0.61 sends `Host` without the port, so the URLs it
receives from a server on a port other than 80/443 lack the port; prefix the path with the base
URL you called.
"""
"""The Conformance Statement's notes on DICOMweb behaviour (util/gen_docs.py writes them)."""


# ---- request parsing -------------------------------------------------------------------------


@dataclass
class Match:
    """One ``{attributeID}={value}`` matching key."""

    text: str
    key: Key
    value: str
    top_tag: str | None
    vr: str | None


@dataclass
class Qido:
    level: str
    matches: list[Match] = field(default_factory=list)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    fuzzy: bool = False
    limit: int = 100
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def _tag_of_segment(seg: str) -> int | None:
    tag = parse_tag(seg) if re.fullmatch(r"[0-9A-Fa-f]{8}", seg.strip()) else None
    if tag is not None:
        return tag
    return keyword_to_tag().get(seg.strip())


def _key_text(attr: str) -> str:
    """Our filter key for a PS3.18 attributeID (keyword or tag, dotted for sequences)."""
    segs = attr.split(".") if '"' not in attr else [attr]
    out = []
    for s in segs:
        if re.fullmatch(r"[0-9A-Fa-f]{8}", s):
            out.append(f"({s[:4]},{s[4:]})")
        else:
            out.append(s)
    return ".".join(out)


def _top_tag(attr: str) -> tuple[str | None, str | None]:
    first = attr.split(".")[0]
    tag = _tag_of_segment(first)
    if tag is None:
        return None, None
    entry = lookup(tag)
    vr = entry[0] if entry else None
    if "." in attr:
        last = _tag_of_segment(attr.split(".")[-1])
        e2 = lookup(last) if last is not None else None
        vr = e2[0] if e2 else None
    return f"{tag:08X}", vr


def parse_qido(request: Request, level: str, ctx: WebContext) -> Qido:
    """Parse the query string; every problem is listed in one 400."""
    q = Qido(level=level, limit=ctx.settings.qido_default_limit)
    errors: list[str] = []
    for name, value in request.query_params.multi_items():
        low = name.lower()
        if low == "limit":
            if not (value.isascii() and value.isdigit()) or int(value) < 1:
                errors.append(f"limit={value!r}: a positive integer (at most {ctx.settings.qido_max_limit})")
            else:
                q.limit = min(int(value), ctx.settings.qido_max_limit)
        elif low == "offset":
            if not (value.isascii() and value.isdigit()):
                errors.append(f"offset={value!r}: a non-negative integer")
            else:
                q.offset = int(value)
        elif low == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                errors.append(f"fuzzymatching={value!r}: true or false")
            q.fuzzy = value.lower() == "true"
        elif low == "includefield":
            for f in re.split(r"[,\s]+", value.strip()):
                if not f:
                    continue
                if f.lower() == "all":
                    q.include_all = True
                    continue
                tag, _ = _top_tag(f)
                if tag is None:
                    errors.append(f"includefield={f!r} is neither a DICOM keyword nor a tag (ggggeeee)")
                else:
                    q.include.add(tag)
        elif low == "accept":
            if not any(a in value for a in (DICOM_JSON, "application/json", "*/*")):
                errors.append(f"accept={value!r}: only {DICOM_JSON} is served")
        elif low == "charset":
            continue
        elif low in IGNORED_PARAMS:
            # PS3.18 §8.3.4.5 (emptyvaluematching), §8.3.4.6 (multiplevaluematching): optional;
            # not supported here, so ignored with a Warning rather than refused
            q.warnings.append(f"{low}={value} is not supported and was ignored")
        else:
            if name in ("ModalitiesInStudy", "00080061"):
                name = "Modality"
            if name in {v for v in COMPUTED.values()} or name in COMPUTED:
                if value:
                    errors.append(f"{name}: a computed attribute; it is returned, it cannot be matched")
                else:
                    q.include.add(name if name in COMPUTED else next(k for k, v in COMPUTED.items() if v == name))
                continue
            top, vr = _top_tag(name)
            try:
                key = resolve_key(_key_text(name), ctx.data.columns)
            except QueryError:
                errors.append(f"unsupported parameter {name!r}: not a DICOM keyword or tag; {SUPPORTED_HELP}")
                continue
            if top is not None:
                q.include.add(top)
            if value == "" or set(value) == {"*"}:
                # universal matching: an empty value, or "*" alone (PS3.4 C.2.2.2.3, C.2.2.2.4),
                # matches every entity, those with the attribute empty or absent too
                continue
            q.matches.append(Match(name, key, value, top, key.vr or vr))
    if errors:
        raise WebError(400, errors[0] if len(errors) == 1 else f"{len(errors)} problems in the query", errors)
    return q


# ---- matching keys and scope (the SQL is in dicomlake.query.qido) ------------------------------


def _match_sql(m: Match, fuzzy: bool, ctx: WebContext, analyst: bool) -> tuple[str, list[object]]:
    """One matching key as a predicate of :mod:`dicomlake.query.qido` (403/400 when refused or invalid)."""
    value = m.value
    if analyst:
        tag = int(m.top_tag, 16) if m.top_tag else None
        leaf = _tag_of_segment(m.text.split(".")[-1]) if "." in m.text else tag
        policy = ctx.view.filter_policy(leaf, m.vr) if leaf is not None else None
        if "." in m.text and tag is not None and ctx.view.filter_policy(tag, "SQ") is None and policy != "keep":
            policy = None
        if policy is None:
            raise WebError(
                403,
                f"the analyst role may not match on {m.text}: the {ctx.view.profile.name!r} profile "
                "removes or replaces it; match on attributes it keeps (e.g. Modality, StationName, CTDIvol)",
            )
        if policy == "uid":
            vals = [v for v in re.split(r"[,\\]", value) if v]
            value = ",".join(ctx.view.original_uid(v) or "2.25.0" for v in vals)
    try:
        c = qido.match(_key_text(m.text), m.key, value, ctx.data.columns, vr=m.vr, fuzzy=fuzzy)
    except QueryError as exc:
        raise WebError(400, f"{m.text}={m.value!r}: {exc}") from exc
    return c.sql, list(c.params)


@dataclass(frozen=True)
class Scope:
    """The URL's study/series/instance as the lake knows them (an analyst's pseudonyms resolved)."""

    study: str | None
    series: str | None
    instance: str | None
    restrict: qido.Restriction | None


def _scope(ctx: WebContext, analyst: bool, study: str | None, series: str | None, instance: str | None) -> Scope:
    def real(uid: str | None) -> str | None:
        if uid is None or not analyst:
            return uid
        return ctx.view.original_uid(uid) or "2.25.0"

    return Scope(real(study), real(series), real(instance), ctx.view.restriction() if analyst else None)


# ---- QIDO-RS ---------------------------------------------------------------------------------


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicomweb"


def _check_accept(request: Request, *allowed: str) -> None:
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("*/*", "application/*", *allowed):
            return
        if media == "multipart/related" and "application/dicom" in allowed:
            return
    raise WebError(406, f"Accept: {accept!r} cannot be served here; ask for {' or '.join(allowed)}")


def warning_value(request: Request, text: str) -> str:
    """One ``Warning`` header value, ``299 {+service}: "text"`` (PS3.18 §8.3.4, RFC 7234 §5.5)."""
    clean = re.sub(r'[^\x20-\x7e]|["\\]', "?", text)[:300]
    return f'299 {request.url.hostname or "dicomlake"}: "{clean}"'


def with_warnings(resp: Response, request: Request, notes: Iterable[str]) -> Response:
    for note in dict.fromkeys(notes):
        resp.headers.append("Warning", warning_value(request, note))
    return resp


def _from_json_ok(tag: str, el: Any) -> bool:
    import warnings

    from pydicom.dataset import Dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            Dataset.from_json({tag: el})
        except Exception:
            return False
    return True


def _readable(js: dict[str, Any], dropped: list[str], path: str = "") -> dict[str, Any]:
    """``js`` without the elements pydicom cannot read (a DS ``"1.06,0.206"``), their tags in ``dropped``."""
    out: dict[str, Any] = {}
    for tag, el in js.items():
        if isinstance(el, dict) and el.get("vr") == "SQ" and isinstance(el.get("Value"), list):
            items = [_readable(it, dropped, f"{path}{tag}.") if isinstance(it, dict) else {} for it in el["Value"]]
            el = {**el, "Value": items}
        if _from_json_ok(tag, el):
            out[tag] = el
        else:
            dropped.append(f"({path}{tag[:4]},{tag[4:]})" if len(tag) == 8 else f"{path}{tag}")
    return out


def analyst_json(ctx: WebContext, items: list[str | dict[str, Any]], notes: list[str]) -> list[dict[str, Any] | None]:
    """The analyst's de-identified DICOM JSON of each item; one unreadable value never fails a page.

    An element whose value pydicom cannot read (a DS of ``1.06,0.206``: not a decimal string,
    PS3.5 §6.2) cannot go through the de-identification engine: it is left out and named in
    ``notes`` (a ``Warning`` header). An instance that still fails is left out, also noted.
    """
    try:
        return ctx.view.many_json(items)
    except Exception:
        pass
    out: list[dict[str, Any] | None] = []
    for item in items:
        src = json.loads(item) if isinstance(item, str) else item
        try:
            out.extend(ctx.view.many_json([src]))
            continue
        except Exception:
            pass
        dropped: list[str] = []
        clean = _readable(src, dropped)
        try:
            out.extend(ctx.view.many_json([clean]))
        except Exception as exc:
            notes.append(f"an instance could not be de-identified ({type(exc).__name__}) and was left out")
            out.append(None)
            continue
        if dropped:
            notes.append(
                f"values not valid for their VR (PS3.5 6.2) were left out of an instance: {', '.join(dropped[:10])}"
            )
    return out


def search(request: Request, level: str, study: str | None = None, series: str | None = None) -> Response:
    ctx = ctx_of(request)
    p = require(request, Role.ANALYST)
    analyst = p.role is Role.ANALYST
    _check_accept(request, DICOM_JSON, "application/json")
    q = parse_qido(request, level, ctx)
    rec = audit(request, AuditEvent.QUERY, action="E", query=str(request.url.query) or None)
    sc = _scope(ctx, analyst, study, series, None)
    matches = [qido.Condition(sql, tuple(ps)) for sql, ps in (_match_sql(m, q.fuzzy, ctx, analyst) for m in q.matches)]
    try:
        page = qido.search(
            ctx.data.reads,
            qido.Search(
                level, matches, study=sc.study, series=sc.series, restrict=sc.restrict, limit=q.limit, offset=q.offset
            ),
        )
    except QueryError as exc:
        raise WebError(400, f"query failed: {exc}") from exc
    cut = page.cut
    keys = page.keys
    counts = qido.counts(ctx.data.reads, level, keys, sc.restrict)
    reps = page.representatives
    js = ctx.data.json_by_uid(reps)
    docs: list[dict[str, Any] | None]
    notes = list(q.warnings)
    if analyst:
        docs = analyst_json(ctx, [js.get(u) or "{}" for u in reps], notes)
    else:
        docs = [json.loads(js[u]) if u in js else {} for u in reps]
    wanted = {"study": STUDY_RETURN, "series": SERIES_RETURN, "instance": INSTANCE_RETURN}[level]
    extra: tuple[str, ...] = ()
    if level == "series" and study is None:
        extra = STUDY_RETURN
    elif level == "instance":
        extra = SERIES_RETURN + (STUDY_RETURN if study is None else ())
    base = _base(request)
    out: list[dict[str, Any]] = []
    # includefield=all: the attributes of this level and those above it, not the representative
    # instance's own (PS3.18 §8.3.4.3; PS3.4 C.6.1.1: attributes belong to one level)
    level_tags: frozenset[str] | None = None
    if level == "study":
        level_tags = _level_tags(PATIENT_STUDY_KEYWORDS)
    elif level == "series":
        level_tags = _level_tags(PATIENT_STUDY_KEYWORDS + SERIES_KEYWORDS)
    for key, doc in zip(keys, docs, strict=True):
        if doc is None:
            continue
        if q.include_all:
            tags = {t for t in doc if level_tags is None or t in level_tags} | set(wanted) | set(extra) | q.include
        else:
            tags = set(wanted) | set(extra) | q.include
        res: dict[str, Any] = {}
        for t in sorted(tags):
            if t in COMPUTED:
                continue
            if t in doc:
                res[t] = doc[t]
            elif t in wanted:
                entry = lookup(int(t, 16))
                res[t] = {"vr": entry[0] if entry else "UN"}
        c = counts.get(key, {})
        shown_key = (doc.get({"study": "0020000D", "series": "0020000E", "instance": "00080018"}[level]) or {}).get(
            "Value", [key]
        )[0]
        study_uid = (doc.get("0020000D") or {}).get("Value", [""])[0]
        series_uid = (doc.get("0020000E") or {}).get("Value", [""])[0]
        if level == "study":
            res["00080061"] = {"vr": "CS", "Value": c.get("mods") or []}
            res["00201206"] = {"vr": "IS", "Value": [c.get("n_series", 0)]}
            res["00201208"] = {"vr": "IS", "Value": [c.get("n", 0)]}
            url = f"{base}/studies/{shown_key}"
        elif level == "series":
            res["00201209"] = {"vr": "IS", "Value": [c.get("n", 0)]}
            url = f"{base}/studies/{study_uid}/series/{shown_key}"
        else:
            url = f"{base}/studies/{study_uid}/series/{series_uid}/instances/{shown_key}"
        res["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
        res["00081190"] = {"vr": "UR", "Value": [url]}
        out.append(dict(sorted(res.items())))
    rec.n_instances = sum(int(counts.get(k_, {}).get("n", 0)) for k_ in keys) if level != "instance" else len(out)
    if level == "study":
        rec.studies = keys
    headers = {}
    if cut:
        headers["Warning"] = (
            f'299 {request.url.hostname}: "The number of results exceeded the maximum supported by the '
            f'server. Additional results can be requested." (limit={q.limit}, offset={q.offset})'
        )
    return with_warnings(Response(json.dumps(out), media_type=DICOM_JSON, headers=headers), request, notes)


# PS3.18 Table 10.6.1-5: the matching keys a QIDO-RS provider supports at each level (any other
# attribute matches too; these are the ones the OpenAPI description names)
MATCH_KEYS = {
    "study": (
        ("StudyDate", "DA: a date or a range (20190101-20191231, open ends allowed)"),
        ("StudyTime", "TM: a time or a range"),
        ("AccessionNumber", "SH; * and ? wildcards"),
        ("ModalitiesInStudy", "CS: a modality of any series of the study"),
        ("ReferringPhysicianName", "PN; wildcards; fuzzymatching"),
        ("PatientName", "PN; case-sensitive unless fuzzymatching=true"),
        ("PatientID", "LO; wildcards"),
        ("StudyInstanceUID", "UI: one UID or a list (, or \\)"),
        ("StudyID", "SH; wildcards"),
    ),
    "series": (
        ("Modality", "CS"),
        ("SeriesInstanceUID", "UI: one UID or a list"),
        ("SeriesNumber", "IS"),
        ("PerformedProcedureStepStartDate", "DA: a date or a range"),
        ("PerformedProcedureStepStartTime", "TM: a time or a range"),
        ("RequestAttributesSequence.ScheduledProcedureStepID", "SH, in the sequence"),
        ("RequestAttributesSequence.RequestedProcedureID", "SH, in the sequence"),
    ),
    "instance": (
        ("SOPClassUID", "UI: one UID or a list"),
        ("SOPInstanceUID", "UI: one UID or a list"),
        ("InstanceNumber", "IS"),
    ),
}


def qido_parameters(*levels: str) -> dict[str, Any]:
    """OpenAPI ``parameters`` of a QIDO-RS route (PS3.18 §8.3.4, §10.6.1.2): the matching keys of
    ``levels`` and the query control parameters."""
    params: list[dict[str, Any]] = []
    for level in levels:
        for name, text in MATCH_KEYS[level]:
            params.append(
                {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
            )
    ctl: list[tuple[str, dict[str, Any], str]] = [
        ("limit", {"type": "integer", "minimum": 1}, "results per page (PS3.18 §8.3.4.4)"),
        ("offset", {"type": "integer", "minimum": 0}, "results to skip (PS3.18 §8.3.4.4)"),
        ("fuzzymatching", {"type": "boolean"}, "case-insensitive person-name matching (PS3.18 §8.3.4.1)"),
        (
            "includefield",
            {"type": "array", "items": {"type": "string"}},
            "attributes to return besides the required ones: keywords, tags (ggggeeee), or all (PS3.18 §8.3.4.3)",
        ),
        ("emptyvaluematching", {"type": "boolean"}, "not supported: ignored with a Warning (PS3.18 §8.3.4.5)"),
        ("multiplevaluematching", {"type": "boolean"}, "not supported: ignored with a Warning (PS3.18 §8.3.4.6)"),
    ]
    for name, schema, text in ctl:
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "description": text, "schema": schema}
        if schema["type"] == "array":
            param.update(style="form", explode=True)
        params.append(param)
    return {"parameters": params}


@router.get("/studies", summary="QIDO-RS: search for studies", openapi_extra=qido_parameters("study"))
def search_for_studies(request: Request) -> Response:
    return search(request, "study")


@router.get("/series", summary="QIDO-RS: search for series", openapi_extra=qido_parameters("study", "series"))
def search_for_series(request: Request) -> Response:
    return search(request, "series")


@router.get(
    "/instances",
    summary="QIDO-RS: search for instances",
    openapi_extra=qido_parameters("study", "series", "instance"),
)
def search_for_instances(request: Request) -> Response:
    return search(request, "instance")


@router.get(
    "/studies/{study}/series",
    summary="QIDO-RS: search for series of a study",
    openapi_extra=qido_parameters("series"),
)
def search_for_study_series(request: Request, study: str) -> Response:
    return search(request, "series", study)


@router.get(
    "/studies/{study}/instances",
    summary="QIDO-RS: search for instances of a study",
    openapi_extra=qido_parameters("series", "instance"),
)
def search_for_study_instances(request: Request, study: str) -> Response:
    return search(request, "instance", study)


@router.get(
    "/studies/{study}/series/{series}/instances",
    summary="QIDO-RS: search for instances of a series",
    openapi_extra=qido_parameters("instance"),
)
def search_for_series_instances(request: Request, study: str, series: str) -> Response:
    return search(request, "instance", study, series)


# ---- WADO-RS metadata ------------------------------------------------------------------------

DICOM_XML = "application/dicom+xml"
NATIVE_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def _xml_text(v: Any) -> str:
    """A value as XML 1.0 character data: characters XML cannot carry become U+FFFD."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    return _XML_BAD.sub("\ufffd", str(v))


def _private_creator(doc: dict[str, Any], tag: int) -> str | None:
    group, elem = tag >> 16, tag & 0xFFFF
    if not group & 1 or elem < 0x1000:
        return None
    el = doc.get(f"{group:04X}{elem >> 8:04X}") or {}
    vals = el.get("Value") or []
    return str(vals[0]) if vals else None


def xml_dataset(doc: dict[str, Any], parent: Any) -> None:
    """DICOM JSON (PS3.18 Annex F) as Native DICOM Model elements (PS3.19 §A.1) under ``parent``."""
    from xml.etree.ElementTree import SubElement

    for key in sorted(doc):
        el = doc[key]
        if not isinstance(el, dict) or not re.fullmatch(r"[0-9A-Fa-f]{8}", key):
            continue
        tag = int(key, 16)
        vr = str(el.get("vr") or "UN")
        attrs = {"tag": key.upper(), "vr": vr}
        entry = lookup(tag) if not (tag >> 16) & 1 else None
        if entry is not None and entry[2]:
            attrs["keyword"] = entry[2]
        creator = _private_creator(doc, tag)
        if creator is not None:
            # PS3.19 §A.1.1: a private data element is named by its creator and its element
            # number within the block (gggg00ee), as dcmtk's dcm2xml --native-format writes it
            attrs["tag"] = f"{tag >> 16:04X}00{tag & 0xFF:02X}"
            attrs["privateCreator"] = _xml_text(creator)
        node = SubElement(parent, "DicomAttribute", attrs)
        values = el.get("Value")
        if "BulkDataURI" in el:
            SubElement(node, "BulkData", {"uri": _xml_text(el["BulkDataURI"])})
        elif "InlineBinary" in el:
            SubElement(node, "InlineBinary").text = _xml_text(el["InlineBinary"])
        elif not isinstance(values, list):
            continue
        elif vr == "SQ":
            for n, item in enumerate(values, 1):
                xml_dataset(item if isinstance(item, dict) else {}, SubElement(node, "Item", {"number": str(n)}))
        elif vr == "PN":
            for n, v in enumerate(values, 1):
                pn = SubElement(node, "PersonName", {"number": str(n)})
                if not isinstance(v, dict):
                    v = {"Alphabetic": "" if v is None else str(v)}
                for group in ("Alphabetic", "Ideographic", "Phonetic"):
                    text = v.get(group)
                    if not text:
                        continue
                    g = SubElement(pn, group)
                    for part, comp in zip(_PN_PARTS, str(text).split("^"), strict=False):
                        if comp:
                            SubElement(g, part).text = _xml_text(comp)
        else:
            for n, v in enumerate(values, 1):
                val = SubElement(node, "Value", {"number": str(n)})
                if v is not None:
                    val.text = _xml_text(v)


def to_native_xml(doc: dict[str, Any]) -> bytes:
    """One instance's DICOM JSON as a Native DICOM Model document (PS3.19 §A.1), UTF-8."""
    from xml.etree.ElementTree import Element, tostring

    root = Element("NativeDicomModel", {"xmlns": NATIVE_NS, "xml:space": "preserve"})
    xml_dataset(doc, root)
    body: bytes = tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def _wants(request: Request, *offered: str) -> str:
    """The media type to answer with: the first of ``offered`` the Accept header allows (else 406)."""
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return offered[0]
    types = []
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        typ = re.search(r'type\s*=\s*"?([^";,]+)"?', part, re.I)
        types.append(typ.group(1).strip().lower() if media == "multipart/related" and typ else media)
    for media in types:
        if media in offered:
            return media
        if media in ("*/*", "application/*", "multipart/related"):
            return offered[0]
    raise WebError(406, f"Accept: {accept!r} cannot be served here; ask for {' or '.join(offered)}")


def _first(doc: dict[str, Any], tag: str) -> str:
    vals = (doc.get(tag) or {}).get("Value") or [""]
    return str(vals[0])


def _kept(path: str | None) -> bool:
    if not path:
        return False
    if "!/" in path:
        return Path(path.partition("!/")[0]).is_file()
    return Path(path).is_file()


NATIVE_TS = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
"""Transfer syntaxes whose Pixel Data is native (OW above 8 bits allocated); others encapsulate it (OB)."""


def _bulk_from_lake(ctx: WebContext, rows: list[dict[str, Any]], analyst: bool) -> dict[str, list[tuple[str, str]]]:
    """(tag, VR) of each kept instance's top-level bulk data candidates, from the lake: no file is read.

    Pixel Data from ``instances.pixel_data_bytes`` (VR ``""``: decided from the JSON's Bits
    Allocated); other binary elements (OB, OW, UN, …) from ``elements`` rows (those the JSON
    holds a value of are dropped by :func:`_with_bulk`). The analyst role gets Pixel Data only.
    """
    out: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        if not _kept(r["path"]):
            continue
        out[r["uid"]] = (
            [("7FE00010", "OB" if r.get("ts") and r["ts"] not in NATIVE_TS else "")] if r.get("pix") is not None else []
        )
    if analyst or not out:
        return out
    try:
        els = qido.binary_elements(ctx.data.reads, list(out), BULK_VRS)
    except Exception:  # a lake without an elements table: Pixel Data only
        els = []
    for e in els:
        tag = str(e["t"]).upper()
        if len(tag) == 8 and not tag.startswith("0002") and not tag.endswith("0000"):
            out[e["u"]].append((tag, str(e["vr"])))
    return out


def _with_bulk(doc: dict[str, Any], bulk: list[tuple[str, str]], url: str) -> dict[str, Any]:
    """``doc`` with a BulkDataURI for each candidate it holds no value of, in tag order."""
    add = {}
    for tag, vr in bulk:
        if tag in doc:
            continue
        if not vr:  # Pixel Data in a native transfer syntax: OW above 8 bits allocated (PS3.5 §8.2)
            bits = ((doc.get("00280100") or {}).get("Value") or [16])[0]
            vr = "OW" if not isinstance(bits, int | float) or bits > 8 else "OB"
        add[tag] = {"vr": vr, "BulkDataURI": f"{url}/bulkdata/{tag}"}
    return dict(sorted({**doc, **add}.items())) if add else doc


def _open_kept(ctx: WebContext, path: str | None, analyst: bool, uid: str) -> Any:
    """The kept file as a pydicom dataset (large values deferred), de-identified for the analyst; None if gone."""
    import warnings

    import pydicom

    if not path:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if analyst or "!/" in path:
                data = ctx.data.read_file(path)
                if data is None:
                    return None
                if analyst:
                    with ctx.view._lock:
                        data = ctx.view.engine.deidentify_bytes(data, source=uid)
                    if data is None:
                        return None
                return pydicom.dcmread(io.BytesIO(data), force=True)
            if not Path(path).is_file():
                return None
            return pydicom.dcmread(path, defer_size=1024, force=True)
        except Exception:
            return None


def _instances(
    request: Request, study: str, series: str | None, instance: str | None, fields: tuple[str, ...]
) -> tuple[list[dict[str, Any]], bool]:
    ctx = ctx_of(request)
    p = require(request, Role.ANALYST)
    analyst = p.role is Role.ANALYST
    sc = _scope(ctx, analyst, study, series, instance)
    rows = qido.instances(
        ctx.data.reads, fields, study=sc.study, series=sc.series, instance=sc.instance, restrict=sc.restrict
    )
    if not rows:
        what = (
            f"study {study}" + (f", series {series}" if series else "") + (f", instance {instance}" if instance else "")
        )
        raise WebError(
            404, f"no instances of {what} in this lake" + (" that the analyst role may see" if analyst else "")
        )
    return rows, analyst


def retrieve_metadata(request: Request, study: str, series: str | None = None, instance: str | None = None) -> Response:
    """WADO-RS metadata (PS3.18 §10.4.1.1.2): DICOM JSON, or the Native DICOM Model in XML.

    Elements the lake's JSON leaves out because they are bulk data (pixel data, large binary
    values) are given as ``BulkDataURI`` (PS3.18 §8.7.3.3.2) when the instance's file is kept:
    ``…/instances/{uid}/bulkdata/{tag}`` retrieves them. The analyst gets Pixel Data's only
    (from the de-identified instance); instances whose files are not kept have none.
    """
    ctx = ctx_of(request)
    media = _wants(request, DICOM_JSON, "application/json", DICOM_XML)
    rows, analyst = _instances(
        request,
        study,
        series,
        instance,
        ("uid", "study", "series", "path", "pix", "ts"),
    )
    uids = [r["uid"] for r in rows]
    js = ctx.data.json_by_uid(uids)
    audit(
        request,
        AuditEvent.INSTANCES_ACCESSED,
        action="R",
        instances=uids,
        studies=sorted({r["study"] for r in rows}),
    )
    notes: list[str] = []
    analyst_docs = analyst_json(ctx, [js.get(u, "{}") for u in uids], notes) if analyst else []
    base = _base(request)
    bulk_of = _bulk_from_lake(ctx, rows, analyst)
    out: list[dict[str, Any]] = []
    texts: list[str] = []  # JSON answers: the lake's own text where nothing is added (no parse)
    for k, r in enumerate(rows):
        bulk = bulk_of.get(r["uid"], [])
        if analyst:
            doc = analyst_docs[k]
            if doc is None:
                continue
        else:
            text = js.get(r["uid"])
            if text is None:
                continue
            if not bulk and media != DICOM_XML:
                texts.append(text)
                continue
            doc = json.loads(text)
        if bulk:
            st, se, sop = (_first(doc, t) for t in ("0020000D", "0020000E", "00080018"))
            doc = _with_bulk(doc, bulk, f"{base}/studies/{st}/series/{se}/instances/{sop}")
        if media == DICOM_XML:
            out.append(doc)
        else:
            texts.append(json.dumps(doc))
    if media == DICOM_XML:
        boundary = secrets.token_hex(16)
        body = b"".join(
            f"--{boundary}\r\nContent-Type: {DICOM_XML}\r\n\r\n".encode() + to_native_xml(d) + b"\r\n" for d in out
        )
        body += f"--{boundary}--\r\n".encode()
        resp = Response(body, media_type=f'multipart/related; type="{DICOM_XML}"; boundary={boundary}')
    else:
        resp = Response("[" + ",".join(texts) + "]", media_type=DICOM_JSON)
    return with_warnings(resp, request, notes)


@router.get("/studies/{study}/metadata", summary="WADO-RS: study metadata")
def retrieve_study_metadata(request: Request, study: str) -> Response:
    return retrieve_metadata(request, study)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: series metadata")
def retrieve_series_metadata(request: Request, study: str, series: str) -> Response:
    return retrieve_metadata(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata", summary="WADO-RS: instance metadata")
def retrieve_instance_metadata(request: Request, study: str, series: str, instance: str) -> Response:
    return retrieve_metadata(request, study, series, instance)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
    summary="WADO-RS: bulk data of an instance (a BulkDataURI of its metadata)",
)
def retrieve_bulkdata(request: Request, study: str, series: str, instance: str, tag: str) -> Response:
    """PS3.18 §10.4.1.1.4 (Bulkdata resource): ``multipart/related; type="application/octet-stream"``,
    one part with the element's value as kept in the file."""
    ctx = ctx_of(request)
    require(request, Role.ANALYST)
    _wants(request, "application/octet-stream")
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
        raise WebError(404, f"bulk data {tag!r}: not a tag (eight hex digits, as in the BulkDataURI)")
    rows, analyst = _instances(
        request,
        study,
        series,
        instance,
        ("uid", "study", "path"),
    )
    r = rows[0]
    if analyst and tag.upper() != "7FE00010":
        raise WebError(404, f"bulk data {tag}: the analyst role is given pixel data (7FE00010) only")
    ds = _open_kept(ctx, r["path"], analyst, r["uid"])
    if ds is None:
        raise WebError(404, f"the file of instance {instance} is not kept (or could not be read): no bulk data")
    try:
        raw = ds.get_item(int(tag, 16))
    except Exception:
        raw = None
    if raw is None:
        raise WebError(404, f"instance {instance} has no element ({tag[:4]},{tag[4:]})")
    value = raw.value
    if value is None:
        value = b""
    elif isinstance(value, str):
        value = value.encode("utf-8")
    elif not isinstance(value, bytes):
        value = bytes(value) if isinstance(value, bytearray | memoryview) else str(value).encode()
    audit(request, AuditEvent.INSTANCES_TRANSFERRED, action="R", instances=[r["uid"]], studies=[r["study"]])
    boundary = secrets.token_hex(16)
    body = (
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(value)}\r\n\r\n".encode()
        + value
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return Response(body, media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


# ---- WADO-RS instances ---------------------------------------------------------------------


def retrieve(request: Request, study: str, series: str | None = None, instance: str | None = None) -> Response:
    ctx = ctx_of(request)
    _check_accept(request, "application/dicom")
    accept = request.headers.get("accept", "")
    ts = re.search(r'transfer-syntax\s*=\s*"?([0-9.*]+)"?', accept)
    rows, analyst = _instances(
        request,
        study,
        series,
        instance,
        ("uid", "study", "path", "ts"),
    )
    if ts and ts.group(1) != "*" and any(r["ts"] and r["ts"] != ts.group(1) for r in rows):
        raise WebError(
            406,
            f"transfer-syntax={ts.group(1)} requested; instances are kept as received "
            f"({', '.join(sorted({str(r['ts']) for r in rows}))}): ask for transfer-syntax=* or omit it",
        )
    boundary = secrets.token_hex(16)
    missing = [r["uid"] for r in rows if not r["path"]]
    if len(missing) == len(rows):
        raise WebError(404, f"the lake keeps metadata only for {len(rows)} instance(s); their files were not kept")
    sent: list[str] = []
    audit(
        request,
        AuditEvent.INSTANCES_TRANSFERRED,
        action="R",
        instances=sent,
        studies=sorted({r["study"] for r in rows}),
    )

    def parts() -> Iterable[bytes]:
        for r in rows:
            data = ctx.data.read_file(r["path"])
            if data is None:
                continue
            if analyst:
                with ctx.view._lock:
                    data = ctx.view.engine.deidentify_bytes(data, source=r["uid"])
                if data is None:
                    continue
            sent.append(r["uid"])
            yield (
                (f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len(data)}\r\n\r\n").encode()
                + data
                + b"\r\n"
            )
        yield f"--{boundary}--\r\n".encode()

    body = b"".join(parts())
    if not sent:
        raise WebError(404, "none of the requested instances' files could be read (moved or deleted)")
    return Response(
        body,
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
def retrieve_study(request: Request, study: str) -> Response:
    return retrieve(request, study)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def retrieve_series(request: Request, study: str, series: str) -> Response:
    return retrieve(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="WADO-RS: retrieve an instance")
def retrieve_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return retrieve(request, study, series, instance)


# ---- STOW-RS -------------------------------------------------------------------------------


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a ``multipart/related`` body: (headers, content)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.I)
    if not m:
        raise WebError(400, f"Content-Type {content_type!r} has no boundary parameter")
    delim = b"--" + m.group(1).encode()
    parts = []
    chunks = body.split(delim)
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def _item(sop_class: str, sop_instance: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [sop_instance]} if sop_instance else {"vr": "UI"},
    }
    out.update(extra)
    return out


async def store(request: Request, study: str | None) -> Response:
    ctx = ctx_of(request)
    require(request)  # admin only
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/related"):
        raise WebError(415, f'Content-Type {ctype!r}: STOW-RS takes multipart/related; type="application/dicom"')
    if "application/dicom+json" in ctype or "application/dicom+xml" in ctype:
        raise WebError(415, "STOW-RS of metadata with bulk data is not supported; send application/dicom parts")
    if not ctx.data.can_ingest:
        raise WebError(503, f"the lake {ctx.lake} is open read-only here; send STOW-RS to the running service")
    limit = ctx.settings.stow_max_bytes
    declared = request.headers.get("content-length")
    too_big = WebError(
        413, f"STOW-RS body larger than web.stow_max_bytes={limit:,} bytes; send the instances in several requests"
    )
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    body = b"".join(chunks)
    parts = split_multipart(body, ctype)
    if not parts:
        raise WebError(400, "the multipart body holds no parts")
    import pydicom

    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    files: list[tuple[Path, str, str, str]] = []
    dest = ctx.data.files_dir()
    for headers, content in parts:
        pt = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if pt != "application/dicom":
            failed.append(_item("", "", **{"00081197": {"vr": "US", "Value": [CANNOT_UNDERSTAND]}}))
            continue
        try:
            ds = pydicom.dcmread(
                io.BytesIO(content),
                stop_before_pixels=True,
                force=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
            )
            sop_class = str(ds.get("SOPClassUID", "") or "")
            sop_inst = str(ds.get("SOPInstanceUID", "") or "")
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
        except Exception:
            sop_class = sop_inst = study_uid = ""
        if not sop_inst:
            failed.append(_item(sop_class, sop_inst, **{"00081197": {"vr": "US", "Value": [CANNOT_UNDERSTAND]}}))
            continue
        if study is not None and study_uid != study:
            failed.append(_item(sop_class, sop_inst, **{"00081197": {"vr": "US", "Value": [STUDY_MISMATCH]}}))
            continue
        name = hashlib.sha256(sop_inst.encode()).hexdigest()[:32] + ".dcm"
        sub = dest / hashlib.sha256(study_uid.encode()).hexdigest()[:16]
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / name
        tmp = path.with_suffix(".part")
        tmp.write_bytes(content)
        tmp.replace(path)
        files.append((path, sop_class, sop_inst, study_uid))
    if files:
        try:
            ctx.data.ingest([f[0] for f in files])
        except DicomlakeError as exc:
            raise WebError(503, f"STOW-RS could not ingest: {exc}") from exc
        uids = [f[2] for f in files]
        have = {r["uid"]: r["path"] for r in qido.instances_by_uid(ctx.data.reads, uids, ("uid", "path"))}
        base = _base(request)
        for path, sop_class, sop_inst, study_uid in files:
            if sop_inst in have:
                stored.append(
                    _item(
                        sop_class,
                        sop_inst,
                        **{
                            "00081190": {
                                "vr": "UR",
                                "Value": [f"{base}/studies/{study_uid}/series/-/instances/{sop_inst}"],
                            }
                        },
                    )
                )
                if not ctx.settings.stow_keep_files and have[sop_inst] == str(path):
                    path.unlink(missing_ok=True)
            else:
                failed.append(_item(sop_class, sop_inst, **{"00081197": {"vr": "US", "Value": [PROCESSING_FAILURE]}}))
    # fix RetrieveURLs with the real series
    if stored:
        uids = [s["00081155"]["Value"][0] for s in stored]
        series_of = {r["uid"]: r["series"] for r in qido.instances_by_uid(ctx.data.reads, uids, ("uid", "series"))}
        for s in stored:
            u = s["00081155"]["Value"][0]
            s["00081190"]["Value"][0] = s["00081190"]["Value"][0].replace(
                "/series/-/", f"/series/{series_of.get(u, '-')}/"
            )
    result: dict[str, Any] = {}
    if study is not None:
        result["00081190"] = {"vr": "UR", "Value": [f"{_base(request)}/studies/{study}"]}
    if failed:
        result["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        result["00081199"] = {"vr": "SQ", "Value": stored}
    audit(
        request,
        AuditEvent.INSTANCES_TRANSFERRED,
        action="C",
        instances=[s["00081155"]["Value"][0] for s in stored],
        studies=sorted({f[3] for f in files}),
        detail=f"{len(stored)} stored, {len(failed)} failed" if failed else None,
    )
    status = 200 if not failed else (409 if not stored else 202)
    return Response(json.dumps(result), status_code=status, media_type=DICOM_JSON)


@router.post("/studies", summary="STOW-RS: store instances")
async def store_instances(request: Request) -> Response:
    return await store(request, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def store_study_instances(request: Request, study: str) -> Response:
    return await store(request, study)


__all__ = ["router", "split_multipart"]
