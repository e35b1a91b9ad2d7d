"""Part-10 files whose preamble is an executable header are rejected and quarantined.

CVE-2019-11687: the 128-byte preamble (PS3.10 §7.1) may hold a PE, ELF or Mach-O header,
making a valid DICOM file a runnable program. Outcome required: every such file, valid data
set or not, from a folder or a zip, is a reject with a reason naming the format, its bytes
kept in quarantine (never executable), and no row in the lake; zero preambles and TIFF
dual-personality preambles (whole-slide imaging) are still accepted; a setting allows
polyglots for a trusted source.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from dicomlake.ingest.sources import expand
from dicomlake.ingest.worker import WorkerConfig, process_chunk
from dicomlake.samples import pydicom_test_files
from dicomlake.security.preamble import EXECUTABLE_SIGNATURES, executable_preamble

SAMPLES = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "test-SR.dcm")
PE_STUB = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff"
    + b"\x00" * 50
    + b"This program cannot be run in DOS mode.\r\r\n$"
)
PREAMBLES = {
    "pe": PE_STUB,
    "elf": b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00",
    "macho": b"\xcf\xfa\xed\xfe\x07\x00\x00\x01",
    "script": b"#!/bin/sh\nrm -rf / # ",
    "dos-stub-only": b"\x00" * 64 + b"This program cannot be run in DOS mode.",
}
BENIGN = {"zeros": b"", "tiff-le": b"II*\x00\x08\x00\x00\x00", "tiff-be": b"MM\x00*\x00\x00\x00\x08"}


def _with_preamble(src: Path, preamble: bytes) -> bytes:
    data = src.read_bytes()
    assert data[128:132] == b"DICM"
    return preamble.ljust(128, b"\x00")[:128] + data[128:]


def _config(lake: Path, allow: bool = False) -> WorkerConfig:
    return WorkerConfig(
        lake=str(lake), columns_file=None, inline_max=1024, max_header_bytes=1 << 26,
        max_zip_member_bytes=1 << 30, max_zip_ratio=200.0, allow_executable_preamble=allow,
    )  # fmt: skip


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, int, int]:
    """A folder and a zip with every sample under every preamble; returns (folder, bad, good)."""
    folder = tmp_path / "in"
    folder.mkdir()
    bad = good = 0
    with zipfile.ZipFile(folder / "upload.zip", "w") as zf:
        for name in SAMPLES:
            src = pydicom_test_files() / name
            for kind, pre in {**PREAMBLES, **BENIGN}.items():
                blob = _with_preamble(src, pre)
                (folder / f"{kind}-{name}").write_bytes(blob)
                zf.writestr(f"{kind}/{name}", blob)
                if kind in PREAMBLES:
                    bad += 2
                else:
                    good += 2
    return folder, bad, good


def test_every_signature_is_recognised_and_benign_preambles_are_not() -> None:
    for sig, what in EXECUTABLE_SIGNATURES:
        assert executable_preamble(sig.ljust(128, b"\0") + b"DICM") == what
    for pre in BENIGN.values():
        assert executable_preamble(pre.ljust(128, b"\0") + b"DICM") is None
    assert executable_preamble(b"MZ" + b"\0" * 200) is None  # no DICM: not a Part-10 preamble


def test_executable_preambles_are_all_quarantined_and_none_reach_the_lake(
    planted: tuple[Path, int, int], tmp_path: Path
) -> None:
    folder, bad, good = planted
    lake = tmp_path / "lake"
    res = process_chunk(expand([folder]), _config(lake))
    reasons = res.rejects.column("reason").to_pylist()
    paths = res.rejects.column("source_path").to_pylist()
    assert res.rejected == bad, reasons
    assert all("suspicious preamble" in r and "CVE-2019-11687" in r for r in reasons)
    assert all(
        os.path.basename(p.split("!/")[-1]).split("-")[0] in PREAMBLES or "/" in p.split("!/")[-1] for p in paths
    )
    accepted = [p for seg in res.segments for p in seg.accepted_paths]
    assert len(accepted) == good
    assert not any(k in p for p in accepted for k in PREAMBLES)
    # 100 % quarantined, bytes intact, never executable
    for q, sha in zip(
        res.rejects.column("quarantine_path").to_pylist(), res.rejects.column("sha256").to_pylist(), strict=True
    ):
        kept = lake / q
        assert kept.is_file() and kept.name == sha
        assert executable_preamble(kept.read_bytes()[:132]) is not None
        assert not kept.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_allow_executable_preamble_setting_accepts_polyglots(planted: tuple[Path, int, int], tmp_path: Path) -> None:
    folder, bad, good = planted
    res = process_chunk(expand([folder]), _config(tmp_path / "lake", allow=True))
    assert res.rejected == 0
    assert res.instances == bad + good


def test_setting_reaches_the_workers_and_defaults_to_refusing() -> None:
    from dicomlake.config import Settings
    from dicomlake.ingest.pipeline import _worker_config

    s = Settings()
    assert s.ingest.allow_executable_preamble is False
    assert _worker_config(s, Path("/tmp/x"), None).allow_executable_preamble is False
    s2 = s.model_copy(update={"ingest": s.ingest.model_copy(update={"allow_executable_preamble": True})})
    assert _worker_config(s2, Path("/tmp/x"), None).allow_executable_preamble is True
