"""What every audit shares: the selection (dates and --where filters), standardised names,
operator pseudonyms, settings, and the small statistics the reports quote."""

from __future__ import annotations

import datetime as dt
import math
import os
import secrets
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from dicomlake.curate.normalise import parse_person_name
from dicomlake.errors import ConfigError
from dicomlake.query.filters import where_clause
from dicomlake.query.lake import Lake
from dicomlake.store.curation import curation_of

SETTINGS_ENV = "DICOMLAKE_AUDIT_SETTINGS"


@dataclass(slots=True)
class Selection:
    """Which instances an audit looks at: a study date range and filters on any attribute."""

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    where: list[str] = field(default_factory=list)

    def sql(self, lake: Lake, alias: str = "i") -> tuple[str, list[object]]:
        """A condition on ``instances {alias}``."""
        cond, params, _ = where_clause(list(self.where), lake.columns, lake.element_join)
        if alias != "i":
            cond = cond.replace('i."', f'{alias}."')
        parts = [f"({cond})"]
        if self.date_from:
            parts.append(f'{alias}."StudyDate" >= ?')
            params.append(self.date_from)
        if self.date_to:
            parts.append(f'{alias}."StudyDate" <= ?')
            params.append(self.date_to)
        return " AND ".join(parts), params

    def sentence(self, what: str, n: int, lake_path: object) -> str:
        bits = []
        if self.date_from or self.date_to:
            bits.append(f"study date {self.date_from or '…'} to {self.date_to or '…'}")
        bits.extend(self.where)
        cond = (" where " + " and ".join(bits)) if bits else ""
        return f"{n:,} {what} in {lake_path}{cond}."


def load_settings(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Audit settings: ``path``, else ``$DICOMLAKE_AUDIT_SETTINGS``, else the shipped examples."""
    chosen = path or os.environ.get(SETTINGS_ENV)
    if chosen:
        try:
            return tomllib.loads(Path(chosen).read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"audit settings {chosen}: cannot read them ({exc})") from exc
    return tomllib.loads(resources.files("dicomlake.audit").joinpath("settings.toml").read_text("utf-8"))


def std_instances(lake: Lake) -> str:
    """A subquery: ``instances`` plus the ``*_std`` name columns of the latest mapping."""
    return f"({curation_of(lake.store).std_relation()})"


def std_expr(lake: Lake, field: str, expr: str) -> str:
    return curation_of(lake.store).std_value_sql(field, expr)


# ---- operators ----------------------------------------------------------------------------


class OperatorPseudonyms:
    """Operators' Name → a keyed pseudonym (HMAC under ``DICOMLAKE_DEID__SECRET``, through the
    de-identification Keyring), so audits compare operators without naming them. Without a
    secret a random key is drawn and pseudonyms differ between reports (a note says so)."""

    def __init__(self) -> None:
        from dicomlake.deid.engine import settings_from_env
        from dicomlake.deid.pseudonym import Keyring

        s = settings_from_env()
        secret = s.secret.get_secret_value().encode() if s.secret is not None else None
        self.keyed = secret is not None and len(secret) >= 16
        self.keyring = Keyring(secret if self.keyed else secrets.token_bytes(32))  # type: ignore[arg-type]

    def __call__(self, operators_name: str | None) -> str | None:
        if not operators_name or not operators_name.strip():
            return None
        first = operators_name.split("\\")[0]
        pn = parse_person_name(first)
        key = pn.key if pn else first.strip().upper()
        return self.keyring.code("OperatorsName", key, prefix="OP-", length=6)

    def column(self, df: pl.DataFrame, source: str = "OperatorsName", target: str = "operator") -> pl.DataFrame:
        values = df.get_column(source).to_list() if source in df.columns else [None] * df.height
        return df.with_columns(pl.Series(target, [self(v) for v in values], dtype=pl.String))

    def patient(self, patient_id: str | None) -> str | None:
        """A keyed pseudonym of a Patient ID (for per-patient alerts), never the ID itself."""
        if not patient_id or not patient_id.strip():
            return None
        return self.keyring.code("PatientID", patient_id.strip(), prefix="PT-", length=8)

    @property
    def note(self) -> str | None:
        if self.keyed:
            return None
        return (
            "Operators are pseudonymised with a random key for this report only; set "
            "DICOMLAKE_DEID__SECRET for pseudonyms that stay the same between reports."
        )


# ---- statistics ---------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile with linear interpolation between order statistics (Hyndman–Fan type 7,
    the default of numpy and pandas): what a DRL as "the third quartile" means here."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class ExpFit:
    """``dose = a · exp(b · thickness)``, least squares on log(dose)."""

    a: float
    b: float
    r2: float
    n: int

    def __call__(self, t: float) -> float:
        return self.a * math.exp(self.b * t)


def fit_exponential(x: Sequence[float], y: Sequence[float]) -> ExpFit | None:
    """Fit ``y = a·exp(b·x)`` by ordinary least squares of ``ln y`` on ``x`` (y > 0 only)."""
    pts = [
        (float(a), math.log(float(b))) for a, b in zip(x, y, strict=True) if a is not None and b is not None and b > 0
    ]
    n = len(pts)
    if n < 3:
        return None
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    b = sxy / sxx
    ln_a = my - b * mx
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    ss_res = sum((p[1] - (ln_a + b * p[0])) ** 2 for p in pts)
    r2 = 1 - ss_res / ss_tot if ss_tot else 1.0
    return ExpFit(math.exp(ln_a), b, r2, n)


@cache
def _colors() -> list[str]:
    return [
        "#3b6ea5",
        "#d9822b",
        "#3a9d5d",
        "#c23b3b",
        "#7d5ba6",
        "#8c6d31",
        "#d16ba5",
        "#5f6b73",
        "#bcbd22",
        "#17becf",
    ]


def color(i: int) -> str:
    return _colors()[i % len(_colors())]
