"""The listener fuzzed over real TCP sockets (``fuzz/fuzz_pdu_live.py``, target ``pdu-live``).

Every input in ``tests/data/fuzz/pdu-live/`` is replayed against two live listeners on
127.0.0.1 (free ports) through the target's own ``check``: the listener closes the
connection, logs no error, leaks no thread, file or ``.part``, acknowledges only complete
files and still answers C-ECHO. Two tests show the contract catches what it claims to
(a listener that acknowledges a cut file, an exception in an association). The short run
fuzzes the live listener under atheris with a fixed seed for a fixed number of executions
(the target's ``SHORT_RUNS``): the same inputs on every run, well under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "fuzz" / "pdu-live"
sys.path.insert(0, str(REPO))

from fuzz import fuzz_pdu_live as target  # noqa: E402

CASES = sorted(p for p in DATA.iterdir() if p.is_file() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def live() -> Iterator[target.Live]:
    lv = target.live()
    yield lv
    target.shutdown()


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_live_pdu_regression_input_no_longer_fails(live: target.Live, path: Path) -> None:
    t0 = time.perf_counter()
    target.check(path.read_bytes())
    assert time.perf_counter() - t0 < 10, f"{path.name} took {time.perf_counter() - t0:.1f} s (a hang?)"


def test_recorded_associations_keep_the_contract(live: target.Live) -> None:
    """The seeds (pynetdicom's own C-ECHO and C-STORE associations, raw and framed) pass."""
    seeds = target.seed_inputs()
    assert len(seeds) >= 20
    for data in seeds:
        target.check(data)
    stores = [target.stores_sent(target.from_framed(d[1:]) if d[0] & 1 else d[1:]) for d in seeds]
    assert sum(len(s) for s in stores) >= 20  # C-STOREs really went through the checks


def test_the_contract_catches_a_cut_file_acknowledged(live: target.Live, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomlake.ingest.spool import SpoolWriter

    commit = SpoolWriter.commit

    def cut(self: SpoolWriter) -> Path:
        os.ftruncate(self.fd, self.size - 1)
        return commit(self)

    monkeypatch.setattr(SpoolWriter, "commit", cut)
    keep_files = next(d for d in target.seed_inputs() if d[0] == 2 and target.stores_sent(d[1:]))
    with pytest.raises(AssertionError, match="acknowledged with"):
        target.check(keep_files)


def test_the_contract_catches_an_exception_in_an_association(
    live: target.Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomlake.ingest import listener

    def broken(data: bytes) -> dict[int, object]:
        raise IndexError("planted")

    monkeypatch.setattr(listener, "parse_command", broken)
    with pytest.raises(AssertionError, match=r"logged an error.*IndexError: planted"):
        target.check(bytes((0,)) + live.echo_stream)


@pytest.mark.timeout(120)
def test_short_live_pdu_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the test dependency group (make install)")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "fuzz" / "run.py"), "--target", "pdu-live", "--runs", "short",
         "--seed", os.environ.get("FUZZ_SEED", "1"), "--seconds", "50", "--no-save", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=110,
    )  # fmt: skip
    took = time.monotonic() - t0
    print(proc.stdout)
    (r,) = json.loads((tmp_path / "results.json").read_text())
    assert not r["error"], r["error"]
    assert not r["crashes"], (
        f"the live listener fuzzer found failing inputs {r['crashes']}; copy each into tests/data/fuzz/pdu-live/ "
        f"and fix the listener (logs beside them in {tmp_path})\n{proc.stdout}"
    )
    assert r["executions"] >= r["runs"] // 4, r  # --seconds only cuts the same sequence short
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert took < 60, f"short live fuzz run took {took:.0f} s"
