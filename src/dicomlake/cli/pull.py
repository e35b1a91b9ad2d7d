"""`dicomlake pull`: bring a PACS's studies (headers) into the lake by C-FIND + C-MOVE/C-GET or DICOMweb."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from dicomlake.cli.common import LAKE_OPTION, handle_errors, lake_path


def _keys(
    k: list[str], modality: str | None, date_from: str | None, date_to: str | None, patient_id: str | None
) -> dict[str, str]:
    from dicomlake.ingest.qr import parse_keys

    keys = parse_keys(k)
    if modality:
        keys["ModalitiesInStudy"] = modality
    if patient_id:
        keys["PatientID"] = patient_id
    if date_from or date_to:
        f = (date_from or "").replace("-", "")
        t = (date_to or "").replace("-", "")
        keys["StudyDate"] = f"{f}-{t}"
    return keys


def pull(
    pacs: str | None = typer.Option(None, "--pacs", help="The PACS as AET@host:port (DIMSE)."),
    dicomweb: str | None = typer.Option(None, "--dicomweb", help="DICOMweb root URL (QIDO-RS + WADO-RS metadata)."),
    key: list[str] = typer.Option([], "-k", "--key", help="Matching key Keyword=value (dcmtk style), repeatable."),
    modality: str | None = typer.Option(None, "--modality", help="ModalitiesInStudy, e.g. MG."),
    date_from: str | None = typer.Option(None, "--from", help="First study date, YYYY-MM-DD."),
    date_to: str | None = typer.Option(None, "--to", help="Last study date, YYYY-MM-DD."),
    patient_id: str | None = typer.Option(None, "--patient-id", help="PatientID to match."),
    get: bool = typer.Option(False, "--get", help="Retrieve by C-GET instead of C-MOVE to our listener."),
    metadata_only: bool = typer.Option(
        False, "--metadata-only", help="Image-level C-FIND only: requested keys, no pixel data moved."
    ),
    return_key: list[str] = typer.Option(
        [], "-r", "--return-key", help="Extra keyword to ask for with --metadata-only."
    ),
    ae_title: str | None = typer.Option(None, "-aet", "--ae-title", help="Our AE title (the C-MOVE destination)."),
    port: int | None = typer.Option(None, "--port", "-p", help="Port of our listener for C-MOVE (default 11112)."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Studies retrieved at once (default 1)."),
    per_hour: int | None = typer.Option(None, "--per-hour", help="Most instances requested per hour."),
    window: str | None = typer.Option(None, "--window", help="Off-peak window, e.g. 19:00-07:00 (local time)."),
    find_limit: int | None = typer.Option(None, "--find-limit", help="The PACS's C-FIND result limit (default 500)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the last run with the same PACS and keys."),
    token: str | None = typer.Option(
        None, "--token", envvar="DICOMLAKE_DICOMWEB_TOKEN", help="Bearer token (DICOMweb)."
    ),
    user: str | None = typer.Option(None, "--user", help="Basic-auth user (DICOMweb)."),
    password: str | None = typer.Option(
        None, "--password", envvar="DICOMLAKE_DICOMWEB_PASSWORD", help="Basic-auth password."
    ),
    lake: Path | None = LAKE_OPTION,
    report: Path | None = typer.Option(None, "--report", help="Write the run's summary as JSON here."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log associations."),
) -> None:
    """Find studies on a PACS and put their headers into the lake.

    Examples:

      dicomlake pull --pacs PACS@10.0.0.5:104 --modality MG --from 2024-01-01 --to 2024-12-31

      dicomlake pull --pacs PACS@10.0.0.5:104 -k StudyDate=20240101-20240131 -k ModalitiesInStudy=CT --get

      dicomlake pull --pacs PACS@10.0.0.5:104 --modality MG --metadata-only -r CompressionForce

      dicomlake pull --dicomweb https://pacs/dicom-web --modality MG --token "$TOKEN"

    For C-MOVE the PACS must know us (AE title, host, port). Exit status: 0 all studies,
    1 some failed (listed), 2 usage error.
    """
    from rich.console import Console

    from dicomlake.config import get_settings

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # one clear line of ours per failure, not pynetdicom's transport errors as well
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    if bool(pacs) == bool(dicomweb):
        raise ValueError("give exactly one of --pacs AET@host:port or --dicomweb URL")
    console = Console(stderr=True)
    folder = lake_path(lake)
    keys = _keys(key, modality, date_from, date_to, patient_id)
    settings = get_settings()
    if dicomweb:
        out = _pull_web(dicomweb, folder, keys, token, user, password, quiet, console)
    else:
        out = _pull_dimse(
            pacs or "",
            folder,
            keys,
            settings,
            get=get,
            metadata_only=metadata_only,
            return_keys=return_key,
            ae_title=ae_title,
            port=port,
            concurrency=concurrency,
            per_hour=per_hour,
            window=window,
            find_limit=find_limit,
            resume=resume,
            quiet=quiet,
            console=console,
        )
    dest = report or folder / "reports" / f"pull-{out['run_id']}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    console.print(f"[dim]report: {dest}")
    raise typer.Exit(1 if out.get("failed") else 0)


def _pull_dimse(
    pacs: str,
    folder: Path,
    keys: dict[str, str],
    settings: Any,
    *,
    get: bool,
    metadata_only: bool,
    return_keys: list[str],
    ae_title: str | None,
    port: int | None,
    concurrency: int | None,
    per_hour: int | None,
    window: str | None,
    find_limit: int | None,
    resume: bool,
    quiet: bool,
    console: Any,
) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dicomlake.ingest.qr import Peer, PullReport, iter_failures, pull_dimse

    peer = Peer.parse(pacs)
    d = settings.dimse.model_dump()
    d.update({k: v for k, v in {"ae_title": ae_title, "port": port}.items() if v is not None})
    dimse = type(settings.dimse).model_validate(d)
    bar = (
        None
        if quiet
        else Progress(
            TextColumn("[bold]pull"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "studies · {task.fields[inst]:,} instances · {task.fields[pending]:,} pending · "
                "{task.fields[failed]:,} failed"
            ),
            TimeElapsedColumn(),
            console=console,
        )
    )
    task = bar.add_task("pull", total=None, inst=0, pending=0, failed=0) if bar else None

    def progress(rep: PullReport) -> None:
        if bar is not None and task is not None:
            bar.update(
                task,
                total=rep.studies,
                completed=rep.done + rep.failed,
                inst=rep.instances,
                pending=rep.pending,
                failed=rep.failed,
            )

    if bar:
        bar.start()
    try:
        rep = pull_dimse(
            peer,
            str(folder),
            keys=keys,
            method="get" if get else "move",
            metadata_only=metadata_only,
            return_keys=return_keys,
            resume=resume,
            settings=settings,
            dimse=dimse,
            concurrency=concurrency,
            instances_per_hour=per_hour,
            window=window,
            find_limit=find_limit,
            progress=progress,
            on_wait=lambda why: console.print(f"[yellow]{why}"),
        )
    finally:
        if bar:
            bar.stop()
    console.print(
        f"{rep.method} from {rep.pacs}: studies {rep.studies:,} (done {rep.done:,}, failed {rep.failed:,}, "
        f"pending {rep.pending:,}) · instances {rep.instances:,} of {rep.expected:,} announced · {rep.seconds:.1f} s"
        + (f" · resumed run {rep.resumed_from}" if rep.resumed_from else "")
    )
    if rep.find:
        for w in rep.find.warnings:
            console.print(f"[yellow]warning: {w}")
    for line in iter_failures(rep):
        console.print(f"[red]failed: {line}")
    return rep.as_dict()


def _pull_web(
    url: str,
    folder: Path,
    keys: dict[str, str],
    token: str | None,
    user: str | None,
    password: str | None,
    quiet: bool,
    console: Any,
) -> dict[str, Any]:
    from dicomlake.ingest.dicomweb import DicomwebReport, pull_dicomweb

    def progress(rep: DicomwebReport) -> None:
        if not quiet:
            console.print(
                f"\rstudies {rep.done + rep.failed:,}/{rep.studies:,} · instances {rep.instances:,} · "
                f"{rep.bytes_received / 1e6:,.2f} MB received",
                end="",
            )

    rep = pull_dicomweb(url, str(folder), keys=keys, token=token, user=user, password=password, progress=progress)
    console.print(
        f"\nDICOMweb {url}: studies {rep.studies:,} (failed {rep.failed:,}) · series {rep.series:,} · "
        f"instances {rep.instances:,} · {rep.bytes_received:,} bytes in {rep.requests:,} requests · {rep.seconds:.1f} s"
    )
    for f in rep.failures:
        console.print(f"[red]failed: {f}")
    out = rep.as_dict()
    out["run_id"] = f"dicomweb-{int(rep.seconds * 1000)}"
    return out


def register(app: typer.Typer) -> None:
    app.command("pull")(handle_errors(pull))
