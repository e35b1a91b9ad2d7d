"""The pull state in the lake: ``pull_runs`` and ``pull_studies`` (``dicomlake pull``, ``--resume``).

One class serves every engine that can hold it (DuckDB, PostgreSQL): the statements are
written once in SQL both accept (``ON CONFLICT``, quoted identifiers) and run through an
``execute(sql, params) -> rows`` function the store hands in, with ``?`` placeholders
(PostgreSQL's ``%s`` are put in by the store). The tables and their keys are declared in
:data:`dicomlake.lakeschema.PULL_SCHEMAS`; a DuckDB lake creates them when it opens, a
PostgreSQL lake in migration 4 (:mod:`dicomlake.store.migrations`). A Parquet lake and a lake
held by a running service cannot keep pull state: their ``pull_state()`` says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from dicomlake.lakeschema import PULL_SCHEMAS

Execute = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""Runs one statement with ``?`` placeholders; the rows it returns (none for a write)."""

_STUDY_COLUMNS = PULL_SCHEMAS["pull_studies"][0].names
_RUN_COLUMNS = PULL_SCHEMAS["pull_runs"][0].names


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def pull_state_ddl(type_of: Callable[[pa.DataType], str]) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` of each pull-state table, with its primary key."""
    out = []
    for name, (schema, key) in PULL_SCHEMAS.items():
        cols = ", ".join(f"{_q(f.name)} {type_of(f.type)}" for f in schema)
        out.append(f"CREATE TABLE IF NOT EXISTS {_q(name)} ({cols}, PRIMARY KEY ({', '.join(_q(k) for k in key)}))")
    return out


class PullStateTables:
    """Reads and writes of the pull state, on one store's engine.

    Parameters
    ----------
    execute
        Runs one statement (``?`` placeholders) and returns its rows.
    """

    def __init__(self, execute: Execute) -> None:
        self._x = execute

    def last_run(self, pacs: str, method: str, query: str) -> str | None:
        """The latest run of the same pull (PACS, method and query), for ``--resume``."""
        rows = self._x(
            "SELECT run_id FROM pull_runs WHERE pacs = ? AND method = ? AND query = ? ORDER BY started_at DESC LIMIT 1",
            [pacs, method, query],
        )
        return str(rows[0][0]) if rows else None

    def start_run(self, run_id: str, pacs: str, method: str, query: str, started_at: dt.datetime) -> None:
        """Record a run as running (a run started again under its id starts afresh)."""
        self._x(
            "INSERT INTO pull_runs (run_id, pacs, method, query, started_at, status) VALUES (?, ?, ?, ?, ?, 'running') "
            "ON CONFLICT (run_id) DO UPDATE SET pacs = EXCLUDED.pacs, method = EXCLUDED.method, "
            "query = EXCLUDED.query, started_at = EXCLUDED.started_at, status = EXCLUDED.status, "
            "finished_at = NULL, studies = NULL, received = NULL, failed = NULL",
            [run_id, pacs, method, query, started_at],
        )

    def finish_run(
        self, run_id: str, status: str, studies: int, received: int, failed: int, finished_at: dt.datetime
    ) -> None:
        self._x(
            "UPDATE pull_runs SET finished_at = ?, status = ?, studies = ?, received = ?, failed = ? WHERE run_id = ?",
            [finished_at, status, studies, received, failed, run_id],
        )

    def resume_run(self, run_id: str) -> None:
        """Mark an earlier run as running again (``--resume``)."""
        self._x("UPDATE pull_runs SET status = 'running' WHERE run_id = ?", [run_id])

    def add_studies(self, run_id: str, studies: Sequence[Mapping[str, Any]], at: dt.datetime) -> None:
        """Record studies a query found (state ``found``); a study the run already holds is kept as it is."""
        for s in studies:
            n = s.get("NumberOfStudyRelatedInstances")
            self._x(
                'INSERT INTO pull_studies (run_id, "StudyInstanceUID", "PatientID", "StudyDate", '
                '"ModalitiesInStudy", "NumberOfStudyRelatedInstances", state, updated_at) '
                "VALUES (?, ?, ?, ?, ?, ?, 'found', ?) ON CONFLICT DO NOTHING",
                [
                    run_id,
                    s["StudyInstanceUID"],
                    s.get("PatientID"),
                    s.get("StudyDate"),
                    s.get("ModalitiesInStudy"),
                    int(n) if n not in (None, "") else None,
                    at,
                ],
            )

    def studies(self, run_id: str) -> list[dict[str, Any]]:
        """The run's studies with their state, by date and UID."""
        cols = ["StudyInstanceUID", "PatientID", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]
        rows = self._x(
            f"SELECT {', '.join(_q(c) for c in cols)}, state FROM pull_studies WHERE run_id = ? "
            'ORDER BY "StudyDate", "StudyInstanceUID"',
            [run_id],
        )
        return [dict(zip([*cols, "state"], r, strict=True)) for r in rows]

    def received_counts(self, run_id: str) -> dict[str, int]:
        """Instances the lake holds of each of the run's studies (the ones it holds any of)."""
        rows = self._x(
            'SELECT i."StudyInstanceUID", count(*) FROM instances i JOIN pull_studies p '
            'ON p."StudyInstanceUID" = i."StudyInstanceUID" AND p.run_id = ? GROUP BY i."StudyInstanceUID"',
            [run_id],
        )
        return {str(r[0]): int(str(r[1])) for r in rows}

    def update_study(self, run_id: str, uid: str, state: str, at: dt.datetime, **values: Any) -> None:
        """Set a study's state and any other of its columns (``status``, ``reason``, counts)."""
        unknown = [k for k in values if k not in _STUDY_COLUMNS]
        if unknown:
            raise ValueError(f"pull_studies has no column {', '.join(unknown)}")
        sets = ["state = ?", "updated_at = ?"] + [f"{_q(k)} = ?" for k in values]
        self._x(
            f'UPDATE pull_studies SET {", ".join(sets)} WHERE run_id = ? AND "StudyInstanceUID" = ?',
            [state, at, *values.values(), run_id, uid],
        )


__all__ = ["Execute", "PullStateTables", "pull_state_ddl"]
