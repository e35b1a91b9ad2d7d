"""The access log: every request and DICOM association as a structured event (PS3.15 A.5).

Events live in the access database of :mod:`dicomlake.store.accounts` (``<lake>/access.db``),
beside the users, tokens and sessions of :mod:`dicomlake.web.auth`; this module renders them. Each event maps to one
DICOM audit message of PS3.15 A.5.3 and can be rendered as its XML
(:func:`audit_message_xml`):

============================  ==========  ===========================================
event                          EventID     raised by
============================  ==========  ===========================================
User Authentication            110114      login, logout, token grants (EventTypeCode
                                           110122 Login / 110123 Logout)
Query                          110112      QIDO-RS, UI searches, dashboards, the access log
DICOM Instances Accessed       110103      WADO-RS metadata, instance pages
DICOM Instances Transferred    110104      WADO-RS retrieval, STOW-RS, C-STORE associations
Data Export                    110106      CSV/XLSX/Parquet exports and downloads
Security Alert                 110113      refused access (110132 Use of Restricted Function),
                                           user changes (110137), refused associations (110126)
============================  ==========  ===========================================
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import quoteattr

from dicomlake.store.accounts import (
    EVENT_COLUMNS,
    MAX_LISTED,
    AccessDB,
    AuditEvent,
    EventRecord,
    now_iso,
    outcome_of,
    redact,
)

EVENT_TYPES = {
    "110122": "Login",
    "110123": "Logout",
    "110132": "Use of Restricted Function",
    "110137": "User Security Attributes Changed",
    "110126": "Node Authentication",
}
"""EventTypeCode values (DCM, PS3.16 CID 401/402) used by this service."""


def audit_message_xml(event: Mapping[str, Any], *, source_id: str | None = None) -> str:
    """The event as a DICOM audit message (PS3.15 A.5.1 schema)."""
    code = str(event["event_id"])
    meaning = AuditEvent(code).meaning
    a = quoteattr
    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<AuditMessage>"]
    out.append(
        f"  <EventIdentification EventActionCode={a(str(event['action']))} "
        f"EventDateTime={a(str(event['time']))} EventOutcomeIndicator={a(str(event['outcome']))}>"
    )
    out.append(f'    <EventID csd-code={a(code)} codeSystemName="DCM" originalText={a(meaning)}/>')
    et = event.get("event_type")
    if et:
        out.append(
            f'    <EventTypeCode csd-code={a(str(et))} codeSystemName="DCM" originalText={a(EVENT_TYPES.get(et, et))}/>'
        )
    if event.get("detail") and int(event.get("outcome") or 0):
        out.append(f"    <EventOutcomeDescription>{_text(str(event['detail']))}</EventOutcomeDescription>")
    out.append("  </EventIdentification>")
    user = str(event.get("user") or "anonymous")
    src = str(event.get("source") or "")
    host = src.rsplit(":", 1)[0] if src else ""
    out.append(
        f'  <ActiveParticipant UserID={a(user)} UserIsRequestor="true"'
        + (f' NetworkAccessPointID={a(host)} NetworkAccessPointTypeCode="2"' if host else "")
        + ">"
    )
    if event.get("role"):
        out.append(
            f'    <RoleIDCode csd-code={a(str(event["role"]))} codeSystemName="dicomlake" originalText={a(str(event["role"]))}/>'
        )
    out.append('    <RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID"/>')
    out.append("  </ActiveParticipant>")
    sid = source_id or f"dicomlake@{socket.gethostname()}"
    out.append(f'  <ActiveParticipant UserID={a(sid)} UserIsRequestor="false">')
    out.append('    <RoleIDCode csd-code="110152" codeSystemName="DCM" originalText="Destination Role ID"/>')
    out.append("  </ActiveParticipant>")
    out.append(f"  <AuditSourceIdentification AuditSourceID={a(sid)}/>")
    for uid in json.loads(event.get("studies") or "[]"):
        if not uid:  # an instance without a Study Instance UID (hostile or broken input)
            continue
        out.append(
            f'  <ParticipantObjectIdentification ParticipantObjectID={a(uid)} ParticipantObjectTypeCode="2" '
            'ParticipantObjectTypeCodeRole="3">'
        )
        out.append(
            '    <ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" originalText="Study Instance UID"/>'
        )
        out.append("  </ParticipantObjectIdentification>")
    instances = json.loads(event.get("instances") or "[]")
    if instances:
        out.append(
            '  <ParticipantObjectIdentification ParticipantObjectID="instances" ParticipantObjectTypeCode="2" '
            'ParticipantObjectTypeCodeRole="3">'
        )
        out.append(
            '    <ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" originalText="Study Instance UID"/>'
        )
        out.append("    <ParticipantObjectDescription>")
        for uid in instances:
            out.append(f"      <SOPClass><Instance UID={a(str(uid or ''))}/></SOPClass>")
        out.append("    </ParticipantObjectDescription>")
        out.append("  </ParticipantObjectIdentification>")
    if code == AuditEvent.QUERY.value and event.get("query") is not None:
        import base64

        q = base64.b64encode(str(event.get("query") or "").encode()).decode()
        out.append(
            f"  <ParticipantObjectIdentification ParticipantObjectID={a(str(event.get('path') or ''))} "
            'ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="24">'
        )
        out.append(
            '    <ParticipantObjectIDTypeCode csd-code="ITI-18" codeSystemName="IHE Transactions" originalText="Query"/>'
        )
        out.append(f"    <ParticipantObjectQuery>{q}</ParticipantObjectQuery>")
        out.append("  </ParticipantObjectIdentification>")
    out.append("</AuditMessage>")
    return "\n".join(out) + "\n"


def _text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


__all__ = [
    "EVENT_COLUMNS",
    "EVENT_TYPES",
    "MAX_LISTED",
    "AccessDB",
    "AuditEvent",
    "EventRecord",
    "audit_message_xml",
    "now_iso",
    "outcome_of",
    "redact",
]
