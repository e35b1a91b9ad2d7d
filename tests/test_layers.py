"""The import contract of the layers (DESIGN: "a package imports its own modules and
packages of lower layers; packages of one layer stay independent of each other").

Every ``import dicomlake.…`` in ``src/`` — at module level or inside a function, since a
lazy import is still a dependency — is read with :mod:`ast` and checked against the
layers below. The imports that break the contract today are listed in ``KNOWN`` with the
reason and the issue that removes them; a new one fails this test, and so does an entry of
``KNOWN`` that no longer occurs (the list only shrinks).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dicomlake"

#: layer of each top-level module or package of ``dicomlake`` (1 = faces, highest)
LAYERS: dict[str, int] = {
    # 1. faces
    "cli": 1,
    "web": 1,
    "demo": 1,
    # 2.
    "ingest": 2,
    "audit": 2,
    # 3.
    "query": 3,
    "write": 3,
    # 4.
    "deid": 4,
    "curate": 4,
    "extract": 4,
    "store": 4,
    # 5. the bottom: the DICOM reader, settings, errors, security checks, data files
    "dicom": 5,
    "config": 5,
    "security": 5,
    "samples": 5,
    "events": 5,  # the lake-level rule: each irradiation event once per study
    "_standard": 5,
    "data": 5,
    "lakeschema": 5,  # the lake's tables and column types: below extract/ and store/ (issue 16)
    # below everything: the exception types every layer raises
    "errors": 6,
}

#: (importing, imported) top-level modules of one layer where the first sits above the second
#: by design, not a breach: the lake schema types its columns from the DICOM dictionary (PS3.6).
ABOVE_IN_LAYER: set[tuple[str, str]] = {("lakeschema", "dicom")}

#: (importing module, imported module) pairs that break the contract today, with why.
KNOWN: dict[tuple[str, str], str] = {
    # The service process is the "service wiring that starts listener + web together", a face
    # by DESIGN; it lives in ingest/ for history.
    ("dicomlake.ingest.service", "dicomlake.web.internal"): "service wiring is a face",
    ("dicomlake.ingest.service", "dicomlake.web.settings"): "service wiring is a face",
    ("dicomlake.ingest.service", "dicomlake.web.app"): "service wiring is a face",
    # The settings root composes every package's settings model (pydantic-settings); the
    # models belong to their packages.
    ("dicomlake.config", "dicomlake.deid.settings"): "settings root composes package settings",
    ("dicomlake.config", "dicomlake.ingest.settings"): "settings root composes package settings",
    ("dicomlake.config", "dicomlake.web.settings"): "settings root composes package settings",
    # cli and web are both faces: the user/token commands and doctor use web's settings,
    # auth and access log (issue 16 moves users/sessions/access log behind the Store).
    ("dicomlake.cli.doctor", "dicomlake.web.settings"): "issue 16",
    ("dicomlake.cli.serve", "dicomlake.web.settings"): "issue 16",
    ("dicomlake.cli.user", "dicomlake.web.auth"): "issue 16",
    ("dicomlake.cli.user", "dicomlake.web.settings"): "issue 16",
    ("dicomlake.demo", "dicomlake.cli.output"): "the demo prints tables as the CLI does",
    # The worklist-identity curation check asks the Modality Worklist through the DICOM
    # network client that wrap uses (issue 22); that client belongs a layer below curate/.
    ("dicomlake.curate.worklist", "dicomlake.write.send"): "issue 22: MWL client moves down",
    ("dicomlake.curate.worklist", "dicomlake.write.worklist"): "issue 22: MWL client moves down",
    # Secondary-capture analysis and pixel redaction share OCR and writers (issue 21).
    ("dicomlake.deid.pixels", "dicomlake.extract.ocr"): "issue 21: OCR moves down a layer",
    ("dicomlake.deid.pixels", "dicomlake.extract.sc_class"): "issue 21",
    ("dicomlake.deid.pixels", "dicomlake.write._common"): "issue 21",
    ("dicomlake.deid.pixels", "dicomlake.write.derive"): "issue 21",
    ("dicomlake.extract.sc", "dicomlake.deid.pixels"): "issue 21",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["dicomlake", *parts])


def _imports(path: Path) -> set[str]:
    """Every dicomlake module ``path`` imports, relative imports resolved."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            # ``from dicomlake.x import y`` imports the module x.y when y is one, else x
            for alias in node.names:
                sub = f"{name}.{alias.name}"
                rel = Path(*sub.split(".")[1:])
                is_module = (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()
                out.add(sub if is_module else name)
    return {n for n in out if n.startswith("dicomlake.")}  # the package root (__version__) is no layer


def _top(module: str) -> str:
    return module.split(".")[1]


def contract_breaches(src: Path = SRC) -> set[tuple[str, str]]:
    breaches = set()
    for path in sorted(src.rglob("*.py")):
        mod = _module_name(path)
        if mod == "dicomlake":  # the package's public face re-exports from every layer
            continue
        own = _top(mod)
        for target in _imports(path):
            other = _top(target)
            if other == own:
                continue
            assert own in LAYERS and other in LAYERS, f"{mod} -> {target}: give both a layer in LAYERS"
            if LAYERS[other] <= LAYERS[own] and (own, other) not in ABOVE_IN_LAYER:
                breaches.add((mod, target))
    return breaches


def test_every_package_has_a_layer() -> None:
    tops = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.name != "__init__.py" and not p.name.startswith(".")}
    tops.discard("__pycache__")
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"


def test_no_lower_layer_imports_a_higher_one() -> None:
    new = contract_breaches() - set(KNOWN)
    assert not new, "imports that break the layer contract (a lower or same-layer package):\n" + "\n".join(
        f"  {a} -> {b}" for a, b in sorted(new)
    )


def test_known_breaches_are_still_real() -> None:
    """An exception that was fixed is taken off the list, so the list only shrinks."""
    stale = set(KNOWN) - contract_breaches()
    assert not stale, f"remove from KNOWN (no longer imported): {sorted(stale)}"


#: SQL statements in a string literal (keywords as the project writes them, upper case)
_SQL = re.compile(
    r"\bSELECT\s+[\w\"*(]|\bINSERT\s+(OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\S+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\bFROM\b.*\bWHERE\b|\bCREATE\s+(TABLE|INDEX|VIEW)\b|\bPRAGMA\b"
)


def sql_and_connections(package: Path) -> list[str]:
    """``file:line`` of each SQL string literal (docstrings aside) and each ``.con`` use under ``package``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        where = path.relative_to(package.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if _SQL.search(node.value):
                    found.append(f"{where}:{node.lineno}: SQL {node.value[:60]!r}")
            elif isinstance(node, ast.Attribute) and node.attr == "con":
                found.append(f"{where}:{node.lineno}: .con (an engine connection)")
    return found


def test_web_holds_no_sql_and_no_connection() -> None:
    """DESIGN: "web/ holds no SQL of its own"; the Store is the only door to the lake. The
    queries are in dicomlake.query (qido, dashboards), the access database in store/accounts."""
    found = sql_and_connections(SRC / "web")
    assert not found, "SQL or an engine connection in web/ (move it to query/ or store/):\n" + "\n".join(found)


#: modules outside store/ that still use an engine connection (``.con``), with why; the list
#: only shrinks (an entry that no longer uses one fails test_no_engine_connection_outside_store)
KNOWN_CON: dict[str, str] = {}  # empty: every module outside store/ uses Store methods (issue 16)


def connections_outside_store(src: Path) -> dict[str, list[int]]:
    """Lines of each ``.con`` attribute use (an engine connection) per module outside ``store/``."""
    found: dict[str, list[int]] = {}
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if rel.parts[0] == "store":
            continue
        tree = ast.parse(path.read_text("utf-8"))
        lines = sorted(n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "con")
        if lines:
            found[rel.as_posix()] = lines
    return found


def test_no_engine_connection_outside_store() -> None:
    """DESIGN: "The Store is the only door to the lake": no ``.con`` outside store/."""
    found = connections_outside_store(SRC)
    new = [f"{m}:{n}" for m, lines in found.items() if m not in KNOWN_CON for n in lines]
    assert not new, "an engine connection (.con) outside store/ (use a Store method):\n" + "\n".join(new)
    stale = sorted(set(KNOWN_CON) - set(found))
    assert not stale, f"remove from KNOWN_CON (no longer uses .con): {stale}"


def test_the_connection_check_catches_a_con(tmp_path: Path) -> None:
    for folder, text in (("ingest", "def f(s):\n    s.store.con.execute('SET threads = 1')\n"), ("store", "X = 1\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text(text, "utf-8")
    (tmp_path / "store" / "b.py").write_text("def g(s):\n    return s.con\n", "utf-8")
    assert connections_outside_store(tmp_path) == {"ingest/a.py": [2]}


def test_the_sql_check_catches_sql_and_connections(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "a.py").write_text(
        '"""SELECT x FROM t WHERE y: a docstring is prose."""\n'
        'HELP = "SELECT, WITH, FROM, DESCRIBE"\n'
        "def f(store, k):\n"
        '    return store.query(f"SELECT n FROM instances i WHERE i.k = {k}")\n'
        "def g(store):\n"
        "    return store.con.cursor()\n",
        "utf-8",
    )
    assert [x.split(": ")[0] for x in sql_and_connections(web)] == ["web/a.py:4", "web/a.py:6"]


def test_the_check_catches_a_breach(tmp_path: Path) -> None:
    """The checker itself: a store module importing the web layer is a breach."""
    pkg = tmp_path / "dicomlake"
    (pkg / "store").mkdir(parents=True)
    (pkg / "web").mkdir()
    (pkg / "store" / "x.py").write_text("def f():\n    from dicomlake.web import app\n", "utf-8")
    (pkg / "web" / "app.py").write_text("from ..store import x\n", "utf-8")
    global SRC
    saved, SRC = SRC, pkg
    try:
        assert contract_breaches(pkg) == {("dicomlake.store.x", "dicomlake.web.app")}
    finally:
        SRC = saved
