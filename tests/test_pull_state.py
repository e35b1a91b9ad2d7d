"""The pull state behind the Store (issue 16): ``pull_runs`` / ``pull_studies`` written through
``store.pull_state()`` and read back with the engine itself (DuckDB here; PostgreSQL in
tests/integration/test_postgres_lake.py), a Parquet lake and a service-held lake refusing in
one line, and ``DuckDBStore(threads=…)`` instead of ``SET threads`` on its connection."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dicomlake.errors import ConfigError
from dicomlake.store.base import Store

T0 = dt.datetime(2026, 1, 2, 3, 4, 5)
STUDIES = [
    {"StudyInstanceUID": "1.2.3", "PatientID": "P1", "StudyDate": "20240102", "NumberOfStudyRelatedInstances": "7"},
    {"StudyInstanceUID": "1.2.4", "PatientID": "P2", "StudyDate": "20230101", "NumberOfStudyRelatedInstances": ""},
]


def exercise_pull_state(store: Store, rows: Callable[[str], list[tuple[Any, ...]]]) -> None:
    """Write a run through the store; ``rows(sql)`` reads the tables with the engine itself."""
    ps = store.pull_state()
    ps.start_run("r1", "PACS@h:104", "move", '{"Modality": "CT"}', T0)
    ps.add_studies("r1", STUDIES, T0)
    ps.add_studies("r1", STUDIES[:1], T0)  # found again: kept as it is
    ps.update_study("r1", "1.2.3", "failed", T0, status="0xA701", reason="out of resources", completed=2)
    ps.finish_run("r1", "partial", 2, 5, 1, T0 + dt.timedelta(minutes=1))
    assert rows("SELECT run_id, pacs, method, query, status, studies, received, failed FROM pull_runs") == [
        ("r1", "PACS@h:104", "move", '{"Modality": "CT"}', "partial", 2, 5, 1)
    ]
    assert rows(
        'SELECT "StudyInstanceUID", "PatientID", "NumberOfStudyRelatedInstances", state, status, reason, completed '
        'FROM pull_studies ORDER BY "StudyInstanceUID"'
    ) == [
        ("1.2.3", "P1", 7, "failed", "0xA701", "out of resources", 2),
        ("1.2.4", "P2", None, "found", None, None, None),
    ]
    # what --resume reads: the last run of the same pull, its studies by date
    assert ps.last_run("PACS@h:104", "move", '{"Modality": "CT"}') == "r1"
    assert ps.last_run("PACS@h:104", "get", '{"Modality": "CT"}') is None
    assert [(s["StudyInstanceUID"], s["state"]) for s in ps.studies("r1")] == [("1.2.4", "found"), ("1.2.3", "failed")]
    ps.resume_run("r1")
    assert rows("SELECT status FROM pull_runs") == [("running",)]
    ps.start_run("r1", "PACS@h:104", "move", '{"Modality": "CT"}', T0)  # started afresh under its id
    assert rows("SELECT status, finished_at, received FROM pull_runs") == [("running", None, None)]
    assert ps.received_counts("r1") == {}  # the lake holds none of the studies
    with pytest.raises(ValueError, match="no column"):
        ps.update_study("r1", "1.2.3", "failed", T0, **{"state = 'x' --": 1})


def test_pull_state_on_a_duckdb_lake(tmp_path: Path) -> None:
    from dicomlake.store.duckdb import DB_NAME, DuckDBStore

    with DuckDBStore(tmp_path) as store:
        exercise_pull_state(store, lambda sql: store.con.cursor().execute(sql).fetchall())
    with duckdb.connect(str(tmp_path / DB_NAME), read_only=True) as con:  # what the file holds
        assert con.execute("SELECT count(*) FROM pull_studies").fetchall() == [(2,)]
        keys = con.execute(
            "SELECT constraint_column_names FROM duckdb_constraints() "
            "WHERE table_name = 'pull_studies' AND constraint_type = 'PRIMARY KEY'"
        ).fetchall()
        assert keys == [(["run_id", "StudyInstanceUID"],)]


def test_engines_without_pull_state_say_so_in_one_line(tmp_path: Path) -> None:
    from dicomlake.store.duckdb import DuckDBStore
    from dicomlake.store.parquet import ParquetLakeWriter, ParquetStore

    ParquetLakeWriter(tmp_path / "pq").write_marker()
    with (
        ParquetStore(tmp_path / "pq") as pq,
        pytest.raises(ConfigError, match="Parquet lake, which keeps no pull state"),
    ):
        pq.pull_state()
    from dicomlake.store.remote import RemoteStore, ServiceInfo

    info = ServiceInfo(pid=1, control_url="http://127.0.0.1:9", ae_title="DL", port=11112, started_at="", token="t")
    with RemoteStore(tmp_path, info) as held, pytest.raises(ConfigError, match="held by a running dicomlake service"):
        held.pull_state()
    DuckDBStore(tmp_path / "d").close()
    with DuckDBStore(tmp_path / "d", read_only=True) as ro, pytest.raises(ConfigError, match="read-only"):
        ro.pull_state()


def test_duckdb_store_threads_option(tmp_path: Path) -> None:
    from dicomlake.store.duckdb import DuckDBStore

    with DuckDBStore(tmp_path, threads=1) as store:
        assert store.con.execute("SELECT current_setting('threads')").fetchall() == [(1,)]


def test_a_parquet_lake_refuses_to_record_a_run(tmp_path: Path) -> None:
    """record_run returned silently on a Parquet lake, as if the run had been recorded."""
    from dicomlake.store.parquet import ParquetLakeWriter, ParquetStore

    ParquetLakeWriter(tmp_path / "pq").write_marker()
    with ParquetStore(tmp_path / "pq") as pq, pytest.raises(ConfigError, match="is a Parquet lake"):
        pq.record_run({"run_id": "r1", "status": "ok"})
