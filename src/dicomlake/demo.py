"""`make run`: ingest the real sample files into the embedded lake and show what it holds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = [
    (
        "Mammography exposures with their compression force and breast thickness",
        dict(
            where=["Modality = MG", "CompressionForce > 0"],
            select=[
                "ManufacturerModelName",
                "ViewPosition",
                "ImageLaterality",
                "CompressionForce",
                "BodyPartThickness",
                "OrganDose",
                "KVP",
            ],
        ),
    ),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lake", default="dicomlake-data")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)

    from rich.console import Console

    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.query.lake import Lake
    from dicomlake.samples import sample_sources

    console = Console()
    sources = sample_sources()
    console.print("[bold]dicomlake[/] ingesting the sample files into", args.lake)
    for s in sources:
        console.print(f"  source: {s}")
    rep = ingest_paths(sources, Path(args.lake), workers=args.workers, progress=True)
    console.print(
        f"files {rep.files:,} · instances {rep.instances:,} (new {rep.inserted:,}, updated {rep.replaced:,}) · "
        f"rejected {rep.rejected:,} · skipped {rep.skipped:,} · elements {rep.elements:,} · "
        f"dose events {rep.dose_events:,} · {rep.seconds:.1f} s"
    )
    from dicomlake.cli.output import Format, write_table

    with Lake.open(args.lake, read_only=True) as lk:
        console.rule("1. dicomlake query --where 'Modality = MG' --where 'CompressionForce > 0' --select …")
        t = lk.query_arrow(**EXAMPLES[0][1])  # type: ignore[arg-type]
        write_table(t, Format.table, None)
        console.rule("2. dicomlake sql \"SELECT … FROM dose_events WHERE modality_family = 'CT' …\"")
        write_table(
            lk.store.query(
                "SELECT s.ManufacturerModelName, count(*) AS events, round(sum(d.DLP_mGycm), 1) AS DLP_mGycm, "
                "round(max(d.CTDIvol_mGy), 2) AS max_CTDIvol_mGy FROM dose_events d "
                "JOIN instances s USING (SOPInstanceUID) WHERE d.modality_family = 'CT' AND d.record = 'event' "
                "GROUP BY ALL ORDER BY events DESC LIMIT 10"
            )
            if "record" in lk.store.query("SELECT * FROM dose_events LIMIT 0").column_names
            else lk.store.query("SELECT count(*) AS dose_events FROM dose_events"),
            Format.table,
            None,
        )
        console.rule("3. dicomlake sql: private elements by creator, from every header's elements")
        write_table(
            lk.store.query(
                "SELECT e.private_creator, count(DISTINCT e.SOPInstanceUID) AS instances, "
                "count(*) AS elements, any_value(i.Manufacturer) AS Manufacturer FROM elements e "
                "JOIN instances i USING (SOPInstanceUID) WHERE e.private_creator IS NOT NULL "
                "GROUP BY ALL ORDER BY instances DESC LIMIT 10"
            ),
            Format.table,
            None,
        )
    console.print(
        f"\nThe lake is in {args.lake}; try: "
        f'.venv/bin/dicomlake sql "SELECT Modality, count(*) FROM instances GROUP BY ALL" --lake {args.lake}'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
