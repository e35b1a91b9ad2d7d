"""A lake held by a running ``dicomlake serve``, queried through the service's internal endpoint.

DuckDB allows one writing process per database file. While the service holds the lake,
:meth:`dicomlake.query.lake.Lake.open` with ``read_only=True`` returns a lake over a
:class:`RemoteStore`, which sends each read-only statement to the service
(:mod:`dicomlake.web.internal`) and reads the Arrow IPC answer. What the drainer has
committed is visible at once; the service never waits for a reader.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from dicomlake.errors import ConfigError, QueryError
from dicomlake.lakeschema import ELEMENTS_BY_UID, ElementJoin, InstanceColumns, instance_columns
from dicomlake.store import elementstore
from dicomlake.store.base import WriteReport
from dicomlake.store.pullstate import PullStateTables

SERVICE_FILE = "service.json"
TOKEN_FILE = "service.token"


@dataclass(frozen=True)
class ServiceInfo:
    """What ``<lake>/service.json`` says about the service holding a lake."""

    pid: int
    control_url: str
    ae_title: str
    port: int
    started_at: str
    token: str


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def live_service(lake: str | os.PathLike[str]) -> ServiceInfo | None:
    """The service holding ``lake``, or None when there is none (or ``service.json`` is stale)."""
    folder = Path(lake)
    try:
        info = json.loads((folder / SERVICE_FILE).read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid() or not _pid_alive(pid):
        return None
    try:
        token = (folder / TOKEN_FILE).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"a dicomlake service (pid {pid}) holds {folder}, but its token {folder / TOKEN_FILE} cannot "
            f"be read ({exc.strerror}); run as the user who started `dicomlake serve`"
        ) from exc
    return ServiceInfo(
        pid=pid,
        control_url=str(info["control_url"]),
        ae_title=str(info.get("ae_title", "")),
        port=int(info.get("port", 0)),
        started_at=str(info.get("started_at", "")),
        token=token,
    )


def _jsonable(v: Any) -> Any:
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.decode("latin-1")
    return v


class _ConShim:
    """``con.sql`` / ``con.execute`` of a read-only statement, answered by the service (no COPY:
    :meth:`Lake.export` streams Arrow batches and writes the files itself)."""

    def __init__(self, store: RemoteStore) -> None:
        self.store = store

    def sql(self, query: str, params: Any = None) -> _Relation:
        """A relation-like result (``to_arrow_table``, ``to_arrow_reader``) fetched from the service."""
        return _Relation(self.store.query(query, params))

    def execute(self, sql: str, params: Any = None) -> _Relation:
        """Any statement runs in the service's read-only sandbox."""
        return _Relation(self.store.query(sql, list(params) if params is not None else None))


class _Relation:
    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def to_arrow_table(self) -> pa.Table:
        return self.table

    def fetch_arrow_table(self) -> pa.Table:
        return self.table

    def fetchall(self) -> list[tuple[Any, ...]]:
        cols = [c.to_pylist() for c in self.table.columns]
        return list(zip(*cols, strict=True)) if cols else []

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self.fetchall()
        return rows[0] if rows else None

    def to_arrow_reader(self, batch_rows: int = 100_000) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.table.schema, self.table.to_batches(batch_rows))


class RemoteStore:
    """The read side of the Store protocol, answered by the service that holds the lake."""

    read_only = True

    def __init__(
        self,
        lake: str | os.PathLike[str],
        info: ServiceInfo,
        *,
        columns: InstanceColumns | None = None,
        timeout: float = 300.0,
    ) -> None:
        import httpx

        self.lake = Path(lake)
        self.info = info
        self.columns = columns or instance_columns()
        self._element_join: ElementJoin | None = None
        self._client = httpx.Client(
            base_url=info.control_url,
            headers={"Authorization": f"Bearer {info.token}"},
            timeout=timeout,
            trust_env=False,  # loopback only: never through a proxy
        )
        self.con = _ConShim(self)

    @property
    def element_join(self) -> ElementJoin:
        """The held lake's :class:`~dicomlake.lakeschema.ElementJoin`, asked of the service once: by
        instance number in a DuckDB lake it has converted, by UID otherwise (a service of an earlier
        dicomlake, or a PostgreSQL lake's service)."""
        if self._element_join is None:
            try:
                self._element_join = elementstore.join_of(self.con)
            except QueryError:
                self._element_join = ELEMENTS_BY_UID
        return self._element_join

    def query(self, sql: str, params: Mapping[str, object] | list[object] | None = None) -> pa.Table:
        """Run a read-only statement in the service (its sandbox, no row limit); an Arrow table."""
        return self.query_readonly(sql, params, max_rows=0)

    def query_readonly(
        self,
        sql: str,
        params: Mapping[str, object] | list[object] | None = None,
        *,
        max_rows: int | None = None,
        time_limit_s: float | None = None,
    ) -> pa.Table:
        """Run a user's statement in the service's sandbox (:mod:`dicomlake.store.sandbox`), cut at
        ``max_rows`` (default: the service's ``query.max_rows``; 0: no cut). The time limit is the
        service's ``query.time_limit_s``."""
        import httpx

        if isinstance(params, Mapping):
            raise QueryError("named parameters are not supported through the service; use ? placeholders")
        body = {
            "sql": sql,
            "params": [_jsonable(p) for p in params] if params is not None else None,
            "max_rows": max_rows,
        }
        try:
            resp = self._client.post("/internal/query", json=body)
        except httpx.HTTPError as exc:
            raise QueryError(
                f"the dicomlake service (pid {self.info.pid}) holding {self.lake} did not answer at "
                f"{self.info.control_url}: {exc}; check that it still runs (dicomlake serve)"
            ) from exc
        if resp.status_code != 200:
            try:
                message = resp.json().get("error") or resp.json().get("detail") or resp.text
            except ValueError:
                message = resp.text
            raise QueryError(str(message))
        with pa.ipc.open_stream(resp.content) as reader:
            return reader.read_all()

    def status(self) -> dict[str, Any]:
        """The service's counters (see ``GET /internal/status``)."""
        return dict(self._client.get("/internal/status").json())

    def _held(self) -> ConfigError:
        return ConfigError(
            f"{self.lake} is held by a running dicomlake service (pid {self.info.pid}); send instances to it "
            f"over DICOM ({self.info.ae_title} on port {self.info.port}) or stop it first"
        )

    def write_batch(self, tables: Mapping[str, pa.Table], accepted_paths: list[str]) -> WriteReport:
        raise self._held()

    def record_run(self, row: Mapping[str, object]) -> None:
        raise self._held()

    def pull_state(self) -> PullStateTables:
        raise self._held()

    def iter_table(
        self, name: str, schema: pa.Schema | None = None, batch_rows: int = 200_000
    ) -> Iterator[pa.RecordBatch]:
        """Every row of a table, fetched from the service in one answer."""
        cols = ", ".join(f'"{f.name}"' for f in schema) if schema is not None else "*"
        yield from self.query(f'SELECT {cols} FROM "{name}"').to_batches(batch_rows)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
