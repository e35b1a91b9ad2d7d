"""Patient and study from the Modality Worklist (C-FIND, PS3.4 K.6) instead of typed by hand.

:func:`find_worklist` asks a Modality Worklist provider (a RIS, a broker, dcmtk
``wlmscpfs``, Orthanc's ModalityWorklists plugin) for the scheduled procedure steps that
match an accession number, a patient ID, a scheduled date, station or modality;
:meth:`WorklistItem.patient_study` turns the chosen item into the
:class:`~dicomlake.write.capture.PatientStudy` that ``wrap`` writes: patient, Study
Instance UID, accession, referring physician, the requested procedure as Study
Description and Procedure Code Sequence, and a Request Attributes Sequence (PS3.3
Table 10-9) that ties the new series to the order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicomlake.errors import AssociationError, WriteError
from dicomlake.write.send import Peer, associate

if TYPE_CHECKING:
    from dicomlake.write.capture import PatientStudy

MWL_FIND = "1.2.840.10008.5.1.4.31"
"""Modality Worklist Information Model – FIND SOP Class."""
_DATE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")

# Return keys asked for at the top level and in the Scheduled Procedure Step item (PS3.4 K.6.1.2.2).
TOP_KEYS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "AccessionNumber", "ReferringPhysicianName", "RequestingPhysician",
    "RequestedProcedureID", "RequestedProcedureDescription",
)  # fmt: skip
SPS_KEYS = (
    "Modality", "ScheduledStationAETitle", "ScheduledStationName", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID", "ScheduledProcedureStepLocation",
)  # fmt: skip


@dataclass(frozen=True)
class WorklistQuery:
    """Matching keys; ``None`` (or empty) matches anything (universal matching)."""

    accession_number: str | None = None
    patient_id: str | None = None
    scheduled_date: str | None = None
    """YYYYMMDD, or a range YYYYMMDD-YYYYMMDD (either end open)."""
    station_ae_title: str | None = None
    station_name: str | None = None
    modality: str | None = None

    def describe(self) -> str:
        parts = [
            f"{label} {value}"
            for label, value in (
                ("accession", self.accession_number),
                ("patient ID", self.patient_id),
                ("date", self.scheduled_date),
                ("station AE", self.station_ae_title),
                ("station", self.station_name),
                ("modality", self.modality),
            )
            if value
        ]
        return ", ".join(parts) or "any item"

    def identifier(self) -> Dataset:
        """The C-FIND identifier: these matching keys plus every return key (empty)."""
        if self.scheduled_date and not _DATE.match(self.scheduled_date):
            raise WriteError(f"--scheduled-date {self.scheduled_date!r}: write YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        ds = Dataset()
        for keyword in TOP_KEYS:
            setattr(ds, keyword, "")
        ds.RequestedProcedureCodeSequence = DicomSequence()
        if self.accession_number:
            ds.AccessionNumber = self.accession_number
        if self.patient_id:
            ds.PatientID = self.patient_id
        sps = Dataset()
        for keyword in SPS_KEYS:
            setattr(sps, keyword, "")
        sps.ScheduledProtocolCodeSequence = DicomSequence()
        if self.modality:
            sps.Modality = self.modality.upper()
        if self.station_ae_title:
            sps.ScheduledStationAETitle = self.station_ae_title
        if self.station_name:
            sps.ScheduledStationName = self.station_name
        if self.scheduled_date:
            sps.ScheduledProcedureStepStartDate = self.scheduled_date
        ds.ScheduledProcedureStepSequence = DicomSequence([sps])
        return ds


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _shown(value: str, limit: int = 64) -> str:
    """A provider's value for a terminal: printable characters only (others escaped), cut to *limit*."""
    if not value:
        return "-"
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _codes(ds: Dataset, keyword: str) -> DicomSequence | None:
    """A code sequence whose items have the three basic code attributes, else None."""
    items = [
        item
        for item in ds.get(keyword) or []
        if item.get("CodeValue") and item.get("CodingSchemeDesignator") and item.get("CodeMeaning")
    ]
    if not items:
        return None
    out = DicomSequence()
    for item in items:
        code = Dataset()
        code.CodeValue = item.CodeValue
        code.CodingSchemeDesignator = item.CodingSchemeDesignator
        if item.get("CodingSchemeVersion"):
            code.CodingSchemeVersion = item.CodingSchemeVersion
        code.CodeMeaning = item.CodeMeaning
        out.append(code)
    return out


@dataclass(frozen=True)
class WorklistItem:
    """One scheduled procedure step as the worklist provider answered it."""

    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    accession_number: str
    referring_physician_name: str
    requested_procedure_id: str
    requested_procedure_description: str
    modality: str
    station_ae_title: str
    station_name: str
    start_date: str
    start_time: str
    step_id: str
    step_description: str
    dataset: Dataset = field(compare=False, repr=False)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> WorklistItem:
        steps = ds.get("ScheduledProcedureStepSequence") or [Dataset()]
        sps = steps[0]
        return cls(
            patient_name=_text(ds, "PatientName"),
            patient_id=_text(ds, "PatientID"),
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
            patient_birth_date=_text(ds, "PatientBirthDate"),
            patient_sex=_text(ds, "PatientSex"),
            study_instance_uid=_text(ds, "StudyInstanceUID"),
            accession_number=_text(ds, "AccessionNumber"),
            referring_physician_name=_text(ds, "ReferringPhysicianName"),
            requested_procedure_id=_text(ds, "RequestedProcedureID"),
            requested_procedure_description=_text(ds, "RequestedProcedureDescription"),
            modality=_text(sps, "Modality"),
            station_ae_title=_text(sps, "ScheduledStationAETitle"),
            station_name=_text(sps, "ScheduledStationName"),
            start_date=_text(sps, "ScheduledProcedureStepStartDate"),
            start_time=_text(sps, "ScheduledProcedureStepStartTime"),
            step_id=_text(sps, "ScheduledProcedureStepID"),
            step_description=_text(sps, "ScheduledProcedureStepDescription"),
            dataset=ds,
        )

    def summary(self) -> str:
        """One line for a person choosing between items; the provider's values are shown with
        control characters escaped (they reach a terminal)."""
        when = " ".join(v for v in (self.start_date, self.start_time[:4]) if v)
        what = self.requested_procedure_description or self.step_description or "?"
        return (
            f"accession {_shown(self.accession_number)} | patient {_shown(self.patient_id)} "
            f"{_shown(self.patient_name)} | {_shown(what)} | {_shown(self.modality)} at "
            f"{_shown(self.station_ae_title or self.station_name)} | {_shown(when)}"
        )

    def patient_study(self) -> PatientStudy:
        """The patient and study ``wrap`` writes for this item."""
        from dicomlake.write.capture import PatientStudy

        if not self.study_instance_uid:
            raise WriteError(
                f"worklist item {self.summary()}: has no Study Instance UID; the provider must "
                "send one (PS3.4 K.6.1.2.2, Type 1 return key)"
            )
        src = self.dataset
        template = Dataset()
        for keyword in ("OtherPatientIDsSequence", "IssuerOfAccessionNumberSequence"):
            if src.get(keyword):
                template[keyword] = src[keyword]
        procedure = _codes(src, "RequestedProcedureCodeSequence")
        if procedure is not None:
            template.ProcedureCodeSequence = procedure  # General Study (C.7.2.1), Type 3
        # Request Attributes Sequence (General Series C.7.3.1, Table 10-9): the order this series answers.
        request = Dataset()
        if self.requested_procedure_id:
            request.RequestedProcedureID = self.requested_procedure_id
        if self.accession_number:
            request.AccessionNumber = self.accession_number
        request.StudyInstanceUID = self.study_instance_uid
        if self.requested_procedure_description:
            request.RequestedProcedureDescription = self.requested_procedure_description[:64]
        if procedure is not None:
            request.RequestedProcedureCodeSequence = DicomSequence([Dataset(x) for x in procedure])
        if self.step_id:
            request.ScheduledProcedureStepID = self.step_id
        if self.step_description:
            request.ScheduledProcedureStepDescription = self.step_description[:64]
        steps = src.get("ScheduledProcedureStepSequence") or []
        protocol = _codes(steps[0], "ScheduledProtocolCodeSequence") if steps else None
        if protocol is not None:
            request.ScheduledProtocolCodeSequence = protocol
        # Requested Procedure ID and Scheduled Procedure Step ID are Type 1C (required when the
        # procedure was scheduled): an item without them cannot make a conformant request item.
        if self.requested_procedure_id and self.step_id:
            template.RequestAttributesSequence = DicomSequence([request])
        if "SpecificCharacterSet" in src:
            template.SpecificCharacterSet = src.SpecificCharacterSet
        return PatientStudy(
            patient_id=self.patient_id,
            patient_name=self.patient_name,
            patient_birth_date=self.patient_birth_date,
            patient_sex=self.patient_sex,
            issuer_of_patient_id=self.issuer_of_patient_id or None,
            study_instance_uid=self.study_instance_uid,
            accession_number=self.accession_number,
            # Study Description is LO: at most 64 characters
            study_description=(self.requested_procedure_description or self.step_description or "")[:64] or None,
            referring_physician_name=self.referring_physician_name,
            template=template,
        )


def find_worklist(
    peer: Peer,
    query: WorklistQuery,
    *,
    calling_ae: str = "DICOMLAKE",
    timeout: float = 30.0,
    limit: int = 1000,
) -> list[WorklistItem]:
    """Every scheduled procedure step *peer* answers for *query* (C-FIND, MWL FIND).

    Raises
    ------
    AssociationError
        The provider cannot be reached, refused the association, or answered with a
        failure status (named, e.g. ``0xA700 Failure: Refused: Out of resources``).
    """
    return find_worklist_many(peer, [query], calling_ae=calling_ae, timeout=timeout, limit=limit)[0]


def find_worklist_many(
    peer: Peer,
    queries: Sequence[WorklistQuery],
    *,
    calling_ae: str = "DICOMLAKE",
    timeout: float = 30.0,
    limit: int = 1000,
) -> list[list[WorklistItem]]:
    """The answers to several queries over one association (one list per query, in order)."""
    identifiers = [query.identifier() for query in queries]
    assoc = associate(
        peer,
        [(MWL_FIND, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])],
        calling_ae=calling_ae,
        timeout=timeout,
        what="--worklist",
    )
    try:
        return [_c_find(assoc, identifier, peer, calling_ae, limit) for identifier in identifiers]
    finally:
        if assoc.is_established:
            assoc.release()


def _c_find(assoc: Any, identifier: Dataset, peer: Peer, calling_ae: str, limit: int) -> list[WorklistItem]:
    from pynetdicom.status import MODALITY_WORKLIST_SERVICE_CLASS_STATUS, code_to_category

    items: list[WorklistItem] = []
    for status, found in assoc.send_c_find(identifier, MWL_FIND):
        if status is None or "Status" not in status:
            raise AssociationError(
                f"--worklist {peer}: the provider aborted or did not answer the C-FIND; it may not "
                f"accept queries from our AE title {calling_ae} (add it to the provider's known modalities)"
            )
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            if found is not None and len(items) < limit:
                items.append(WorklistItem.from_dataset(found))
            continue
        if code == 0x0000:
            break
        category, text = MODALITY_WORKLIST_SERVICE_CLASS_STATUS.get(code, (code_to_category(code), ""))
        comment = str(status.get("ErrorComment", "") or "")
        raise AssociationError(
            f"--worklist {peer}: C-FIND answered 0x{code:04X} {category}"
            + (f": {text}" if text else "")
            + (f" ({comment})" if comment else "")
        )
    return items


def _ups_to_mwl(ups: Dataset) -> Dataset:
    """A UPS workitem (PS3.4 CC.2.5) in the shape of a worklist answer: patient at the top, the
    first Referenced Request Sequence item's order attributes, one Scheduled Procedure Step."""
    out = Dataset()
    for keyword in ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                    "PatientSex", "OtherPatientIDsSequence", "ReferringPhysicianName"):  # fmt: skip
        if keyword in ups:
            out[keyword] = ups[keyword]
    requests = ups.get("ReferencedRequestSequence") or [Dataset()]
    request = requests[0]
    for keyword in ("StudyInstanceUID", "AccessionNumber", "IssuerOfAccessionNumberSequence", "RequestedProcedureID",
                    "RequestedProcedureDescription", "RequestedProcedureCodeSequence", "RequestingPhysician"):  # fmt: skip
        if keyword in request:
            out[keyword] = request[keyword]
    sps = Dataset()
    start = str(ups.get("ScheduledProcedureStepStartDateTime", "") or "")
    sps.ScheduledProcedureStepStartDate = start[:8]
    sps.ScheduledProcedureStepStartTime = start[8:14]
    sps.ScheduledProcedureStepDescription = str(ups.get("ProcedureStepLabel", "") or "")
    stations = ups.get("ScheduledStationNameCodeSequence") or []
    sps.ScheduledStationName = str(stations[0].get("CodeMeaning", "") or "") if stations else ""
    if ups.get("ScheduledWorkitemCodeSequence"):
        sps.ScheduledProtocolCodeSequence = ups.ScheduledWorkitemCodeSequence
    out.ScheduledProcedureStepSequence = DicomSequence([sps])
    return out


def find_workitems(
    url: str,
    query: WorklistQuery,
    *,
    auth: str | None = None,
    timeout: float = 30.0,
) -> list[WorklistItem]:
    """Scheduled UPS workitems (``GET URL/workitems``, PS3.18 11.9) matching *query*, as worklist items.

    Accession Number matches inside the Referenced Request Sequence, the date against
    Scheduled Procedure Step Start DateTime; the state is SCHEDULED. A UPS workitem has no
    Scheduled Station AE Title or Modality: those keys are refused for ``--ups``.
    """
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from dicomlake.write.send import _auth_header

    if query.station_ae_title or query.modality or query.station_name:
        raise WriteError("--ups: a UPS workitem has no scheduled station AE title or modality; query by "
                         "--accession, --patient-id or --scheduled-date")  # fmt: skip
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise WriteError(f"--ups {url!r}: give the DICOMweb root, e.g. https://ris.example/dicom-web")
    if query.scheduled_date and not _DATE.match(query.scheduled_date):
        raise WriteError(f"--scheduled-date {query.scheduled_date!r}: write YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    params = [("ProcedureStepState", "SCHEDULED"), ("includefield", "all")]
    if query.accession_number:
        params.append(("ReferencedRequestSequence.AccessionNumber", query.accession_number))
    if query.patient_id:
        params.append(("PatientID", query.patient_id))
    if query.scheduled_date:
        low, dash, high = query.scheduled_date.partition("-")
        high = high if dash else low
        params.append(
            (
                "ScheduledProcedureStepStartDateTime",
                f"{low + '000000' if low else ''}-{high + '235959' if high else ''}",
            )
        )
    target = url.rstrip("/") + "/workitems?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(target, headers={**_auth_header(auth), "Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            code, body = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        text = exc.read()[:300].decode(errors="replace")
        raise AssociationError(
            f"--ups {url}: the workitems query answered HTTP {exc.code} {exc.reason}: {text}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise AssociationError(f"--ups {url}: cannot reach it ({getattr(exc, 'reason', exc)})") from exc
    if code == 204 or not body.strip():
        return []
    try:
        answer = json.loads(body)
        if not isinstance(answer, list):
            raise ValueError("not a JSON array")
        return [WorklistItem.from_dataset(_ups_to_mwl(Dataset.from_json(item))) for item in answer]
    except (ValueError, TypeError, KeyError) as exc:
        raise AssociationError(f"--ups {url}: the answer is not DICOM JSON workitems ({exc})") from exc


def choose(items: Sequence[WorklistItem], query: WorklistQuery, choice: int | None) -> WorklistItem:
    """The one item to use: the only match, or the ``choice``-th (1-based) of several."""
    if not items:
        raise WriteError(
            f"no scheduled procedure step matches {query.describe()}; check the accession or patient ID, "
            "or widen --scheduled-date"
        )
    if choice is not None:
        if not 1 <= choice <= len(items):
            raise WriteError(f"--choose {choice}: there are {len(items)} matching items (1-{len(items)})")
        return items[choice - 1]
    if len(items) > 1:
        raise WriteError(
            f"{len(items)} scheduled procedure steps match {query.describe()}; pick one with --choose N "
            "(listed above) or narrow the query (--accession)"
        )
    return items[0]


def describe_peer_default(settings: Any) -> str | None:
    """The ``dimse.worklist`` setting (``AE@HOST:PORT``), if set."""
    dimse = getattr(settings, "dimse", None)
    value = getattr(dimse, "worklist", None)
    return str(value) if value else None


__all__ = ["WorklistItem", "WorklistQuery", "choose", "find_workitems", "find_worklist", "find_worklist_many"]
