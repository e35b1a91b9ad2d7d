"""`dicomlake curate`: re-run the data-quality rules over the lake; name standardisation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dicomlake.cli.common import LAKE_OPTION, handle_errors, lake_path

if TYPE_CHECKING:
    from dicomlake.store.curation import LakeCuration

curate_app = typer.Typer(
    help="Data-quality rules over the lake (quality_flags) and standardised names.\n\n"
    "Example: dicomlake curate run && dicomlake audit quality --out quality.html",
    no_args_is_help=True,
)


@curate_app.command("run")
@handle_errors
def run(
    lake: Path | None = LAKE_OPTION,
    rules: Path | None = typer.Option(
        None, "--rules", help="Rules file (default: shipped, or DICOMLAKE_CURATE_RULES)."
    ),
) -> None:
    """Check every instance against the rules; replace the lake's quality_flags.

    Example: dicomlake curate run --rules my-rules.toml
    """
    from dicomlake.curate.engine import curate
    from dicomlake.curate.rules import load_rules

    r = load_rules(rules)
    with _open(lake, "curate run") as door:
        rep = curate(door, None, r)
    typer.echo(
        f"{rep.instances:,} instances checked, {rep.flags:,} flags (rules {rep.rules_version}) in {rep.seconds:.1f} s"
    )
    for rule, n in sorted(rep.by_rule.items(), key=lambda kv: -kv[1]):
        typer.echo(f"  {n:>7,}  {rule}")
    for note in rep.notes:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)


@curate_app.command("rules")
def rules_cmd() -> None:
    """Print the shipped rules file, to copy and edit.

    Example: dicomlake curate rules > my-rules.toml
    """
    from dicomlake.curate.rules import default_rules_text

    typer.echo(default_rules_text(), nl=False)


@curate_app.command("names")
@handle_errors
def names_cmd(
    propose: Path | None = typer.Option(None, "--propose", help="Write clustered variants to this CSV to edit."),
    confirm: Path | None = typer.Option(
        None, "--confirm", help="Store the confirmed rows of an edited CSV as a new version."
    ),
    history: bool = typer.Option(False, "--history", help="List the mapping versions."),
    threshold: float = typer.Option(0.8, "--threshold", help="Similarity (0-1) at which variants join a group."),
    by: str = typer.Option("", "--by", help="Who confirmed (recorded with the version)."),
    lake: Path | None = LAKE_OPTION,
) -> None:
    """Standardise institution, station, protocol and description names.

    Examples:

      dicomlake curate names --propose names.csv   (edit: standard, status=confirmed)

      dicomlake curate names --confirm names.csv --by "A. Physicist"
    """
    from dicomlake.curate import names

    if not (propose or confirm or history):
        raise ValueError("give --propose FILE, --confirm FILE or --history")
    with _open(lake, "curate names --confirm" if confirm else None) as st:
        if propose:
            props = (
                names.unmapped(st, threshold)
                if names.latest_version(st)
                else [p for f, v in names.variants_in_lake(st).items() for p in names.propose(f, v, threshold)]
            )
            n = names.write_proposals(propose, props)
            typer.echo(f"{n:,} variants in {len({(p.field, p.cluster) for p in props}):,} groups written to {propose}; "
                       "edit `standard`, set `status` to confirmed, then run --confirm")  # fmt: skip
        if confirm:
            rows = names.read_mapping(confirm)
            ver = names.apply_mapping(st, rows, confirmed_by=by, source_file=str(confirm))
            typer.echo(
                f"mapping version {ver}: {len(rows):,} confirmed rows from {confirm}; view instances_std updated"
            )
        if history:
            versions = st.mapping_history()
            if not versions:
                typer.echo("no confirmed mappings yet")
                return
            for row in versions:
                when = f"{row[3]:%Y-%m-%d %H:%M}" if row[3] else "?"
                typer.echo(f"v{row[0]}: {row[1]:,} mappings, by {row[2] or '?'} at {when} from {row[4]}")


@contextlib.contextmanager
def _open(lake: Path | None, writes: str | None) -> Iterator[LakeCuration]:
    """The lake's curation door (DuckDB, PostgreSQL; a Parquet lake read-only). A command that
    writes (``writes`` names it) on a lake that cannot be written is refused in one line (exit 2)."""
    from dicomlake.errors import ConfigError
    from dicomlake.store.curation import curation_of
    from dicomlake.store.open import lake_kind, open_store

    where = lake_path(lake)
    if writes and lake_kind(where) == "parquet":
        raise ConfigError(
            f"{writes}: {where} is a Parquet lake, which is read-only; curate the DuckDB or PostgreSQL lake it "
            "was exported from (or import it into one: `dicomlake import`)"
        )
    store = open_store(where, read_only=writes is None)
    try:
        door = curation_of(store)
        if writes:
            door.require_writable(writes)
        yield door
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    app.add_typer(curate_app, name="curate")
