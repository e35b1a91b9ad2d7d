"""De-identification beside dicognito and deid (PyPI), same files: planted-token leaks, throughput.

Leaks: every corpus file gets traceable identifying values planted (patient name, IDs, birth
date, address, accession, physicians, operators, institution, study ID, a description naming
the patient, a private element, a nested request item, SR text naming the patient), all of
which PS3.15 Table E.1-1 removes, replaces or cleans under every profile here. Each tool
(dicomlake ``basic``, ``research`` and ``dose-audit``; dicognito; deid's default recipe)
de-identifies the planted files once, and the output bytes are searched for each token, as
``strings`` would: a leak is a (file, token) pair found. ``basic`` must leak none
(``tests/test_deid_phi.py`` holds that in the test suite).

Throughput: each tool reads every file of the corpus from disk, de-identifies it and writes
the result to a fresh folder; rounds alternate between tools, and the median of 3 rounds is
reported in instances per second. A tool whose rounds exceed ``BENCH_DEID_MAX_SECONDS``
(default 300) in total is not run again (deid from PyPI takes ~17 minutes per round here);
the table says how many rounds each median is of.

Default corpus: pydicom's test files plus the repository's ``tests/data/corpus``
(:func:`dicomlake.samples.repo_corpus`) copied to a temporary folder.
``python -m bench.bench_deid [FOLDER]`` runs it alone; ``BENCH_DEID_ROUNDS=0`` runs only the
leak count.
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
    """pydicom's test files and the repository's tests/data/corpus copied to ``dest``."""
    from pydicom.data import get_testdata_files

    from dicomlake.samples import repo_corpus

    dest.mkdir(parents=True, exist_ok=True)
    for n, src in enumerate(sorted(get_testdata_files("*.dcm"))):
        shutil.copy(src, dest / f"pydicom-{n:03d}-{Path(src).name}")
    corpus = repo_corpus()
    if corpus is None:
        print("tests/data/corpus not found (not a checkout): pydicom's test files only")
    else:
        for n, src in enumerate(sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix != ".md")):
            shutil.copy(src, dest / f"corpus-{n:03d}-{src.name}")
    return dest


# --- planted tokens --------------------------------------------------------------------------


def _plant(src: Path, dst: Path, n: int) -> list[tuple[str, bytes]]:
    """Write ``src`` with identifying values planted to ``dst``; return (where, token) pairs."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(src)
    ds.SpecificCharacterSet = ds.get("SpecificCharacterSet") or "ISO_IR 100"
    fam, giv = f"Plantfam{n:04d}", f"Plantgiv{n:04d}"
    birth = f"1923{(n % 12) + 1:02d}{(n % 27) + 1:02d}"
    values = {
        "PatientName": (f"{fam}^{giv}", [f"{fam}^{giv}", giv]),
        "PatientID": (f"PID{n:04d}PLNTQ", None),
        "OtherPatientIDs": (f"OPID{n:04d}PLNTQ", None),
        "PatientBirthDate": (birth, None),
        "PatientAddress": (f"{n} Plantstreet{n:04d} Road, London N4 4QT", [f"Plantstreet{n:04d}"]),
        "AccessionNumber": (f"AC{n:04d}PLNTQ", None),
        "ReferringPhysicianName": (f"Plantref{n:04d}^Doc", [f"Plantref{n:04d}"]),
        "OperatorsName": (f"Plantop{n:04d}^Tech", [f"Plantop{n:04d}"]),
        "InstitutionName": (f"Plantinst{n:04d} Hospital", [f"Plantinst{n:04d}"]),
        "StudyID": (f"SID{n:04d}PLNT", None),
        "StudyDescription": (f"CT chest for {fam}", [f"for {fam}"]),  # the description names the patient
    }
    planted: list[tuple[str, bytes]] = []
    for kw, (value, tokens) in values.items():
        setattr(ds, kw, value)
        planted += [(kw, t.encode()) for t in (tokens or [value])]
    block = ds.private_block(0x0011, "DICOMLAKE PLANTED", create=True)
    block.add_new(0x01, "LO", f"Plantpriv{n:04d}")
    planted.append(("private (0011,xx01)", f"Plantpriv{n:04d}".encode()))
    item = Dataset()
    item.RequestedProcedureID = f"RPID{n:04d}PLNT"
    item.ScheduledProcedureStepID = f"SPS{n:04d}PLNT"
    ds.RequestAttributesSequence = Sequence([item])
    planted += [("RequestAttributesSequence > RequestedProcedureID", f"RPID{n:04d}PLNT".encode())]
    planted += [("RequestAttributesSequence > ScheduledProcedureStepID", f"SPS{n:04d}PLNT".encode())]
    if "ContentSequence" in ds:
        text = Dataset()
        text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121106", "DCM", "Comment"
        text.ConceptNameCodeSequence = Sequence([code])
        text.TextValue = f"Discussed with Plantsr{n:04d} (the patient's son)"
        ds.ContentSequence.append(text)
        planted.append(("SR TEXT item", f"Plantsr{n:04d}".encode()))
    ds.save_as(dst)
    return planted


def _profile_tool(name: str) -> Callable[[], Callable[[Path, Path], bool]]:
    def make() -> Callable[[Path, Path], bool]:
        from dicomlake.deid import Deidentifier, DeidSettings, load_profile
        from dicomlake.deid.profile import BurnedInPolicy

        profile = replace(load_profile(name), burned_in=BurnedInPolicy.FLAG)
        engine = Deidentifier(profile, DeidSettings(secret="bench-secret-0123456789abcdef"))

        def run(src: Path, dst: Path) -> bool:
            data = engine.deidentify_bytes(src.read_bytes(), source=str(src))
            if data is None:
                return False
            dst.write_bytes(data)
            return True

        return run

    return make


def leak_table(files: list[Path], work: Path) -> tuple[list[list[str]], dict[str, int]]:
    """Plant tokens into ``files``, run every tool once, count the tokens found in the outputs."""
    planted_dir = work / "planted"
    planted_dir.mkdir(parents=True, exist_ok=True)
    plan: dict[Path, list[tuple[str, bytes]]] = {}
    for n, f in enumerate(files):
        dst = planted_dir / f"{n:05d}.dcm"
        try:
            plan[dst] = _plant(f, dst, n)
        except Exception:
            continue  # a file pydicom cannot write back (odd encodings): not planted, not counted
    total = sum(len(v) for v in plan.values())
    print(f"planted: {total} tokens in {len(plan)} files")
    tools = {
        "dicomlake basic": _profile_tool("basic"),
        "dicomlake research": _profile_tool("research"),
        "dicomlake dose-audit": _profile_tool("dose-audit"),
        "dicognito": _dicognito,
        "deid (pydicom/deid, default recipe)": _pydicom_deid,
    }
    rows, counts = [], {}
    for name, make in tools.items():
        try:
            tool = make()
        except ImportError as exc:
            rows.append([name, "not installed", "", "", f"pip install --group bench ({exc.name})"])
            continue
        out = work / "leaks" / name.replace(" ", "_").replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        written = checked = leaks = 0
        where: dict[str, int] = {}
        for src, tokens in plan.items():
            dst = out / src.name
            try:
                if not tool(src, dst):
                    continue
            except Exception:
                continue
            written += 1
            raw = dst.read_bytes()
            for kw, token in tokens:
                checked += 1
                if token in raw:
                    leaks += 1
                    where[kw] = where.get(kw, 0) + 1
        top = ", ".join(f"{k} {v}" for k, v in sorted(where.items(), key=lambda kv: -kv[1])[:4])
        rows.append([name, f"{written}/{len(plan)}", f"{checked:,}", f"{leaks:,}", top or "—"])
        counts[name] = leaks
        print(f"leaks: {name:<38} written {written}/{len(plan)}, {leaks} of {checked} found ({top or '-'})", flush=True)
    print()
    print(table(rows, ["tool", "files written", "planted tokens checked", "leaks", "where (most)"]), flush=True)
    return rows, counts


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
        try:
            parser = DicomParser(str(src), recipe=recipe)
            parser.parse(strip_sequences=False, remove_private=True)
        except SystemExit as exc:  # deid's logger exits the process on some errors
            raise RuntimeError(f"deid exited: {exc}") from None
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
        _rows, leaks = leak_table(files, Path(tmp) / "leak")
        for name, count in leaks.items():
            result.add(f"{name} planted-token leaks", count, "tokens", peer="" if "dicomlake" in name else "peer")
        rounds = int(os.environ.get("BENCH_DEID_ROUNDS", rounds))
        tools: dict[str, Callable[[Path, Path], bool]] = {}
        for name, make in TOOLS.items() if rounds else ():
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
            if not times[name]:
                continue
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
        print(table(rows, ["tool", "median rate", "median time", "written/failed", "speed vs dicomlake"]), flush=True)
        result.raw = {"instances": len(files), "seconds": times, "written_failed": counts}
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
    sys.stdout.flush()
    os._exit(0)
