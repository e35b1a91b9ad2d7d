"""The server back end: a lake in a PostgreSQL database, for several processes and users.

Same tables, column names and upsert rule as :class:`~dicomlake.store.duckdb.DuckDBStore`
(instances keyed by SOPInstanceUID; a re-ingested instance replaces its rows); ``elements`` is
a view over the element store of :mod:`dicomlake.store.pg_elements` (attribute runs keyed by
the instance number ``instances._iid``). Any number
of processes may read and write at once: reads never wait (MVCC); each batch is one
transaction that upserts its instances in ``SOPInstanceUID`` order on the primary key
(``INSERT … ON CONFLICT DO UPDATE``) and then replaces their other rows, so two writers of
the same instance serialise on that instance's row only, writers of different instances
never wait for each other, and neither can leave a duplicate. There is no lake-wide write
lock (the advisory lock of :mod:`~dicomlake.store.migrations` guards schema changes only). Batches travel as CSV written by
Arrow into ``COPY`` (text, numbers, dates, times and timestamps round-trip exactly).

The query layer writes DuckDB SQL; sqlglot translates it (:func:`dicomlake.store.lakesql.to_postgres`).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dicomlake.errors import ConfigError, QueryError
from dicomlake.lakeschema import ELEMENT_SCHEMA, InstanceColumns, instance_columns
from dicomlake.store import pg_elements
from dicomlake.store.base import WriteReport
from dicomlake.store.lakesql import to_postgres
from dicomlake.store.migrations import SCHEMA_VERSION, current_version, migrate, pg_type
from dicomlake.store.pullstate import PullStateTables

if TYPE_CHECKING:
    from dicomlake.store.curation import LakeCuration

T = TypeVar("T")

WRITE_RETRIES = 5
"""Attempts at one batch when PostgreSQL picks it as a deadlock victim (40P01) or 40001."""

# PostgreSQL type OIDs → Arrow types of query results
_OID_ARROW: dict[int, pa.DataType] = {
    16: pa.bool_(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 26: pa.int64(),
    700: pa.float32(), 701: pa.float64(), 1700: pa.float64(),
    25: pa.string(), 1043: pa.string(), 1042: pa.string(), 19: pa.string(), 18: pa.string(),
    1082: pa.date32(), 1083: pa.time64("us"), 1114: pa.timestamp("us"), 1184: pa.timestamp("us", tz="UTC"),
    17: pa.binary(), 1186: pa.month_day_nano_interval(), 1009: pa.list_(pa.string()),
}  # fmt: skip


def is_postgres_url(text: object) -> bool:
    """True for ``postgresql://…`` / ``postgres://…`` (also after Path() folded ``//``)."""
    return isinstance(text, str) and re.match(r"^postgres(ql)?:/", text) is not None


def normalise_url(text: str) -> str:
    """``postgres:/…`` or ``postgresql:/…`` (a URL passed through ``pathlib.Path``) → ``postgresql://…``."""
    m = re.match(r"^postgres(?:ql)?:/+(.*)$", text)
    return f"postgresql://{m.group(1)}" if m else text


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


class _CopyReader(io.RawIOBase):
    """A file object over ``COPY … TO STDOUT`` chunks, for Arrow's streaming CSV reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = bytes(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class PostgresStore:
    """A lake in a PostgreSQL database, opened by URL.

    Parameters
    ----------
    url
        libpq URL, e.g. ``postgresql://dicomlake@db.example.org/lake``; the password is best
        kept in ``~/.pgpass`` or ``PGPASSWORD`` rather than in the URL.
    read_only
        Refuse writes and do not migrate; fails when the database holds no lake.
    columns
        The typed instance columns (default: the shipped list).
    """

    def __init__(self, url: str, *, read_only: bool = False, columns: InstanceColumns | None = None) -> None:
        import psycopg
        from psycopg.types.numeric import FloatLoader

        self.url = normalise_url(str(url))
        self.lake = self.url
        self.read_only = read_only
        self.columns = columns or instance_columns()
        # element runs keyed by instance number (store/pg_elements.py); few values: IN
        self.element_join = dataclasses.replace(pg_elements.JOIN, sparse=self._sparse_attribute)
        try:
            self.connection = psycopg.connect(self.url, autocommit=True, options="-c TimeZone=UTC -c DateStyle=ISO,YMD")
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to {redact(self.url)}: {str(exc).strip()}. Check host, port, database "
                "and credentials (~/.pgpass or PGPASSWORD), and that the server accepts connections"
            ) from exc
        self.connection.adapters.register_loader("numeric", FloatLoader)
        version = current_version(self.connection)
        if read_only:
            if version == 0:
                self.connection.close()
                raise ConfigError(
                    f"no lake in {redact(self.url)} (no schema_migrations table); run "
                    f"`dicomlake ingest PATH --lake {redact(self.url)}` first"
                )
            if version < SCHEMA_VERSION:
                self.connection.close()
                raise ConfigError(
                    f"the lake in {redact(self.url)} has schema version {version}, this dicomlake needs "
                    f"{SCHEMA_VERSION}; open it once for writing to upgrade it in place "
                    f"(e.g. `dicomlake ingest --lake {redact(self.url)} NEW_FILES`)"
                )
        else:
            self.applied = migrate(self.connection, self.columns)
        self._sql_names = frozenset(self._column_names())
        self._instance_columns = self._instance_table_columns()
        self.write_retries = 0
        """Batches and compactions run again after a deadlock or serialization failure (for tests and benches)."""

    def _sparse_attribute(self, path_key: str | None, tag: str | None) -> bool:
        return pg_elements.is_sparse(self.connection, path_key, tag)

    def _column_names(self) -> list[str]:
        """The lake's tables and ``table.column`` names: DuckDB SQL spells them in any case (see query)."""
        rows = self.connection.execute(
            "SELECT table_name || '.' || column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() "
            "UNION SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
        return [r[0] for r in rows]

    @property
    def schema_version(self) -> int:
        return current_version(self.connection)

    # ---- writing ------------------------------------------------------------------------

    def _copy_in(self, cur: Any, table: str, tab: pa.Table) -> None:
        """Append an Arrow table with ``COPY … FROM STDIN (FORMAT csv)``.

        Every valid value is quoted and nulls are left empty, so PostgreSQL tells an empty
        string (``""``) from NULL.
        """
        buf = io.BytesIO()
        pacsv.write_csv(tab, buf, pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
        cols = ", ".join(f'"{n}"' for n in tab.column_names)
        with cur.copy(f'COPY "{table}" ({cols}) FROM STDIN (FORMAT csv)') as cp:
            view = buf.getbuffer()
            step = 1 << 20
            for i in range(0, len(view), step):
                cp.write(view[i : i + step])

    def write_batch(self, tables: Mapping[str, pa.Table], accepted_paths: list[str]) -> WriteReport:
        """Upsert one batch in one transaction, locking only the instances it writes.

        The batch's instances are upserted in ``SOPInstanceUID`` order (``INSERT … ON CONFLICT
        DO UPDATE``), which row-locks each existing instance and holds the key of each new
        one until commit; its ``elements``/``dicom_json``/``dose_events`` rows are replaced
        after that, so two writers of one instance serialise on that instance only, and
        writers of different instances never wait for each other. Rejects are upserted on
        their ``source_path`` key (migration 5). A deadlock or serialization failure
        (SQLSTATE 40P01/40001) rolls the batch back and runs it again, up to
        :data:`WRITE_RETRIES` times.
        """

        if self.read_only:
            raise ConfigError(f"the lake {redact(self.url)} was opened read-only")
        inst = tables.get("instances")
        if inst is not None and inst.num_rows:
            inst = inst.sort_by("SOPInstanceUID")  # one lock order for every writer
        replaced = self._retrying(lambda: self._write_once(tables, inst, accepted_paths), pause=0.01)
        return WriteReport.of(tables, replaced)

    def _retrying(self, attempt_once: Callable[[], T], *, pause: float) -> T:
        """``attempt_once()`` (one transaction), run again when PostgreSQL picks it as a deadlock
        victim (40P01) or reports a serialization failure (40001), up to :data:`WRITE_RETRIES`
        times, after a random pause of ``pause``-``5 × pause`` seconds times the attempt."""
        import psycopg

        for attempt in itertools.count(1):
            try:
                return attempt_once()
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt >= WRITE_RETRIES:
                    raise
                self.write_retries += 1
                time.sleep(random.uniform(pause, 5 * pause) * attempt)
        raise AssertionError("unreachable")

    def _instance_table_columns(self) -> list[str]:
        rows = self.connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'instances' ORDER BY ordinal_position"
        ).fetchall()
        return [r[0] for r in rows]

    def _write_once(self, tables: Mapping[str, pa.Table], inst: pa.Table | None, accepted_paths: list[str]) -> int:
        """One attempt at a batch; the number of instances it replaced."""
        replaced = 0
        rejects = tables.get("rejects")
        con = self.connection
        with con.transaction(), con.cursor() as cur:
            if inst is not None and inst.num_rows:
                names = inst.column_names
                cols = ", ".join(f'"{n}"' for n in names)
                cur.execute(f"CREATE TEMP TABLE _b_inst ON COMMIT DROP AS SELECT {cols} FROM instances WITH NO DATA")
                self._copy_in(cur, "_b_inst", inst)
                # every lake column is set: one the batch lacks becomes NULL, as a fresh insert
                lake_cols = dict.fromkeys([*self._instance_columns, *names])
                sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in lake_cols if c != "SOPInstanceUID")
                # each row gets a new instance number (the column's default): a replaced
                # instance's old element rows match no instance from here on; its old number
                # goes to element_dead (the trigger instances_renumbered, store/pg_elements.py)
                cur.execute("CREATE TEMP TABLE _b_iid (u TEXT, iid BIGINT, old BOOLEAN) ON COMMIT DROP")
                cur.execute(
                    f"WITH up AS (INSERT INTO instances ({cols}) "
                    f'SELECT {cols} FROM _b_inst ORDER BY "SOPInstanceUID" '
                    f'ON CONFLICT ("SOPInstanceUID") DO UPDATE SET {sets} '
                    'RETURNING "SOPInstanceUID", _iid, (xmax <> 0)) INSERT INTO _b_iid SELECT * FROM up'
                )
                row = cur.execute("SELECT count(*) FILTER (WHERE old) FROM _b_iid").fetchone()
                replaced = int(row[0]) if row else 0
                uids = inst.column("SOPInstanceUID").to_pylist()
                # the batch's instances are locked by this transaction: replace their rows
                for t in ("dicom_json", "dose_events"):
                    cur.execute(f'DELETE FROM "{t}" WHERE "SOPInstanceUID" = ANY(%s::text[])', [uids])
            for name in ("dicom_json", "dose_events"):
                tab = tables.get(name)
                if tab is not None and tab.num_rows:
                    self._copy_in(cur, name, tab)
            elements = tables.get("elements")
            if elements is not None and elements.num_rows:
                self._write_elements(cur, elements, batch_ids=inst is not None and inst.num_rows > 0)
            if accepted_paths:
                cur.execute("DELETE FROM rejects WHERE source_path = ANY(%s::text[])", [sorted(set(accepted_paths))])
            if rejects is not None and rejects.num_rows:
                cols = ", ".join(f'"{n}"' for n in rejects.column_names)
                sets = ", ".join(f'"{n}" = EXCLUDED."{n}"' for n in rejects.column_names if n != "source_path")
                cur.execute(f"CREATE TEMP TABLE _b_rej ON COMMIT DROP AS SELECT {cols} FROM rejects WITH NO DATA")
                cur.execute("ALTER TABLE _b_rej ADD COLUMN _n BIGSERIAL")
                self._copy_in(cur, "_b_rej", rejects)
                # one row per file (the batch's last), in path order: one lock order for every writer
                cur.execute(
                    f"INSERT INTO rejects ({cols}) SELECT {cols} FROM (SELECT DISTINCT ON (source_path) * "
                    "FROM _b_rej ORDER BY source_path, _n DESC) r ORDER BY source_path "
                    f"ON CONFLICT (source_path) DO UPDATE SET {sets}"
                )
        return replaced

    def _write_elements(self, cur: Any, elements: pa.Table, *, batch_ids: bool) -> None:
        """The batch's element rows into the element store (:mod:`dicomlake.store.pg_elements`),
        numbered by the batch's own instances or, without them (an import writes the tables
        one after the other), by the column ``_iid`` the copy gives each row
        (:func:`~dicomlake.store.transfer.copy_lake`) or else by the lake's."""
        numbered = not batch_ids and "_iid" in elements.column_names
        cols = ", ".join(f'"{f.name}" {pg_type(f.type)}' for f in ELEMENT_SCHEMA)
        cur.execute(f"CREATE TEMP TABLE _b_el ({cols}{', _iid BIGINT' if numbered else ''}) ON COMMIT DROP")
        self._copy_in(cur, "_b_el", elements.select([*ELEMENT_SCHEMA.names, *(["_iid"] if numbered else [])]))
        if numbered:
            pg_elements.write(cur, "_b_el", elements.num_rows, None)
            return
        if not batch_ids:
            # FOR SHARE: a writer replacing one of these instances (a new number) waits for
            # this batch, so its rows never land under a number already given up
            cur.execute(
                'CREATE TEMP TABLE _b_iid ON COMMIT DROP AS SELECT "SOPInstanceUID" AS u, _iid AS iid FROM instances '
                'WHERE "SOPInstanceUID" = ANY(%s::text[]) ORDER BY "SOPInstanceUID" FOR SHARE',
                [pc.unique(elements.column("SOPInstanceUID")).to_pylist()],
            )
        pg_elements.write(cur, "_b_el", elements.num_rows, "_b_iid")

    def instance_numbers(self) -> dict[str, int]:
        """Every instance's number (``_iid``) by ``SOPInstanceUID`` (a copy's element batches)."""
        schema = pa.schema([pa.field("SOPInstanceUID", pa.string()), pa.field("_iid", pa.int64())])
        out: dict[str, int] = {}
        for batch in self.iter_table("instances", schema):
            out.update(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True))
        return out

    def compact_elements(self) -> dict[str, int]:
        """One run per attribute and instance group, without replaced instances' rows
        (``dicomlake compact``; :func:`dicomlake.store.pg_elements.compact`)."""
        if self.read_only:
            raise ConfigError(f"the lake {redact(self.url)} was opened read-only")
        return self._retrying(lambda: pg_elements.compact(self.connection), pause=0.04)

    def element_bytes(self) -> int:
        """Bytes on disk of the element store's tables, their TOAST data and indexes."""
        row = self.connection.execute(
            "SELECT sum(pg_total_relation_size(c)) FROM unnest(%s::text[]) AS c",
            [["element_keys", "element_runs", "element_delta", "element_dead"]],
        ).fetchone()
        return int(row[0] or 0) if row else 0

    @property
    def lake_name(self) -> str:
        """The lake's URL without its password (for messages)."""
        return redact(self.url)

    def record_run(self, row: Mapping[str, object]) -> None:
        if self.read_only:
            return
        cols = ", ".join(f'"{k}"' for k in row)
        marks = ", ".join("%s" for _ in row)
        self.connection.execute(f"INSERT INTO ingest_runs ({cols}) VALUES ({marks})", list(row.values()))

    # ---- reading ------------------------------------------------------------------------

    def query(self, sql: str, params: Mapping[str, object] | list[object] | None = None) -> pa.Table:
        """Run a statement written in DuckDB's dialect (translated); an Arrow table."""
        import psycopg

        pg_sql, pg_params = to_postgres(sql, params, self._sql_names)
        try:
            with self.connection.cursor() as cur:
                cur.execute(pg_sql, pg_params)  # type: ignore[arg-type]
                if cur.description is None:
                    return pa.table({})
                rows = cur.fetchall()
                return _arrow(cur.description, rows)
        except psycopg.Error as exc:
            raise QueryError(f"{type(exc).__name__}: {str(exc).strip()}\n  in: {pg_sql.strip()[:500]}") from exc

    def query_readonly(
        self,
        sql: str,
        params: Mapping[str, object] | list[object] | None = None,
        *,
        max_rows: int | None = None,
        time_limit_s: float | None = None,
    ) -> pa.Table:
        """Run a user's statement in the sandbox (:mod:`dicomlake.store.sandbox`): one read-only
        query in a READ ONLY transaction with ``statement_timeout``, cut at ``max_rows``."""
        from dicomlake.store.sandbox import run_postgres

        return run_postgres(self, sql, params, max_rows=max_rows, time_limit_s=time_limit_s)

    def pull_state(self) -> PullStateTables:
        """The pull state (``pull_runs``, ``pull_studies``: migration 4)."""
        if self.read_only:
            raise ConfigError(
                f"the lake {redact(self.url)} was opened read-only; a pull writes its state into the lake"
            )
        return PullStateTables(self._execute)

    def _execute(self, sql: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        """One of dicomlake's own statements, ``?`` placeholders (no ``?`` elsewhere in it)."""
        with self.connection.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), list(params))  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description is not None else []

    def table_names(self) -> list[str]:
        rows = self.connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
        return [r[0] for r in rows]

    def iter_table(self, name: str, schema: pa.Schema, batch_rows: int = 200_000) -> Iterator[pa.RecordBatch]:
        """Stream a whole table as Arrow batches of ``schema`` (``COPY … TO STDOUT``, CSV)."""
        cols = ", ".join(f'"{f.name}"' for f in schema)
        types = {f.name: (pa.string() if pa.types.is_time(f.type) else f.type) for f in schema}
        with (
            self.connection.cursor() as cur,
            cur.copy(f'COPY (SELECT {cols} FROM "{name}") TO STDOUT (FORMAT csv)') as cp,
        ):
            chunks = (bytes(b) for b in cp)
            first = next(chunks, b"")
            if not first:  # an empty table: COPY sends nothing, which Arrow's CSV reader refuses
                return
            reader = pacsv.open_csv(
                io.BufferedReader(_CopyReader(itertools.chain([first], chunks)), buffer_size=1 << 20),
                read_options=pacsv.ReadOptions(column_names=schema.names, block_size=16 << 20),
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    true_values=["t"],
                    false_values=["f"],
                ),
            )
            for batch in reader:
                yield _cast_batch(batch, schema)

    def curation(self) -> LakeCuration:
        """Curation, name mappings and their tables on this lake (:mod:`dicomlake.store.curation`)."""
        from dicomlake.store.curation import LakeCuration

        return LakeCuration.of(self)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for f, col in zip(schema, batch.columns, strict=True):
        if pa.types.is_time(f.type) and pa.types.is_string(col.type):
            # Arrow has no string → time cast: read "HH:MM:SS.ffffff" as a time of 1970-01-01
            stamped = pc.binary_join_element_wise(pa.scalar("1970-01-01 "), col, "")
            col = stamped.cast(pa.timestamp("us")).cast(f.type)
        elif col.type != f.type:
            col = col.cast(f.type)
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _arrow(description: Any, rows: list[tuple[Any, ...]]) -> pa.Table:
    names = [d.name for d in description]
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    arrays = []
    for d, values in zip(description, cols, strict=True):
        typ = _OID_ARROW.get(d.type_code)
        try:
            arrays.append(pa.array(list(values), type=typ))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            arrays.append(pa.array([None if v is None else str(v) for v in values], type=pa.string()))
    # duplicate output names are legal in SQL: keep them apart as DuckDB does
    seen: dict[str, int] = {}
    uniq = []
    for n in names:
        k = seen.get(n, 0)
        uniq.append(n if k == 0 else f"{n}_{k}")
        seen[n] = k + 1
    return pa.Table.from_arrays(arrays, names=uniq)
