"""`make run`'s first half: the demo on a fresh checkout answers every example query.

The answers are checked against the files themselves (pydicom readings), not only for
being non-empty: the mammography query must list every MG image whose header holds a
positive Compression Force, and the CT dose query must find the CT Radiation Dose SRs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom

from tests.support import OPENREM


def _mg_with_force() -> int:
    """MG images of the corpus with CompressionForce > 0, read with pydicom."""
    n = 0
    for path in sorted(OPENREM.glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if ds.get("Modality") == "MG" and float(ds.get("CompressionForce", 0) or 0) > 0:
            n += 1
    return n


def test_demo_answers_every_example_query(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_")}
    env.update({"DICOMLAKE_CONFIG": os.devnull, "COLUMNS": "200"})
    proc = subprocess.run(
        [sys.executable, "-m", "dicomlake.demo", "--lake", str(tmp_path / "lake"), "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=480,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sections = re.split(r"\n─+ \d\. ", proc.stdout)[1:]
    assert len(sections) == 3, proc.stdout[-3000:]
    counts = [int(re.search(r"^([\d,]+) rows?$", s, re.M).group(1).replace(",", "")) for s in sections]  # type: ignore[union-attr]
    assert all(n >= 1 for n in counts), (counts, proc.stdout[-3000:])
    # 1. the MG compression/dose query lists every MG image with a compression force (at least
    # the corpus's; pydicom's own files may add more)
    assert counts[0] >= _mg_with_force() >= 1
    # 2. the CT dose query names the CT scanners of the corpus's CT Radiation Dose SRs
    assert "Definition" in sections[1] or "SOMATOM" in sections[1] or "Aquilion" in sections[1], sections[1]
