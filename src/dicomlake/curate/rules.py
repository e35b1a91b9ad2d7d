"""Curation rules: the shipped ``rules.toml`` or a user's copy, read and checked in one go."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from dicomlake.errors import ConfigError

RULES_ENV = "DICOMLAKE_CURATE_RULES"


class Severity(StrEnum):
    """How bad a violation is."""

    ERROR = "error"
    """Impossible: the value cannot be right (a future study date, 900 N of compression)."""
    WARNING = "warning"
    """Implausible or non-conformant: worth a look (a body part that contradicts the protocol)."""
    INFO = "info"
    """Worth knowing; no action needed."""


@dataclass(frozen=True, slots=True)
class RangeRule:
    """A plausible range of one numeric attribute, for some modalities."""

    id: str
    attribute: str
    min: float | None
    max: float | None
    unit: str
    severity: Severity
    message: str
    table: str = "instances"
    modality: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequiredRule:
    """Attributes an IOD requires (Type 1: with a value; Type 2: present, maybe empty)."""

    id: str
    keywords: tuple[str, ...]
    type: int
    reference: str
    modality: tuple[str, ...] = ("*",)
    severity: Severity = Severity.WARNING


@dataclass(frozen=True, slots=True)
class Check:
    """A built-in check switched on or off, with its severity and options."""

    name: str
    enabled: bool
    severity: Severity
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rules:
    """Every rule of one rules file."""

    version: str
    source: str
    settings: dict[str, Any]
    ranges: tuple[RangeRule, ...]
    required: tuple[RequiredRule, ...]
    checks: dict[str, Check]

    def check(self, name: str) -> Check | None:
        """The check when enabled, else None."""
        c = self.checks.get(name)
        return c if c is not None and c.enabled else None

    def setting(self, name: str, default: Any = None) -> Any:
        return self.settings.get(name, default)


def _severity(value: object, where: str, problems: list[str]) -> Severity:
    try:
        return Severity(str(value))
    except ValueError:
        problems.append(f"{where}: severity {value!r} is not one of error, warning, info")
        return Severity.WARNING


def parse_rules(data: dict[str, Any], source: str) -> Rules:
    """Rules from the parsed TOML; every problem is reported at once (STYLE.md §7)."""
    problems: list[str] = []
    ranges = []
    for n, r in enumerate(data.get("range", []), start=1):
        where = f"{source} [[range]] #{n} ({r.get('id', '?')})"
        if "id" not in r or "attribute" not in r:
            problems.append(f"{where}: needs id and attribute")
            continue
        if "min" not in r and "max" not in r:
            problems.append(f"{where}: needs min, max or both")
        table = r.get("table", "instances")
        if table not in ("instances", "dose_events"):
            problems.append(f"{where}: table {table!r} must be instances or dose_events")
        ranges.append(
            RangeRule(
                id=r["id"], attribute=r["attribute"],
                min=float(r["min"]) if "min" in r else None, max=float(r["max"]) if "max" in r else None,
                unit=r.get("unit", ""), severity=_severity(r.get("severity", "error"), where, problems),
                message=r.get("message", f"{r['attribute']} outside its plausible range"),
                table=table, modality=tuple(r.get("modality", ())),
            )
        )  # fmt: skip
    required = []
    for n, r in enumerate(data.get("required", []), start=1):
        where = f"{source} [[required]] #{n} ({r.get('id', '?')})"
        if r.get("type") not in (1, 2):
            problems.append(f"{where}: type must be 1 or 2")
        if not r.get("keywords"):
            problems.append(f"{where}: keywords is empty")
        required.append(
            RequiredRule(
                id=r.get("id", f"required-{n}"), keywords=tuple(r.get("keywords", ())),
                type=int(r.get("type", 2)), reference=r.get("reference", ""),
                modality=tuple(r.get("modality", ("*",))),
                severity=_severity(r.get("severity", "warning"), where, problems),
            )
        )  # fmt: skip
    checks = {}
    for name, c in data.get("checks", {}).items():
        opts = {k: v for k, v in c.items() if k not in ("enabled", "severity")}
        checks[name] = Check(
            name, bool(c.get("enabled", True)),
            _severity(c.get("severity", "warning"), f"{source} [checks.{name}]", problems), opts,
        )  # fmt: skip
    ids = [r.id for r in ranges] + [r.id for r in required]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        problems.append(f"{source}: rule ids used twice: {', '.join(dup)}")
    if problems:
        raise ConfigError("curation rules are invalid:\n  " + "\n  ".join(problems))
    return Rules(
        version=str(data.get("version", "unversioned")), source=source,
        settings=dict(data.get("settings", {})), ranges=tuple(ranges), required=tuple(required),
        checks=checks,
    )  # fmt: skip


def load_rules(path: str | os.PathLike[str] | None = None) -> Rules:
    """The rules of ``path``, else of ``$DICOMLAKE_CURATE_RULES``, else the shipped defaults."""
    chosen = path or os.environ.get(RULES_ENV)
    if chosen:
        p = Path(chosen)
        try:
            data = tomllib.loads(p.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                f"curation rules {p}: cannot read them ({exc}); start from the shipped file "
                "(dicomlake curate rules > my-rules.toml)"
            ) from exc
        return parse_rules(data, str(p))
    return parse_rules(tomllib.loads(default_rules_text()), "rules.toml (shipped)")


def default_rules_text() -> str:
    """The shipped rules file, comments included."""
    return resources.files("dicomlake.curate").joinpath("rules.toml").read_text("utf-8")
