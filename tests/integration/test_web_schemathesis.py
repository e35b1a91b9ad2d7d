"""Schemathesis against the app's own OpenAPI description, once per role: no request it generates
(valid or not) gets a server error. The GET operations only: the state-changing ones (login,
token, exports, STOW-RS, internal) have tests of their own, and random logins would trip the
credential throttling."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import web_support as ws

pytestmark = [pytest.mark.integration]

EXAMPLES = 8
"""Generated cases per operation (fuzzing phase): bounded, so the three roles take about a minute
on a loaded 2-core machine (~190 requests each)."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Path]]:

    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.web.app import create_app
    from tests.test_web_dicomweb_conformance import bad_ds_file

    root = tmp_path_factory.mktemp("schemathesis")
    ws.planted_files(root / "in")
    bad_ds_file(root / "in")
    ingest_paths([root / "in"], root / "lake", workers=1)
    ws.make_users(root / "lake")
    app = create_app(root / "lake", ws.settings())
    with ws.served(app) as url:
        yield url, app, root


def _schemathesis() -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed: it is in the test dependency group (make install)")
    return [found]


@pytest.mark.parametrize("user", ["ada", "ann", "aud"])
def test_openapi_operations_never_answer_a_server_error(served: tuple[str, Any, Path], user: str) -> None:
    url, app, root = served
    cmd = [
        *_schemathesis(),
        "run",
        f"{url}/api/openapi.json",
        "--checks",
        "not_a_server_error",
        "--exclude-method",
        "POST",
        "--max-examples",
        str(EXAMPLES),
        "--phases",
        "fuzzing",
        "--seed",
        "19",
        "--no-shrink",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--suppress-health-check",
        "all",
        "--header",
        f"Authorization: Bearer {app.state.ctx.auth.issue_jwt(user)}",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=root)
    took = time.monotonic() - t0
    out = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, out
    tested = re.search(r"Tested:\s*(\d+)", proc.stdout)
    cases = re.search(r"(\d+) generated, (\d+) passed", proc.stdout)
    print(f"\nschemathesis as {ws.ROLES[user]}: {took:.1f} s, {tested and tested.group(0)}, {cases and cases.group(0)}")
    # every GET operation of the description was exercised (the QIDO-RS ones among them), none failed
    assert tested is not None and int(tested.group(1)) >= 40, out
    assert cases is not None and cases.group(1) == cases.group(2), out


def test_openapi_declares_the_qido_parameters(served: tuple[str, Any, Path]) -> None:
    """PS3.18 §8.3.4 / Table 10.6.1-5: the QIDO-RS routes declare their query parameters."""
    import httpx

    url, _app, _root = served
    spec = httpx.get(f"{url}/api/openapi.json", headers=ws.bearer(_app, "ada")).json()
    for path, level_keys in (
        ("/dicomweb/studies", {"PatientName", "StudyDate", "AccessionNumber", "ModalitiesInStudy"}),
        ("/dicomweb/series", {"Modality", "SeriesInstanceUID", "PatientName"}),
        ("/dicomweb/instances", {"SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Modality"}),
        ("/dicomweb/studies/{study}/series/{series}/instances", {"SOPInstanceUID"}),
    ):
        names = {p["name"] for p in spec["paths"][path]["get"]["parameters"]}
        assert level_keys | {"limit", "offset", "fuzzymatching", "includefield"} <= names, (path, names)
