"""The PostgreSQL text of the Store's DuckDB-dialect statements (store/lakesql.py), by sqlglot."""

from __future__ import annotations

from dicomlake.store.lakesql import to_postgres_sql


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
