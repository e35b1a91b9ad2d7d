"""The `dicomlake` command: one typer app; each verb group lives in its own module."""

from __future__ import annotations

import importlib
import sys

import typer

from dicomlake import __version__

app = typer.Typer(
    name="dicomlake",
    help="DICOM metadata out of PACS archives into a queryable lake.\n\n"
    "Example: dicomlake ingest ./images && dicomlake query --where 'Modality = MG'",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines register(app). Keep this list in the order verbs appear in --help.
VERB_MODULES = [
    "dicomlake.cli.ingest",
    "dicomlake.cli.query",
    "dicomlake.cli.lake",
    "dicomlake.cli.deid",
    "dicomlake.cli.write",
    "dicomlake.cli.curate",
    "dicomlake.cli.audit",
    "dicomlake.cli.user",
    "dicomlake.cli.sc",
    "dicomlake.cli.serve",
    "dicomlake.cli.pull",
    "dicomlake.cli.doctor",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dicomlake {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """DICOM metadata out of PACS archives into a queryable lake."""


for _name in VERB_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Entry point of the console script."""
    sys.exit(app(standalone_mode=True))


if __name__ == "__main__":
    main()
