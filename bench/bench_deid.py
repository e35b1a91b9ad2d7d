"""De-identification throughput: ``dicomlake deid`` beside dicognito and deid (PyPI), same files.

Each tool reads every file of the corpus from disk, de-identifies it and writes the result to a
fresh folder; rounds alternate between tools, and the median of 3 rounds is reported in
instances per second. Default corpus: pydicom's test files plus ``../shared/corpus`` copied to a
temporary folder. ``python -m bench.bench_deid [FOLDER]`` runs it alone. A tool whose rounds
exceed ``BENCH_DEID_MAX_SECONDS`` (default 300) in total is not run again (deid from PyPI takes
~17 minutes per round here); the table says how many rounds each median is of.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench.report import BenchResult, fmt, median, table

NAME = "deid"
REPO = Path(__file__).resolve().parent.parent


def default_corpus(dest: Path) -> Path:
    """pydicom's test files and ../shared/corpus copied to ``dest``."""
    from pydicom.data import get_testdata_files

    dest.mkdir(parents=True, exist_ok=True)
    for n, src in enumerate(sorted(get_testdata_files("*.dcm"))):
        shutil.copy(src, dest / f"pydicom-{n:03d}-{Path(src).name}")
    shared = REPO.parent / "shared" / "corpus"
    for n, src in enumerate(sorted(shared.rglob("*.dcm"))):
        shutil.copy(src, dest / f"shared-{n:03d}-{src.name}")
    return dest


def _usable(files: list[Path]) -> list[Path]:
    """Files every tool can be asked to read: Part-10 with SOP Class and Instance UIDs."""
    import pydicom

    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue
        if "SOPClassUID" in ds and "SOPInstanceUID" in ds and "TransferSyntaxUID" in ds.file_meta:
            out.append(f)
    return out


def _ours() -> Callable[[Path, Path], bool]:
    from dicomlake.deid import Deidentifier, DeidSettings, load_profile
    from dicomlake.deid.profile import BurnedInPolicy

    # Burned-in instances are processed, not excluded, so every tool does the same work.
    profile = replace(load_profile("basic"), burned_in=BurnedInPolicy.FLAG)
    engine = Deidentifier(profile, DeidSettings(secret="bench-secret-0123456789abcdef"))

    def run(src: Path, dst: Path) -> bool:
        data = engine.deidentify_bytes(src.read_bytes(), source=str(src))
        if data is None:
            return False
        dst.write_bytes(data)
        return True

    return run


def _dicognito() -> Callable[[Path, Path], bool]:
    import pydicom
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()

    def run(src: Path, dst: Path) -> bool:
        ds = pydicom.dcmread(src)
        anonymizer.anonymize(ds)
        ds.save_as(dst)
        return True

    return run


def _pydicom_deid() -> Callable[[Path, Path], bool]:
    from deid.config import DeidRecipe
    from deid.dicom.parser import DicomParser

    recipe = DeidRecipe()  # the package's default recipe (dicom basic)
    logging.getLogger("deid").setLevel(logging.ERROR)

    def run(src: Path, dst: Path) -> bool:
        parser = DicomParser(str(src), recipe=recipe)
        parser.parse(strip_sequences=False, remove_private=True)
        parser.dicom.save_as(dst)
        return True

    return run


TOOLS: dict[str, Callable[[], Callable[[Path, Path], bool]]] = {
    "dicomlake deid (basic)": _ours,
    "dicognito": _dicognito,
    "deid (pydicom/deid, default recipe)": _pydicom_deid,
}


def _round(tool: Callable[[Path, Path], bool], files: list[Path], out: Path) -> tuple[float, int, int]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ok = failed = 0
    t0 = time.perf_counter()
    for n, f in enumerate(files):
        try:
            ok += tool(f, out / f"{n:05d}.dcm")
        except Exception:
            failed += 1
    return time.perf_counter() - t0, ok, failed


def main(folder: Path | str | None = None, rounds: int = 3) -> BenchResult:
    """Run the rounds, print a table, return the figures."""
    result = BenchResult(NAME)
    warnings.simplefilter("ignore")
    logging.getLogger("dicomlake").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        corpus = Path(folder) if folder else default_corpus(Path(tmp) / "corpus")
        files = _usable(sorted(p for p in corpus.rglob("*") if p.is_file()))
        size = sum(f.stat().st_size for f in files)
        print(f"corpus: {len(files)} instances, {size / 1e6:.1f} MB: {corpus}")
        tools: dict[str, Callable[[Path, Path], bool]] = {}
        for name, make in TOOLS.items():
            try:
                tools[name] = make()
            except ImportError as exc:
                print(f"{name}: not installed ({exc}); pip install dicognito deid")
        times: dict[str, list[float]] = {n: [] for n in tools}
        counts: dict[str, tuple[int, int]] = {}
        budget = float(os.environ.get("BENCH_DEID_MAX_SECONDS", "300"))
        for r in range(1, rounds + 1):
            for name, tool in tools.items():
                if times[name] and sum(times[name]) > budget:
                    continue  # too slow to repeat within the budget: fewer rounds, noted below
                seconds, ok, failed = _round(tool, files, Path(tmp) / "out" / name.split()[0])
                times[name].append(seconds)
                counts[name] = (ok, failed)
                print(
                    f"round {r}: {name:<38} {seconds:6.2f} s  {len(files) / seconds:7.1f} inst/s  "
                    f"written {ok}, failed {failed}",
                    flush=True,
                )
        rows = []
        ours = median(times.get("dicomlake deid (basic)", []))
        for name in tools:
            med = median(times[name])
            rate = len(files) / med if med else None
            ratio = (med / ours) if ours and med else None  # >1: slower than dicomlake
            rows.append(
                [
                    name,
                    fmt(rate, "inst/s"),
                    fmt(med, "s"),
                    f"{counts[name][0]}/{counts[name][1]}",
                    fmt(ratio) if ratio else "n/a",
                ]
            )
            result.add(
                f"{name} throughput",
                rate,
                "inst/s",
                peer="" if "dicomlake" in name else "peer",
                note=f"median of {rounds}, {len(files)} instances",
            )
        print()
        print(table(rows, ["tool", "median rate", "median time", "written/failed", "speed vs dicomlake"]))
        result.raw = {"instances": len(files), "seconds": times, "written_failed": counts}
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
    os._exit(0)
