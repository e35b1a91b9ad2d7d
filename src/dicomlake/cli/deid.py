"""`dicomlake deid` (files → de-identified files, profiles) and `dicomlake reidentify`."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import typer

from dicomlake.errors import DeidError

_UID_NAME = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def _files(paths: list[Path], skipped: list[str]) -> Iterator[tuple[Path, Path]]:
    """(file, path relative to its input root) for every file under the inputs.

    Symbolic links to folders are not followed (a loop, or a walk out of the input): each one
    is listed in ``skipped``. Links to files are read.
    """
    for root in paths:
        if root.is_file():
            yield root, Path(root.name)
        elif root.is_dir():
            for folder, dirs, names in os.walk(root, followlinks=False):
                here = Path(folder)
                skipped.extend(
                    f"{here / d}: symbolic link to a folder, not followed (pass its target)"
                    for d in sorted(dirs)
                    if (here / d).is_symlink()
                )
                dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
                for name in sorted(names):
                    f = here / name
                    if f.is_file():
                        yield f, f.relative_to(root)
        else:
            raise typer.BadParameter(f"{root} does not exist; pass files or folders of DICOM files")


def _refuse_overlap(inputs: list[Path], out: Path) -> None:
    """Exit 2 when --out is an input, lies inside one or contains one (nothing written yet).

    Writing into the input would overwrite originals or, on the next run, de-identify the
    outputs again (deid/deid/deid); an output around the input mixes originals with outputs.
    """
    target = Path(os.path.realpath(out))
    for given in inputs:
        source = Path(os.path.realpath(given))
        if target == source:
            why = "is the input"
        elif target.is_relative_to(source):
            why = "is inside the input"
        elif source.is_relative_to(target):
            why = "contains the input"
        else:
            continue
        typer.echo(
            f"error: --out {out} {why} {given}; choose an output folder outside the inputs (nothing was written)",
            err=True,
        )
        raise typer.Exit(2)


def _safe_uid(value: object) -> str | None:
    text = str(value or "").strip("\x00 ")
    return text if _UID_NAME.fullmatch(text) and len(text) <= 64 else None


def _output_name(data: bytes) -> Path:
    """StudyUID/SeriesUID/SOPInstanceUID.dcm of the de-identified object (never an input name).

    A UID that is not a plain UID (possible only under Retain UIDs, from hostile input) is
    replaced by a hash of the output bytes.
    """
    import pydicom

    ds = pydicom.dcmread(
        BytesIO(data),
        stop_before_pixels=True,
        force=True,
        specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
    )
    digest = hashlib.sha256(data).hexdigest()[:32]
    study = _safe_uid(ds.get("StudyInstanceUID")) or "study-" + digest
    series = _safe_uid(ds.get("SeriesInstanceUID")) or "series-" + digest
    sop = _safe_uid(ds.get("SOPInstanceUID")) or "instance-" + digest
    return Path(study) / series / f"{sop}.dcm"


def _write_atomic(target: Path, data: bytes) -> None:
    """Write to a temporary file beside the target, then rename: never a half-written output."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def deid(
    inputs: list[Path] = typer.Argument(
        ..., help="DICOM files or folders (searched recursively); or the word 'profiles'."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-od",
        help="Output folder, outside the inputs; files are named STUDY/SERIES/INSTANCE.dcm from the new UIDs.",
    ),
    profile: str = typer.Option("basic", "--profile", "-p", help="Built-in name or TOML file."),
    secret_env: str = typer.Option(
        "DICOMLAKE_DEID__SECRET",
        "--secret-env",
        help="Environment variable holding the key; a second key gives a second, unlinkable "
        "pseudonymisation of an extract for a third party.",
    ),
    vault: Path | None = typer.Option(None, "--vault", help="Re-identification vault file."),
    map_file: Path | None = typer.Option(None, "--map", help="External map CSV kind,original,replacement."),
    report: Path | None = typer.Option(None, "--report", help="Write a JSON report here."),
    show: str | None = typer.Option(None, "--show", help="With 'profiles': print one profile's TOML."),
    pixels: bool = typer.Option(
        False,
        "--pixels",
        help="Screen the pixels of every image for burned-in text (OCR) and clean it: images with "
        "PHI become redacted derived objects (new UIDs from the maps), Burned In Annotation NO only "
        "when a second OCR pass reads nothing back; images that cannot be screened (undecodable "
        "transfer syntax, too many frames, photometric) are listed and never marked NO.",
    ),
    screen_frames: int = typer.Option(
        8,
        "--screen-frames",
        min=1,
        help="With --pixels: screen every frame of multi-frame images up to this many frames; "
        "longer ones are listed as not screened.",
    ),
    keep_names: bool = typer.Option(
        False,
        "--keep-names",
        help="Keep the input folder and file names in the output (they often hold patient names, "
        "dates and accession numbers: only for inputs whose names are known to be neutral).",
    ),
) -> None:
    """De-identify DICOM files per PS3.15 into OUT with a profile; `deid profiles` lists profiles.

    Excluded (burned-in) and unreadable files are listed, never skipped silently.

    Example: dicomlake deid ./study --out ./deid --profile research --vault /secure/vault.db

    Example: dicomlake deid profiles --show research > my-profile.toml
    """
    if [str(p) for p in inputs] == ["profiles"] and (out is None or not Path("profiles").exists()):
        profiles(show)  # the word, even when the current folder has a subfolder named profiles
        return
    if out is None:
        raise typer.BadParameter("give the output folder", param_hint="--out")
    for given in inputs:
        if not given.exists():
            raise typer.BadParameter(f"{given} does not exist; pass files or folders of DICOM files")
    _refuse_overlap(inputs, out)
    from dicomlake.deid import Deidentifier, settings_from_env  # pydicom: imported when used

    settings = settings_from_env()
    update: dict[str, object] = {}
    if secret_env != "DICOMLAKE_DEID__SECRET":
        if secret_env not in os.environ:
            raise typer.BadParameter(f"environment variable {secret_env} is not set", param_hint="--secret-env")
        update["secret"] = os.environ[secret_env]
    if vault is not None:
        update["vault_path"] = vault
    if map_file is not None:
        update["map_file"] = map_file
    settings = settings.model_validate({**settings.model_dump(), **update})
    if vault is not None and settings.vault_key is None:
        raise typer.BadParameter("--vault needs DICOMLAKE_DEID__VAULT_KEY", param_hint="--vault")
    try:
        engine = Deidentifier(profile, settings)
    except DeidError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    written = 0
    failed: list[str] = []
    skipped: list[str] = []
    duplicates: list[str] = []
    targets: dict[Path, Path] = {}
    pixel_report = None
    if pixels:
        from dicomlake.deid.pixels import RedactReport, deidentify_bytes_with_pixels

        pixel_report = RedactReport()
    with engine:
        for path, rel in _files(inputs, skipped):
            try:
                if pixel_report is not None:
                    data = deidentify_bytes_with_pixels(
                        engine, path.read_bytes(), source=str(path), report=pixel_report, max_frames=screen_frames
                    )
                else:
                    data = engine.deidentify_bytes(path.read_bytes(), source=str(path))
            except DeidError as exc:
                failed.append(f"{path}: {exc}")
                continue
            except OSError as exc:
                failed.append(f"{path}: cannot be read: {exc.strerror or exc}")
                continue
            if data is None:
                continue
            name = rel if keep_names else _output_name(data)
            if name in targets:
                duplicates.append(f"{path}: same output {name} as {targets[name]}; not written twice")
                continue
            targets[name] = path
            _write_atomic(out / name, data)
            written += 1
    rep = engine.report
    typer.echo(
        f"de-identified {written}, excluded {len(rep.excluded)}, flagged {len(rep.flagged)}, "
        f"failed {len(failed)}, skipped {len(skipped)} (profile {engine.profile.name})"
    )
    for line in rep.excluded:
        typer.echo(f"  excluded {line}")
    if rep.kept_text:
        n = sum(len(v) for v in rep.kept_text.values())
        typer.echo(
            f"  cleaned free text kept: {n} distinct values in {', '.join(sorted(rep.kept_text))} "
            "(names and identifiers removed; read them before release: --report lists them)"
        )
    for line in skipped:
        typer.echo(f"  skipped {line}")
    for line in duplicates:
        typer.echo(f"  duplicate {line}")
    if pixel_report is not None:
        typer.echo(
            f"pixels: screened {pixel_report.screened}, NOT screened {len(pixel_report.not_screened)}, "
            f"redacted {len(pixel_report.written)} ({pixel_report.regions} regions filled), "
            f"held {len(pixel_report.held)}, review {len(pixel_report.review)}"
        )
        for where, why in pixel_report.not_screened:
            typer.echo(f"  not screened {where}: {why}")
        for where, why in pixel_report.review:
            typer.echo(f"  review {where}: {why}")
    for line in failed:
        typer.echo(f"  failed {line}", err=True)
    if report is not None:
        report.write_text(
            json.dumps(
                {
                    "profile": engine.profile.name,
                    "written": written,
                    "excluded": rep.excluded,
                    "flagged": rep.flagged,
                    "failed": failed,
                    "skipped": skipped,
                    "kept_text": {k: sorted(v) for k, v in sorted(rep.kept_text.items())},
                    "duplicates": duplicates,
                    **(
                        {
                            "pixels": {
                                "screened": pixel_report.screened,
                                "not_screened": [{"file": f, "why": w} for f, w in pixel_report.not_screened],
                                "redacted": [f for f, _ in pixel_report.written],
                                "regions": pixel_report.regions,
                                "held": [{"file": f, "why": w} for f, w in pixel_report.held],
                                "review": [{"file": f, "why": w} for f, w in pixel_report.review],
                            }
                        }
                        if pixel_report is not None
                        else {}
                    ),
                },
                indent=2,
            )
        )
    if failed:
        raise typer.Exit(1)


def profiles(show: str | None = None) -> None:
    """List the built-in profiles and what each keeps (or print one to copy)."""
    if show:
        from dicomlake.deid.profile import profile_text

        typer.echo(profile_text(show), nl=False)
        return
    from dicomlake.deid import builtin_profiles

    for p in builtin_profiles():
        typer.echo(f"{p.name:<12} {p.description}")
        typer.echo(f"{'':<12} keeps: {p.summary()}; burned-in: {p.burned_in.value}")
        for line in p.deviations():
            typer.echo(f"{'':<12} deviates from Table E.1-1: {line}")


def reidentify(
    pseudonyms: list[str] = typer.Argument(..., help="Pseudonyms (Patient ID, UID, …) to resolve."),
    vault: Path = typer.Option(..., "--vault", help="The vault file."),
    purpose: str = typer.Option(..., "--purpose", help="Why (recorded in the access log)."),
    kind: str | None = typer.Option(None, "--kind", help="Only this kind (PatientID, UID, …)."),
) -> None:
    """Show the originals behind pseudonyms; needs DICOMLAKE_DEID__VAULT_KEY and logs the use.

    Example: dicomlake reidentify DL4A3H6V21JN70 --vault /secure/vault.db --purpose "update case 12"
    """
    key_text = os.environ.get("DICOMLAKE_DEID__VAULT_KEY")
    if not vault.is_file():
        typer.echo(f"error: vault {vault} not found", err=True)
        raise typer.Exit(2)
    if not key_text:
        from dicomlake.deid.vault import log_access

        log_access(vault, "refused", list(pseudonyms), 0, purpose, reason="no key")
        typer.echo("error: DICOMLAKE_DEID__VAULT_KEY is not set; only key holders can re-identify", err=True)
        raise typer.Exit(2)
    from dicomlake.deid.pseudonym import parse_key
    from dicomlake.deid.vault import Vault, log_access

    try:
        key = parse_key(key_text, "DICOMLAKE_DEID__VAULT_KEY")
    except DeidError as exc:
        log_access(vault, "refused", list(pseudonyms), 0, purpose, reason="malformed key")
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        with Vault(vault, key) as v:
            pairs = v.reidentify(list(pseudonyms), kind=kind, purpose=purpose)
    except DeidError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for p in pairs:
        typer.echo(f"{p.kind}\t{p.pseudonym}\t{p.original}")
    if not pairs:
        typer.echo("no pairs found", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `deid` and `reidentify` to the main app."""
    app.command("deid")(deid)
    app.command("reidentify")(reidentify)
