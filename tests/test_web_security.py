"""Who may do what: the endpoint × role × method matrix, analysts never see an identifier,
login with sessions and CSRF, bearer JWTs and API tokens, and the access log of it all."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from tests import web_support as ws

ROLES = ("anonymous", "admin", "analyst", "auditor")
METHODS = ("GET", "POST", "PUT", "DELETE")

PUBLIC = {"/login", "/healthz", "/oauth/token", "/static/plotly.min.js", "/static/{name}", "/favicon.ico"}
ANY_USER = {"/", "/api/whoami", "/logout", "/api/docs", "/api/openapi.json", "/docs/oauth2-redirect"}


def allowed(role: str, path: str, method: str) -> bool:
    """The policy, written out once: what each role may do."""
    if path in PUBLIC:
        return True
    if role == "anonymous":
        return False
    if role == "admin" or path in ANY_USER:
        return True
    if role == "auditor":
        return path.startswith("/access-log")
    # analyst: de-identified reads, searches, dashboards and its own exports
    if path.startswith("/dicomweb"):
        return method == "GET"
    return path.split("/")[1].split(".")[0] in ("studies", "instances", "dashboards", "exports")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.web.app import create_app

    root = tmp_path_factory.mktemp("security")
    uids = ws.planted_files(root / "in")
    ingest_paths([root / "in"], root / "lake", workers=1)
    ws.make_users(root / "lake")
    app = create_app(root / "lake", ws.settings())
    with TestClient(app) as c:
        yield {"app": app, "client": c, "uids": uids, "root": root}


def all_routes(app: Any) -> dict[str, set[str]]:
    """Every path of the app with its methods (routers included, whatever FastAPI wraps them in)."""
    out: dict[str, set[str]] = {}
    for r in app.routes:
        items = [r] if isinstance(r, (APIRoute, Route)) else list(getattr(r, "effective_route_contexts", lambda: [])())
        for x in items:
            out.setdefault(x.path, set()).update(m for m in (x.methods or ()) if m != "HEAD")
    return out


def _stow_body(data: bytes) -> tuple[bytes, str]:
    b = "sec"
    return (
        f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{b}--\r\n".encode(),
        f'multipart/related; type="application/dicom"; boundary={b}',
    )


def _fill(path: str, ids: dict[str, str]) -> str:
    out = path.replace("/studies/{uid}", "/studies/{study}").replace("/instances/{uid}", "/instances/{instance}")
    out = out.replace("/audits/{name}", "/audits/mg-dose").replace("/bulkdata/{tag}", "/bulkdata/7FE00010")
    for k, v in ids.items():
        out = out.replace("{" + k + "}", v)
    return out


def _ids(c: TestClient, headers: dict[str, str], role: str, uids: dict[str, Any]) -> dict[str, str]:
    """Concrete values for path parameters, as this role knows them."""
    ids = {
        "study": uids["studies"][0],
        "series": uids["series"][0],
        "instance": uids["instances"][0],
        "job_id": "0" * 16,
        "event_id": "1",
        "name": "style.css",
    }
    if role == "analyst":
        st = c.get("/dicomweb/studies?Modality=CT", headers=headers).json()[0]
        ids["study"] = st["0020000D"]["Value"][0]
        inst = c.get(f"/dicomweb/studies/{ids['study']}/instances", headers=headers).json()[0]
        ids["series"] = inst["0020000E"]["Value"][0]
        ids["instance"] = inst["00080018"]["Value"][0]
    if role in ("admin", "analyst"):
        r = c.post("/exports", data={"format": "csv", "query": "Modality=CT"}, headers=headers)
        ids["job_id"] = r.json()["id"]
    return ids


def _request(c: TestClient, method: str, path: str, url: str, headers: dict[str, str], creds: dict[str, str]) -> Any:
    if method == "POST" and path == "/internal/query":
        return c.post(url, json={"sql": "SELECT 1 AS x"}, headers=headers)
    if method == "POST" and path.startswith("/dicomweb/studies"):
        body, ctype = _stow_body(creds["file"])
        return c.post(url, content=body, headers={**headers, "Content-Type": ctype})
    if method == "POST" and path == "/exports":
        return c.post(url, data={"format": "csv", "query": "Modality=MG"}, headers=headers)
    if method == "POST" and path == "/login":
        return c.post(
            url,
            data={"username": "ann", "password": ws.PASSWORDS["ann"], "login_csrf": "x"},
            headers=headers,
            cookies={"dl_login_csrf": "x"},
            follow_redirects=False,
        )
    if method == "POST" and path == "/oauth/token":
        return c.post(
            url,
            data={"grant_type": "password", "username": creds["username"], "password": creds["password"]},
            headers=headers,
        )
    return c.request(method, url, headers=headers, follow_redirects=False)


def test_endpoint_role_method_matrix_and_no_identifier_reaches_an_analyst(world: dict[str, Any]) -> None:
    app, c, uids = world["app"], world["client"], world["uids"]
    c.headers.clear()
    forbidden = ws.forbidden_strings(uids, app.state.ctx.view)
    routes = all_routes(app)
    assert len(routes) > 40
    checks = scanned = 0
    problems: list[str] = []
    for role in ROLES:
        name = {"admin": "ada", "analyst": "ann", "auditor": "aud"}.get(role)
        headers = ws.bearer(app, name) if name else {}
        creds = {"username": name or "nobody", "password": ws.PASSWORDS.get(name or "", "wrong-password")}
        stow = (world["root"] / "in" / "001.dcm").read_bytes()
        ids = (
            _ids(c, headers, role, uids)
            if name
            else {
                "study": uids["studies"][0],
                "series": uids["series"][0],
                "instance": uids["instances"][0],
                "job_id": "0" * 16,
                "event_id": "1",
                "name": "style.css",
            }
        )
        for path, methods in sorted(routes.items()):
            url = _fill(path, ids)
            for method in METHODS:
                r = _request(c, method, path, url, headers, {**creds, "file": stow})
                c.cookies.clear()  # a login above must not authenticate what follows
                checks += 1
                if method not in methods:
                    want = {401} if role == "anonymous" and path not in PUBLIC else {405}
                    if r.status_code not in want:
                        problems.append(f"{role} {method} {path}: {r.status_code}, expected {want}")
                    continue
                if allowed(role, path, method):
                    ok = r.status_code < 400 or (
                        path == "/oauth/token" and role == "anonymous" and r.status_code == 400
                    )
                    # an empty upload to the capture page is a usage error (it needs a worklist
                    # provider and a file: tests/integration/test_worklist.py), not an access one
                    ok = ok or (path == "/capture" and method == "POST" and r.status_code == 415)
                    if not ok:
                        problems.append(f"{role} {method} {path}: {r.status_code} {r.text[:200]}")
                else:
                    want = 401 if role == "anonymous" else 403
                    if r.status_code != want:
                        problems.append(f"{role} {method} {path}: {r.status_code}, expected {want}")
                    elif r.headers.get("content-type", "").startswith("application/json"):
                        body = r.json()
                        checks += 1
                        if set(body) != {"ok", "error", "errors", "status"}:
                            problems.append(f"{role} {method} {path}: error shape {sorted(body)}")
                if role == "analyst" and r.status_code < 400:
                    scanned += 1
                    text = r.content.decode("utf-8", "replace")
                    for s in forbidden:
                        checks += 1
                        if s in text:
                            problems.append(f"analyst {method} {path}: response contains {s!r}")
    # the analyst's finished exports, every format
    analyst = ws.bearer(app, "ann")
    for fmt in ("csv", "xlsx", "parquet"):
        job = c.post(
            "/exports",
            data={
                "format": fmt,
                "query": "_level=instance&_col=PatientName,PatientID,StudyDate,SOPInstanceUID,InstitutionName,CTDIvol",
            },
            headers=analyst,
        ).json()
        for _ in range(200):
            st = c.get(f"/exports/{job['id']}.json", headers=analyst).json()
            if st["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert st["status"] == "done", st
        data = c.get(f"/exports/{job['id']}/download", headers=analyst).content
        content = _export_text(fmt, data)
        scanned += 1
        for s in forbidden:
            checks += 1
            if s in content:
                problems.append(f"analyst export {fmt}: contains {s!r}")
    print(
        f"\nsecurity matrix: {len(routes)} paths × {len(ROLES)} roles × {len(METHODS)} methods; "
        f"{checks} checks, {scanned} analyst responses scanned for {len(forbidden)} planted identifiers"
    )
    assert not problems, "\n".join(problems[:40])


def _export_text(fmt: str, data: bytes) -> str:
    import io

    if fmt == "csv":
        return data.decode()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str)
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return "".join(z.read(n).decode("utf-8", "replace") for n in z.namelist())


def test_analyst_sees_pseudonyms_and_no_identifiable_instance(world: dict[str, Any]) -> None:
    app, c, uids = world["app"], world["client"], world["uids"]
    h = ws.bearer(app, "ann")
    studies = c.get("/dicomweb/studies", headers=h).json()
    assert len(studies) == 2
    mg = next(s for s in studies if "MG" in s["00080061"]["Value"])
    assert mg["00201208"]["Value"] == [2]  # the burned-in Secondary Capture is not counted
    assert all(s["0020000D"]["Value"][0].startswith("2.25.") for s in studies)
    assert c.get(f"/dicomweb/studies/{uids['studies'][0]}/metadata", headers=h).status_code == 404
    r = c.get("/dicomweb/studies?PatientID=PLANT-ID-4711", headers=h)
    assert r.status_code == 403 and "PatientID" in r.json()["error"]
    r = c.get("/studies.json?AccessionNumber=ACCPLANT99", headers=h)
    assert r.status_code == 403
    ok = c.get("/studies.json?StationName=CT1&CTDIvol__gt=20", headers=h).json()
    assert ok["sentence"] == "1 study where StationName = CT1 and CTDIvol > 20 mGy"


def test_login_session_csrf_and_logout(world: dict[str, Any]) -> None:
    app = world["app"]
    c = TestClient(app)
    page = c.get("/login")
    assert page.status_code == 200 and "dl_login_csrf" in page.cookies
    token = page.text.split('name="login_csrf" value="')[1].split('"')[0]
    bad = c.post("/login", data={"username": "ann", "password": "nope-nope", "login_csrf": token})
    assert bad.status_code == 401
    r = c.post(
        "/login",
        data={"username": "ann", "password": ws.PASSWORDS["ann"], "login_csrf": token, "next": "/dashboards"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboards"
    assert "dl_session" in c.cookies
    html = c.get("/studies", headers={"Accept": "text/html"}).text
    csrf = html.split('name="csrf_token" value="')[1].split('"')[0]
    assert (
        c.post("/exports", data={"format": "csv", "query": ""}, headers={"Accept": "application/json"}).status_code
        == 403
    )
    assert c.post("/exports", data={"format": "csv", "query": "", "csrf_token": "wrong"}).status_code == 403
    assert c.post("/exports", data={"format": "csv", "query": "", "csrf_token": csrf}).status_code == 202
    assert c.post("/exports", json={"format": "csv"}, headers={"X-CSRF-Token": csrf}).status_code == 202
    out = c.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    c.cookies.clear()
    assert c.get("/studies", headers={"Accept": "text/html"}, follow_redirects=False).status_code == 303
    # an offsite `next` is not followed
    page = c.get("/login")
    token = page.text.split('name="login_csrf" value="')[1].split('"')[0]
    r = c.post(
        "/login",
        data={"username": "ada", "password": ws.PASSWORDS["ada"], "login_csrf": token, "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"
    log = TestClient(app).get("/access-log.json?event_id=110114", headers=ws.bearer(app, "aud")).json()["rows"]
    kinds = {(e["user"], e["event_type"], e["outcome"]) for e in log}
    assert ("ann", "110122", 4) in kinds and ("ann", "110122", 0) in kinds and ("ann", "110123", 0) in kinds


def test_bearer_jwt_api_token_basic_and_oauth(world: dict[str, Any]) -> None:
    import jwt as pyjwt

    app = world["app"]
    c = TestClient(app)
    auth = app.state.ctx.auth
    tok = auth.issue_jwt("ann")
    assert c.get("/api/whoami", headers={"Authorization": f"Bearer {tok}"}).json()["role"] == "analyst"
    claims = pyjwt.decode(tok, options={"verify_signature": False})
    assert {"iss", "aud", "sub", "exp", "jti", "scope"} <= set(claims)
    forged = pyjwt.encode({**claims, "role": "admin"}, "another-secret-" + "y" * 30, algorithm="HS256")
    assert c.get("/api/whoami", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    expired = pyjwt.encode({**claims, "exp": int(time.time()) - 10}, ws.SECRET, algorithm="HS256")
    r = c.get("/api/whoami", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["error"]
    none_alg = pyjwt.encode(claims, None, algorithm="none") if hasattr(pyjwt, "encode") else ""
    assert c.get("/api/whoami", headers={"Authorization": f"Bearer {none_alg}"}).status_code == 401
    opaque = auth.issue_api_token("aud")
    assert c.get("/access-log.json", headers={"Authorization": f"Bearer {opaque}"}).status_code == 200
    basic = base64.b64encode(f"ada:{ws.PASSWORDS['ada']}".encode()).decode()
    assert c.get("/dicomweb/studies", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    wrong = base64.b64encode(b"ada:wrong-password").decode()
    assert c.get("/dicomweb/studies", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    grant = c.post(
        "/oauth/token", data={"grant_type": "password", "username": "aud", "password": ws.PASSWORDS["aud"]}
    ).json()
    assert grant["token_type"] == "Bearer"
    assert c.get("/access-log.json", headers={"Authorization": f"Bearer {grant['access_token']}"}).status_code == 200
    assert auth.revoke_tokens("aud") >= 2
    assert c.get("/access-log.json", headers={"Authorization": f"Bearer {opaque}"}).status_code == 401


def test_refused_access_is_a_security_alert_with_dicom_audit_message(world: dict[str, Any]) -> None:
    app = world["app"]
    c = TestClient(app)
    c.get("/access-log.json", headers=ws.bearer(app, "ann"))
    rows = c.get("/access-log.json?event_id=110113&user=ann", headers=ws.bearer(app, "aud")).json()["rows"]
    assert rows and rows[0]["outcome"] == 4 and rows[0]["event_type"] == "110132"
    msg = c.get(f"/access-log/{rows[0]['id']}.xml", headers=ws.bearer(app, "aud")).text
    assert 'csd-code="110113"' in msg and 'UserID="ann"' in msg and 'EventOutcomeIndicator="4"' in msg
    assert xml_dom_ok(msg.encode())
    csv = c.get("/access-log.csv?user=ann", headers=ws.bearer(app, "aud"))
    assert csv.status_code == 200 and csv.text.startswith("id,time,event_id")


def xml_dom_ok(data: bytes) -> bool:
    import xml.dom.minidom

    return xml.dom.minidom.parseString(data).documentElement.tagName == "AuditMessage"


def test_cli_user_add_reads_password_from_stdin_and_token_works(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app as cli
    from dicomlake.config import reset_settings_cache
    from dicomlake.web.app import create_app

    lake = tmp_path / "lake"
    runner = CliRunner()
    r = runner.invoke(
        cli, ["user", "add", "carol", "--role", "auditor", "--lake", str(lake)], input="carols-password\n"
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["user", "add", "dave", "--role", "boss", "--lake", str(lake)], input="x" * 10 + "\n")
    assert r.exit_code == 2 and "admin, analyst or auditor" in r.output
    r = runner.invoke(cli, ["token", "carol", "--lake", str(lake)])
    assert r.exit_code == 2 and "DICOMLAKE_WEB__SECRET" in r.output
    monkeypatch.setenv("DICOMLAKE_WEB__SECRET", ws.SECRET)
    reset_settings_cache()
    r = runner.invoke(cli, ["token", "carol", "--lake", str(lake)])
    assert r.exit_code == 0, r.output
    tok = r.output.strip()
    app = create_app(lake, ws.settings())
    with TestClient(app) as c:
        assert c.get("/api/whoami", headers={"Authorization": f"Bearer {tok}"}).json()["name"] == "carol"
        assert c.get("/studies.json", headers={"Authorization": f"Bearer {tok}"}).status_code == 403
        page = c.get("/login")
        token = page.text.split('name="login_csrf" value="')[1].split('"')[0]
        assert (
            c.post(
                "/login",
                data={"username": "carol", "password": "carols-password", "login_csrf": token},
                follow_redirects=False,
            ).status_code
            == 303
        )
        alerts = c.get("/access-log.json?event_type=110137", headers={"Authorization": f"Bearer {tok}"}).json()["rows"]
        assert alerts and alerts[-1]["path"] == "user carol"
    monkeypatch.delenv("DICOMLAKE_WEB__SECRET")
    reset_settings_cache()
