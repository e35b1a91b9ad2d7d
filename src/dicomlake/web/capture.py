"""The capture page: choose a worklist item, drop a photo, scan or PDF, and send it (admin only).

``GET /capture`` queries the Modality Worklist (setting ``dimse.worklist``) by accession,
patient ID or scheduled date and lists the scheduled procedure steps; ``POST /capture``
(multipart: ``accession``, ``study_uid``, ``file``) asks the worklist again for that
accession — the browser names the item, the worklist gives the identity — wraps the
upload as ``dicomlake wrap`` does, keeps it under ``<lake>/capture/`` and C-STOREs it to
``dimse.store_to``. The answer is JSON: each written file and what the PACS said.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from dicomlake.errors import DicomlakeError
from dicomlake.web.context import WebError, ctx_of, require

router = APIRouter(tags=["capture"])

MAX_UPLOAD = 64 * 1024 * 1024
"""Largest upload accepted (bytes)."""
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _settings() -> Any:
    from dicomlake.config import get_settings

    return get_settings()


def _find(accession: str, patient_id: str, date: str) -> list[Any]:
    from dicomlake.write.send import Peer
    from dicomlake.write.worklist import WorklistQuery, find_worklist

    settings = _settings()
    provider = settings.dimse.worklist
    if not provider:
        raise WebError(409, "no worklist provider: set dimse.worklist (AE@HOST:PORT) and restart the service")
    query = WorklistQuery(
        accession_number=accession.strip() or None,
        patient_id=patient_id.strip() or None,
        scheduled_date=date.strip().replace("-", "") or None,
    )
    try:
        return find_worklist(Peer.parse(provider, "dimse.worklist"), query, calling_ae=settings.dimse.ae_title)
    except DicomlakeError as exc:
        raise WebError(502, str(exc)) from exc


@router.get("/capture", response_class=HTMLResponse)
async def capture_page(request: Request, accession: str = "", patient_id: str = "", date: str = "") -> Response:
    """The worklist query, the matching items and the upload form."""
    from dicomlake.web.ui import render

    require(request)  # admin: the page shows and writes identified data
    items: list[Any] = []
    error = None
    if accession.strip() or patient_id.strip() or date.strip():
        try:
            items = await run_in_threadpool(_find, accession, patient_id, date)
        except WebError as exc:
            error = exc.error
    settings = _settings()
    return render(
        request,
        "capture.html",
        {
            "title": "Capture",
            "items": items,
            "error": error,
            "accession": accession,
            "patient_id": patient_id,
            "date": date,
            "worklist": settings.dimse.worklist,
            "store_to": settings.dimse.store_to,
        },
    )


def _wrap_and_send(upload: Path, accession: str, study_uid: str, out_root: Path) -> dict[str, Any]:
    from dicomlake.write.capture import wrap_paths
    from dicomlake.write.send import Peer, c_store
    from dicomlake.write.worklist import choose

    items = [i for i in _find(accession, "", "") if i.study_instance_uid == study_uid]
    try:
        item = choose(items, _query_text(accession), None)
    except DicomlakeError as exc:
        raise WebError(409, f"worklist item {accession!r} / {study_uid}: {exc}") from exc
    out = out_root / study_uid
    report = wrap_paths([upload], out, patient=item.patient_study())
    if report.failed:
        raise WebError(422, "; ".join(message for _, message in report.failed))
    written = [w.path for w in report.written]
    answer: dict[str, Any] = {
        "accession": item.accession_number,
        "study_instance_uid": item.study_instance_uid,
        "written": [{"path": str(w.path), "sop_instance_uid": w.sop_instance_uid} for w in report.written],
        "sent": [],
        "refused": [],
    }
    store_to = _settings().dimse.store_to
    if not store_to:
        answer["note"] = "dimse.store_to is not set: kept in the lake folder, not sent"
        return answer
    try:
        sent = c_store(written, Peer.parse(store_to, "dimse.store_to"), calling_ae=_settings().dimse.ae_title)
    except DicomlakeError as exc:
        answer["refused"] = [{"path": str(p), "message": str(exc)} for p in written]
        return answer
    answer["sent"] = [{"path": str(r.path), "status": r.message} for r in sent.sent]
    answer["refused"] = [{"path": str(r.path), "message": r.message} for r in sent.refused]
    return answer


def _query_text(accession: str) -> Any:
    from dicomlake.write.worklist import WorklistQuery

    return WorklistQuery(accession_number=accession)


@router.post("/capture")
async def capture_upload(request: Request) -> Response:
    """Wrap the uploaded file with the chosen worklist item's identity and send it."""
    require(request)
    length = int(request.headers.get("content-length") or 0)
    if length > MAX_UPLOAD:
        raise WebError(413, f"upload of {length} bytes is larger than {MAX_UPLOAD} bytes")
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise WebError(415, "send multipart/form-data with accession, study_uid and file")
    form = await request.form()
    accession = str(form.get("accession") or "").strip()
    study_uid = str(form.get("study_uid") or "").strip()
    upload = form.get("file")
    if not accession or not study_uid or upload is None or isinstance(upload, str):
        raise WebError(400, "choose a worklist item (accession, study_uid) and a file")
    data = await upload.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise WebError(413, f"upload larger than {MAX_UPLOAD} bytes")
    name = _SAFE_NAME.sub("_", Path(upload.filename or "upload").name).strip("._") or "upload"
    lake = Path(ctx_of(request).lake)
    with tempfile.TemporaryDirectory(prefix="dicomlake-capture-") as tmp:
        path = Path(tmp) / name[:100]
        path.write_bytes(data)
        answer = await run_in_threadpool(_wrap_and_send, path, accession, study_uid, lake / "capture")
    return JSONResponse(answer, status_code=200 if not answer["refused"] else 502)
