"""Every input the fuzzers ever broke something with, replayed; and a short fuzz run.

The inputs live in ``tests/data/fuzz/<target>/`` and go through the same ``check`` as under
atheris (``fuzz/fuzz_<target>.py``), uninstrumented. The short run fuzzes every in-process
target with a fixed libFuzzer seed (``FUZZ_SEED``, default 1) for a fixed number of
executions (each target's ``SHORT_RUNS``), so it tries the same inputs on every run and
cannot fail by chance on a new random input; it stays under a minute on two cores and
fails on any crash, hang or out-of-memory, printing the input to keep. ``make fuzz`` is the
random, long run. The live listener target (``pdu-live``) has its own tests in
``tests/test_fuzz_live_pdu.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "fuzz"
sys.path.insert(0, str(REPO))

from fuzz.harness import module_name  # noqa: E402
from fuzz.run import LIVE_TARGETS, TARGETS, target_file  # noqa: E402

IN_PROCESS = [t for t in TARGETS if t not in LIVE_TARGETS]
CASES = sorted(
    (p.parent.name, p)
    for p in DATA.glob("*/*")
    if p.is_file() and p.parent.name in IN_PROCESS and not p.name.startswith(".")
)
KNOWN: dict[str, str] = tomllib.loads((DATA / "known.toml").read_text("utf-8"))
"""Findings not fixed yet (their files are being worked on): strict xfail with the reason."""


def _case(target: str, path: Path) -> object:
    key = f"{target}/{path.name}"
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN[key])] if key in KNOWN else []
    return pytest.param(target, path, id=key, marks=marks)


def test_every_target_has_a_harness_and_a_regression_folder_name() -> None:
    for t in TARGETS:
        assert target_file(t).exists(), t
    folders = {p.name for p in DATA.iterdir() if p.is_dir()}
    assert folders <= set(TARGETS), folders - set(TARGETS)


def test_known_findings_name_existing_inputs() -> None:
    assert set(KNOWN) <= {f"{t}/{p.name}" for t, p in CASES}


@pytest.mark.parametrize(("target", "path"), [_case(t, p) for t, p in CASES])
def test_fuzz_regression_input_no_longer_fails(target: str, path: Path) -> None:
    check = importlib.import_module(module_name(target)).check
    t0 = time.perf_counter()
    check(path.read_bytes())
    assert time.perf_counter() - t0 < 5, f"{path.name} took {time.perf_counter() - t0:.1f} s (a hang?)"


@pytest.mark.timeout(150)
def test_short_fuzz_run_finds_no_crash(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the test dependency group (make install)")
    seed = os.environ.get("FUZZ_SEED", "1")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "fuzz" / "run.py"), "--seed", seed, "--runs", "short",
         "--seconds", "20", "--no-save", "--seed-limit", "40", "--workdir", str(tmp_path),
         *(f"--target={t}" for t in IN_PROCESS)],
        capture_output=True, text=True, cwd=REPO, timeout=140,
    )  # fmt: skip
    took = time.monotonic() - t0
    print(proc.stdout)
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["target"] for r in results] == IN_PROCESS
    for r in results:
        # --seconds only bounds a slow machine: it cuts the same sequence of inputs short
        assert r["executions"] >= r["runs"] // 4, r
        assert not r["error"], f"{r['target']}: {r['error']}"
    found = {r["target"]: r["crashes"] for r in results if r["crashes"]}
    assert not found, (
        f"fuzzing found failing inputs {found}; copy each into tests/data/fuzz/<target>/ "
        f"and fix the code (logs beside them in {tmp_path})\n{proc.stdout}"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert took < 90, f"short fuzz run took {took:.0f} s"


_SOP = {"00080016": {"vr": "UI", "Value": ["1.2.3"]}, "00080018": {"vr": "UI", "Value": ["1.2.3.4"]}}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"00280010": {"vr": "U2", "Value": [45]}}, "(0028,0010)"),  # not a VR
        ({"00100010": {"vr": "LO", "Value": ["x" * 70000]}}, "(0010,0010)"),  # past a 16-bit length
        ({"00280010": {"vr": "US", "Value": [70000]}}, "(0028,0010)"),  # does not fit US
        ({"00400275": {"vr": "SQ", "Value": [{"00280010": {"vr": "US", "Value": [-1]}}]}}, "(0028,0010)"),
        ({"FFFEE000": {"vr": "UN"}}, "(FFFE,E000)"),  # an item tag as an element
    ],
    ids=["unknown-vr", "too-long", "out-of-range", "nested-out-of-range", "item-tag"],
)
def test_remote_dicom_json_that_cannot_be_encoded_is_a_value_error_naming_the_element(
    extra: dict[str, object], named: str
) -> None:
    """json/crash-part10-written-corrupt: refused with the reason instead of corrupt Part-10 spooled."""
    from dicomlake.ingest.dicomweb import json_to_part10

    with pytest.raises(ValueError, match=re.escape(named)):
        json_to_part10({**_SOP, **extra})


def test_remote_dicom_json_that_pydicom_reads_more_kindly_still_round_trips() -> None:
    from dicomlake.dicom.reader import parse_all
    from dicomlake.ingest.dicomweb import json_to_part10

    js = {
        **_SOP,
        "00020010": {"vr": "UI", "Value": ["1.2.840.10008.1.2"]},  # file meta in the JSON: ours is written
        "00100010": {"vr": "LO", "Value": ["x" * 70]},  # over-long for LO, but encodable: kept
        "00280010": {"vr": "US", "Value": ["512"]},  # a number as a string: pydicom's path
    }
    uid, data = json_to_part10(js)
    assert uid == "1.2.3.4"
    found = {t: (vr, v) for t, vr, v, _n in parse_all(data).elements}
    assert found[0x00280010] == ("US", b"\x00\x02")
    assert found[0x00100010][1].rstrip() == b"x" * 70
