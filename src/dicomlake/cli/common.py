"""Helpers shared by the CLI modules: the lake option and turning errors into exit codes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from dicomlake.errors import ConfigError, DicomlakeError, QueryError

F = TypeVar("F", bound=Callable[..., Any])

LAKE_OPTION = typer.Option(
    None, "--lake", "-l", help="Lake folder (default: ./dicomlake-data, or DICOMLAKE_LAKE).", envvar="DICOMLAKE_LAKE"
)


def lake_path(lake: Path | None) -> Path:
    from dicomlake.config import get_settings

    return Path(lake) if lake is not None else get_settings().lake


def fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Usage and config errors exit 2; other dicomlake errors exit 1 (STYLE.md §10)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, QueryError, ValueError) as exc:
            fail(str(exc), 2)
        except DicomlakeError as exc:
            fail(str(exc), 1)

    return wrapper  # type: ignore[return-value]
