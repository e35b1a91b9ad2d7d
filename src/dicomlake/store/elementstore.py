"""How a DuckDB lake stores ``elements``: dictionary-encoded attributes, clustered runs.

``elements`` (one row per element at any depth, :data:`~dicomlake.lakeschema.ELEMENT_SCHEMA`)
is a view over three tables (the design and its measurements: docs/explanation/lake.md,
"The element store"):

- ``element_keys``: one row per distinct attribute (``path_key``, ``depth``, ``tag``,
  ``keyword``, ``VR``, ``private_creator``) with a small integer ``kid``. A national lake
  has thousands of them, where the per-element table repeated the six texts on every row.
- ``instance_keys``: per instance its 64-bit UID hash ``h`` (the writer's upsert lookup,
  :mod:`dicomlake.store.keyindex`), an integer ``iid`` and the ``SOPInstanceUID``.
- ``element_delta``, ``element_recent``, ``element_data``, each with ``kid``, ``iid``,
  ``path`` (NULL when it equals the key's ``path_key``, as at depth 0), ``value_text``,
  ``value_num``, ``length``. Batches go to ``element_delta`` in the order they come; at
  :data:`MERGE_ROWS` rows (and when the writer closes) it is appended to ``element_recent``
  sorted by ``(kid, iid)``, as one small run; at :data:`RUN_ROWS` rows ``element_recent``
  is sorted as a whole into one large run of ``element_data``: a log-structured merge in two
  steps. Within a run the rows of one attribute are adjacent, so a filter on one attribute
  reads only the row groups that hold it (DuckDB's min/max zone maps on ``kid``; the join
  from ``element_keys`` pushes ``kid = …`` into the scans), and repeated values sit next to
  each other, where DuckDB's dictionary and bit-packing compress them (unsorted, the same
  rows take four times the bytes).

A re-ingested instance gets a new ``iid``; its old rows stay behind until a merge or
:func:`compact` drops them, and the view's join with ``instance_keys`` hides them
meanwhile: a replacement never scans the element rows.

Each ``instances`` row carries its number too (``_iid``, written in the same statement as the
row), and ``element_index`` is the store's rows with their attribute columns, keyed by
``iid``, without the join with ``instance_keys``: the filter compiler's relation
(:data:`JOIN`). ``i._iid IN (SELECT e.iid FROM element_index e WHERE …)`` joins integers
where ``elements`` would join UID text, and a replaced instance's old rows match no
``instances`` row (its number changed). A filter matching half of 10 M instances, first page
and count: 0.75 s, where the UID join took 4.0 s (docs/explanation/lake.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from dicomlake.errors import WriteError
from dicomlake.lakeschema import ELEMENTS_BY_UID, ElementJoin

MERGE_ROWS = 250_000
"""Rows of ``element_delta`` (~1,600 typical image headers) sorted into a run of ``element_recent``."""
RUN_ROWS = 4_000_000
"""Rows of ``element_recent`` (~25,000 typical image headers) sorted into one run of
``element_data``: each common attribute then fills one or two 122,880-row row groups of it,
and a header takes ~600 B (runs of ~1,600 headers: ~1.4 KB; unsorted: ~2.4 KB)."""
TABLES = ("element_data", "element_recent", "element_delta")

ATTRS = ("path_key", "depth", "tag", "keyword", "VR", "private_creator")
DATA_COLUMNS = "kid INTEGER, iid BIGINT, path VARCHAR, value_text VARCHAR, value_num DOUBLE, length BIGINT"

_ROWS = """FROM (SELECT * FROM element_data UNION ALL SELECT * FROM element_recent UNION ALL SELECT * FROM element_delta) d
JOIN element_keys k ON k.kid = d.kid"""
VIEW = f"""CREATE OR REPLACE VIEW elements AS
SELECT n.SOPInstanceUID, coalesce(d.path, k.path_key) AS path, k.path_key, k.depth, k.tag, k.keyword,
       k.VR, k.private_creator, d.value_text, d.value_num, d.length
{_ROWS}
JOIN instance_keys n ON n.iid = d.iid"""
INDEX_VIEW = f"""CREATE OR REPLACE VIEW element_index AS
SELECT d.iid, coalesce(d.path, k.path_key) AS path, k.path_key, k.depth, k.tag, k.keyword,
       k.VR, k.private_creator, d.value_text, d.value_num, d.length
{_ROWS}"""
"""The rows keyed by instance number, replaced instances' rows included: what filters read,
joining ``iid`` with ``instances._iid`` (a replaced instance's old number is in no row of
``instances``, so its rows match nothing); ``elements`` is for everyone else."""
JOIN = ElementJoin("_iid", "element_index", "iid")
"""How a DuckDB lake's filters reach ``instances`` (:class:`~dicomlake.lakeschema.ElementJoin`)."""


def join_of(con: Any) -> ElementJoin:
    """:data:`JOIN`, or by UID in a lake not converted yet (an older lake opened read-only)."""
    if _kind(con, "element_index") is not None and "_iid" in _columns(con, "instances"):
        return JOIN
    return ELEMENTS_BY_UID


def views(con: Any) -> None:
    """(Re)create ``elements`` and ``element_index`` (after their tables were replaced)."""
    con.execute(VIEW)
    con.execute(INDEX_VIEW)


_MATCH = " AND ".join(f"k.{a} IS NOT DISTINCT FROM b.{a}" for a in ATTRS)


def _kind(con: Any, name: str) -> str | None:
    row = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?", [name]
    ).fetchall()
    return str(row[0][0]) if row else None


def _columns(con: Any, name: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?", [name]
    ).fetchall()
    return {str(r[0]) for r in rows}


def ensure(con: Any) -> None:
    """Create the element store, or convert a lake of an older dicomlake (an ``elements``
    table; ``instance_keys`` of hashes only; ``instances`` without ``_iid``) to it, in one
    transaction."""
    old_elements = _kind(con, "elements") == "BASE TABLE"
    keys_cols = _columns(con, "instance_keys")
    new_keys = keys_cols != {"h", "iid", "SOPInstanceUID"}
    no_iid = "_iid" not in _columns(con, "instances")
    fresh = any(_kind(con, t) is None for t in ("element_keys", "element_index", *TABLES))
    if not (old_elements or fresh or new_keys or no_iid):
        return
    con.execute("BEGIN TRANSACTION")
    try:
        if new_keys:
            con.execute("DROP TABLE IF EXISTS instance_keys")
            con.execute(
                "CREATE TABLE instance_keys AS SELECT hash(SOPInstanceUID) AS h, "
                "(row_number() OVER ())::BIGINT AS iid, SOPInstanceUID FROM instances"
            )
        if no_iid:
            con.execute("ALTER TABLE instances ADD COLUMN _iid BIGINT")
        if no_iid or new_keys:
            number_instances(con)
        con.execute(
            "CREATE TABLE IF NOT EXISTS element_keys (kid INTEGER PRIMARY KEY, path_key VARCHAR, depth TINYINT, tag VARCHAR, "
            "keyword VARCHAR, VR VARCHAR, private_creator VARCHAR)"
        )
        for t in TABLES:
            con.execute(f"CREATE TABLE IF NOT EXISTS {t} ({DATA_COLUMNS})")
        if old_elements:
            con.execute("ALTER TABLE elements RENAME TO elements_v1")
            add_keys(con, "elements_v1")
            con.execute(
                f"""INSERT INTO element_data
                SELECT k.kid, n.iid, CASE WHEN b.path IS DISTINCT FROM b.path_key THEN b.path END,
                       b.value_text, b.value_num, b.length
                FROM elements_v1 b JOIN element_keys k ON {_MATCH}
                JOIN instance_keys n ON n.SOPInstanceUID = b.SOPInstanceUID
                ORDER BY k.kid, n.iid"""
            )
            con.execute("DROP TABLE elements_v1")
        views(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def number_instances(con: Any) -> None:
    """Copy each instance's number from ``instance_keys`` into ``instances._iid`` where it differs."""
    con.execute(
        "UPDATE instances SET _iid = n.iid FROM instance_keys n "
        "WHERE n.SOPInstanceUID = instances.SOPInstanceUID AND instances._iid IS DISTINCT FROM n.iid"
    )


def add_keys(con: Any, source: str) -> None:
    """Give every attribute of ``source`` not yet in ``element_keys`` the next ``kid``."""
    cols = ", ".join(ATTRS)
    con.execute(
        f"""INSERT INTO element_keys
        SELECT (SELECT coalesce(max(kid), 0) FROM element_keys) + row_number() OVER (ORDER BY {cols}), {cols}
        FROM (SELECT DISTINCT {cols} FROM {source} EXCEPT SELECT {cols} FROM element_keys)"""
    )


def append_sorted(con: Any, source: str) -> int:
    """Append the rows of ``source`` (a table or view of :data:`ELEMENT_SCHEMA`'s columns but
    ``SOPInstanceUID``, plus the instance's ``iid``) as one sorted run of ``element_data``:
    bulk loads of a known instance numbering (the benches' synthetic lakes); the rows added."""
    add_keys(con, source)
    row = con.execute(
        f"""INSERT INTO element_data
        SELECT k.kid, b.iid, CASE WHEN b.path IS DISTINCT FROM b.path_key THEN b.path END,
               b.value_text, b.value_num, b.length
        FROM {source} b JOIN element_keys k ON {_MATCH} ORDER BY k.kid, b.iid"""
    ).fetchall()
    return int(row[0][0]) if row else 0


def next_iid(con: Any) -> int:
    """The next unused instance number: the high-water mark kept in ``lake_meta``, or, in a lake
    without one, past every number in ``instance_keys`` and the element tables. Numbers are
    never reused: a replaced instance's old rows keep theirs until a merge drops them."""
    row = con.execute("SELECT value FROM lake_meta WHERE key = 'next_iid'").fetchall()
    if row:
        return int(row[0][0])
    tops = " UNION ALL ".join(f"SELECT max(iid) AS m FROM {t}" for t in ("instance_keys", *TABLES))
    return int(con.execute(f"SELECT coalesce(max(m), 0) + 1 FROM ({tops})").fetchall()[0][0])


def set_next_iid(con: Any, value: int) -> None:
    """Record the high-water mark (inside the transaction that used the numbers below it)."""
    con.execute("INSERT OR REPLACE INTO lake_meta VALUES ('next_iid', ?)", [str(value)])


def write(con: Any, elements: pa.Table, batch_iids: pa.Table | None) -> None:
    """Append a batch of ``elements`` rows (inside the caller's transaction).

    ``batch_iids`` (``u``, ``iid``) maps the batch's own instances; rows of other instances
    (an import writes the tables one after the other) find theirs in ``instance_keys``.
    Rows naming an instance the lake does not hold are refused (WriteError): the element
    store keys rows by instance.
    """
    con.register("b_el", elements)
    try:
        add_keys(con, "b_el")
        if batch_iids is not None:
            con.register("b_iid", batch_iids)
            ids = "(SELECT u AS SOPInstanceUID, iid FROM b_iid)"
        else:
            ids = (
                "(SELECT SOPInstanceUID, iid FROM instance_keys "
                "WHERE SOPInstanceUID IN (SELECT DISTINCT SOPInstanceUID FROM b_el))"
            )
        row = con.execute(
            f"""INSERT INTO element_delta
            SELECT k.kid, n.iid, CASE WHEN b.path IS DISTINCT FROM b.path_key THEN b.path END,
                   b.value_text, b.value_num, b.length
            FROM b_el b JOIN element_keys k ON {_MATCH} JOIN {ids} n ON n.SOPInstanceUID = b.SOPInstanceUID"""
        ).fetchall()
        written = int(row[0][0]) if row else 0
        if written != elements.num_rows:
            missing = con.execute(
                f"SELECT DISTINCT SOPInstanceUID FROM b_el WHERE SOPInstanceUID NOT IN (SELECT SOPInstanceUID FROM {ids})"
                " LIMIT 3"
            ).fetchall()
            raise WriteError(
                f"{elements.num_rows - written} element rows name instances the lake does not hold "
                f"(e.g. {', '.join(str(r[0]) for r in missing)}): write their instances rows first"
            )
    finally:
        con.unregister("b_el")
        if batch_iids is not None:
            con.unregister("b_iid")


def forget(con: Any, old_iids: np.ndarray) -> None:
    """Drop the unsorted rows of replaced instances (their rows in the sorted runs are hidden
    by the view until a merge or :func:`compact`)."""
    if old_iids.size:
        con.register("b_gone", pa.table({"iid": pa.array(old_iids, pa.int64())}))
        con.execute("DELETE FROM element_delta WHERE iid IN (SELECT iid FROM b_gone)")
        con.unregister("b_gone")


def count(con: Any, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


_LIVE = "WHERE d.iid IN (SELECT iid FROM instance_keys) ORDER BY d.kid, d.iid"


def _rebuild(con: Any, target: str, sources: tuple[str, ...]) -> None:
    """``target`` := the live rows of ``sources`` (``target`` among them or not), sorted; the
    sources emptied. Inside the caller's transaction."""
    union = " UNION ALL ".join(f"SELECT * FROM {t}" for t in sources)
    if target in sources:
        con.execute(f"CREATE TABLE element_sorting AS SELECT d.* FROM ({union}) d {_LIVE}")
        con.execute(f"DROP TABLE {target}")
        con.execute(f"ALTER TABLE element_sorting RENAME TO {target}")
    else:
        con.execute(f"INSERT INTO {target} SELECT d.* FROM ({union}) d {_LIVE}")
    for t in sources:
        if t != target:
            con.execute(f"DROP TABLE {t}")
            con.execute(f"CREATE TABLE {t} ({DATA_COLUMNS})")
    views(con)


def merge(con: Any) -> None:
    """Sort ``element_delta`` into a run of ``element_recent``; when that holds
    :data:`RUN_ROWS` rows, sort it into one run of ``element_data``. Rows of replaced
    instances are left out on the way."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"INSERT INTO element_recent SELECT d.* FROM element_delta d {_LIVE}")
        con.execute("DROP TABLE element_delta")
        con.execute(f"CREATE TABLE element_delta ({DATA_COLUMNS})")
        if count(con, "element_recent") >= RUN_ROWS:
            _rebuild(con, "element_data", ("element_recent",))
        views(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def compact(con: Any) -> int:
    """Rewrite every element row as one run sorted by ``(kid, iid)``, without the rows of
    replaced instances; the rows kept."""
    con.execute("BEGIN TRANSACTION")
    try:
        _rebuild(con, "element_data", TABLES)
        n = count(con, "element_data")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return n
