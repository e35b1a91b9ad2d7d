"""Benchmark corpus: realistic DICOM instances whose headers are cloned from real files.

Each instance is a Part-10 file (preamble, ``DICM``, file meta with a correct
(0002,0000) group length, Explicit VR Little Endian data set) whose header is the
header of a real file — CT, MR, MG, US and Secondary Capture images and Radiation
Dose SRs from pydicom's test files, ``pydicom-data`` and ``tests/data/corpus`` — with
the values that make a header *this* instance replaced:

- fresh UIDs in a consistent hierarchy: studies of 1–300 instances, series inside
  them; every UID of the template is remapped (references to the template's own
  study/series/instance follow the new ones);
- synthetic patients (ID, name, birth date, sex, age at the study) who come back
  for later studies, study/series/acquisition dates and times spread over ten years;
- per-exposure dose and technique values: MG ``KVP``, ``BodyPartThickness``,
  ``CompressionForce``, ``OrganDose`` (dGy, PS3.3 C.8.7.6), ``EntranceDoseInmGy``,
  tube current and time; CT ``CTDIvol``, ``KVP``, mA; dose, length, force and time
  values inside the RDSR content trees scaled per study;
- institutions and stations whose names come in spelling variants, as in real PACS.

Pixel data are not written. The (7FE0,0010) element header is written with the
length that Rows × Columns × Samples × BitsAllocated/8 × Frames demands, and then
the file is extended with ``ftruncate`` to its full length: the value is a *sparse
hole* that reads back as zeros. Every file thus has its realistic size (0.5–4 MB for
images; SRs carry no pixel data) without costing disk blocks or write time. Readers
that skip pixel data (``dcmdump -M``, ``dcmread(stop_before_pixels=True)``) see
exactly what they would see on a real archive; a reader that reads every byte reads
zeros from the page cache, which is faster than a real disk.

Speed: each template is built once with pydicom, with a marker value in each slot
that varies per instance, and serialised; the bytes are then cut at the markers, so
writing an instance is joining the static pieces with freshly encoded elements
(sequences and items are written with undefined length, so no enclosing length
changes). The generator is deterministic: the same ``n`` and ``seed`` give the same
bytes.

Usage::

    python -m bench.corpus --out /tmp/corpus -n 20000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench.corpus_plan import STATIONS, Planner
from bench.corpus_templates import (
    FAMILIES,
    REPO_ROOT,
    TEMPLATES,
    Instance,
    Template,
    TemplateSpec,
    compile_template,
    render,
    write_instance,
)

__all__ = [
    "FAMILIES",
    "STATIONS",
    "TEMPLATES",
    "Instance",
    "Template",
    "TemplateSpec",
    "compile_template",
    "ensure_corpus",
    "generate",
    "render",
    "write_instance",
]

GENERATOR_VERSION = 1
"""Bumped whenever the bytes written for a given ``(n, seed)`` change. Part of the cache key."""

CACHE_DIR = REPO_ROOT / "bench" / "corpus"
"""Where :func:`ensure_corpus` keeps generated corpora (gitignored)."""

# ---------------------------------------------------------------------------------------------
# Generation and the cache
# ---------------------------------------------------------------------------------------------


def _generate(out_dir: Path, n: int, seed: int) -> dict[str, object]:
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    templates: dict[str, Template] = {}
    made: set[Path] = set()
    planner = Planner(seed)
    count = 0
    total_bytes = 0
    by_template: dict[str, int] = {}
    studies = 0
    for study in planner.studies(n):
        studies += 1
        for inst in study:
            tpl = templates.get(inst.template)
            if tpl is None:
                tpl = templates[inst.template] = compile_template(TEMPLATES[inst.template])
            folder = (out_dir / inst.path).parent
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            total_bytes += write_instance(out_dir, tpl, inst)
            by_template[inst.template] = by_template.get(inst.template, 0) + 1
            count += 1
    return {
        "n": count,
        "seed": seed,
        "studies": studies,
        "patients": len(planner.patients),
        "bytes": total_bytes,
        "seconds": round(time.perf_counter() - t0, 2),
        "by_template": dict(sorted(by_template.items())),
        "generator_version": GENERATOR_VERSION,
    }


def generate(out_dir: str | os.PathLike[str], n: int = 20000, seed: int = 0) -> Path:
    """Write ``n`` instances under ``out_dir`` (``STnnnnn/SEnnn/IMnnnn.dcm``) and return it.

    Parameters
    ----------
    out_dir
        Folder to write into; created if missing. Files of the same names are
        overwritten, nothing else is removed.
    n
        Number of instances; the last study is cut short to hit it exactly.
    seed
        Seed of the random stream: the same ``n`` and ``seed`` give the same bytes.
    """
    path = Path(out_dir)
    _generate(path, n, seed)
    return path


def ensure_corpus(n: int = 20000, seed: int = 0, cache_dir: Path = CACHE_DIR) -> tuple[Path, dict]:
    """Return a cached corpus for ``(n, seed)``, generating it first if needed.

    The corpus lives in ``cache_dir/n{n}-seed{seed}-v{GENERATOR_VERSION}/`` with a manifest
    of the same name ending in ``.json`` next to it (outside, so an ingest of the folder sees
    only DICOM files).
    """
    name = f"n{n}-seed{seed}-v{GENERATOR_VERSION}"
    path = cache_dir / name
    manifest = cache_dir / f"{name}.json"
    if path.is_dir() and manifest.is_file():
        return path, json.loads(manifest.read_text())
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    stats = _generate(tmp, n, seed)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    manifest.write_text(json.dumps(stats, indent=2) + "\n")
    return path, stats


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.corpus --out DIR -n N [--seed S]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write into")
    parser.add_argument("-n", type=int, default=20000, help="number of instances (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    stats = _generate(args.out, args.n, args.seed)
    rate = stats["n"] / max(float(stats["seconds"]), 1e-9)  # type: ignore[arg-type]
    print(
        f"wrote {stats['n']} instances in {stats['studies']} studies of {stats['patients']} "
        f"patients, {int(stats['bytes']) / 1e9:.2f} GB apparent, in {stats['seconds']} s "
        f"({rate:,.0f} files/s) to {args.out}"
    )
    for key, count in stats["by_template"].items():  # type: ignore[union-attr]
        print(f"  {key:16s} {count:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
