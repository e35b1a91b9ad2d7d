"""``dicomlake wrap``, ``derive`` and ``correct``: write DICOM that validators and PACS accept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from dicomlake.errors import DicomlakeError, WriteError

if TYPE_CHECKING:  # pydicom is imported by the write commands themselves, not by every CLI start
    from dicomlake.write._common import WriteReport
    from dicomlake.write.capture import PatientStudy


def _fail_usage(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _print_report(report: WriteReport) -> None:
    for written in report.written:
        typer.echo(f"wrote {written.path}  ({written.sop_instance_uid})")
        for note in written.notes:
            typer.echo(f"  note: {note}")
    for _source, message in report.failed:
        typer.echo(f"failed: {message}", err=True)
    typer.echo(f"{len(report.written)} written, {len(report.failed)} failed")


def wrap(
    inputs: list[Path] = typer.Argument(..., help="JPEG, PNG, TIFF, BMP or PDF files.", show_default=False),
    out: Path = typer.Option(..., "--out", "-od", help="Output directory."),
    as_: str | None = typer.Option(None, "--as", help="IOD: sc, vl-photo or pdf (default: by input)."),
    kind: str | None = typer.Option(
        None, "--kind", help="photo, scan, screenshot, document, film, synthetic or image (default: guessed)."
    ),
    patient_id: str | None = typer.Option(None, "--patient-id", help="Patient ID (0010,0020)."),
    patient_name: str | None = typer.Option(None, "--patient-name", help="Patient's Name, e.g. DOE^JANE."),
    patient_birth_date: str | None = typer.Option(None, "--patient-birth-date", help="YYYYMMDD."),
    patient_sex: str | None = typer.Option(None, "--patient-sex", help="M, F or O."),
    accession: str | None = typer.Option(None, "--accession", help="Accession Number (0008,0050)."),
    study_description: str | None = typer.Option(None, "--study-description", help="Study Description."),
    description: str | None = typer.Option(None, "--description", help="Series Description."),
    body_part: str | None = typer.Option(None, "--body-part", help="Body Part Examined, e.g. HAND."),
    laterality: str | None = typer.Option(None, "--laterality", help="R or L for a paired body part."),
    document_title: str | None = typer.Option(None, "--title", help="Document Title of a PDF."),
    like: Path | None = typer.Option(None, "--like", help="Take patient and study from this DICOM file."),
    conversion_type: str | None = typer.Option(
        None, "--conversion-type", help="DI, DF, DV, WSD, SD, SI, DRW or SYN (default: by kind)."
    ),
    burned_in: str | None = typer.Option(
        None, "--burned-in", help="yes/no: Burned In Annotation (default: YES for scans, screenshots, PDFs)."
    ),
    convert: bool = typer.Option(
        False, "--convert", help="Allow stated conversions: CMYK→RGB, transparency, progressive JPEG."
    ),
    one_series: bool = typer.Option(False, "--one-series", help="All inputs in one series."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    worklist: str | None = typer.Option(
        None,
        "--worklist",
        help="Take patient and study from this Modality Worklist provider, AE@HOST:PORT (default: the "
        "dimse.worklist setting when a --scheduled-* key is given); --accession and --patient-id are then "
        "query keys.",
    ),
    ups: str | None = typer.Option(
        None, "--ups", help="Take patient and study from this DICOMweb UPS-RS root (workitems query) instead."
    ),
    ups_auth: str | None = typer.Option(
        None,
        "--ups-auth",
        envvar="DICOMLAKE_UPS_AUTH",
        help="bearer:TOKEN or basic:USER:PASSWORD for --ups.",
        show_envvar=False,
    ),
    scheduled_date: str | None = typer.Option(
        None, "--scheduled-date", help="Worklist query: YYYYMMDD, a range YYYYMMDD-YYYYMMDD, or 'today'."
    ),
    scheduled_station: str | None = typer.Option(
        None, "--scheduled-station", help="Worklist query: Scheduled Station AE Title."
    ),
    scheduled_modality: str | None = typer.Option(None, "--scheduled-modality", help="Worklist query: Modality."),
    choose: int | None = typer.Option(None, "--choose", help="Use the N-th matching worklist item (1-based)."),
    calling_aet: str | None = typer.Option(
        None, "--calling-aet", help="Our AE title towards the worklist and --send peers (default: dimse.ae_title)."
    ),
    send: str | None = typer.Option(None, "--send", help="C-STORE what was written to AE@HOST:PORT."),
    stow: str | None = typer.Option(None, "--stow", help="STOW-RS what was written to this DICOMweb root URL."),
    stow_auth: str | None = typer.Option(
        None,
        "--stow-auth",
        envvar="DICOMLAKE_STOW_AUTH",
        help="bearer:TOKEN or basic:USER:PASSWORD for --stow (better: the DICOMLAKE_STOW_AUTH variable).",
        show_envvar=False,
    ),
) -> None:
    """Wrap photos, scans, screenshots and PDFs as DICOM.

    JPEG is encapsulated byte for byte; other images are stored losslessly; PDF becomes
    Encapsulated PDF; a multi-page TIFF becomes one series.

    Example: dicomlake wrap photo.jpg scan.tif report.pdf --patient-id 12345 --out ./dcm
    """
    from dicomlake.write.capture import PatientStudy, WrapOptions, wrap_paths
    from dicomlake.write.codes import CaptureIOD, ConversionType, SourceKind

    try:
        iod = CaptureIOD(as_) if as_ else None
    except ValueError:
        _fail_usage(f"--as {as_!r}: use sc, vl-photo or pdf")
    try:
        kind_value = SourceKind(kind) if kind else None
    except ValueError:
        _fail_usage(f"--kind {kind!r}: use one of {', '.join(k.value for k in SourceKind)}")
    try:
        conversion = ConversionType(conversion_type.upper()) if conversion_type else None
    except ValueError:
        _fail_usage(f"--conversion-type {conversion_type!r}: use one of {', '.join(c.value for c in ConversionType)}")
    burned: bool | None = None
    if burned_in is not None:
        if burned_in.lower() not in ("yes", "no"):
            _fail_usage(f"--burned-in {burned_in!r}: use yes or no")
        burned = burned_in.lower() == "yes"
    if laterality is not None and laterality.upper() not in ("R", "L"):
        _fail_usage(f"--laterality {laterality!r}: use R or L")
    if send and stow:
        _fail_usage("give --send or --stow, not both (send the files again with dicomlake send)")
    from dicomlake.config import get_settings

    settings = get_settings()
    calling = calling_aet or settings.dimse.ae_title
    query_keys = (accession, patient_id, scheduled_date, scheduled_station, scheduled_modality)
    if worklist is None and settings.dimse.worklist and (scheduled_date or scheduled_station or scheduled_modality):
        worklist = settings.dimse.worklist
    if worklist is not None and ups is not None:
        _fail_usage("give --worklist or --ups, not both")
    if ups is not None:
        worklist = "ups:" + ups
    if worklist is None and (scheduled_date or scheduled_station or scheduled_modality or choose is not None):
        _fail_usage("--scheduled-*/--choose query a worklist: give --worklist AE@HOST:PORT (or set dimse.worklist)")
    if worklist is not None and like is not None:
        _fail_usage("give --worklist or --like, not both")
    if worklist is not None:
        typed = [
            flag
            for flag, value in (
                ("--patient-name", patient_name),
                ("--patient-birth-date", patient_birth_date),
                ("--patient-sex", patient_sex),
            )
            if value is not None
        ]
        if typed:
            _fail_usage(f"{', '.join(typed)} with --worklist: the worklist item gives the patient; leave them out")
    sender = _sender(send, stow, stow_auth, calling)
    try:
        if worklist is not None:
            patient = _from_worklist(worklist, query_keys, choose, calling, ups_auth)
        else:
            patient = PatientStudy.like(like) if like else PatientStudy()
    except WriteError as exc:
        _fail_usage(str(exc))
    except DicomlakeError as exc:  # the provider cannot be reached or refused
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    overrides: dict[str, str | None] = {
        "patient_id": patient_id,
        "patient_name": patient_name,
        "patient_birth_date": patient_birth_date,
        "patient_sex": patient_sex,
        "accession_number": accession,
        "study_description": study_description,
    }
    if worklist is not None:  # the worklist's identity is the truth; the flags were query keys
        for key in ("patient_id", "accession_number"):
            overrides[key] = None
    from dataclasses import replace

    patient = replace(patient, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    if like is None and patient_id is None and worklist is None:
        typer.echo(
            "warning: no --patient-id or --like given; Patient ID is left empty (Type 2) and the "
            "receiving PACS must reconcile it",
            err=True,
        )
    options = WrapOptions(
        iod=iod,
        kind=kind_value,
        conversion_type=conversion,
        burned_in_annotation=burned,
        series_description=description,
        body_part_examined=body_part,
        laterality=laterality.upper() if laterality else None,
        document_title=document_title,
        convert=convert,
        one_series=one_series,
    )
    try:
        report = wrap_paths(inputs, out, patient=patient, options=options, overwrite=overwrite)
    except DicomlakeError as exc:
        _fail_usage(str(exc))
    _print_report(report)
    code = report.exit_code
    if sender is not None and report.written:
        code = max(code, sender([w.path for w in report.written]))
    raise typer.Exit(code)


def _from_worklist(
    provider: str, keys: tuple[str | None, ...], choice: int | None, calling: str, ups_auth: str | None = None
) -> PatientStudy:
    """Query the worklist, list the matches on stderr, return the chosen item's patient and study."""
    from datetime import date

    from dicomlake.write.send import Peer
    from dicomlake.write.worklist import WorklistQuery, choose, find_worklist

    accession, patient_id, when, station, modality = keys
    if when is not None and when.lower() == "today":
        when = date.today().strftime("%Y%m%d")
    query = WorklistQuery(
        accession_number=accession,
        patient_id=patient_id,
        scheduled_date=when,
        station_ae_title=station,
        modality=modality,
    )
    if provider.startswith("ups:"):
        from dicomlake.write.worklist import find_workitems

        items = find_workitems(provider.removeprefix("ups:"), query, auth=ups_auth)
    else:
        items = find_worklist(Peer.parse(provider, "--worklist"), query, calling_ae=calling)
    for n, item in enumerate(items, start=1):
        typer.echo(f"worklist [{n}] {item.summary()}", err=True)
    chosen = choose(items, query, choice)
    typer.echo(f"worklist: using accession {chosen.accession_number!r}, study {chosen.study_instance_uid}", err=True)
    return chosen.patient_study()


def _sender(
    send: str | None, stow: str | None, stow_auth: str | None, calling: str
) -> Callable[[list[Path]], int] | None:
    """A function that sends files and prints each outcome (exit code 1 if any was refused)."""
    from dicomlake.write.send import Peer, SendResult, c_store, stow_rs

    if send is None and stow is None:
        return None
    try:
        peer = Peer.parse(send) if send else None
    except WriteError as exc:
        _fail_usage(str(exc))

    def show(result: SendResult) -> None:
        if result.ok:
            typer.echo(f"sent {result.path}  ({result.message})")
        else:
            typer.echo(f"refused: {result.path}: {result.message}", err=True)

    def run(paths: list[Path]) -> int:
        try:
            if peer is not None:
                report = c_store(paths, peer, calling_ae=calling, progress=show)
            else:
                assert stow is not None
                report = stow_rs(paths, stow, auth=stow_auth, progress=show)
        except DicomlakeError as exc:
            typer.echo(f"error: {exc}; nothing was sent, the files are kept: {', '.join(map(str, paths))}", err=True)
            return 1
        typer.echo(f"{len(report.sent)} sent, {len(report.refused)} refused (refused files are kept)")
        return 1 if report.refused else 0

    return run


def send(
    files: list[Path] = typer.Argument(..., help="DICOM files to send (they are kept).", show_default=False),
    to: str | None = typer.Option(None, "--to", help="C-STORE to AE@HOST:PORT."),
    stow: str | None = typer.Option(None, "--stow", help="STOW-RS to this DICOMweb root URL."),
    stow_auth: str | None = typer.Option(
        None,
        "--stow-auth",
        envvar="DICOMLAKE_STOW_AUTH",
        help="bearer:TOKEN or basic:USER:PASSWORD.",
        show_envvar=False,
    ),
    calling_aet: str | None = typer.Option(None, "--calling-aet", help="Our AE title (default: dimse.ae_title)."),
) -> None:
    """Send DICOM files to a PACS (C-STORE) or a DICOMweb origin (STOW-RS); each file's answer is shown.

    Example: dicomlake send dcm/*.dcm --to PACS@10.0.0.5:104
    """
    from dicomlake.config import get_settings

    if (to is None) == (stow is None):
        _fail_usage("give one of --to AE@HOST:PORT or --stow URL")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        _fail_usage(f"no such file: {', '.join(missing[:5])}")
    sender = _sender(to, stow, stow_auth, calling_aet or get_settings().dimse.ae_title)
    assert sender is not None
    raise typer.Exit(sender(list(files)))


def derive(
    sources: list[Path] = typer.Argument(..., help="Source DICOM images.", show_default=False),
    code: str = typer.Option(..., "--code", help="CID 7203 Image Derivation code, e.g. 113088 (Gaussian blur)."),
    description: str = typer.Option(..., "--description", help="Derivation Description (free text)."),
    out: Path = typer.Option(..., "--out", "-od", help="Output directory."),
    purpose: str = typer.Option(
        "121322",
        "--purpose",
        help="CID 7202 purpose of reference (default 121322 Source image for image processing operation).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Derive new images (one new series) from DICOM sources with a built-in operation.

    Built in: 113088 Gaussian blur, 113087 Smoothing, 113089 Unsharp mask (one output
    per source); 113049 mean, 113048 maximum, 113051 minimum (one output from all).

    Example: dicomlake derive ct.dcm --code 113088 --description "Gaussian blur sigma 1.5" --out ./derived
    """
    from dicomlake.write.derive import Derivation, derive_files

    try:
        derivation = Derivation.of(code, description, purpose)
        report = derive_files(sources, out, derivation, overwrite=overwrite)
    except WriteError as exc:
        _fail_usage(str(exc))
    _print_report(report)
    raise typer.Exit(report.exit_code)


def _parse_sets(sets: Sequence[str]) -> dict[str, str]:
    changes: dict[str, str] = {}
    for item in sets:
        keyword, sep, value = item.partition("=")
        if not sep or not keyword.strip():
            _fail_usage(f"--set {item!r}: write Keyword=value, e.g. --set PatientID=12345")
        changes[keyword.strip()] = value
    return changes


def update_lake(corrected: Sequence[tuple[Path, str]], lake: Path) -> tuple[list[Path], list[Path], str]:
    """Re-ingest the corrected files the lake already holds, so its rows and history follow.

    Re-ingest is an upsert on SOP Instance UID; the elements table then holds the new
    values and every Original Attributes Sequence Item. Files whose instance is not in
    the lake are left out (correct never adds instances to a lake).

    Returns
    -------
    tuple
        (files re-ingested, files not in the lake, the ingest summary).
    """
    import dicomlake

    if not lake.is_dir():
        raise WriteError(f"--lake {lake}: no such lake folder; check the path (files were corrected)")
    try:
        from dicomlake.ingest.pipeline import ingest_paths
    except ImportError as exc:
        raise WriteError(
            f"--lake {lake}: the ingest pipeline is not available ({exc}); the files were corrected "
            "but the lake was not updated; run 'dicomlake ingest' on them"
        ) from exc
    uids = [uid for _, uid in corrected]
    with dicomlake.open(lake) as handle:
        placeholders = ", ".join("?" for _ in uids)
        held = set(
            handle.sql(f"SELECT SOPInstanceUID FROM instances WHERE SOPInstanceUID IN ({placeholders})", uids)[
                "SOPInstanceUID"
            ].to_list()
        )
    inside = [path for path, uid in corrected if uid in held]
    outside = [path for path, uid in corrected if uid not in held]
    summary = ""
    if inside:
        result = ingest_paths(inside, lake, workers=1)
        summary = f"{result.replaced} replaced, {result.inserted} inserted, {result.rejected} rejected"
    return inside, outside, summary


def correct(
    files: list[Path] = typer.Argument(None, help="DICOM files to correct in place.", show_default=False),
    set_: list[str] = typer.Option([], "--set", help="Keyword=value; repeat; multiple values with \\."),
    reason: str = typer.Option(..., "--reason", help="CORRECT or COERCE (PS3.3 C.12.1.1.9.2)."),
    source: str = typer.Option("", "--source", help="Source of Previous Values, e.g. the sending institution."),
    csv_path: Path | None = typer.Option(
        None, "--csv", help="Batch: CSV with a path column and one column per keyword (optional reason, source)."
    ),
    lake: Path | None = typer.Option(None, "--lake", help="Also update this lake's rows for the corrected instances."),
) -> None:
    """Correct header values in place, keeping the old values in Original Attributes Sequence.

    Example: dicomlake correct img.dcm --set PatientID=12345 --set PatientName=DOE^JANE --reason CORRECT --source "Outside Hospital"
    """
    from dicomlake.write.correct import correct_file, read_correction_csv

    if reason.upper() not in ("CORRECT", "COERCE"):
        _fail_usage(f"--reason {reason!r}: use CORRECT or COERCE")
    jobs: list[tuple[Path, dict[str, str], str, str]] = []
    changes = _parse_sets(set_)
    for path in files or []:
        if not changes:
            _fail_usage("give at least one --set Keyword=value (or --csv FILE)")
        jobs.append((path, changes, reason, source))
    if csv_path is not None:
        try:
            rows = read_correction_csv(csv_path)
        except WriteError as exc:
            _fail_usage(str(exc))
        for row in rows:
            jobs.append((row.path, row.changes, row.reason or reason, row.source if row.source is not None else source))
    if not jobs:
        _fail_usage("nothing to correct: give FILE... with --set, or --csv FILE")
    corrected: list[tuple[Path, str]] = []
    failed = 0
    for path, job_changes, job_reason, job_source in jobs:
        try:
            result = correct_file(path, job_changes, reason=job_reason, source_of_previous_values=job_source)
        except WriteError as exc:
            typer.echo(f"failed: {exc}", err=True)
            failed += 1
            continue
        if result.changes:
            corrected.append((path, result.sop_instance_uid))
            for keyword, (old, new) in result.changes.items():
                typer.echo(f"{path}: {keyword} {old!r} → {new!r}")
        else:
            typer.echo(f"{path}: already has these values; unchanged")
    if lake is not None and corrected:
        try:
            inside, outside, summary = update_lake(corrected, lake)
            typer.echo(f"lake {lake}: {len(inside)} instance(s) updated ({summary})")
            for path in outside:
                typer.echo(f"lake {lake}: {path} is not in the lake; not added (use dicomlake ingest)")
        except (DicomlakeError, OSError) as exc:
            typer.echo(f"failed lake update: {exc}", err=True)
            failed += 1
    typer.echo(f"{len(corrected)} corrected, {failed} failed")
    raise typer.Exit(1 if failed else 0)


def register(app: typer.Typer) -> None:
    """Add ``wrap``, ``derive``, ``correct`` and ``send`` to the ``dicomlake`` command."""
    app.command("wrap")(wrap)
    app.command("derive")(derive)
    app.command("correct")(correct)
    app.command("send")(send)
