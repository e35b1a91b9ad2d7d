"""`dicomlake ingest` and `dicomlake rejects`: files, folders, zips and DICOMDIRs into the lake."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dicomlake.cli.common import LAKE_OPTION, handle_errors, lake_path
from dicomlake.cli.output import FORMAT_OPTION, OUT_OPTION, Format, write_table


def ingest(
    paths: list[str] = typer.Argument(
        None,
        help="Files, folders (walked recursively), .zip archives, DICOMDIRs; with --engine spark also "
        "URIs (s3://bucket/prefix, hdfs://…).",
    ),
    lake: Path | None = LAKE_OPTION,
    workers: int | None = typer.Option(None, "--workers", "-w", help="Worker processes (default: one per core)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Instances per transaction (default 2000)."),
    report: Path | None = typer.Option(None, "--report", help="Also write the run's summary as JSON to this file."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
    engine: str = typer.Option("embedded", "--engine", help="embedded (worker processes) or spark."),
    out: str | None = typer.Option(
        None,
        "--out",
        "-o",
        help="--engine spark: the Parquet lake folder or URI (s3://bucket/lake) to write (new, or one it wrote).",
    ),
    master: str = typer.Option(
        "local[2]", "--master", help="--engine spark: Spark master URL (local[N], spark://HOST:7077, yarn)."
    ),
    quarantine: Path | None = typer.Option(
        None,
        "--quarantine",
        help="PostgreSQL lakes: folder for the bytes of rejected input (default ./dicomlake-data).",
    ),
    manifest: str | None = typer.Option(
        None,
        "--manifest",
        help="--engine spark: a list of the files to read (text, one path or URI a line; or Parquet with "
        "a path column), read by the executors: for archives too large to walk.",
    ),
    deid: str | None = typer.Option(
        None,
        "--deid",
        help="De-identify with this profile (basic, research, dose-audit or a TOML file) before "
        "anything reaches the lake; keys from DICOMLAKE_DEID__SECRET.",
    ),
) -> None:
    """Read DICOM headers (never pixel data) into the lake; re-ingest upserts on SOP Instance UID.

    Example: dicomlake ingest /media/cdrom ./exports/study.zip --lake ./dicomlake-data

    Example (server database): dicomlake ingest ./images --lake postgresql://dicomlake@db/lake

    Example (cluster): dicomlake ingest --engine spark /archive --out /lake/parquet --master spark://head:7077

    Exit status: 0 all read, 1 some input rejected (see `dicomlake rejects`), 2 usage error.
    """

    from dicomlake.ingest.pipeline import ingest_paths

    if engine not in ("embedded", "spark"):
        raise ValueError(f"--engine {engine!r}: choose embedded or spark")
    if engine == "spark":
        ignored = [
            name
            for name, value in (("--workers", workers), ("--batch-size", batch_size), ("--quarantine", quarantine))
            if value is not None
        ]
        if ignored:
            raise ValueError(
                f"{', '.join(ignored)} does not apply to --engine spark (Spark sets the parallelism, each task "
                "writes its rows into the --out lake at once, rejected input is kept in OUT/quarantine)"
            )
        if not paths and manifest is None:
            raise ValueError("give the files or folders to read, or --manifest FILE")
        _ingest_spark(paths or [], out, master, report, deid, manifest)
        return
    if manifest is not None:
        raise ValueError("--manifest is for --engine spark; the embedded engine reads the files and folders given")
    if not paths:
        raise ValueError("give the files or folders to read")
    if out is not None:
        raise ValueError("--out is for --engine spark (a Parquet lake folder); the embedded engine writes --lake")
    from dicomlake.errors import ConfigError
    from dicomlake.store.open import lake_kind, open_store
    from dicomlake.store.postgres import normalise_url, redact

    target = lake_path(lake)
    if lake_kind(target) == "parquet":
        raise ConfigError(
            f"{target} is a Parquet lake, which ingest cannot add to: ingest into a DuckDB folder or a "
            "postgresql:// lake, then write a new Parquet lake with `dicomlake export --format lake --out DIR` "
            "(or `dicomlake ingest --engine spark FILES --out NEW_DIR`)"
        )
    if lake_kind(target) == "postgres":
        with open_store(normalise_url(str(target))) as store:
            rep = ingest_paths(
                paths,
                quarantine or Path("dicomlake-data"),
                workers=workers,
                batch_size=batch_size,
                progress=not quiet,
                store=store,
                deid=deid,
            )
        rep.lake = redact(str(store.lake))
    else:
        rep = ingest_paths(paths, target, workers=workers, batch_size=batch_size, progress=not quiet, deid=deid)
    rows = (
        ("files", rep.files),
        ("instances", rep.instances),
        ("  new", rep.inserted),
        ("  updated (same SOP Instance UID)", rep.replaced),
        ("rejected", rep.rejected),
        ("skipped (not DICOM)", rep.skipped),
        ("elements", rep.elements),
        ("dose events", rep.dose_events),
        ("seconds", f"{rep.seconds:.2f}"),
        ("files/s", f"{rep.rate:,.0f}"),
    )
    folder = Path(rep.lake) if "://" not in rep.lake else (quarantine or Path("dicomlake-data"))
    dest = report or folder / "reports" / f"ingest-{rep.run_id}.json"
    # under --deid no reject's bytes are kept (only its hash, size and reason)
    kept = None if deid else folder / "quarantine"
    _summary(f"ingest {rep.run_id} into {rep.lake}", rows, rep, rep.lake, dest, kept_in=kept, deid=bool(deid))


def _summary(
    title: str,
    rows: tuple[tuple[str, object], ...],
    rep: object,
    lake: str | Path,
    dest: Path | str,
    kept_in: Path | None = None,
    deid: bool = False,
) -> None:
    """Print the closing table, the rejects hint and notes; write the JSON report; exit 0/1."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(stderr=True)
    t = Table(title=title, show_header=False)
    for k, v in rows:
        t.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(t)
    rejected = getattr(rep, "rejected", 0)
    if rejected:
        kept = (
            "under --deid only their hash, size and reason are kept (no bytes, no original path)"
            if deid
            else f"their bytes are kept in {kept_in or f'{lake}/quarantine'}"
        )
        console.print(f"[yellow]{rejected} input(s) rejected; {kept}. List them with: dicomlake rejects --lake {lake}")
    for note in getattr(rep, "notes", [])[:10]:
        console.print(f"[dim]note: {escape(str(note))}")  # notes quote file names and values
    from dicomlake.store.fs import write_bytes

    # a local file, or an object in the lake's bucket (--engine spark --out s3://…)
    write_bytes(str(dest), json.dumps(rep.as_dict(), indent=1).encode("utf-8"))  # type: ignore[attr-defined]
    console.print(f"[dim]report: {dest}")
    raise typer.Exit(rep.exit_code)  # type: ignore[attr-defined]


def _ingest_spark(
    paths: list[str], out: str | None, master: str, report: Path | None, deid: str | None, manifest: str | None
) -> None:

    from dicomlake.ingest.spark import ingest_spark
    from dicomlake.store.fs import join

    if out is None:
        raise ValueError("--engine spark needs --out DIR, the Parquet lake folder to write")
    rep = ingest_spark(paths, out, master=master, deid=deid, manifest=manifest)
    rows = (
        ("files", rep.files),
        ("instances read", rep.instances),
        ("instances written (one per SOP Instance UID)", rep.unique_instances),
        ("  older copies dropped (same SOP Instance UID)", rep.duplicates_resolved),
        ("  replacing their copy already in the lake", rep.replaced),
        ("rejected", rep.rejected),
        ("skipped (not DICOM)", rep.skipped),
        ("Spark tasks", rep.tasks),
        ("Parquet files", rep.files_written),
        ("seconds", f"{rep.seconds:.2f}"),
        ("files/s", f"{rep.rate:,.0f}"),
    )
    _summary(
        f"spark ingest {rep.run_id} into {rep.out} ({rep.master})",
        rows,
        rep,
        rep.out,
        report or join(out, "reports", f"ingest-{rep.run_id}.json"),
    )


def rejects(
    lake: Path | None = LAKE_OPTION,
    fmt: Format = FORMAT_OPTION,
    out: Path | None = OUT_OPTION,
) -> None:
    """List input that could not be read: path, reason, and where its bytes were kept.

    Example: dicomlake rejects --format csv --out rejects.csv
    """
    from dicomlake.query.lake import Lake

    with Lake.open(lake_path(lake), read_only=True) as lk:
        table = lk.store.query(
            "SELECT source_path, reason, size_bytes, quarantine_path, rejected_at FROM rejects ORDER BY source_path"
        )
    write_table(table, fmt, out)


def register(app: typer.Typer) -> None:
    app.command("ingest")(handle_errors(ingest))
    app.command("rejects")(handle_errors(rejects))
