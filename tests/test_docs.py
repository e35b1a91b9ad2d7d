"""The docs: every command and setting documented, generated pages current, the Conformance
Statement equal to the listener's tables, the HTML build clean, and every runnable example run."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CORPUS = ROOT / "tests" / "data" / "corpus"


def _load(name: str) -> object:
    spec = importlib.util.spec_from_file_location(name, ROOT / "util" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gen() -> object:
    return _load("gen_docs")


@pytest.fixture(scope="module")
def generated(gen: object) -> dict[Path, str]:
    return gen.outputs()  # type: ignore[attr-defined, no-any-return]


# ---- reference pages --------------------------------------------------------------------------


def test_generated_docs_are_up_to_date(generated: dict[Path, str]) -> None:
    stale = [
        str(p.relative_to(ROOT)) for p, text in generated.items() if not p.exists() or p.read_text("utf-8") != text
    ]
    assert not stale, f"out of date: {stale}; run `python util/gen_docs.py` (or `make docs`) and commit"


def test_every_cli_command_has_help_and_is_documented(gen: object) -> None:
    cli_md = (DOCS / "reference/cli.md").read_text("utf-8")
    missing, no_help = [], []
    for path, cmd in gen.iter_commands():  # type: ignore[attr-defined]
        name = " ".join(["dicomlake", *path])
        if f"\n## {name}\n" not in cli_md:
            missing.append(name)
        if path and not (cmd.help or "").strip():
            no_help.append(name)
    assert not missing, f"commands missing from docs/reference/cli.md: {missing}"
    assert not no_help, f"commands without help text: {no_help}"


def test_every_setting_has_a_description_and_is_documented(gen: object) -> None:
    config_md = (DOCS / "reference/config.md").read_text("utf-8")
    example = (ROOT / "examples/dicomlake.toml").read_text("utf-8")
    undocumented, no_desc, not_in_example = [], [], []
    for key, field, _model in gen.iter_settings():  # type: ignore[attr-defined]
        if f"| `{key}` |" not in config_md:
            undocumented.append(key)
        if not (field.description or "").strip() or "Default:" not in field.description:
            no_desc.append(key)
        if f"#{key.rsplit('.', 1)[-1]} = " not in example:
            not_in_example.append(key)
    assert not undocumented, f"settings missing from docs/reference/config.md: {undocumented}"
    assert not no_desc, f"settings without a description naming the default (STYLE.md §6, §9): {no_desc}"
    assert not not_in_example, f"settings missing from examples/dicomlake.toml: {not_in_example}"


def test_example_config_uncommented_is_valid(gen: object) -> None:
    """Every key of the example, uncommented, parses and validates against its settings model."""
    from dicomlake.config import Settings

    text = (ROOT / "examples/dicomlake.toml").read_text("utf-8")
    lines = []
    for line in text.splitlines():
        if re.match(r"^# \[[\w.]+\]$", line):
            lines.append(line[2:])
        elif re.match(r"^#\w+ = ", line):
            lines.append(line[1:])
    doc = tomllib.loads("\n".join(lines))
    models = {section: model for section, _how, model in gen.setting_sections()}  # type: ignore[attr-defined]
    main = {k: v for k, v in doc.items() if k not in models or k == ""}
    main = {k: v for k, v in main.items() if v != ""}
    Settings.model_validate(_drop_empty(main))
    for section, model in models.items():
        if section:
            model.model_validate(_drop_empty(doc.get(section, {})))


def _drop_empty(d: dict) -> dict:
    return {k: (_drop_empty(v) if isinstance(v, dict) else v) for k, v in d.items() if v != ""}


def test_every_lake_column_has_a_meaning(gen: object) -> None:
    lake_md = (DOCS / "reference/lake.md").read_text("utf-8")
    blank = re.findall(r"^\| `(\w+)` \| [A-Z]+[^|]* \|  \|$", lake_md, re.M)
    assert not blank, f"lake columns without a meaning (add them to COLUMN_NOTES in util/gen_docs.py): {blank}"


# ---- the Conformance Statement -----------------------------------------------------------------


def _section(text: str, name: str) -> str:
    m = re.search(rf"<!-- begin: {name} -->(.*?)<!-- end: {name} -->", text, re.S)
    assert m, f"section {name} missing from docs/conformance.md"
    return m.group(1)


def _uids(block: str) -> set[str]:
    return set(re.findall(r"`([0-9.]+)`", block))


def test_conformance_lists_exactly_the_storage_sop_classes_the_listener_accepts() -> None:
    from dicomlake.ingest import listener

    text = (DOCS / "conformance.md").read_text("utf-8")
    assert _uids(_section(text, "storage-sop-classes")) == set(listener.storage_sop_classes())
    assert listener.VERIFICATION in text


def test_conformance_lists_exactly_the_transfer_syntaxes_the_listener_accepts() -> None:
    from dicomlake.ingest import listener

    text = (DOCS / "conformance.md").read_text("utf-8")
    assert _uids(_section(text, "transfer-syntaxes")) == set(listener.transfer_syntaxes())


def test_conformance_lists_the_query_retrieve_scu_classes_pull_requests() -> None:
    from pynetdicom import sop_class

    from dicomlake.ingest import qr

    text = (DOCS / "conformance.md").read_text("utf-8")
    src = Path(qr.__file__).read_text("utf-8")
    used = set(re.findall(r"\b(StudyRootQueryRetrieveInformationModel(?:Find|Move|Get))\b", src))
    assert used, "qr.py no longer names its Q/R SOP classes; update the generator"
    assert _uids(_section(text, "scu-sop-classes")) >= {str(getattr(sop_class, n)) for n in used}


def test_conformance_lists_every_dicomweb_route_and_profile() -> None:
    from dicomlake.deid.profile import builtin_profiles
    from dicomlake.web.dicomweb import CONTROL_PARAMS, router

    text = (DOCS / "conformance.md").read_text("utf-8")
    routes = _section(text, "dicomweb-routes")
    for r in router.routes:
        assert f"`{r.path}`" in routes, r.path  # type: ignore[attr-defined]
    for p in CONTROL_PARAMS:
        assert f"| `{p}` | yes |" in text
    profiles = _section(text, "deid-profiles")
    for p in builtin_profiles():
        assert f"| `{p.name}` |" in profiles


# ---- the HTML build -----------------------------------------------------------------------------


def test_docs_build_offline_without_broken_links(tmp_path: Path) -> None:
    builder = _load("build_docs")
    broken = builder.build(tmp_path / "site")  # type: ignore[attr-defined]
    assert not broken, broken
    assert (tmp_path / "site/conformance.html").exists()
    assert (tmp_path / "site/howto/mg-dose-audit.html").exists()


# ---- runnable examples --------------------------------------------------------------------------

FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.M | re.S)


def _blocks(page: Path) -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(page.read_text("utf-8"))]


def test_every_shell_example_is_marked_run_or_not_run_with_a_reason() -> None:
    unmarked = []
    for page in sorted(DOCS.rglob("*.md")):
        for lang, info, body in _blocks(page):
            if lang != "sh":
                continue
            if info == "run":
                continue
            if info.startswith("no-run:") and len(info) > len("no-run:") + 5:
                continue
            unmarked.append(f"{page.relative_to(ROOT)}: {body.splitlines()[0]}")
    assert not unmarked, f"```sh blocks need `run` or `no-run: reason`: {unmarked}"


def _workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder like a new user's checkout: images/ with pydicom's samples, tests/data/corpus."""
    from dicomlake.samples import pydicom_test_files

    work = tmp_path / "work"
    (work / "images").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "test-SR.dcm"):
        shutil.copy(pydicom_test_files() / name, work / "images" / name)
    (work / "tests" / "data").mkdir(parents=True)
    (work / "tests" / "data" / "corpus").symlink_to(CORPUS)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for prog, target in (("dicomlake", f'"{sys.executable}" -m dicomlake.cli.main'), ("python", f'"{sys.executable}"')):
        script = bindir / prog
        script.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_")}
    env.update({"PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}", "DICOMLAKE_CONFIG": os.devnull, "COLUMNS": "120"})
    return work, env


RUN_PAGES = sorted(
    p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if any(i == "run" for _l, i, _b in _blocks(p))
)


@pytest.mark.parametrize("page", RUN_PAGES)
def test_docs_examples_run(page: str, tmp_path: Path) -> None:
    """Each page's `run` blocks in order in one fresh folder; `expect=FILE` blocks must equal FILE."""
    work, env = _workspace(tmp_path)
    for lang, info, body in _blocks(DOCS / page):
        if lang == "sh" and info == "run":
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", body], cwd=work, env=env, capture_output=True, text=True, timeout=120
            )
            assert proc.returncode == 0, (
                f"{page}: example failed:\n{body}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        elif "expect=" in info:
            name = info.split("expect=", 1)[1].split()[0]
            got = (work / name).read_text("utf-8")
            assert got.strip() == body.strip(), (
                f"{page}: the numbers quoted for {name} are not what the audit gives:\n{got}"
            )


def test_mg_dose_audit_quotes_its_exposure_count(tmp_path: Path) -> None:
    """The how-to's prose numbers match what the audit computes."""
    import csv

    from dicomlake.audit import Selection, load_settings, run_audit, write_report
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.query.lake import Lake

    files = sorted((CORPUS / "openrem").glob("MG-*"))
    ingest_paths(files, tmp_path / "lake", workers=1, progress=False)
    with Lake.open(tmp_path / "lake", read_only=True) as lk:
        result = run_audit("mg-dose", lk, Selection(None, None, []), load_settings(None))
    paths = write_report(result, tmp_path / "mg.html")
    text = (DOCS / "howto/mg-dose-audit.md").read_text("utf-8")
    exposures = next(p for p in paths["csv"] if p.name == "mg-exposures.csv")
    n = sum(1 for _ in csv.DictReader(exposures.open(encoding="utf-8")))
    assert f"`{n} mammography exposures in lake`" in text
    assert "seven mammography files" in text and len(files) == 7
    drl = {r["view"]: r for r in csv.DictReader((tmp_path / "mg-drl.csv").open(encoding="utf-8"))
           if r.get("mode", "2D") == "2D"}  # fmt: skip
    cc = float(drl["CC"]["local_drl_mGy"])
    assert f"local CC DRL is {cc:g} mGy, {round(100 * cc / float(drl['CC']['national_drl_mGy']))} %" in text
