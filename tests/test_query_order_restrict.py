"""Query results are ordered the same on every engine and say when a limit cut them; the
analyst's row restriction is compiled into the query (never spliced in as text) and fails closed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from typer.testing import CliRunner

from dicomlake.cli.main import app
from dicomlake.errors import QueryError
from dicomlake.query.lake import Lake


@pytest.fixture(scope="module")
def files() -> list[Path]:
    from dicomlake.samples import repo_corpus

    corpus = repo_corpus()
    assert corpus is not None
    return sorted((corpus / "openrem").glob("*.dcm"))[:24]


@pytest.fixture(scope="module")
def lakes(files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from dicomlake.ingest.pipeline import ingest_paths

    root = tmp_path_factory.mktemp("order")
    ingest_paths(files, root / "duck", workers=1)
    with Lake.open(root / "duck", read_only=True) as lk:
        lk.export(root / "parquet", "lake")
    return {"duckdb": root / "duck", "parquet": root / "parquet"}


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Any]:
    from tests.integration.pg import start_or_skip

    cluster = start_or_skip()
    try:
        yield cluster
    finally:
        cluster.stop()


def en_us_database(cluster: Any, name: str) -> str:
    """A database whose collation is not byte order (en_US ignores punctuation first)."""
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name} TEMPLATE template0 LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8'")
    return str(cluster.url(name))


@pytest.fixture(scope="module")
def pg_url(lakes: dict[str, Path], pg_cluster: Any) -> str:
    """The same rows in a real PostgreSQL server."""
    from dicomlake.store.open import open_store
    from dicomlake.store.transfer import copy_lake

    url = en_us_database(pg_cluster, "ordered")
    src, dest = open_store(lakes["duckdb"], read_only=True), open_store(url)
    try:
        copy_lake(src, dest)
    finally:
        src.close()
        dest.close()
    return url


def test_uids_sort_byte_wise_on_postgres_whatever_its_collation(pg_cluster: Any, tmp_path: Path) -> None:
    import pyarrow as pa

    from dicomlake.store.duckdb import DuckDBStore
    from dicomlake.store.open import open_store

    uids = ["1.2.21", "1.2.2.10", "1.2.2.9"]  # byte order: 1.2.2.10 < 1.2.2.9 < 1.2.21
    rows = pa.table({"SOPInstanceUID": uids, "StudyInstanceUID": ["1.9"] * 3, "Modality": ["OT"] * 3})
    url = en_us_database(pg_cluster, "bytewise")
    for location in (url, tmp_path / "duck"):
        st = open_store(location) if location == url else DuckDBStore(location)
        with st:
            st.write_batch({"instances": rows}, [])
        with Lake.open(location, read_only=True) as lk:
            got = lk.query_arrow([], ["SOPInstanceUID"], "instance").column("SOPInstanceUID").to_pylist()
        assert got == sorted(uids, key=str.encode), location


def oracle_order(files: list[Path]) -> list[str]:
    """SOP Instance UIDs in the documented default order, read by pydicom (None/absent last)."""
    rows = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        sop = str(ds.SOPInstanceUID)

        def val(kw: str, ds: Any = ds) -> Any:
            v = ds.get(kw)
            return None if v is None or v == "" else v

        date = val("StudyDate")
        rows[sop] = (
            (date is None, str(date) if date else ""),
            (val("StudyInstanceUID") is None, str(val("StudyInstanceUID") or "")),
            (val("SeriesNumber") is None, int(val("SeriesNumber") or 0)),
            (val("InstanceNumber") is None, int(val("InstanceNumber") or 0)),
            sop,
        )
    return sorted(rows, key=lambda s: rows[s])


@pytest.mark.parametrize("engine", ["duckdb", "parquet", "postgres"])
def test_instance_rows_come_in_the_documented_order_on_every_engine(
    lakes: dict[str, Path], files: list[Path], engine: str, request: pytest.FixtureRequest
) -> None:
    want = oracle_order(files)
    location = request.getfixturevalue("pg_url") if engine == "postgres" else lakes[engine]
    with Lake.open(location, read_only=True) as lk:
        got = lk.query_arrow([], ["SOPInstanceUID"], "instance").column("SOPInstanceUID").to_pylist()
        first3 = lk.query_arrow([], ["SOPInstanceUID"], "instance", limit=3).column("SOPInstanceUID").to_pylist()
    assert got == want
    assert first3 == want[:3]
    # a filter on an attribute without a typed column: page and count come from one statement that
    # joins back only the matches up to the page's last first-key value (Lake._page_with_total)
    element = ["(0002,0012) = *"]  # ImplementationClassUID, in the file meta
    metas = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in files}
    having = [f for f, ds in metas.items() if str(ds.file_meta.get("ImplementationClassUID") or "")]
    assert len(having) > 3
    by_default = oracle_order(having)
    dates = {str(ds.SOPInstanceUID): str(ds.get("StudyDate") or "") for ds in metas.values()}
    newest_first = sorted(by_default, key=lambda s: (dates[s] == "", -int(dates[s] or 0)))  # stable: ties keep it
    with Lake.open(location, read_only=True) as lk:
        for order_by, oracle in ((None, by_default), ("-StudyDate", newest_first)):
            for k in (1, 2, 5, len(having) - 1, len(having)):
                page = lk.query_arrow(element, ["SOPInstanceUID"], "instance", limit=k, order_by=order_by)
                assert page.column("SOPInstanceUID").to_pylist() == oracle[:k], (order_by, k)
                total = (page.schema.metadata or {}).get(b"dicomlake.total")
                assert total == (str(len(having)).encode() if k < len(having) else None), (order_by, k)


def test_limit_and_cap_say_when_they_cut(lakes: dict[str, Path], files: list[Path], monkeypatch: Any) -> None:
    from dicomlake.config import reset_settings_cache

    n = len({str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files})
    r = CliRunner().invoke(
        app, ["query", "--lake", str(lakes["duckdb"]), "--limit", "3", "--format", "csv", "-s", "SOPInstanceUID"]
    )
    assert r.exit_code == 0, r.output
    assert f"showing 3 of {n:,} instance rows" in r.stderr
    assert len(r.stdout.strip().splitlines()) == 4
    r = CliRunner().invoke(app, ["query", "--lake", str(lakes["parquet"]), "--limit", str(n), "--format", "csv"])
    assert r.exit_code == 0 and "showing" not in r.stderr
    monkeypatch.setenv("DICOMLAKE_QUERY__MAX_ROWS", "5")
    reset_settings_cache()
    try:
        r = CliRunner().invoke(app, ["query", "--lake", str(lakes["duckdb"]), "--format", "csv"])
    finally:
        monkeypatch.delenv("DICOMLAKE_QUERY__MAX_ROWS")
        reset_settings_cache()
    assert r.exit_code == 0
    assert f"showing 5 of {n:,} instance rows (the query.max_rows cap)" in r.stderr


# ---- the analyst's row restriction -----------------------------------------------------------


def test_restriction_is_part_of_the_compiled_query_and_fails_closed(lakes: dict[str, Path]) -> None:
    from dicomlake.query import lake as lakemod

    with Lake.open(lakes["duckdb"], read_only=True) as lk:
        for level in ("instance", "series", "study", "patient"):
            sql, _, _ = lk.build_query(["Modality = MG"], None, level, 5, restrict="i.\"Modality\" <> 'MG'")
            assert "(i.\"Modality\" <> 'MG') AND" in sql
            t = lk.query_arrow(["Modality = MG"], None, level, restrict="i.\"Modality\" <> 'MG'")
            assert t.num_rows == 0
            # a restricted view is not ordered by what it hides (dates, UIDs that embed a time)
            order = sql.split(" ORDER BY ", 1)[1]
            assert "StudyDate" not in order and 'i."StudyInstanceUID" COLLATE' not in order
        with pytest.raises(QueryError, match="restriction"):
            lk.build_query([], None, "instance", restrict="  ")
    with pytest.raises(QueryError, match="refusing"):
        lakemod._assert_restricted("SELECT * FROM instances i WHERE TRUE", "i.x = 1")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from fastapi.testclient import TestClient

    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.web.app import create_app
    from tests import web_support as ws

    root = tmp_path_factory.mktemp("restrict")
    uids = ws.planted_files(root / "in")
    ingest_paths([root / "in"], root / "lake", workers=1)
    ws.make_users(root / "lake")
    webapp = create_app(root / "lake", ws.settings())
    with TestClient(webapp) as c:
        yield {"app": webapp, "client": c, "uids": uids}


@pytest.mark.parametrize("level", ["instance", "series", "study"])
@pytest.mark.parametrize("extra", ["", "&_sort=-Modality", "&_offset=1", "&_sort=SeriesNumber&_offset=1"])
def test_analyst_never_sees_restricted_rows_in_search(world: dict[str, Any], level: str, extra: str) -> None:
    from tests import web_support as ws

    c, webapp, uids = world["client"], world["app"], world["uids"]
    burned = uids["burned"]
    pseudo = webapp.state.ctx.view.pseudo_uid(burned)
    burned_series = burned.rsplit(".", 1)[0]
    url = f"/studies?_level={level}&_limit=50{extra}"
    r = c.get(url, headers=ws.bearer(webapp, "ann"))
    assert r.status_code == 200, r.text[:300]
    for s in (burned, pseudo, burned_series, webapp.state.ctx.view.pseudo_uid(burned_series), "scanned request form"):
        assert s not in r.text
    if level == "instance" and "_offset" not in extra:  # positive control: an admin sees it
        assert burned in c.get(url, headers=ws.bearer(webapp, "ada")).text
