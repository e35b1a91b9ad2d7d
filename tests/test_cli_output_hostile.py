"""`dicomlake query`'s terminal table with hostile values: rich markup and control sequences are text."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest


def test_the_terminal_table_shows_markup_and_escapes_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from dicomlake.cli import output

    values = ["[/]", "[link=http://evil.example]open[/link]", "\x1b[2J\x1b]8;;http://evil.example\x07x", None]
    buf = io.StringIO()
    monkeypatch.setattr("rich.console.Console", lambda *a, **k: Console(file=buf, width=200, force_terminal=True))
    output.write_table(pa.table({"StationName": values}), output.Format.table, None)
    text = buf.getvalue()
    raw = text.encode()
    # the oracle: the bytes written; rich's own styling uses CSI m sequences, nothing else may reach the terminal
    assert b"\x1b[2J" not in raw and b"\x1b]8" not in raw and b"\x07" not in raw
    assert "[/]" in text and "[link=http://evil.example]open[/link]" in text
    assert "\\x1b[2J" in text
