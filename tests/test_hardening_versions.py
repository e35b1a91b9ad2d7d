"""Dependencies at or above the first releases that fixed their known vulnerabilities.

The table is ``src/dicomlake/data/min_safe_versions.toml``. Checked: every installed package
of the table, and the lower bound pyproject.toml declares for each direct dependency (so a
fresh install can never resolve to a vulnerable release). ``pip-audit`` runs too when a
vulnerability service answers; this machine reaches only the package registries, so its
silence is reported as a skip, never as a pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dicomlake.security.versions import declared_checks, installed_checks, table

REPO = Path(__file__).resolve().parent.parent


def test_table_names_advisories_and_a_reason_for_every_entry() -> None:
    from packaging.version import Version

    assert len(table()) >= 15
    for name, e in table().items():
        Version(e["minimum"])
        assert e["advisories"] and all(a.startswith(("CVE-", "GHSA-")) for a in e["advisories"]), name
        assert e["why"], name
    assert Version(table()["pydicom"]["minimum"]) >= Version("3.0.2")  # the issue names it


def test_installed_packages_are_at_or_above_their_minimum_safe_version() -> None:
    checks = installed_checks()
    assert any(c.package == "pydicom" for c in checks)
    bad = [c.message() for c in checks if not c.ok]
    assert not bad, "\n".join(bad)


def test_pyproject_lower_bounds_exclude_vulnerable_releases() -> None:
    checks = declared_checks(REPO / "pyproject.toml")
    assert {c.package for c in checks} >= {"pydicom", "cryptography", "jinja2", "python-multipart", "pyjwt"}
    bad = [c.message() for c in checks if not c.ok]
    assert not bad, "\n".join(bad)


def test_a_vulnerable_bound_is_reported_with_the_fix(tmp_path: Path) -> None:
    p = tmp_path / "pyproject.toml"
    p.write_text('[project]\nname = "x"\ndependencies = ["pydicom>=2.4", "jinja2"]\n')
    bad = {c.package: c for c in declared_checks(p) if not c.ok}
    assert set(bad) >= {"pydicom", "jinja2"}
    assert "CVE-2026-32711" in bad["pydicom"].message()
    assert "pydicom>=3.0.2" in bad["pydicom"].message()


@pytest.mark.timeout(150)
def test_pip_audit_finds_no_known_vulnerability_where_a_service_answers() -> None:
    exe = shutil.which("pip-audit", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("pip-audit is not installed (test dependency group)")
    try:
        proc = subprocess.run(
            [exe, "--format", "json", "--progress-spinner", "off", "--vulnerability-service", "pypi"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("pip-audit: no vulnerability service answered within 120 s (registries only here)")
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        pytest.skip(f"pip-audit gave no report: {proc.stderr[-300:]}")
    deps = report.get("dependencies", report if isinstance(report, list) else [])
    audited = [d for d in deps if "skip_reason" not in d]
    if not audited:
        pytest.skip(f"pip-audit could audit none of {len(deps)} packages (no vulnerability service reachable)")
    vulnerable = [f"{d['name']} {d['version']}: {[v['id'] for v in d['vulns']]}" for d in audited if d.get("vulns")]
    assert not vulnerable, vulnerable
