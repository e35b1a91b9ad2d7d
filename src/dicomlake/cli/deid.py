"""`dicomlake deid` (files → de-identified files, profiles) and `dicomlake reidentify`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import typer

from dicomlake.errors import DeidError


def _files(paths: list[Path]) -> Iterator[tuple[Path, Path]]:
    """(file, path relative to its input root) for every file under the inputs."""
    for root in paths:
        if root.is_file():
            yield root, Path(root.name)
        elif root.is_dir():
            for f in sorted(root.rglob("*")):
                if f.is_file():
                    yield f, f.relative_to(root)
        else:
            raise typer.BadParameter(f"{root} does not exist; pass files or folders of DICOM files")


def deid(
    inputs: list[Path] = typer.Argument(
        ..., help="DICOM files or folders (searched recursively); or the word 'profiles'."
    ),
    out: Path | None = typer.Option(None, "--out", "-od", help="Output folder; the input layout is kept."),
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
        help="Clean burned-in text (OCR): SC-like and Burned In Annotation YES instances become "
        "redacted derived objects (new UIDs from the maps); uncertain ones are listed for review.",
    ),
) -> None:
    """De-identify DICOM files per PS3.15 into OUT with a profile; `deid profiles` lists profiles.

    Excluded (burned-in) and unreadable files are listed, never skipped silently.

    Example: dicomlake deid ./study --out ./deid --profile research --vault /secure/vault.db

    Example: dicomlake deid profiles --show research > my-profile.toml
    """
    if [str(p) for p in inputs] == ["profiles"] and not Path("profiles").exists():
        profiles(show)
        return
    if out is None:
        raise typer.BadParameter("give the output folder", param_hint="--out")
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
    written, failed = 0, []
    pixel_report = None
    if pixels:
        from dicomlake.deid.pixels import RedactReport, deidentify_bytes_with_pixels

        pixel_report = RedactReport()
    with engine:
        for path, rel in _files(inputs):
            try:
                if pixel_report is not None:
                    data = deidentify_bytes_with_pixels(
                        engine, path.read_bytes(), source=str(path), report=pixel_report
                    )
                else:
                    data = engine.deidentify_bytes(path.read_bytes(), source=str(path))
            except DeidError as exc:
                failed.append(f"{path}: {exc}")
                continue
            if data is None:
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written += 1
    rep = engine.report
    typer.echo(
        f"de-identified {written}, excluded {len(rep.excluded)}, flagged {len(rep.flagged)}, "
        f"failed {len(failed)} (profile {engine.profile.name})"
    )
    for line in rep.excluded:
        typer.echo(f"  excluded {line}")
    if pixel_report is not None:
        typer.echo(
            f"pixels: {len(pixel_report.written)} redacted ({pixel_report.regions} regions filled), "
            f"review {len(pixel_report.review)}"
        )
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
    if not key_text:
        typer.echo("error: DICOMLAKE_DEID__VAULT_KEY is not set; only key holders can re-identify", err=True)
        raise typer.Exit(2)
    if not vault.is_file():
        typer.echo(f"error: vault {vault} not found", err=True)
        raise typer.Exit(2)
    try:
        from dicomlake.deid.pseudonym import parse_key
        from dicomlake.deid.vault import Vault

        with Vault(vault, parse_key(key_text, "DICOMLAKE_DEID__VAULT_KEY")) as v:
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
