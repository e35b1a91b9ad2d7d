"""The web UI: server-rendered pages, each with a ``.json`` and a ``.csv`` twin.

Pages: study search (filters in the URL, read back as a sentence), study and instance detail
(every element, nested and private), dashboards (Plotly, served locally), exports (CSV,
XLSX, Parquet as background jobs with progress), ingest status, rejects, quality flags and
the access log. The same :class:`~dicomlake.web.filters_ui.UIFilters` drives each table, its
counts, its charts and its exports. The analyst role sees everything through
:class:`~dicomlake.web.deidview.AnalystView`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import threading
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from dicomlake.dicom.dictionary import keyword_to_tag, lookup
from dicomlake.errors import QueryError
from dicomlake.query import dashboards as dashboards_q
from dicomlake.query.filters import resolve_key
from dicomlake.security.cells import XLSX_OPTIONS, neutralise_row, neutralise_table
from dicomlake.security.html import json_for_script
from dicomlake.web import present
from dicomlake.web.audit_log import EVENT_COLUMNS, AuditEvent, audit_message_xml
from dicomlake.web.auth import Principal, Role
from dicomlake.web.context import WebContext, WebError, audit, ctx_of, require
from dicomlake.web.filters_ui import UIFilters, parse_ui_filters

LOG = logging.getLogger("dicomlake.web.ui")
router = APIRouter(tags=["UI"])
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals.update(zip=zip, dict=dict)
templates.env.filters["script_json"] = json_for_script
templates.env.globals.update(
    show=present.show,
    header=present.header,
    col_width=present.col_width,
    wide_column=present.wide_column,
    is_time=present.is_time,
    human_time=present.human_time,
    uid_name=present.uid_name,
    duration=present.duration,
    num=present.num,
)

DEFAULT_COLUMNS = {
    "study": ["StudyDate", "PatientID", "PatientName", "AccessionNumber", "StudyDescription", "StudyInstanceUID"],
    "series": ["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "StationName"],
    "instance": ["SOPInstanceUID", "Modality", "InstanceNumber", "SOPClassUID", "StationName", "StudyDate"],
    "patient": ["PatientID", "PatientName", "PatientBirthDate", "PatientSex"],
}
LEVEL_KEY = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
    "patient": "PatientID",
}
CONTEXT = ["PatientID", "PatientName", "SOPClassUID", "StudyInstanceUID", "BurnedInAnnotation"]
DOSE_KEEP = {
    "CTDIvol_mGy", "DLP_mGycm", "agd_mGy", "compressed_breast_thickness_mm", "compression_force_N", "dap_Gym2",
    "chart", "group", "x", "y", "n", "rule", "severity", "Modality",
}  # fmt: skip


# ---- rendering ------------------------------------------------------------------------------


def _fmt_of(request: Request) -> str:
    path = request.url.path
    if path.endswith(".json"):
        return "json"
    if path.endswith(".csv"):
        return "csv"
    return "html"


def _strip(uid: str) -> str:
    for suffix in (".json", ".csv", ".xml"):
        if uid.endswith(suffix):
            return uid[: -len(suffix)]
    return uid


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    p: Principal | None = getattr(request.state, "principal", None)
    base = {
        "request": request,
        "user": p,
        "role": p.role.value if p else None,
        "csrf": p.csrf if p else None,
        "path": request.url.path,
        "query": request.url.query,
    }
    base.update(context)
    return templates.TemplateResponse(request, name, base, status_code=status)


def error_page(request: Request, err: WebError) -> HTMLResponse:
    resp = render(request, "error.html", {"err": err}, status=err.status)
    for k, v in err.headers.items():
        resp.headers[k] = v
    return resp


def _cell(v: Any) -> Any:
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, (list, tuple)):
        return "\\".join(str(x) for x in v)
    return v


def table_rows(t: pa.Table | list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    if isinstance(t, pa.Table):
        cols = t.column_names
        rows = [[_cell(r.get(c)) for c in cols] for r in t.to_pylist()]
        return cols, rows
    cols = list(t[0].keys()) if t else []
    return cols, [[_cell(r.get(c)) for c in cols] for r in t]


def csv_bytes(t: pa.Table | list[dict[str, Any]]) -> bytes:
    cols, rows = table_rows(t)
    import csv

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow(neutralise_row("" if v is None else v for v in r))
    return buf.getvalue().encode("utf-8")


def respond(
    request: Request,
    *,
    template: str,
    context: dict[str, Any],
    table: pa.Table | list[dict[str, Any]] | None,
    name: str,
    extra_json: dict[str, Any] | None = None,
) -> Response:
    """The page as HTML, or its ``.json`` / ``.csv`` twin."""
    fmt = _fmt_of(request)
    if fmt == "csv":
        rec = getattr(request.state, "audit", None)
        if rec is not None:
            rec.event = AuditEvent.DATA_EXPORT
        else:
            audit(request, AuditEvent.DATA_EXPORT, action="R")
        return Response(
            csv_bytes(table if table is not None else []),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    cols, rows = table_rows(table if table is not None else [])
    if fmt == "json":
        body: dict[str, Any] = {"ok": True, "columns": cols, "rows": [dict(zip(cols, r, strict=True)) for r in rows]}
        for k in ("sentence", "total", "next_url", "filters"):
            if k in context:
                body[k] = context[k]
        body.update(extra_json or {})
        return Response(json.dumps(body, default=str), media_type="application/json")
    ctx = dict(context)
    ctx.setdefault("columns", cols)
    ctx.setdefault("rows", rows)
    ctx.setdefault("twins", _twins(request))
    return render(request, template, ctx)


def _twins(request: Request) -> dict[str, str]:
    path = request.url.path.rstrip("/") or "/"
    q = ("?" + request.url.query) if request.url.query else ""
    return {"json": f"{path}.json{q}", "csv": f"{path}.csv{q}"}


def page(path: str, **kw: Any) -> Any:
    """Register a GET handler at ``path`` and its ``.json`` and ``.csv`` twins."""

    def deco(fn: Any) -> Any:
        for suffix in ("", ".json", ".csv"):
            router.add_api_route(path + suffix, fn, methods=["GET"], name=f"{fn.__name__}{suffix}", **kw)
        return fn

    return deco


# ---- the query behind the tables ------------------------------------------------------------


def _filters(request: Request, ctx: WebContext, p: Principal, level: str = "study") -> UIFilters:
    items = list(request.query_params.multi_items())
    add = {k: v for k, v in items if k.startswith("_add_")}
    items = [(k, v) for k, v in items if not k.startswith("_add_")]
    if add.get("_add_key") and add.get("_add_value") is not None:
        op = add.get("_add_op", "")
        items.append((add["_add_key"].strip() + (f"__{op}" if op else ""), add.get("_add_value", "")))
        f = parse_ui_filters(items, page_size=ctx.settings.page_size, page_max=ctx.settings.page_max, level=level)
        raise _Redirect(f"{request.url.path}?{f.query_string(_offset=0)}")
    try:
        f = parse_ui_filters(items, page_size=ctx.settings.page_size, page_max=ctx.settings.page_max, level=level)
        f.check(ctx.data.columns)
    except QueryError as exc:
        raise WebError(400, str(exc), str(exc).split("; ")) from exc
    if p.role is Role.ANALYST:
        _analyst_filters(ctx, f)
    return f


class _Redirect(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


def _analyst_filters(ctx: WebContext, f: UIFilters) -> None:
    """Refuse identifying filter keys; UID filters go through pseudonyms."""
    from dataclasses import replace

    out = []
    for flt in f.filters:
        key = resolve_key(flt.key, ctx.data.columns)
        leaf = flt.key.split(".")[-1]
        tag = keyword_to_tag().get(leaf) if key.tag is None else int(key.tag, 16)
        policy = ctx.view.filter_policy(tag, key.vr) if tag is not None else None
        if "." in flt.key:
            policy = None if policy != "keep" else policy
        if policy is None:
            raise WebError(
                403,
                f"the analyst role may not filter on {flt.key}: the {ctx.view.profile.name!r} profile removes "
                "or replaces it; filter on attributes it keeps (e.g. Modality, StationName, CTDIvol)",
            )
        if policy == "uid":
            vals = [ctx.view.original_uid(v.strip()) or "2.25.0" for v in flt.value.split(",")]
            flt = replace(flt, value=",".join(vals))
        out.append(flt)
    f.filters = out
    if f.sort:
        # ordering by a value the profile replaces would leak it (rows sorted by the real names)
        name = f.sort.lstrip("-+")
        try:
            key = resolve_key(name, ctx.data.columns)
        except QueryError as exc:
            raise WebError(400, f"_sort={f.sort!r}: {exc}") from exc
        tag = keyword_to_tag().get(name.split(".")[-1]) if key.tag is None else int(key.tag, 16)
        if "." in name or tag is None or ctx.view.filter_policy(tag, key.vr) != "keep":
            raise WebError(
                403,
                f"the analyst role may not sort on {name}: the {ctx.view.profile.name!r} profile removes or "
                "replaces it, and the order of the real values would show through; sort on attributes it "
                "keeps (e.g. Modality, StationName, CTDIvol)",
            )


def default_sort(ctx: WebContext, level: str, analyst: bool) -> str | None:
    """Newest first: by study date, descending (for the analyst only when the profile keeps dates,
    so that the order of the real dates never shows through shifted ones)."""
    if level == "patient" or "StudyDate" not in ctx.data.columns.kinds:
        return None
    if analyst and ctx.view.filter_policy(keyword_to_tag().get("StudyDate"), "DA") != "keep":
        return None
    return "-StudyDate"


def _restrict(ctx: WebContext, p: Principal) -> dashboards_q.Restriction | None:
    """The analyst's row restriction (compiled into every query; fails closed), None for other roles."""
    return ctx.view.restriction() if p.role is Role.ANALYST else None


def _search_args(
    ctx: WebContext, f: UIFilters, level: str, columns: list[str], p: Principal
) -> tuple[list[str], dict[str, Any]]:
    analyst = p.role is Role.ANALYST
    names = list(columns)
    if analyst:
        names += [c for c in CONTEXT if c not in names]
    sort = f.sort or default_sort(ctx, level, analyst)
    return names, {"sort": sort, "restrict": _restrict(ctx, p)}


def query_table(
    ctx: WebContext, f: UIFilters, level: str, columns: list[str], p: Principal, *, limit: int | None, offset: int = 0
) -> pa.Table:
    names, kw = _search_args(ctx, f, level, columns, p)
    t = dashboards_q.table(ctx.data.reads, f.where, names, level, limit=limit, offset=offset, **kw)
    if p.role is Role.ANALYST:
        extra = [c for c in CONTEXT if c not in columns]
        t = ctx.view.table(t, drop=extra)
    return t


def count(ctx: WebContext, f: UIFilters, level: str, p: Principal) -> int:
    return dashboards_q.count(ctx.data.reads, f.where, level, _restrict(ctx, p))


# ---- pages ----------------------------------------------------------------------------------


@router.get("/", include_in_schema=False)
def home(request: Request) -> Response:
    from dicomlake.web.context import principal

    p = principal(request)
    return RedirectResponse("/access-log" if p.role is Role.AUDITOR else "/studies", status_code=303)


@page("/studies")
def studies(request: Request) -> Response:
    """Search: filters in the URL, the result read back as a sentence."""
    ctx = ctx_of(request)
    p = require(request, Role.ANALYST)
    try:
        f = _filters(request, ctx, p, level=request.query_params.get("_level", "study"))
    except _Redirect as r:
        return RedirectResponse(r.url, status_code=303)
    level = f.level
    cols = f.columns or DEFAULT_COLUMNS[level]
    t = query_table(ctx, f, level, cols, p, limit=f.limit, offset=f.offset)
    total = count(ctx, f, level, p)
    sentence = f.sentence(total)
    audit(request, AuditEvent.QUERY, action="E", query=f"{sentence} [{' AND '.join(f.where)}]")
    nxt = f"{request.url.path}?{f.query_string(_offset=f.offset + f.limit)}" if f.offset + f.limit < total else None
    prev = f"{request.url.path}?{f.query_string(_offset=max(0, f.offset - f.limit))}" if f.offset else None
    return respond(
        request,
        template="table.html",
        name=f"{level}-search",
        table=t,
        context={
            "title": "Search",
            "sentence": sentence,
            "total": total,
            "next_url": nxt,
            "prev_url": prev,
            "filters": [
                {
                    "key": x.key,
                    "op": x.op.op,
                    "value": x.value,
                    "sentence": x.sentence(),
                    "remove": f"{request.url.path}?{_without(f, i)}",
                }
                for i, x in enumerate(f.filters)
            ],
            "filter_form": True,
            "level": level,
            "levels": list(DEFAULT_COLUMNS),
            "export_query": f.query_string(_offset=0),
            "keywords": list(ctx.data.columns.kinds),
            "offset": f.offset,
        },
    )


def _without(f: UIFilters, i: int) -> str:
    g = UIFilters(
        filters=[x for j, x in enumerate(f.filters) if j != i],
        level=f.level,
        columns=f.columns,
        sort=f.sort,
        limit=f.limit,
    )
    return g.query_string()


def _study_uid(ctx: WebContext, p: Principal, uid: str) -> str:
    if p.role is Role.ANALYST:
        orig = ctx.view.original_uid(uid)
        if orig is None:
            raise WebError(404, f"no study {uid} among those shown to you; search first")
        return orig
    return uid


@router.get("/studies/{uid}")
def study(request: Request, uid: str) -> Response:
    """One study: its series and instances (``.json``/``.csv``: the instances)."""
    ctx = ctx_of(request)
    p = require(request, Role.ANALYST)
    uid = _strip(uid)
    real = _study_uid(ctx, p, uid)
    f = UIFilters(level="instance")
    from dicomlake.web.filters_ui import OPS, UIFilter

    f.filters = [UIFilter("StudyInstanceUID", OPS[""], real)]
    cols = [
        "SeriesInstanceUID",
        "SeriesNumber",
        "Modality",
        "SeriesDescription",
        "SOPInstanceUID",
        "InstanceNumber",
        "SOPClassUID",
    ]
    t = query_table(ctx, f, "instance", cols, p, limit=ctx.settings.page_max)
    if t.num_rows == 0:
        raise WebError(404, f"no study {uid} in this lake")
    head = query_table(ctx, UIFilters(filters=f.filters, level="study"), "study", DEFAULT_COLUMNS["study"], p, limit=1)
    series: dict[str, dict[str, Any]] = {}
    for r in t.to_pylist():
        s = series.setdefault(
            r["SeriesInstanceUID"],
            {
                "uid": r["SeriesInstanceUID"],
                "number": r["SeriesNumber"],
                "modality": r["Modality"],
                "description": r["SeriesDescription"],
                "instances": [],
            },
        )
        s["instances"].append(r)
    audit(request, AuditEvent.INSTANCES_ACCESSED, action="R", studies=[real], n_instances=t.num_rows)
    return respond(
        request,
        template="study.html",
        name=f"study-{uid}",
        table=t,
        context={
            "title": f"Study {uid}",
            "study": head.to_pylist()[0] if head.num_rows else {},
            "series": list(series.values()),
            "uid": uid,
        },
    )


def element_rows(js: dict[str, Any], depth: int = 0, prefix: str = "") -> list[dict[str, Any]]:
    """Every element of a DICOM JSON dataset as rows, sequences and private elements included."""
    out: list[dict[str, Any]] = []
    creators: dict[tuple[int, int], str] = {}
    for tag, el in js.items():
        t = int(tag, 16)
        g, e = t >> 16, t & 0xFFFF
        if g & 1 and 0x10 <= e <= 0xFF:
            creators[(g, e)] = str((el.get("Value") or [""])[0])
    for tag in sorted(js):
        el = js[tag]
        t = int(tag, 16)
        g, e = t >> 16, t & 0xFFFF
        if g & 1:
            if 0x10 <= e <= 0xFF:
                name = "Private Creator"
            else:
                creator = creators.get((g, e >> 8), "")
                name = f'({g:04X},"{creator}",{e & 0xFF:02X})' if creator else "private"
        else:
            entry = lookup(t)
            name = entry[2] if entry and entry[2] else f"({g:04X},{e:04X})"
        vr = el.get("vr", "")
        path = f"{prefix}{name}"
        if vr == "SQ":
            items = el.get("Value") or []
            out.append(
                {
                    "depth": depth,
                    "tag": f"({g:04X},{e:04X})",
                    "name": name,
                    "VR": vr,
                    "value": f"{len(items)} item(s)",
                    "path": path,
                }
            )
            for i, item in enumerate(items):
                out.append(
                    {
                        "depth": depth + 1,
                        "tag": "(FFFE,E000)",
                        "name": f"Item {i + 1}",
                        "VR": "",
                        "value": "",
                        "path": f"{path}[{i}]",
                    }
                )
                out.extend(element_rows(item or {}, depth + 2, f"{path}[{i}]."))
            continue
        if "InlineBinary" in el:
            value = f"<{len(el['InlineBinary']) * 3 // 4} bytes>"
        elif "BulkDataURI" in el:
            value = "<bulk data>"
        else:
            vals = el.get("Value") or []
            parts = []
            for v in vals:
                if isinstance(v, dict):
                    parts.append("=".join(v.get(k, "") for k in ("Alphabetic", "Ideographic", "Phonetic") if k in v))
                else:
                    parts.append(str(v))
            value = "\\".join(parts)
        out.append({"depth": depth, "tag": f"({g:04X},{e:04X})", "name": name, "VR": vr, "value": value, "path": path})
    return out


ELEMENTS_SHOWN = 500
"""Elements listed on an instance page before "show all" (an RDSR has thousands; the twins have all)."""


@router.get("/instances/{uid}")
def instance(request: Request, uid: str) -> Response:
    """Every element of one instance, nested and private ones included."""
    ctx = ctx_of(request)
    p = require(request, Role.ANALYST)
    uid = _strip(uid)
    real = uid
    analyst = p.role is Role.ANALYST
    if analyst:
        real = ctx.view.original_uid(uid) or "2.25.0"
    row = dashboards_q.instance(ctx.data.reads, real, _restrict(ctx, p))
    if row is None:
        raise WebError(404, f"no instance {uid} in this lake" + (" that the analyst role may see" if analyst else ""))
    js = ctx.data.json_by_uid([real]).get(real, "{}")
    doc = ctx.view.dataset_json(js) if analyst else json.loads(js)
    if doc is None:
        raise WebError(404, f"no instance {uid} that the analyst role may see")
    audit(request, AuditEvent.INSTANCES_ACCESSED, action="R", instances=[real], studies=[row["study"]])
    els = element_rows(doc)
    study_shown = (doc.get("0020000D") or {}).get("Value", [""])[0]
    return respond(
        request,
        template="instance.html",
        name=f"instance-{uid}",
        table=els,
        context={
            "title": f"Instance {uid}",
            "elements": els if request.query_params.get("_all") else els[:ELEMENTS_SHOWN],
            "total_elements": len(els),
            "uid": uid,
            "study_uid": study_shown,
            "has_file": bool(row["path"]) and not analyst,
        },
        extra_json={"dicom_json": doc},
    )


# ---- dashboards ------------------------------------------------------------------------------


CHARTS = [
    ("ct-dose", "CT dose: CTDIvol by station", "box", "mGy"),
    ("ct-dlp", "CT dose: DLP by station", "box", "mGy·cm"),
    ("mg-agd", "Mammography: average glandular dose against compressed breast thickness", "scatter", "mGy"),
    ("mg-force", "Mammography: compression force by station", "box", "N"),
    ("modality", "Instances by modality", "bar", "instances"),
    ("quality", "Quality flags by rule", "bar", "flags"),
]


def chart_rows(ctx: WebContext, f: UIFilters, p: Principal, chart: str) -> list[dict[str, Any]]:
    """The rows of one chart (:func:`dicomlake.query.dashboards.chart`); ``Modality = X`` filters
    also match a study's dose reports in the dose charts."""
    if chart not in dashboards_q.CHARTS:
        raise WebError(400, f"_chart={chart!r}: choose one of {', '.join(c[0] for c in CHARTS)}")
    mods = [x for x in f.filters if x.key == "Modality" and x.op.op == "="]
    tables = {t for t in ("dose_events", "quality_flags") if ctx.data.has_table(t)}
    t = dashboards_q.chart(
        ctx.data.reads,
        chart,
        [x.text for x in f.filters if x not in mods],
        modalities=[x.text for x in mods],
        restrict=_restrict(ctx, p),
        tables=tables,
    )
    # station names are device identity: shown to the analyst only when the profile keeps them
    if (
        p.role is Role.ANALYST
        and "group" in t.column_names
        and chart != "mg-agd"
        and not ctx.view.keyword_allowed("StationName")
    ):
        t = t.set_column(t.column_names.index("group"), "group", pa.array(["(hidden)"] * t.num_rows))
    return [{"chart": chart, **r} for r in t.to_pylist()]


@page("/dashboards")
def dashboards(request: Request) -> Response:
    """The audits as charts; the URL filters apply to every chart and to the twins."""
    ctx = ctx_of(request)
    p = require(request, Role.ANALYST)
    try:
        f = _filters(request, ctx, p, level="instance")
    except _Redirect as r:
        return RedirectResponse(r.url, status_code=303)
    only = request.query_params.get("_chart")
    charts = []
    rows: list[dict[str, Any]] = []
    for cid, title, kind, unit in CHARTS:
        if only and cid != only:
            continue
        data = chart_rows(ctx, f, p, cid)
        rows.extend(data)
        charts.append({"id": cid, "title": title, "kind": kind, "unit": unit, "rows": data})
    n = count(ctx, f, "instance", p)
    sentence = f.sentence(n, "instance")
    audit(request, AuditEvent.QUERY, action="E", query=f"dashboards: {sentence}")
    long = [{"chart": r["chart"], "group": r.get("group"), "x": r.get("x"), "y": r.get("y")} for r in rows]
    return respond(
        request,
        template="dashboards.html",
        name="dashboards",
        table=long,
        context={
            "title": "Dashboards",
            "charts": charts,
            "sentence": sentence,
            "total": n,
            "filters": [
                {
                    "key": x.key,
                    "op": x.op.op,
                    "value": x.value,
                    "sentence": x.sentence(),
                    "remove": f"{request.url.path}?{_without(f, i)}",
                }
                for i, x in enumerate(f.filters)
            ],
            "filter_form": True,
            "keywords": list(ctx.data.columns.kinds),
        },
        extra_json={"charts": charts},
    )


@router.get("/static/plotly.min.js", include_in_schema=False)
def plotly_js() -> Response:
    """Plotly from the installed plotly package: the UI works offline, no CDN."""
    path = resources.files("plotly") / "package_data" / "plotly.min.js"
    return Response(path.read_bytes(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    return Response(
        (HERE / "static" / "favicon.svg").read_bytes(),
        media_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=86400"},
    )


SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")
"""Swagger UI's assets, served from the swagger-ui-py package (no CDN; the CSP allows 'self' only)."""


def _swagger_dir() -> Path | None:
    """The Swagger UI 5 distribution files of the swagger-ui-py package (OpenAPI 3.1, which FastAPI writes)."""
    import importlib.util

    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@router.get("/api/docs", include_in_schema=False)
def api_docs(request: Request) -> Response:
    """Swagger UI over /api/openapi.json, every asset from this service."""
    from dicomlake.web.context import principal

    p = principal(request)
    d = _swagger_dir()
    assets = d is not None and all((d / n).is_file() for n in SWAGGER_FILES)
    return render(request, "api_docs.html", {"assets": assets, "spec": "/api/openapi.json", "csrf": p.csrf})


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    p = HERE / "static" / name
    if name in SWAGGER_FILES:
        d = _swagger_dir()
        if d is None:
            raise WebError(404, f"{name}: the swagger-ui-py package is not installed (pip install swagger-ui-py)")
        p = d / name
    if "/" in name or ".." in name or p.suffix not in types or not p.is_file():
        raise WebError(404, f"no static file {name}")
    return Response(p.read_bytes(), media_type=types[p.suffix], headers={"Cache-Control": "public, max-age=3600"})


# ---- the audits (dicomlake.audit) -----------------------------------------------------------


@page("/audits")
def audits(request: Request) -> Response:
    """The audits of :mod:`dicomlake.audit` (dose, workflow, quality, SC catalogue)."""
    require(request)
    from dicomlake.audit import AUDITS

    rows = [{"audit": a, "url": f"/audits/{a}"} for a in AUDITS]
    audit(request, AuditEvent.QUERY, action="E", query="audit list")
    return respond(
        request,
        template="audits.html",
        name="audits",
        table=rows,
        context={"title": "Audits", "audits": rows, "result": None},
    )


@router.get("/audits/{name}")
def audit_page(request: Request, name: str) -> Response:
    """One audit over the filtered lake: its charts (Plotly), tables and numbers; ``.csv`` is its row data."""
    ctx = ctx_of(request)
    p = require(request)
    name = _strip(name)
    from dicomlake.audit import AUDITS, run_audit
    from dicomlake.audit.common import Selection

    if name not in AUDITS:
        raise WebError(404, f"no audit {name!r}; choose one of {', '.join(AUDITS)}")
    try:
        f = _filters(request, ctx, p, level="instance")
    except _Redirect as r:
        return RedirectResponse(r.url, status_code=303)
    lake = ctx.data.open_lake()
    try:
        result = run_audit(name, lake, Selection(where=f.where))
    finally:
        lake.store.close()
    audit(request, AuditEvent.QUERY, action="E", query=f"audit {name}: {result.selection}")
    charts = [
        {"id": c.id, "title": c.title, "caption": c.caption, "figure": json.loads(c.figure.to_json())}
        for c in result.charts
    ]
    tables = [
        {
            "id": t.id,
            "title": t.title,
            "caption": t.caption,
            "columns": t.df.columns,
            "rows": [[_cell(v) for v in r] for r in t.df.head(200).iter_rows()],
        }
        for t in result.tables
    ]
    data = result.all_data.to_arrow() if result.all_data is not None else []
    return respond(
        request,
        template="audits.html",
        name=f"audit-{name}",
        table=data,
        context={
            "title": result.title,
            "result": result,
            "charts": charts,
            "tables": tables,
            "sentence": result.selection,
            "filter_form": True,
            "filters": [
                {
                    "key": x.key,
                    "op": x.op.op,
                    "value": x.value,
                    "sentence": x.sentence(),
                    "remove": f"{request.url.path}?{_without(f, i)}",
                }
                for i, x in enumerate(f.filters)
            ],
            "keywords": list(ctx.data.columns.kinds),
        },
        extra_json={"numbers": _jsonable(result.numbers), "notes": result.notes, "tables": tables},
    )


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {(" / ".join(map(str, k)) if isinstance(k, tuple) else str(k)): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return _cell(v)


# ---- exports --------------------------------------------------------------------------------


@dataclass
class ExportJob:
    id: str
    user: str
    role: str
    fmt: str
    level: str
    query: str
    sentence: str
    total: int = 0
    done: int = 0
    status: str = "queued"
    error: str | None = None
    path: str | None = None
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    finished: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "format": self.fmt,
            "level": self.level,
            "sentence": self.sentence,
            "status": self.status,
            "done": self.done,
            "total": self.total,
            "progress": round(self.done / self.total, 3) if self.total else (1.0 if self.status == "done" else 0.0),
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
            "download_url": f"/exports/{self.id}/download" if self.status == "done" else None,
        }


class Exports:
    """Background export jobs (two at a time)."""

    def __init__(self) -> None:
        self.jobs: dict[str, ExportJob] = {}
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dicomlake-export")
        self.lock = threading.Lock()


def _exports(ctx: WebContext) -> Exports:
    ex = ctx.extra.get("exports")
    if ex is None:
        ex = ctx.extra["exports"] = Exports()
    return ex  # type: ignore[no-any-return]


def shutdown_exports(ctx: WebContext) -> None:
    ex = ctx.extra.get("exports")
    if ex is not None:
        ex.pool.shutdown(wait=True, cancel_futures=True)


def _run_export(ctx: WebContext, job: ExportJob, f: UIFilters, cols: list[str], p: Principal) -> None:
    job.status = "running"
    out_dir = ctx.lake / "exports"
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)
    target = out_dir / f"{job.id}.{job.fmt}"
    tmp = target.with_name(f".{target.name}.part")
    try:
        analyst = p.role is Role.ANALYST
        names, kw = _search_args(ctx, f, job.level, cols, p)
        reader = dashboards_q.batches(ctx.data.reads, f.where, names, job.level, rows=5000, **kw)
        try:
            writer: Any = None
            schema: pa.Schema | None = None
            xlsx_rows: list[list[Any]] = []
            xlsx_cols: list[str] = []
            for batch in reader:
                t = pa.Table.from_batches([batch])
                if analyst:
                    t = ctx.view.table(t, drop=[c for c in CONTEXT if c not in cols])
                if job.fmt in ("parquet", "csv"):
                    if writer is None:
                        import pyarrow.parquet as pq

                        schema = t.schema
                        writer = (
                            pq.ParquetWriter(tmp, schema, compression="zstd")
                            if job.fmt == "parquet"
                            else pacsv.CSVWriter(str(tmp), schema)
                        )
                    writer.write_table(neutralise_table(t.cast(schema) if t.schema != schema else t))
                else:
                    xlsx_cols, rows = table_rows(t)
                    xlsx_rows.extend(rows)
                job.done += batch.num_rows
            if writer is not None:
                writer.close()
            if job.fmt == "xlsx":
                import xlsxwriter

                wb = xlsxwriter.Workbook(str(tmp), {"constant_memory": True, **XLSX_OPTIONS})
                ws = wb.add_worksheet("export")
                ws.write_row(0, 0, neutralise_row(xlsx_cols or cols))
                for i, r in enumerate(xlsx_rows, start=1):
                    ws.write_row(i, 0, neutralise_row("" if v is None else v for v in r))
                meta = wb.add_worksheet("about")
                meta.write_row(0, 0, neutralise_row(["query", job.sentence]))
                meta.write_row(1, 0, neutralise_row(["exported by", job.user]))
                wb.close()
            elif writer is None:
                # no rows: an empty file with the header
                if job.fmt == "csv":
                    tmp.write_text(",".join(cols) + "\n")
                else:
                    import pyarrow.parquet as pq

                    pq.write_table(pa.table({c: pa.array([], pa.string()) for c in cols}), tmp)
        finally:
            reader.close()
        os.replace(tmp, target)
        job.path = str(target)
        job.status = "done"
    except Exception as exc:
        LOG.exception("export %s failed", job.id)
        job.status = "failed"
        job.error = f"{type(exc).__name__}: {exc}"
        tmp.unlink(missing_ok=True)
    job.finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@router.post("/exports")
async def start_export(request: Request) -> Response:
    """Start an export of a search (same filters as the page) as CSV, XLSX or Parquet."""
    ctx = ctx_of(request)
    p = require(request, Role.ANALYST)
    form: dict[str, str] = {}
    if "application/x-www-form-urlencoded" in request.headers.get("content-type", ""):
        body = (await request.body()).decode()
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
    elif "application/json" in request.headers.get("content-type", ""):
        form = {k: str(v) for k, v in (await request.json()).items()}
    fmt = form.get("format", request.query_params.get("format", "csv")).lower()
    if fmt not in ("csv", "xlsx", "parquet"):
        raise WebError(400, f"format={fmt!r}: choose csv, xlsx or parquet")
    query = form.get("query", request.url.query)
    items = [(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k != "format"]
    try:
        f = parse_ui_filters(items, page_size=ctx.settings.page_size, page_max=ctx.settings.page_max)
        f.check(ctx.data.columns)
    except QueryError as exc:
        raise WebError(400, str(exc)) from exc
    if p.role is Role.ANALYST:
        _analyst_filters(ctx, f)
    cols = f.columns or DEFAULT_COLUMNS[f.level]
    total = count(ctx, f, f.level, p)
    job = ExportJob(
        uuid.uuid4().hex[:16],
        p.name,
        p.role.value,
        fmt,
        f.level,
        f.query_string(_offset=0),
        f.sentence(total),
        total=total,
    )
    ex = _exports(ctx)
    with ex.lock:
        ex.jobs[job.id] = job
    ex.pool.submit(_run_export, ctx, job, f, cols, p)
    audit(
        request,
        AuditEvent.DATA_EXPORT,
        action="E",
        query=f"{job.sentence} [{' AND '.join(f.where)}]",
        n_instances=total,
        detail=f"export {job.id} as {fmt}",
    )
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(f"/exports?started={job.id}", status_code=303)
    return Response(
        json.dumps({"ok": True, **job.as_dict(), "status_url": f"/exports/{job.id}.json"}),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"/exports/{job.id}.json"},
    )


def _visible_jobs(ctx: WebContext, p: Principal) -> list[ExportJob]:
    ex = _exports(ctx)
    with ex.lock:
        jobs = list(ex.jobs.values())
    return [j for j in jobs if p.role is Role.ADMIN or j.user == p.name][::-1]


@page("/exports")
def exports(request: Request) -> Response:
    ctx = ctx_of(request)
    p = require(request, Role.ANALYST)
    jobs = [j.as_dict() for j in _visible_jobs(ctx, p)]
    return respond(
        request, template="exports.html", name="exports", table=jobs or [], context={"title": "Exports", "jobs": jobs}
    )


@router.get("/exports/{job_id}")
def export_status(request: Request, job_id: str) -> Response:
    ctx = ctx_of(request)
    p = require(request, Role.ANALYST)
    job_id = _strip(job_id)
    job = next((j for j in _visible_jobs(ctx, p) if j.id == job_id), None)
    if job is None:
        raise WebError(404, f"no export {job_id} of yours")
    return respond(
        request,
        template="exports.html",
        name=f"export-{job_id}",
        table=[job.as_dict()],
        context={"title": f"Export {job_id}", "jobs": [job.as_dict()]},
        extra_json=job.as_dict(),
    )


@router.get("/exports/{job_id}/download")
def export_download(request: Request, job_id: str) -> Response:
    ctx = ctx_of(request)
    p = require(request, Role.ANALYST)
    job = next((j for j in _visible_jobs(ctx, p) if j.id == job_id), None)
    if job is None or job.status != "done" or not job.path:
        raise WebError(404, f"export {job_id} is not ready (or not yours); see /exports/{job_id}.json")
    audit(
        request,
        AuditEvent.DATA_EXPORT,
        action="R",
        query=job.sentence,
        n_instances=job.done,
        detail=f"download {job.id}.{job.fmt}",
    )
    media = {
        "csv": "text/csv",
        "parquet": "application/vnd.apache.parquet",
        "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    }[job.fmt]
    return FileResponse(job.path, media_type=media, filename=f"dicomlake-{job.level}-{job.id}.{job.fmt}")


# ---- ingest status, rejects, quality ---------------------------------------------------------


def _spool_depth(lake: Path) -> int | None:
    root = lake / "spool"
    if not root.is_dir():
        return None
    n = 0
    for d in root.iterdir():
        if d.is_dir() and d.name != "tmp":
            n += sum(1 for e in os.scandir(d) if e.name.endswith(".dcm"))
    return n


@page("/ingest")
def ingest_status(request: Request) -> Response:
    """Spool depth, rates, last runs and last errors."""
    ctx = ctx_of(request)
    require(request)
    status: dict[str, Any] = {}
    if ctx.status_provider is not None:
        try:
            status = dict(ctx.status_provider() or {})
        except Exception as exc:
            status = {"status_error": f"{type(exc).__name__}: {exc}"}
    status.setdefault("spool_depth", _spool_depth(ctx.lake))
    q = dashboards_q.ingest_counts(ctx.data.reads)
    rejects_n = q.pop("rejects")
    status.update({k: _cell(v) for k, v in q.items()})
    status["rejects"] = rejects_n
    runs = dashboards_q.ingest_runs(ctx.data.reads, 20).to_pylist() if ctx.data.has_table("ingest_runs") else []
    errors = dashboards_q.recent_rejects(ctx.data.reads, 10).to_pylist()
    audit(request, AuditEvent.QUERY, action="E", query="ingest status")
    return respond(
        request,
        template="ingest.html",
        name="ingest-runs",
        table=runs,
        context={
            "title": "Ingest",
            "status": status,
            "sections": present.status_sections(status),
            "errors": [{k: _cell(v) for k, v in e.items()} for e in errors],
        },
        extra_json={"status": status},
    )


@page("/rejects")
def rejects(request: Request) -> Response:
    ctx = ctx_of(request)
    require(request)
    lim, off = _page(request, ctx)
    t = dashboards_q.rejects_page(ctx.data.reads, lim, off)
    total = dashboards_q.rejects_total(ctx.data.reads)
    audit(request, AuditEvent.QUERY, action="E", query="rejects")
    return respond(
        request,
        template="table.html",
        name="rejects",
        table=t,
        context={
            "title": "Rejects",
            "sentence": f"{total:,} rejected inputs",
            "total": total,
            **_pager(request, lim, off, total),
        },
    )


@page("/quality")
def quality(request: Request) -> Response:
    ctx = ctx_of(request)
    require(request)
    lim, off = _page(request, ctx)
    if not ctx.data.has_table("quality_flags"):
        t: Any = []
        total = 0
    else:
        equal = {k: v for k in dashboards_q.QUALITY_KEYS if (v := request.query_params.get(k))}
        t, total = dashboards_q.quality_page(ctx.data.reads, equal, lim, off)
    audit(request, AuditEvent.QUERY, action="E", query="quality flags")
    return respond(
        request,
        template="table.html",
        name="quality-flags",
        table=t,
        context={
            "title": "Quality flags",
            "sentence": f"{total:,} quality flags",
            "total": total,
            **_pager(request, lim, off, total),
        },
    )


def _page(request: Request, ctx: WebContext) -> tuple[int, int]:
    try:
        lim = min(int(request.query_params.get("_limit", ctx.settings.page_size)), ctx.settings.page_max)
        off = int(request.query_params.get("_offset", 0))
    except ValueError as exc:
        raise WebError(400, "_limit and _offset take non-negative integers") from exc
    return max(1, lim), max(0, off)


def _pager(request: Request, lim: int, off: int, total: int) -> dict[str, Any]:
    params = dict(request.query_params)

    def url(o: int) -> str:
        q = dict(params, _offset=str(o), _limit=str(lim))
        return f"{request.url.path}?{urllib.parse.urlencode(q)}"

    return {
        "next_url": url(off + lim) if off + lim < total else None,
        "prev_url": url(max(0, off - lim)) if off else None,
        "offset": off,
    }


# ---- the access log (auditor) ----------------------------------------------------------------


@page("/access-log")
def access_log(request: Request) -> Response:
    """Every request and association; filter by any column (``user=alice``, ``event_id=110113``)."""
    ctx = ctx_of(request)
    require(request, Role.AUDITOR)
    lim, off = _page(request, ctx)
    where = {k: v for k, v in request.query_params.items() if k in EVENT_COLUMNS and v}
    try:
        events, total = ctx.db.events(
            where=where,
            since=request.query_params.get("since"),
            until=request.query_params.get("until"),
            limit=lim,
            offset=off,
        )
    except ValueError as exc:
        raise WebError(400, str(exc)) from exc
    audit(request, AuditEvent.QUERY, action="E", query=f"access log {urllib.parse.urlencode(where)}".strip())
    return respond(
        request,
        template="access_log.html",
        name="access-log",
        table=events,
        context={
            "title": "Access log",
            "sentence": f"{total:,} events"
            + (" where " + " and ".join(f"{k} = {v}" for k, v in where.items()) if where else ""),
            "total": total,
            "event_columns": EVENT_COLUMNS,
            "where": where,
            **_pager(request, lim, off, total),
        },
    )


@router.get("/access-log/{event_id}")
def access_event(request: Request, event_id: str) -> Response:
    """One event as JSON, or as its DICOM audit message (``.xml``, PS3.15 A.5)."""
    ctx = ctx_of(request)
    require(request, Role.AUDITOR)
    raw = _strip(event_id)
    if not raw.isdigit():
        raise WebError(400, f"event id {raw!r} is not a number")
    events, _ = ctx.db.events(where={"id": raw}, limit=1)
    if not events:
        raise WebError(404, f"no access-log event {raw}")
    audit(request, AuditEvent.QUERY, action="R", query=f"access log event {raw}")
    if event_id.endswith(".xml"):
        return Response(audit_message_xml(events[0]), media_type="application/xml")
    return respond(
        request,
        template="access_log.html",
        name=f"event-{raw}",
        table=events,
        context={
            "title": f"Event {raw}",
            "sentence": "1 event",
            "total": 1,
            "event_columns": EVENT_COLUMNS,
            "where": {},
        },
    )
