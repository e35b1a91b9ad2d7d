"""Installed and declared dependency versions against the table of minimum safe versions.

The table is ``dicomlake/data/min_safe_versions.toml``. ``python -m dicomlake.security.versions``
prints every check and exits 1 when one fails; ``tests/test_hardening_versions.py`` runs the
same checks in ``make test``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version


@dataclass(frozen=True)
class VersionCheck:
    """One package checked against its minimum safe version."""

    package: str
    minimum: str
    found: str | None
    """Installed version, or the declared lower bound for a ``declared`` check; None when absent."""
    kind: str
    """``installed`` or ``declared``."""
    advisories: tuple[str, ...]
    why: str

    @property
    def ok(self) -> bool:
        return self.found is None or Version(self.found) >= Version(self.minimum)

    def message(self) -> str:
        where = "installed" if self.kind == "installed" else "lowest version allowed by pyproject.toml"
        return (
            f"{self.package} {self.found} ({where}) is below {self.minimum}, the first release that fixed "
            f"{', '.join(self.advisories)} ({self.why}); "
            + (
                "upgrade it: pip install -U '" + self.package + ">=" + self.minimum + "'"
                if self.kind == "installed"
                else f"raise the bound in pyproject.toml to '{self.package}>={self.minimum}'"
            )
        )


@cache
def table() -> dict[str, dict[str, Any]]:
    """The minimum safe versions, keyed by canonical package name."""
    text = resources.files("dicomlake.data").joinpath("min_safe_versions.toml").read_text("utf-8")
    return {canonicalize_name(k): v for k, v in tomllib.loads(text).items()}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def installed_checks() -> list[VersionCheck]:
    """Every package of the table that is installed, against its minimum."""
    return [
        VersionCheck(name, e["minimum"], _installed(name), "installed", tuple(e["advisories"]), e["why"])
        for name, e in table().items()
        if _installed(name) is not None
    ]


def _lowest_allowed(spec: SpecifierSet) -> str | None:
    lows = [s.version for s in spec if s.operator in (">=", "==", "~=", "===")]
    lows += [s.version for s in spec if s.operator == ">"]  # strictly above: treat the bound as allowed
    return max(lows, key=Version) if lows else None


def declared_requirements(pyproject: Path) -> dict[str, list[Requirement]]:
    """Requirements of ``[project]`` dependencies and optional dependencies, by canonical name."""
    data = tomllib.loads(pyproject.read_text("utf-8"))
    project = data.get("project", {})
    reqs = list(project.get("dependencies", []))
    for group in project.get("optional-dependencies", {}).values():
        reqs += [r for r in group if not re.match(r"^dicomlake\[", r)]
    out: dict[str, list[Requirement]] = {}
    for r in reqs:
        req = Requirement(r)
        out.setdefault(canonicalize_name(req.name), []).append(req)
    return out


def declared_checks(pyproject: Path) -> list[VersionCheck]:
    """Every ``declared`` package of the table against its lower bounds in ``pyproject``."""
    reqs = declared_requirements(pyproject)
    out = []
    for name, e in table().items():
        if not e.get("declared"):
            continue
        for req in reqs.get(name, [None]):  # type: ignore[list-item]
            low = _lowest_allowed(req.specifier) if req is not None else None
            found = low if req is not None else "missing"
            if req is not None and low is None:
                found = "0"  # no lower bound at all
            out.append(
                VersionCheck(
                    name,
                    e["minimum"],
                    None if found == "missing" else found,
                    "declared",
                    tuple(e["advisories"]),
                    e["why"],
                )
            )
    return out


def main() -> int:
    root = Path(__file__).resolve().parents[3]
    checks = installed_checks()
    if (root / "pyproject.toml").exists():
        checks += declared_checks(root / "pyproject.toml")
    bad = [c for c in checks if not c.ok]
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.kind:9} {c.package:18} {c.found or '-':>12} >= {c.minimum}")
    for c in bad:
        print(c.message(), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
