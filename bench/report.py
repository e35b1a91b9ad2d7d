"""Figures and tables shared by the benchmarks: what each bench returns and how it prints."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Figure:
    """One measured number, named so that a summary line reads on its own."""

    what: str
    value: float | None
    unit: str
    peer: str = ""
    """The yardstick this figure is compared with, if any (e.g. ``dcmdump -q -M``)."""
    note: str = ""


@dataclass
class BenchResult:
    """What a bench's ``main()`` returns: its figures, a table to print and raw data."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    raw: dict[str, object] = field(default_factory=dict)
    error: str | None = None

    def add(self, what: str, value: float | None, unit: str, peer: str = "", note: str = "") -> None:
        self.figures.append(Figure(what, value, unit, peer, note))

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "error": self.error,
            "figures": [asdict(f) for f in self.figures],
            "raw": self.raw,
        }


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str = "") -> str:
    """A number as a reader wants it: thousands separated, 3 significant digits at most."""
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """A plain-text table with a header rule, columns padded to their widest cell."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    for row in rows:
        out.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(out)


def _numeric(cell: str) -> bool:
    if len(cell.split(" ")) > 2:
        return False
    head = cell.split(" ")[0].replace(",", "").replace(".", "").replace("-", "").replace("×", "")
    return head.isdigit()


def figures_table(result: BenchResult) -> str:
    rows = [[f.what, fmt(f.value, f.unit), f.peer, f.note] for f in result.figures]
    return table(rows, ["figure", "value", "peer", "note"])
