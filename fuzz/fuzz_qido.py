"""Fuzz target: QIDO-RS query parameters (PS3.18 §8.3.4, §10.6) → the SQL filter.

Input: a raw query string. Contract (:func:`dicomlake.web.dicomweb.parse_qido` and
``_match_sql``): a :class:`Qido` whose matches each become SQL with bound parameters, or
a ``WebError`` 400 listing the problems; anything else escaping is a 500. Two safety
properties are checked on top: a value can never change *which* attribute is matched
(the filter's key is the key the parameter named — what the analyst policy checks), and
no value reaches the SQL text (it is always a bound parameter).

Run: ``python fuzz/run.py --target qido --seconds 60``.
"""

from __future__ import annotations

from types import SimpleNamespace

from starlette.requests import Request

from dicomlake.errors import QueryError
from dicomlake.lakeschema import instance_columns
from dicomlake.query.filters import parse_filter
from dicomlake.web.context import WebError
from dicomlake.web.dicomweb import _key_text, _match_sql, parse_qido
from dicomlake.web.settings import WebSettings

MAX_LEN = 2048
SEEDS = "qido"
SHORT_RUNS = 15000
"""Executions of the short, fixed-seed run in the tests (``fuzz/run.py --seed 1 --runs short``)."""
_CTX = SimpleNamespace(settings=WebSettings(), data=SimpleNamespace(columns=instance_columns(None)))


def seed_inputs() -> list[bytes]:
    return [
        s.encode()
        for s in (
            "PatientName=SMITH*&fuzzymatching=true&limit=10",
            "StudyDate=20240101-20241231&ModalitiesInStudy=MG&includefield=all",
            "StudyInstanceUID=1.2.3,1.2.4&offset=20",
            "00100020=ABC?123&includefield=00080020,PatientAge",
            "CTDIPhantomTypeCodeSequence.CodeMeaning=*Body*",
            '(0019,"GEMS_ACQU_01",10)=5&StudyTime=0800-1200',
            "CompressionForce=>120&Modality=CT\\MR&limit=0",
            "AccessionNumber=&SeriesDescription=a%20b&StationName=CT1",
            "PatientID=x%27%20OR%201%3D1--&charset=utf-8&accept=application/dicom%2Bjson",
        )
    ]


def check(data: bytes) -> None:
    scope = {"type": "http", "method": "GET", "path": "/dicomweb/studies", "query_string": data, "headers": []}
    request = Request(scope)
    for level in ("study",):
        try:
            q = parse_qido(request, level, _CTX)  # type: ignore[arg-type]
        except WebError as exc:
            if exc.status != 400:
                raise
            return
        for m in q.matches:
            try:
                sql, params = _match_sql(m, q.fuzzy, _CTX, False)  # type: ignore[arg-type]
            except WebError as exc:
                if exc.status != 400:
                    raise
                continue
            if not isinstance(sql, str) or not isinstance(params, list):
                raise AssertionError("SQL and parameters expected")
            if m.vr == "PN" and q.fuzzy:
                continue
            value = m.value.replace("\\", ",") if m.vr == "UI" else m.value
            try:
                f = parse_filter(f"{_key_text(m.text)} = {value}", _CTX.data.columns)
            except QueryError:
                continue
            if (f.key.column, f.key.path_key, f.key.tag) != (m.key.column, m.key.path_key, m.key.tag):
                raise AssertionError(
                    f"parameter {m.text!r} with value {m.value!r} matches {f.key.text!r} instead of {m.key.text!r}"
                )
            if len(m.value) >= 4 and m.value.isalnum() and m.value in sql:
                raise AssertionError(f"value {m.value!r} spliced into SQL: {sql}")
