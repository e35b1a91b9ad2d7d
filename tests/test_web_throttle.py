"""Credential throttling on every path that takes a password (issue 19).

Wrong passwords are throttled by (source address, account) with exponential back-off: the
login form, ``POST /oauth/token`` (password grant) and HTTP Basic share one throttle. An
attacker at another address can never lock the user out: the app reads the peer address from
the ASGI scope, which Starlette's TestClient sets from its ``client`` argument.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import web_support as ws

FREE = 3  # web.login_attempts: wrong passwords before the back-off starts
ATTACKER = ("10.66.0.66", 40000)
USER = ("10.1.0.7", 40001)


@pytest.fixture(scope="module")
def served_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.web.app import create_app

    root = tmp_path_factory.mktemp("throttle")
    ws.planted_files(root / "in")
    ingest_paths([root / "in"], root / "lake", workers=1)
    ws.make_users(root / "lake")
    application = create_app(root / "lake", ws.settings(login_attempts=FREE))
    with TestClient(application):
        yield application


@pytest.fixture
def app(served_app: Any) -> Any:
    """The app with a fresh throttle (each test starts with no failures counted)."""
    auth = served_app.state.ctx.auth
    if hasattr(auth, "throttle"):
        auth.throttle = type(auth.throttle)(FREE)
    return served_app


def _client(app: Any, addr: tuple[str, int]) -> TestClient:
    return TestClient(app, client=addr, follow_redirects=False)


def _form(c: TestClient, user: str, password: str) -> Any:
    page = c.get("/login")
    token = page.text.split('name="login_csrf" value="')[1].split('"')[0]
    return c.post("/login", data={"username": user, "password": password, "login_csrf": token})


def _oauth(c: TestClient, user: str, password: str) -> Any:
    return c.post("/oauth/token", data={"grant_type": "password", "username": user, "password": password})


def _basic(c: TestClient, user: str, password: str) -> Any:
    value = base64.b64encode(f"{user}:{password}".encode()).decode()
    return c.get("/api/whoami", headers={"Authorization": f"Basic {value}"})


PATHS: dict[str, tuple[Callable[[TestClient, str, str], Any], int, int]] = {
    # how, status of a wrong password, status of a right one
    "form": (_form, 401, 303),
    "oauth": (_oauth, 400, 200),
    "basic": (_basic, 401, 200),
}


def _until_allowed(call: Callable[[], Any], timeout: float = 20) -> Any:
    """Retry while the answer is 429 (the back-off), bounded by a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        r = call()
        if r.status_code != 429 or time.monotonic() > deadline:
            return r
        time.sleep(min(0.2, float(r.headers.get("Retry-After", "1"))))


@pytest.mark.parametrize("path", list(PATHS))
def test_wrong_passwords_back_off_by_address_and_never_lock_the_user_out(app: Any, path: str) -> None:
    how, wrong, right = PATHS[path]
    attacker = _client(app, ATTACKER)
    for _ in range(FREE):
        assert how(attacker, "ada", "wrong-password-1").status_code == wrong
    # the attacker now waits, even with the right password (it is not checked)
    r = how(attacker, "ada", ws.PASSWORDS["ada"])
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    # the user at their own address is not locked out, on every path
    for other, (h, _w, ok) in PATHS.items():
        assert h(_client(app, USER), "ada", ws.PASSWORDS["ada"]).status_code == ok, other
    # the attacker's wait doubles with each further failure
    first = int(r.headers["Retry-After"])
    assert _until_allowed(lambda: how(attacker, "ada", "wrong-password-2")).status_code == wrong
    r2 = how(attacker, "ada", "wrong-password-3")
    assert r2.status_code == 429 and int(r2.headers["Retry-After"]) >= 2 * first - 1, r2.headers
    # back-off, not lock-out: after the wait the right password works and clears the count
    assert _until_allowed(lambda: how(attacker, "ada", ws.PASSWORDS["ada"])).status_code == right
    assert how(_client(app, ATTACKER), "ada", "wrong-password-4").status_code == wrong


def test_one_throttle_over_the_three_paths(app: Any) -> None:
    attacker = _client(app, ATTACKER)
    assert _basic(attacker, "ann", "nope-nope-1").status_code == 401
    assert _oauth(attacker, "ann", "nope-nope-2").status_code == 400
    assert _form(attacker, "ann", "nope-nope-3").status_code == 401
    for how, _w, _r in PATHS.values():
        assert how(attacker, "ann", ws.PASSWORDS["ann"]).status_code == 429
    # other accounts from the same address are still tried normally (until the per-source limit)
    assert _oauth(attacker, "aud", ws.PASSWORDS["aud"]).status_code == 200


def test_throttled_attempts_are_in_the_access_log(app: Any) -> None:
    source = ("10.99.0.9", 40009)
    attacker = _client(app, source)
    for _ in range(FREE + 2):
        _basic(attacker, "ada", "nope-nope-x")
    auditor = TestClient(app, client=USER)
    params = {"status": "429", "_limit": "500"}
    rows = auditor.get("/access-log.json", params=params, headers=ws.bearer(app, "aud")).json()["rows"]
    mine = [r for r in rows if (r["source"] or "").startswith(source[0] + ":")]
    assert len(mine) == 2, rows
    assert all(r["user"] == "ada" and r["event"] == "Security Alert" for r in mine), mine
