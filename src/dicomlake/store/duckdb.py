"""The embedded default back end: one DuckDB file in the lake folder."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa

from dicomlake.errors import ConfigError, QueryError
from dicomlake.lakeschema import ElementJoin, InstanceColumns, instance_columns, table_schemas
from dicomlake.store import elementstore
from dicomlake.store.base import WriteReport
from dicomlake.store.keyindex import KeyIndex
from dicomlake.store.lakesql import duckdb_type
from dicomlake.store.pullstate import PullStateTables, pull_state_ddl

if TYPE_CHECKING:
    from dicomlake.store.curation import LakeCuration

DB_NAME = "lake.duckdb"
SCHEMA_VERSION = 1


def make_private_dir(path: Path) -> None:
    """Create a lake folder (and missing parents) readable by its owner only (0700).

    A folder that exists keeps its mode: ``dicomlake doctor`` warns when it is wider.
    """
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    _chmod(path, 0o700)  # mkdir's mode is filtered through the umask


def rewrite_file(lake: Path) -> None:
    """Copy ``lake.duckdb`` into a new file and put it in its place: the same tables and views in
    as few blocks as they need. DuckDB reuses the blocks a merge or a deletion frees but never
    gives them back to the file system. The lake must not be open (``dicomlake compact``
    holds it as the only writer until then); the copy is made beside it and swapped in by
    one rename, so an interruption leaves the old file whole."""
    db = lake / DB_NAME
    tmp = lake / f"{DB_NAME}.compacting"
    tmp.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS src (READ_ONLY)", [str(db)])
        con.execute("ATTACH ? AS dst", [str(tmp)])
        con.execute("COPY FROM DATABASE src TO dst")
        con.execute("DETACH dst")
        con.execute("DETACH src")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    _chmod(tmp, 0o600)
    os.replace(tmp, db)


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError:  # a file system without modes (some network mounts): doctor reports it
        pass


def _to_arrow(rel: duckdb.DuckDBPyConnection) -> pa.Table:
    """The result as an Arrow table (DuckDB 2 renamed fetch_arrow_table to to_arrow_table)."""
    fetch = getattr(rel, "to_arrow_table", None) or getattr(rel, "fetch_arrow_table")  # noqa: B009
    return fetch()  # type: ignore[no-any-return]


class DuckDBStore:
    """A lake in ``<lake>/lake.duckdb``.

    DuckDB lets one process write a database file at a time; a read-only open waits for
    no one but fails while a writer holds the file. The service (``dicomlake serve``)
    therefore answers queries for a lake it holds; see DESIGN.md.
    """

    def __init__(
        self,
        lake: str | Path,
        *,
        read_only: bool = False,
        columns: InstanceColumns | None = None,
        threads: int | None = None,
    ) -> None:
        self.lake = Path(lake)
        self.read_only = read_only
        self.columns = columns or instance_columns()
        db = self.lake / DB_NAME
        from dicomlake.store.parquet import is_parquet_lake
        from dicomlake.store.postgres import is_postgres_url

        if is_postgres_url(str(lake)):
            raise ConfigError(f"{lake} is a PostgreSQL URL, not a DuckDB lake folder; open it with open_store()")
        if not db.exists() and is_parquet_lake(self.lake):
            raise ConfigError(
                f"{self.lake} is a Parquet lake, which cannot be written here: ingest into a DuckDB folder or a "
                "postgresql:// lake, then write a new Parquet lake with `dicomlake export --format lake --out DIR`"
            )
        if read_only and not db.exists():
            raise ConfigError(
                f"no lake at {self.lake} (missing {DB_NAME}); run `dicomlake ingest PATH --lake {self.lake}` "
                "first or point --lake / DICOMLAKE_LAKE at an existing lake"
            )
        created = not db.exists()
        if not read_only:
            make_private_dir(self.lake)
        try:
            self.con = duckdb.connect(str(db), read_only=read_only)
        except duckdb.IOException as exc:
            raise ConfigError(
                f"cannot open {db}: {exc}. Another dicomlake process (ingest or serve) may hold "
                "the lake; wait for it, or query through the running service"
            ) from exc
        if threads:  # e.g. 1 while ingest workers keep the cores busy (pipeline.ingest)
            self.con.execute(f"SET threads = {int(threads)}")
        self._wal_private = read_only
        self._keys = KeyIndex()  # the writer's copy of instance_keys (store/keyindex.py)
        self._new_keys: np.ndarray | None = None  # keys of the open transaction, added at COMMIT
        self._delta_rows: int | None = None  # rows in element_delta
        if not read_only:
            self._ensure_schema()
            if created:
                _chmod(db, 0o600)
        self.element_join: ElementJoin = elementstore.join_of(self.con)
        """How filters reach ``instances`` from the element store (``_iid`` and ``element_index``;
        by UID in an older lake opened read-only)."""

    # ---- schema -------------------------------------------------------------------------

    def _existing_columns(self, table: str) -> dict[str, str]:
        rows = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
            "AND table_schema = 'main'",
            [table],
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def _ensure_schema(self) -> None:
        con = self.con
        con.execute("CREATE TABLE IF NOT EXISTS lake_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute("INSERT OR IGNORE INTO lake_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        for name, schema in table_schemas(self.columns).items():
            if name == "elements":  # a view over the element store (store/elementstore.py)
                continue
            have = self._existing_columns(name)
            if not have:
                empty = schema.empty_table()  # noqa: F841 - referenced by name in SQL
                con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM empty')
                continue
            for f in schema:
                if f.name not in have:
                    probe = pa.table({f.name: pa.array([], type=f.type)})  # noqa: F841
                    typ = con.execute(f'SELECT data_type FROM (DESCRIBE SELECT "{f.name}" FROM probe)').fetchone()
                    con.execute(f'ALTER TABLE "{name}" ADD COLUMN "{f.name}" {typ[0] if typ else "VARCHAR"}')
        con.execute(
            "CREATE TABLE IF NOT EXISTS ingest_runs (run_id VARCHAR, started_at TIMESTAMP, "
            "finished_at TIMESTAMP, sources VARCHAR, files BIGINT, instances BIGINT, rejected BIGINT, "
            "skipped BIGINT, status VARCHAR)"
        )
        for ddl in pull_state_ddl(duckdb_type):
            con.execute(ddl)
        elementstore.ensure(con)
        self._ensure_keys()

    # ---- writing ------------------------------------------------------------------------

    def write_batch(self, tables: Mapping[str, pa.Table], accepted_paths: list[str]) -> WriteReport:
        con = self.con
        inst = tables.get("instances")
        elements = tables.get("elements")
        js = tables.get("dicom_json")
        dose = tables.get("dose_events")
        rejects = tables.get("rejects")
        replaced = 0
        batch_iids: pa.Table | None = None
        con.execute("BEGIN TRANSACTION")
        try:
            if inst is not None and inst.num_rows:
                replaced, batch_iids = self._upsert_instances(inst)
            if elements is not None and elements.num_rows:
                elementstore.write(con, elements, batch_iids)
            for name, tab in (("dicom_json", js), ("dose_events", dose)):
                if tab is not None and tab.num_rows:
                    con.register("b_tab", tab)
                    con.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM b_tab')
                    con.unregister("b_tab")
            if accepted_paths:
                con.register("b_ok", pa.table({"p": pa.array(accepted_paths, pa.string())}))
                con.execute("DELETE FROM rejects WHERE source_path IN (SELECT p FROM b_ok)")
                con.unregister("b_ok")
            if rejects is not None and rejects.num_rows:
                con.register("b_rej", rejects)
                con.execute("DELETE FROM rejects WHERE source_path IN (SELECT source_path FROM b_rej)")
                con.execute("INSERT INTO rejects BY NAME SELECT * FROM b_rej")
                con.unregister("b_rej")
            con.execute("COMMIT")
        except BaseException:
            self._new_keys = None
            self._delta_rows = None
            con.execute("ROLLBACK")
            raise
        if self._new_keys is not None:
            self._keys.add(self._new_keys)
            self._new_keys = None
        if elements is not None and elements.num_rows:
            if self._delta_rows is None:
                self._delta_rows = elementstore.count(con, "element_delta")
            else:
                self._delta_rows += elements.num_rows
            if self._delta_rows >= elementstore.MERGE_ROWS:
                self.merge_elements()
        if not self._wal_private:  # DuckDB creates the WAL with the umask's mode at the first write
            wal = self.lake / f"{DB_NAME}.wal"
            if wal.exists():
                _chmod(wal, 0o600)
                self._wal_private = True
        return WriteReport.of(tables, replaced)

    def _upsert_instances(self, inst: pa.Table) -> tuple[int, pa.Table]:
        """Insert the batch's ``instances`` rows, replacing instances the lake holds: how many
        it replaced, and the batch's instance numbers (``u``, ``iid``) for the element store
        (also written as each row's ``_iid``).

        Which of the batch's keys the lake already holds is looked up in the writer's sorted
        copy of ``instance_keys``' 64-bit hashes (:mod:`dicomlake.store.keyindex`): a binary
        search per batch key, whatever the lake's size, where a semi-join over the table
        scanned every hash (~12-23 ms per million instances per batch). A hash hit is only a
        candidate: rows are deleted by their UID, so a collision costs a DELETE that finds
        nothing, never a lost instance. The new keys reach the copy only once the transaction
        has committed (``write_batch``). Every instance of the batch gets a new ``iid``; a
        replaced one's older element rows are left to the element store (they no longer join).
        """
        con = self.con
        self._keys.sync(con)
        if "_iid" in inst.column_names:  # numbers of another lake (a copy): this lake numbers anew
            inst = inst.drop_columns(["_iid"])
        con.register("b_inst", inst)
        try:
            batch = con.execute("SELECT SOPInstanceUID AS u, hash(SOPInstanceUID) AS h FROM b_inst").fetchnumpy()
        finally:
            con.unregister("b_inst")
        uids, hashes = batch["u"], np.asarray(batch["h"], dtype=np.uint64)
        hit = self._keys.contains(hashes)
        gone: list[str] = []
        if hit.any():
            candidates = sorted({str(u) for u in uids[hit]})
            con.register("b_old", pa.table({"u": pa.array(candidates, pa.string())}))
            gone = [
                r[0]
                for r in con.execute(
                    "DELETE FROM instances WHERE SOPInstanceUID IN (SELECT u FROM b_old) RETURNING SOPInstanceUID"
                ).fetchall()
            ]
            old = con.execute(
                "DELETE FROM instance_keys WHERE h IN (SELECT hash(u) FROM b_old) "
                "AND SOPInstanceUID IN (SELECT u FROM b_old) RETURNING iid"
            ).fetchnumpy()["iid"]
            elementstore.forget(con, np.asarray(old, dtype=np.int64))
            for t in ("dicom_json", "dose_events"):
                con.execute(f'DELETE FROM "{t}" WHERE SOPInstanceUID IN (SELECT u FROM b_old)')
            con.unregister("b_old")
        # the high-water mark as this transaction sees it (one row of lake_meta): another writer of
        # the lake may have numbered instances since, replacing only (the key count unchanged)
        start = elementstore.next_iid(con)
        iids = np.arange(start, start + len(uids), dtype=np.int64)
        elementstore.set_next_iid(con, start + len(uids))
        con.register("b_inst", inst.append_column("_iid", pa.array(iids)))
        try:
            con.execute("INSERT INTO instances BY NAME SELECT * FROM b_inst")
        finally:
            con.unregister("b_inst")
        u_arr = pa.array(uids.astype(str) if uids.dtype != object else list(uids), pa.string())
        con.register("b_new", pa.table({"h": pa.array(hashes, pa.uint64()), "iid": pa.array(iids), "u": u_arr}))
        con.execute("INSERT INTO instance_keys SELECT h, iid, u FROM b_new")
        con.unregister("b_new")
        if gone:  # a replaced instance's hash is in the copy already
            self._new_keys = hashes[~np.isin(uids.astype(str), np.array(gone, dtype=str))]
        else:
            self._new_keys = hashes
        return len(gone), pa.table({"u": u_arr, "iid": pa.array(iids)})

    def _ensure_keys(self) -> None:
        """``instance_keys`` holds one row per instance and ``instances._iid`` its number; mended
        when they do not (rows written by other means): missing instances get new numbers,
        numbers of instances gone are dropped; the numbers of the others stay (the element
        store is keyed by them)."""
        con = self.con
        row = con.execute(
            "SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM instance_keys), "
            "(SELECT count(*) FROM instances WHERE _iid IS NULL)"
        ).fetchall()
        if row and (row[0][0] != row[0][1] or row[0][2]):
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(
                    "DELETE FROM instance_keys WHERE SOPInstanceUID NOT IN (SELECT SOPInstanceUID FROM instances)"
                )
                start = elementstore.next_iid(con) - 1
                n = con.execute(
                    f"INSERT INTO instance_keys SELECT hash(u), {start} + row_number() OVER (ORDER BY u), u "
                    "FROM (SELECT SOPInstanceUID AS u FROM instances EXCEPT SELECT SOPInstanceUID FROM instance_keys)"
                ).fetchall()[0][0]
                elementstore.set_next_iid(con, start + int(n) + 1)
                elementstore.number_instances(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def merge_elements(self) -> None:
        """Sort the unsorted element rows into a run of the element store (done by itself every
        ``elementstore.MERGE_ROWS`` rows, and when the writer closes)."""
        elementstore.merge(self.con)
        self._delta_rows = 0

    def compact_elements(self) -> int:
        """Rewrite the element store as one sorted run without replaced instances' rows."""
        n = elementstore.compact(self.con)
        self._delta_rows = 0
        return n

    def record_run(self, row: Mapping[str, object]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.con.execute(f"INSERT INTO ingest_runs ({cols}) VALUES ({marks})", list(row.values()))

    # ---- reading ------------------------------------------------------------------------

    def query(self, sql: str, params: Mapping[str, object] | list[object] | None = None) -> pa.Table:
        try:
            if hasattr(duckdb.DuckDBPyRelation, "to_arrow_table"):
                rel = self.con.sql(sql, params=params) if params else self.con.sql(sql)
                return pa.table({}) if rel is None else rel.to_arrow_table()
            return _to_arrow(self.con.execute(sql, params) if params is not None else self.con.execute(sql))
        except duckdb.Error as exc:
            raise QueryError(f"{type(exc).__name__}: {exc}\n  in: {sql.strip()[:500]}") from exc

    def query_readonly(
        self,
        sql: str,
        params: Mapping[str, object] | list[object] | None = None,
        *,
        max_rows: int | None = None,
        time_limit_s: float | None = None,
    ) -> pa.Table:
        """Run a user's statement in the sandbox (:mod:`dicomlake.store.sandbox`): one read-only
        query, in a READ ONLY transaction, on this instance with file and network access taken
        away for good (the first call locks it), cut at ``max_rows`` (default ``query.max_rows``)
        and stopped after ``time_limit_s`` (default ``query.time_limit_s``)."""
        from dicomlake.store.sandbox import query_readonly_duckdb

        return query_readonly_duckdb(self.con, sql, params, max_rows=max_rows, time_limit_s=time_limit_s)

    def iter_table(
        self, name: str, schema: pa.Schema | None = None, batch_rows: int = 200_000
    ) -> Iterator[pa.RecordBatch]:
        """Every row of a table as Arrow batches (of ``schema``'s columns when given)."""
        cols = ", ".join(f'"{f.name}"' for f in schema) if schema is not None else "* EXCLUDE (_iid)"
        if schema is None and "_iid" not in self._existing_columns(name):
            cols = "*"
        try:
            reader = self.con.sql(f'SELECT {cols} FROM "{name}"').to_arrow_reader(batch_rows)
        except duckdb.Error as exc:
            raise QueryError(f"{name}: {exc}") from exc
        yield from reader

    def pull_state(self) -> PullStateTables:
        """The pull state (``pull_runs``, ``pull_studies``, created when the lake opens)."""
        if self.read_only:
            raise ConfigError(f"the lake {self.lake} was opened read-only; a pull writes its state into the lake")
        return PullStateTables(self._execute_cursor)

    def _execute_cursor(self, sql: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        cur = self.con.cursor()
        try:
            rows: list[tuple[object, ...]] = cur.execute(sql, list(params)).fetchall()
            return rows
        finally:
            cur.close()

    def curation(self) -> LakeCuration:
        """Curation, name mappings and their tables on this lake (:mod:`dicomlake.store.curation`)."""
        from dicomlake.store.curation import LakeCuration

        return LakeCuration.of(self)

    def close(self) -> None:
        try:
            if not self.read_only and self._delta_rows:  # rows this writer left unsorted
                self.merge_elements()
        finally:
            self.con.close()

    def __enter__(self) -> DuckDBStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
