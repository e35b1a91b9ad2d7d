"""The DuckDB SQL the query layer writes, translated for PostgreSQL.

The query layer (:mod:`dicomlake.query.filters`, :mod:`dicomlake.query.lake`) and the
audits write DuckDB SQL. Most of it is standard SQL that PostgreSQL runs as it is; the
few differences are handled in two places:

- here, by rewriting tokens: ``?`` and ``$name`` parameters become psycopg's ``%s`` and
  ``%(name)s`` (and a literal ``%`` is doubled), unquoted mixed-case column names are
  quoted (DuckDB folds identifiers case-insensitively, PostgreSQL folds them to lower
  case), ``DOUBLE`` becomes ``DOUBLE PRECISION``, ``INTERVAL 1 DAY`` becomes
  ``INTERVAL '1 day'``;
- in the lake's schema (migration 2 of :mod:`dicomlake.store.migrations`), by SQL
  functions named like DuckDB's: ``list_contains``, ``string_split``, ``any_value``
  (PostgreSQL < 16), ``first``, ``median``, ``epoch``, ``strftime``.

What is left (``GROUP BY ALL``, ``EXCLUDE``, DuckDB table functions) fails with
PostgreSQL's own error, and ``dicomlake sql`` on a PostgreSQL lake documents that it
takes PostgreSQL's dialect.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Keywords that must stay keywords even where a column has the same name (``ROWS`` in a
# window frame vs the ``Rows`` column): they are quoted only when written in the column's
# exact spelling.
_KEYWORDS = frozenset(
    [
        "all",
        "and",
        "any",
        "as",
        "asc",
        "between",
        "by",
        "case",
        "cast",
        "columns",
        "current",
        "desc",
        "distinct",
        "else",
        "end",
        "exists",
        "false",
        "first",
        "following",
        "from",
        "full",
        "group",
        "having",
        "in",
        "inner",
        "interval",
        "is",
        "join",
        "last",
        "left",
        "like",
        "limit",
        "not",
        "null",
        "nulls",
        "offset",
        "on",
        "or",
        "order",
        "outer",
        "over",
        "partition",
        "preceding",
        "range",
        "right",
        "rows",
        "select",
        "then",
        "true",
        "unbounded",
        "union",
        "using",
        "when",
        "where",
        "window",
        "with",
        "grid",
    ]
)
_TYPES = {
    "double": "DOUBLE PRECISION",
    "tinyint": "SMALLINT",
    "hugeint": "NUMERIC",
    "blob": "BYTEA",
    "string": "TEXT",
    "ubigint": "NUMERIC",
    "uinteger": "BIGINT",
}
_TOKEN = re.compile(
    r"""
    (?P<str>'(?:[^']|'')*')
  | (?P<ident>"(?:[^"]|"")*")
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<word>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)
  | (?P<named>\$[A-Za-z_][A-Za-z_0-9]*)
  | (?P<qmark>\?)
  | (?P<cast>::)
  | (?P<ws>\s+)
  | (?P<other>.)
    """,
    re.S | re.X,
)
_UNITS = {
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "month",
    "months",
    "year",
    "years",
    "week",
    "weeks",
}


def _col_map(columns: Iterable[str]) -> dict[str, str]:
    """lower-case name → exact name, for names PostgreSQL would fold differently."""
    return {c.lower(): c for c in columns if c != c.lower()}


def to_postgres(
    sql: str,
    params: Mapping[str, object] | list[object] | tuple[object, ...] | None,
    columns: Iterable[str] = (),
) -> tuple[str, Mapping[str, object] | list[object]]:
    """Translate one DuckDB statement and its parameters for psycopg.

    Parameters
    ----------
    sql
        A statement in DuckDB's dialect, with ``?`` or ``$name`` parameters.
    params
        Positional or named parameters, as given to DuckDB.
    columns
        Column names of the lake's tables (mixed-case ones are quoted when unquoted).

    >>> to_postgres('SELECT count(*) FROM instances WHERE SOPInstanceUID = ? AND x LIKE \\'%a\\'',
    ...             ["1.2"], ["SOPInstanceUID"])
    ('SELECT count(*) FROM instances WHERE "SOPInstanceUID" = %s AND x LIKE \\'%%a\\'', ['1.2'])
    """
    cols = _col_map(columns)
    out: list[str] = []
    tokens = [(m.lastgroup or "other", m.group()) for m in _TOKEN.finditer(sql)]
    named = isinstance(params, Mapping)
    i = 0
    prev_word = ""
    parens: list[str] = []  # what opened each "(": the function name before it, or ""
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "other" and text == "(":
            parens.append(prev_word if out and not out[-1].isspace() else "")
        elif kind == "other" and text == ")" and parens:
            parens.pop()
        if kind == "str" or kind == "comment":
            out.append(text.replace("%", "%%"))
        elif kind == "qmark":
            out.append("%s")
        elif kind == "named":
            out.append(f"%({text[1:]})s" if named else text)
        elif kind == "word":
            low = text.lower()
            nxt = _next_word(tokens, i)
            if low == "interval" and _interval_literal(tokens, i) is not None:
                lit, skip = _interval_literal(tokens, i)  # type: ignore[misc]
                out.append(f"INTERVAL '{lit}'")
                i = skip
                prev_word = "interval"
                continue
            if (
                low in _TYPES
                and (prev_word == "as" or _after_cast(out))
                and not (low == "double" and nxt == "precision")
            ):
                out.append(_TYPES[low])
                prev_word = low
                i += 1
                continue
            if low in cols and (text == cols[low] or low not in _KEYWORDS) and not _is_call(tokens, i):
                out.append(f'"{cols[low]}"')
            elif prev_word == "as" and not (parens and parens[-1] == "cast") and low not in _KEYWORDS:
                out.append(f'"{text}"')  # an output name keeps its case, as in DuckDB
            elif text != low and text != text.upper() and not _is_call(tokens, i) and not _after_cast(out):
                out.append(f'"{text}"')  # a mixed-case identifier DuckDB would match as written
            else:
                out.append(text)
            prev_word = low
        elif kind == "other" and text == "%":
            out.append("%%")
        else:
            out.append(text)
        i += 1
    if params is None:
        return "".join(out), []
    return "".join(out), (dict(params) if named else list(params))  # type: ignore[arg-type]


def _next_word(tokens: list[tuple[str, str]], i: int) -> str:
    for kind, text in tokens[i + 1 :]:
        if kind == "ws" or kind == "comment":
            continue
        return text.lower()
    return ""


def _is_call(tokens: list[tuple[str, str]], i: int) -> bool:
    """True when the word at i is a function name (followed by ``(``)."""
    return _next_word(tokens, i) == "("


def _after_cast(out: list[str]) -> bool:
    for text in reversed(out):
        if text.isspace():
            continue
        return text == "::"
    return False


def _interval_literal(tokens: list[tuple[str, str]], i: int) -> tuple[str, int] | None:
    """``INTERVAL 1 DAY`` (DuckDB) at i → ("1 day", index after it)."""
    j = i + 1
    seen: list[tuple[str, str]] = []
    while j < len(tokens) and len(seen) < 2:
        if tokens[j][0] != "ws":
            seen.append(tokens[j])
        j += 1
    if len(seen) == 2 and seen[0][0] == "num" and seen[1][0] == "word" and seen[1][1].lower() in _UNITS:
        return f"{seen[0][1]} {seen[1][1].lower()}", j
    return None
