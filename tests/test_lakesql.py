"""The PostgreSQL text of the Store's DuckDB-dialect statements (store/lakesql.py), by sqlglot."""

from __future__ import annotations

import re

import pytest

from dicomlake.errors import QueryError
from dicomlake.store.lakesql import to_postgres, to_postgres_sql, translate


def test_parameters_case_and_percent_signs_survive_translation() -> None:
    pg = to_postgres_sql("SELECT i.SOPInstanceUID, '50%' AS p FROM instances i WHERE i.StudyDate > CAST(? AS DATE)")
    assert '"i"."SOPInstanceUID"' in pg and '"StudyDate"' in pg  # mixed case kept, quoted
    assert "'50%%'" in pg and pg.count("%s") == 1  # a literal % doubled for psycopg, one parameter


def test_duckdb_functions_become_postgres_ones() -> None:
    pg = to_postgres_sql("SELECT strftime(d, '%Y%m%d'), median(x), CAST(round(v, 6) AS VARCHAR), epoch(t) FROM a")
    assert "TO_CHAR" in pg and "'YYYYMMDD'" in pg
    assert "PERCENTILE_CONT(0.5)" in pg
    assert ("ROUND(CAST(" in pg and "AS DECIMAL" in pg.upper()) or "NUMERIC" in pg.upper()  # round(numeric, n)
    assert "TRIM_SCALE" in pg.upper()
    assert "EPOCH" in pg.upper()


NAMES = frozenset(
    ["instances", "dose_events"]
    + [f"instances.{c}" for c in ("SOPInstanceUID", "Modality", "KVP", "Rows", "ImageType")]
    + [f"dose_events.{c}" for c in ("SOPInstanceUID", "kvp")]
)


def test_parameters_become_psycopg_ones_and_every_other_percent_sign_is_doubled() -> None:
    pg, params = to_postgres("SELECT a % 2, 'x%' FROM t WHERE b LIKE ? AND c = ?", ["%a", 1])
    assert pg == 'SELECT "a" %% 2, \'x%%\' FROM "t" WHERE "b" LIKE %s AND "c" = %s' and params == ["%a", 1]
    pg, named = to_postgres("SELECT * FROM t WHERE a = $uid OR b = $uid", {"uid": "1.2"})
    assert pg.endswith('"a" = %(uid)s OR "b" = %(uid)s') and named == {"uid": "1.2"}
    pg, params = to_postgres("SELECT $2, $1, $2", ["one", "two"])
    assert pg == "SELECT %s, %s, %s" and params == ["two", "one", "two"]
    # list_contains stays one call: sqlglot's own rewrite repeats the parameter (two %s, one value)
    pg, _ = to_postgres("SELECT list_contains(string_split(ImageType, '\\'), ?) FROM instances", ["X"], NAMES)
    assert pg.count("%s") == 1 and "LIST_CONTAINS(STRING_SPLIT(" in pg.upper()


def test_identifiers_take_the_lake_spelling_as_duckdb_resolves_them() -> None:
    pg, _ = to_postgres("SELECT modality AS Mod, I.sopinstanceuid FROM Instances i GROUP BY Mod", None, NAMES)
    assert pg == 'SELECT "Modality" AS "Mod", "i"."SOPInstanceUID" FROM "instances" AS "i" GROUP BY "Mod"'
    # an exact name wins over a case-insensitive one: dose_events' kvp is not instances' KVP
    pg, _ = to_postgres(
        "SELECT d.kvp, i.KVP, i.Kvp FROM dose_events d JOIN instances i USING (sopinstanceuid)", None, NAMES
    )
    assert '"d"."kvp", "i"."KVP", "i"."KVP"' in pg and 'USING ("SOPInstanceUID")' in pg
    # ... and within a query over a lake table, that table's column: instances has KVP only
    pg, _ = to_postgres(
        "SELECT kvp FROM instances WHERE Kvp > 0 AND sopinstanceuid IN (SELECT kVp FROM dose_events)", None, NAMES
    )
    assert (
        pg == 'SELECT "KVP" FROM "instances" WHERE "KVP" > 0 AND "SOPInstanceUID" IN (SELECT "kvp" FROM "dose_events")'
    )
    pg, _ = to_postgres("WITH Big AS (SELECT 1 AS X) SELECT x FROM big", None, NAMES)
    assert pg == 'WITH "Big" AS (SELECT 1 AS "X") SELECT "X" FROM "Big"'
    # the statement's alias before a lake name it folds to (a PostgreSQL lake's filter views
    # have a column "mask"): ORDER BY Mask is the alias
    pg, _ = to_postgres(
        "SELECT Modality, count(*) AS Mask FROM instances GROUP BY Modality ORDER BY Mask",
        None,
        NAMES | {"element_nums", "element_nums.mask"},
    )
    assert pg.endswith('AS "Mask" FROM "instances" GROUP BY "Modality" ORDER BY "Mask"'), pg


def test_group_by_all_lists_the_columns_without_an_aggregate() -> None:
    pg, _ = to_postgres("SELECT Modality, count(*), upper(Modality) AS u FROM instances GROUP BY ALL", None, NAMES)
    assert pg.endswith("GROUP BY 1, 3")
    pg, _ = to_postgres("SELECT count(*) FROM instances GROUP BY ALL", None, NAMES)
    assert "GROUP BY" not in pg
    pg, _ = to_postgres("SELECT *, count(*) FROM instances GROUP BY ALL", None, NAMES)
    assert "GROUP BY ALL" in pg  # left to PostgreSQL's own error


def test_functions_the_lake_schema_defines_are_kept_where_sqlglot_would_break_them() -> None:
    pg, _ = to_postgres("SELECT strftime(d, f), median(x) OVER (PARTITION BY y), median(x) FROM t")
    assert 'STRFTIME("d", "f")' in pg  # a non-literal format: the schema's strftime()
    assert 'MEDIAN("x") OVER' in pg and "PERCENTILE_CONT(0.5) WITHIN GROUP" in pg
    pg, _ = to_postgres("SELECT x FROM t ORDER BY x DESC")
    assert pg.endswith("DESC NULLS LAST")  # DuckDB's NULL order


def test_translations_are_cached() -> None:
    sql = "SELECT count(*) FROM instances WHERE Modality = ?"
    translate(sql, NAMES)
    hits = translate.cache_info().hits
    translate(sql, NAMES)
    assert translate.cache_info().hits == hits + 1


def test_an_interval_parameter_stays_outside_string_literals_and_unparsable_sql_says_so() -> None:
    pg, _ = to_postgres("SELECT d + INTERVAL (?) DAY, d - INTERVAL 1 DAY FROM t", [3])
    assert pg == 'SELECT "d" + (CAST(%s AS DOUBLE PRECISION) * INTERVAL \'1 DAY\'), "d" - INTERVAL \'1 DAY\' FROM "t"'
    with pytest.raises(QueryError, match="cannot be translated for PostgreSQL"):
        to_postgres("SELECT ?::TIMESTAMP")


def test_every_statement_the_lake_sends_translates_with_its_parameters() -> None:
    """The DuckDB statements PostgresStore.query and the sandbox received while the PostgreSQL
    integration tests ran (audits, QIDO-RS, dashboards, filters, user SQL): each one
    translates, keeps its parameters (one ``%s`` per ``?``) and reads back as PostgreSQL."""
    import json
    from pathlib import Path

    import sqlglot
    from sqlglot import exp

    from dicomlake.lakeschema import instance_columns, table_schemas

    schemas = table_schemas(instance_columns())
    names = frozenset(list(schemas) + [f"{t}.{f.name}" for t, s in schemas.items() for f in s])
    lines = (Path(__file__).parent / "data" / "duckdb_statements.jsonl").read_text().splitlines()
    assert len(lines) >= 100
    for line in lines:
        case = json.loads(line)
        sql, params = case["sql"], case["params"]
        want = len(list(sqlglot.parse_one(sql, read="duckdb").find_all(exp.Placeholder)))
        values = {n: n for n in params} if isinstance(params, list) else [None] * params
        pg, out = to_postgres(sql, values, names)
        marks = re.findall(r"%%|%s|%\((\w+)\)s", pg)
        assert sum(m != "%%" for m in re.findall(r"%%|%s|%\(\w+\)s", pg)) == want, sql
        assert out == values
        assert all(m in values for m in marks if m), sql
        sqlglot.parse_one(
            re.sub(r"%%|%s|%\(\w+\)s", lambda m: "%" if m.group() == "%%" else "NULL", pg), read="postgres"
        )
