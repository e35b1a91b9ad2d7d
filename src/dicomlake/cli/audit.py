"""`dicomlake audit NAME`: dose, workflow, quality and SC-catalogue audits as reports."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from dicomlake.cli.common import LAKE_OPTION, handle_errors, lake_path


def _date(text: str | None, what: str) -> dt.date | None:
    if not text:
        return None
    from dicomlake.curate.normalise import parse_date

    d = parse_date(text)
    if d is None:
        raise ValueError(f"{what} {text!r}: write a date as YYYYMMDD or YYYY-MM-DD")
    return d


def audit(
    name: str = typer.Argument(
        ..., help="mg-dose, ct-dose, dx-dose, rf-dose, nm-dose, workflow, quality or sc-catalogue."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML report; CSV and XLSX are written beside it."),
    date_from: str | None = typer.Option(None, "--from", help="First study date (YYYYMMDD or YYYY-MM-DD)."),
    date_to: str | None = typer.Option(None, "--to", help="Last study date."),
    where: list[str] = typer.Option([], "--where", "-w", help="KEY OP VALUE on any attribute, repeatable (AND)."),
    settings: Path | None = typer.Option(
        None, "--settings", help="DRLs and thresholds (TOML; default: shipped examples)."
    ),
    lake: Path | None = LAKE_OPTION,
) -> None:
    """Run an audit over the lake and write a self-contained HTML report with CSV and XLSX beside it.

    Examples:

      dicomlake audit mg-dose --from 2024-01-01 --to 2024-12-31 --out mg-2024.html

      dicomlake audit ct-dose --where 'StationName = CT1' --out ct1.html

      dicomlake audit workflow --where 'Modality = MG' --out workflow.html
    """
    from dicomlake.audit import AUDITS, Selection, load_settings, run_audit, write_report
    from dicomlake.query.lake import Lake

    if name not in AUDITS:
        raise ValueError(f"audit {name!r}: choose one of {', '.join(AUDITS)}")
    sel = Selection(_date(date_from, "--from"), _date(date_to, "--to"), list(where))
    cfg = load_settings(settings)
    with Lake.open(lake_path(lake), read_only=True) as lk:
        result = run_audit(name, lk, sel, cfg)
    paths = write_report(result, out)
    typer.echo(result.selection)
    for kind in ("html", "xlsx", "csv"):
        for p in paths[kind]:
            typer.echo(f"  {kind:4} {p}")
    for note in result.notes:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)


def register(app: typer.Typer) -> None:
    app.command("audit")(handle_errors(audit))
