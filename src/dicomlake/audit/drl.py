"""Which national diagnostic reference level (DRL) a study or protocol is judged against.

Each ``[[ct.drl]]`` (``[[dx.drl]]``, …) rule of the settings names a body region and says
what it matches: ``match`` (one regular expression) and/or ``all`` (a list of regular
expressions that must *all* match), case-insensitive, each at the start of a word ("abdo"
matches "Abdomen" and "IH_abdo", not "CTabdo": a letter or digit before it joins the word). Rules are tried most specific first:

1. a higher explicit ``precedence`` (default 0) wins;
2. then the rule with more terms (``all`` entries, plus one for ``match``);
3. equally specific rules that both match and give different DRLs are **ambiguous**: the
   name is not compared with any DRL, and the report says so.

So "CT Thorax & abdo & pelvis" matches the chest-abdomen-pelvis rule (three terms) before
the chest rule (one term), and "Chest and abdomen" (two one-term rules) is ambiguous
unless a chest-abdomen rule exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dicomlake.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    terms: tuple[re.Pattern[str], ...]
    precedence: int
    order: int
    values: dict[str, float]

    @property
    def specificity(self) -> tuple[int, int]:
        return (self.precedence, len(self.terms))

    def matches(self, text: str) -> bool:
        return all(t.search(text) for t in self.terms)


@dataclass(frozen=True, slots=True)
class Match:
    """The outcome for one name: the rule (``None`` when none or ambiguous) and why."""

    rule: str | None
    value: float | None
    note: str


def _compile(expr: str, where: str) -> re.Pattern[str]:
    text = str(expr)
    try:
        return re.compile(rf"(?<![^\W_])(?:{text})", re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{where}: {text!r} is not a regular expression ({exc})") from exc


def parse_rules(raw: list[dict[str, Any]], section: str) -> list[Rule]:
    rules = []
    for n, r in enumerate(raw):
        where = f"[[{section}.drl]] #{n + 1}"
        exprs = ([r["match"]] if r.get("match") else []) + list(r.get("all", []))
        if not exprs:
            raise ConfigError(f"{where}: give `match` or `all` (regular expressions on the name)")
        values = {k: float(v) for k, v in r.items() if isinstance(v, (int, float)) and k != "precedence"}
        rules.append(Rule(name=str(r.get("name") or r.get("match") or " & ".join(r.get("all", []))),
                          terms=tuple(_compile(e, where) for e in exprs), precedence=int(r.get("precedence", 0)),
                          order=n, values=values))  # fmt: skip
    return rules


def match(rules: list[Rule], name: str | None, key: str) -> Match:
    """The DRL ``key`` (e.g. ``DLP_mGycm``) for ``name`` by the most specific matching rule."""
    if not name:
        return Match(None, None, "no name")
    hits = [r for r in rules if key in r.values and r.matches(name)]
    if not hits:
        return Match(None, None, "no DRL rule matches")
    best = max(r.specificity for r in hits)
    top = [r for r in hits if r.specificity == best]
    if len({r.values[key] for r in top}) > 1:
        return Match(None, None, "ambiguous: " + ", ".join(r.name for r in top))
    shadowed = [r.name for r in hits if r.specificity != best]
    note = f"most specific of: {', '.join([top[0].name, *shadowed])}" if shadowed else "only match"
    return Match(top[0].name, top[0].values[key], note)
