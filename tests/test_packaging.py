"""Packaging: the wheel holds every data file, and installs and runs in a clean virtual environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps`` of a copy of the project (the working tree gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "project"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("dicomlake-*.whl")
    return whl


def test_version_is_in_the_changelog() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text("utf-8")
    import dicomlake

    assert dicomlake.__version__ == version


@pytest.mark.slow
def test_wheel_ships_every_package_data_file(wheel: Path) -> None:
    pkg = ROOT / "src" / "dicomlake"
    wanted = {
        "dicomlake/" + p.relative_to(pkg).as_posix()
        for p in pkg.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc",)
    }
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(wanted - names)
    assert not missing, f"not in the wheel (add to [tool.setuptools.package-data]): {missing}"


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_") and k != "PYTHONPATH"}
    env.update({"DICOMLAKE_CONFIG": os.devnull, "COLUMNS": "160"})
    return env


def _pip_install(py: Path, *args: str) -> None:
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=480,
    )
    if proc.returncode != 0 and ("Could not find a version" in proc.stderr or "NewConnectionError" in proc.stderr):
        pytest.skip(f"the package registry is not reachable: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv without system site-packages holding the wheel's core install (dependencies from the
    registry through pip's cache)."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    _pip_install(venv / "bin" / "python", str(wheel))
    return venv


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_core_install_help_runs_without_extras(venv: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(venv / "bin" / "dicomlake"), "--help"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_and_runs_in_a_clean_venv(venv: Path, wheel: Path, tmp_path: Path) -> None:
    py, exe, env = venv / "bin" / "python", venv / "bin" / "dicomlake", _env(tmp_path)
    _pip_install(py, f"{wheel}[write]")
    where = subprocess.run(
        [str(py), "-c", "import dicomlake; print(dicomlake.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert str(venv) in where.stdout, f"imported from outside the venv: {where.stdout}"
    help_ = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert help_.returncode == 0, help_.stderr[-2000:]
    for verb in ("ingest", "query", "serve", "pull", "deid", "audit", "doctor"):
        assert verb in help_.stdout
    doc = subprocess.run(
        [str(exe), "doctor", "--no-ports", "--lake", str(tmp_path / "lake")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert doc.returncode == 0, doc.stdout + doc.stderr
    assert "core packages" in doc.stdout and "optional extras" in doc.stdout
    # the built-in de-identification profiles ship in the wheel
    prof = subprocess.run(
        [str(exe), "deid", "profiles"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert prof.returncode == 0 and "research" in prof.stdout, prof.stdout + prof.stderr
