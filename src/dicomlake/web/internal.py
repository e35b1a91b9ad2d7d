"""Internal endpoints of ``dicomlake serve``: read-only SQL over the lake the service holds.

Every statement, whoever sends it, runs in the user-SQL sandbox (:mod:`dicomlake.store.sandbox`).

DuckDB lets one process write a database file at a time, so while the service runs,
``dicomlake query``, ``sql``, ``export`` and ``audit`` from another terminal send their
statements here (:class:`dicomlake.store.remote.RemoteStore`) and get Arrow IPC back.
The endpoints listen on 127.0.0.1 only and want the token in ``<lake>/service.token``
(readable by its owner only) as ``Authorization: Bearer <token>``; inside the full web app
they sit behind its admin check instead.
"""

from __future__ import annotations

import hmac
import io
from typing import Any

import pyarrow as pa
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

ARROW_STREAM = "application/vnd.apache.arrow.stream"


class QueryRequest(BaseModel):
    """One read-only statement, its positional parameters and a row limit."""

    sql: str = Field(..., description="SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, PIVOT …")
    params: list[Any] | None = Field(None, description="Values of the ``?`` placeholders")
    max_rows: int | None = Field(
        None, ge=0, description="Cut the result after this many rows (default query.max_rows; 0: no cut)"
    )


def _service_token(request: Request) -> None:
    expected = getattr(request.app.state, "service_token", None)
    if expected is None:  # mounted in the full web app: its admin check guards the route
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        raise HTTPException(status_code=401, detail="missing or wrong service token (see <lake>/service.token)")


router = APIRouter(prefix="/internal", tags=["internal"], dependencies=[Depends(_service_token)])


def to_ipc(table: pa.Table) -> bytes:
    """An Arrow table as an IPC stream."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


@router.post("/query", response_class=Response)
def query(body: QueryRequest, request: Request) -> Response:
    """Run one read-only statement against the lake; the result as an Arrow IPC stream."""
    from dicomlake.errors import QueryError

    run = getattr(request.app.state, "lake_query", None)
    if run is None:
        raise HTTPException(status_code=503, detail="this server holds no lake to query")
    try:
        # every statement runs in the user-SQL sandbox (dicomlake.store.sandbox): one read-only
        # query, READ ONLY transaction, no file access, query.time_limit_s, a row limit
        table = run(body.sql, body.params, max_rows=body.max_rows)
    except QueryError as exc:
        return Response(content=_error_json(str(exc), 400), status_code=400, media_type="application/json")
    from dicomlake.store.sandbox import truncated

    cut = truncated(table)
    headers = {"X-Dicomlake-Truncated": str(cut)} if cut is not None else None
    return Response(content=to_ipc(table), media_type=ARROW_STREAM, headers=headers)


@router.get("/status")
def status(request: Request) -> dict[str, Any]:
    """The service's counters: associations, instances received, spool depth, drained, errors."""
    provider = getattr(request.app.state, "service_status", None)
    return provider() if provider is not None else {}


def _error_json(message: str, status: int) -> str:
    import json

    return json.dumps({"ok": False, "error": message, "errors": [message], "status": status})
