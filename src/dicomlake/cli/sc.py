"""`dicomlake sc`: Secondary Capture analysis (class, quality, PHI, dose) and burned-in PHI redaction."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dicomlake.cli.common import LAKE_OPTION, handle_errors, lake_path
from dicomlake.cli.output import FORMAT_OPTION, OUT_OPTION, Format, write_table

if TYPE_CHECKING:
    from dicomlake.store.sc_tables import LakeSC

sc_app = typer.Typer(
    help="Secondary Capture objects: content class, quality, burned-in PHI, dose numbers from screenshots.\n\n"
    "Example: dicomlake sc analyse --lake ./lake && dicomlake sc catalogue --lake ./lake",
    no_args_is_help=True,
)


def _is_dicom(path: Path) -> bool:
    """A Part-10 file (``DICM`` at byte 128) or, without a preamble, one that pydicom reads as DICOM."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".json", ".txt", ".pdf", ".tif", ".tiff", ".bmp", ".csv"):
        return False
    try:
        from pydicom import dcmread

        dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:
        return False
    return True


def _inputs(paths: list[Path], skipped: list[str] | None = None) -> Iterator[tuple[Path, Path]]:
    """Files named, and the DICOM files of folders (other files beside them are skipped, not failed)."""
    for root in paths:
        if root.is_file():
            yield root, Path(root.name)
        elif root.is_dir():
            for f in sorted(root.rglob("*")):
                if not f.is_file():
                    continue
                if not _is_dicom(f):
                    if skipped is not None:
                        skipped.append(str(f))
                    continue
                yield f, f.relative_to(root)
        else:
            raise typer.BadParameter(f"{root} does not exist; pass DICOM files or folders")


@sc_app.command("analyse")
@handle_errors
def analyse(
    lake: Path | None = LAKE_OPTION,
    only_missing: bool = typer.Option(False, "--only-missing", help="Skip instances analysed before."),
    report: Path | None = typer.Option(None, "--report", help="Write a JSON report here."),
) -> None:
    """Classify, quality-check, find burned-in PHI and read dose screens of every SC-like instance.

    Pixels are read from each instance's source_path; results go to the sc_analysis table,
    dose numbers to dose_events (source 'ocr') unless the study has a dose SR.

    Example: dicomlake sc analyse --lake ./dicomlake-data
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from dicomlake.extract.sc import analyse_lake

    with Progress(
        TextColumn("[bold]sc analyse"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("review {task.fields[review]} · failed {task.fields[failed]}"),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("sc", total=None, review=0, failed=0)

        def tick(rep, total):  # type: ignore[no-untyped-def]
            bar.update(
                task, total=total, completed=rep.analysed + len(rep.failed), review=rep.review, failed=len(rep.failed)
            )

        with _sc_lake(lake) as door:
            rep = analyse_lake(door, only_missing=only_missing, progress=tick)
    classes = ", ".join(f"{k} {v}" for k, v in sorted(rep.by_class.items())) or "none"
    typer.echo(
        f"analysed {rep.analysed} of {rep.instances} SC-like instances in {rep.seconds:.1f} s: {classes}; "
        f"review {rep.review}; dose rows {rep.dose_rows} (superseded by an RDSR {rep.dose_superseded}; "
        f"dose screens in review, not stored {rep.dose_review}); "
        f"failed {len(rep.failed)}"
    )
    for _, message in rep.failed:
        typer.echo(f"  failed {message}", err=True)
    if report is not None:
        report.write_text(json.dumps(rep.as_dict(), indent=2, default=str))
    if rep.failed:
        raise typer.Exit(1)


@sc_app.command("catalogue")
@handle_errors
def catalogue(
    lake: Path | None = LAKE_OPTION,
    review: bool = typer.Option(False, "--review", help="Only instances on the review list."),
    fmt: Format = FORMAT_OPTION,
    out: Path | None = OUT_OPTION,
) -> None:
    """The SC catalogue: class, decided by, confidence, quality flags, PHI words, review, dose.

    Example: dicomlake sc catalogue --lake ./dicomlake-data --review --format csv
    """
    from dicomlake.extract.sc import SC_ANALYSIS_SCHEMA, sc_catalogue
    from dicomlake.store.open import open_store
    from dicomlake.store.sc_tables import sc_tables_of

    with open_store(lake_path(lake)) as store:
        sc_tables_of(store).ensure_table(SC_ANALYSIS_SCHEMA)
        table = sc_catalogue(store, where="a.review" if review else None)
    write_table(table, fmt, out)


@sc_app.command("confirm-dose")
@handle_errors
def confirm_dose_cmd(
    uids: list[str] = typer.Argument(..., help="SOP Instance UIDs of dose screens in review."),
    lake: Path | None = LAKE_OPTION,
) -> None:
    """Store dose readings a person has checked against the screen (dose_status review → confirmed).

    A dose screen whose reading fails its checks (series DLPs not adding up to the total,
    a CTDIvol above its DLP, a value not read) is kept out of dose_events and the audits;
    see them with `sc catalogue --review` (columns dose_review, dose_status).

    Example: dicomlake sc confirm-dose 1.2.826.0.1.3680043.8.498.1 --lake ./dicomlake-data
    """
    from dicomlake.extract.sc import confirm_dose

    with _sc_lake(lake) as door:
        done = confirm_dose(door, uids)
    for uid, n in done:
        typer.echo(f"confirmed {uid}: {n} dose rows stored")


@sc_app.command("redact")
@handle_errors
def redact(
    inputs: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-od", help="Output folder; the input layout is kept."),
    profile: str | None = typer.Option(
        None, "--profile", "-p", help="Also de-identify the header with this profile (new UIDs from its maps)."
    ),
    report: Path | None = typer.Option(None, "--report", help="Write a JSON report (written, review, failed)."),
) -> None:
    """Write redacted derived copies: burned-in PHI boxes filled, Burned In Annotation NO.

    Dose reports and documents lose only PHI; photos and outside images lose all text.
    Uncertain cases are written and listed for review. A second, independent OCR pass reads
    every redacted image: an object that still reads as PHI is held (listed, not written).
    Files in folders that are not DICOM are skipped; a malformed header value is repaired
    or emptied and reported.

    Example: dicomlake sc redact ./screens --out ./redacted --profile basic
    """
    from dicomlake.deid.pixels import RedactReport, redact_file

    engine = None
    if profile is not None:
        from dicomlake.deid import Deidentifier

        engine = Deidentifier(profile)
    rep = RedactReport()
    skipped: list[str] = []
    try:
        for path, rel in _inputs(inputs, skipped):
            redact_file(path, out / rel.parent, deidentifier=engine, report=rep, name=rel.name)
    finally:
        if engine is not None:
            engine.close()
    typer.echo(
        f"redacted {len(rep.written)} ({rep.regions} regions filled), review {len(rep.review)}, "
        f"held (PHI read back, not written) {len(rep.held)}, skipped (not DICOM) {len(skipped)}, "
        f"excluded {len(rep.excluded)}, failed {len(rep.failed)}"
    )
    for where, why in rep.review:
        typer.echo(f"  review {where}: {why}")
    for where, why in rep.held:
        typer.echo(f"  held {where}: {why}")
    for where, what in rep.fixed:
        typer.echo(f"  fixed {where}: {what}")
    for _, message in rep.failed:
        typer.echo(f"  failed {message}", err=True)
    if report is not None:
        report.write_text(
            json.dumps(
                {
                    "written": rep.written,
                    "review": rep.review,
                    "excluded": rep.excluded,
                    "failed": rep.failed,
                    "held": rep.held,
                    "fixed": rep.fixed,
                    "skipped": skipped,
                    "regions": rep.regions,
                },
                indent=2,
            )
        )
    if rep.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``sc`` verb group to the ``dicomlake`` command."""
    app.add_typer(sc_app, name="sc")


@contextlib.contextmanager
def _sc_lake(lake: Path | None) -> Iterator[LakeSC]:
    """The lake's SC door (DuckDB or PostgreSQL; a Parquet lake is refused in one line)."""
    from dicomlake.errors import ConfigError
    from dicomlake.store.open import lake_kind, open_store
    from dicomlake.store.sc_tables import sc_tables_of

    where = lake_path(lake)
    if lake_kind(where) == "parquet":
        raise ConfigError(f"{where} is a Parquet lake, which is read-only; analyse the DuckDB or PostgreSQL lake")
    store = open_store(where)
    try:
        yield sc_tables_of(store)
    finally:
        store.close()
