"""Build the docs (Markdown in ``docs/``) into static HTML in ``site/``, offline.

Uses markdown-it-py (already installed with rich), so ``make docs`` needs no network. The
navigation is ``docs/_nav.toml``. Internal links to ``*.md`` become ``*.html``; a link to a
page or anchor that does not exist fails the build.

Usage::

    python util/build_docs.py [--out site]
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
import tomllib
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

CSS = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;display:flex;color:#1d2433}
nav{width:16rem;flex:none;background:#f3f5f9;padding:1rem;min-height:100vh;box-sizing:border-box}
nav a{display:block;color:#1d4ed8;text-decoration:none;padding:.1rem 0}nav h3{margin:1rem 0 .2rem;font-size:.9rem}
main{max-width:60rem;padding:1rem 2rem;overflow-x:auto}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:13px;line-height:1.3}
code{font-family:ui-monospace,monospace}table{border-collapse:collapse;font-size:14px}
td,th{border:1px solid #d0d7de;padding:.2rem .4rem;vertical-align:top}
"""


def slug(text: str) -> str:
    """Anchor of a heading: lower case, runs of other characters → '-'."""
    return re.sub(r"[^a-z0-9_]+", "-", re.sub(r"<[^>]+>", "", text).lower()).strip("-")


def _md() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True}).enable("table")

    def heading_open(self, tokens, idx, options, env):  # type: ignore[no-untyped-def]
        inline = tokens[idx + 1]
        anchor = slug(inline.content)
        env.setdefault("anchors", set()).add(anchor)
        tokens[idx].attrSet("id", anchor)
        return self.renderToken(tokens, idx, options, env)

    def fence(self, tokens, idx, options, env):  # type: ignore[no-untyped-def]
        tok = tokens[idx]
        lang = tok.info.split()[0] if tok.info.strip() else ""
        note = ""
        if "no-run" in tok.info:
            note = (
                '<div style="font-size:12px;color:#666">not run by the tests: '
                + html.escape(tok.info.split("no-run", 1)[1].lstrip(": "))
                + "</div>"
            )
        return f'{note}<pre><code class="language-{html.escape(lang)}">{html.escape(tok.content)}</code></pre>\n'

    md.add_render_rule("heading_open", heading_open)
    md.add_render_rule("fence", fence)
    return md


def pages() -> list[tuple[str, list[tuple[str, str]]]]:
    nav = tomllib.loads((DOCS / "_nav.toml").read_text("utf-8"))
    return [(s["title"], [(p["title"], p["page"]) for p in s["pages"]]) for s in nav["section"]]


def build(out: Path) -> list[str]:
    """Write the site; return the broken links found (the caller fails on any)."""
    md = _md()
    sources = {p.relative_to(DOCS).as_posix(): p.read_text("utf-8") for p in DOCS.rglob("*.md")}
    sources["changelog.md"] = (ROOT / "CHANGELOG.md").read_text("utf-8")
    rendered: dict[str, tuple[str, set[str]]] = {}
    for name, text in sources.items():
        text = re.sub(
            r"<!-- include: (\S+) (\w+) -->",
            lambda m: f"```{m.group(2)}\n" + (ROOT / m.group(1)).read_text("utf-8").rstrip("\n") + "\n```",
            text,
        )
        env: dict[str, object] = {}
        body = md.render(text, env)
        rendered[name] = (body, env.get("anchors", set()))  # type: ignore[arg-type]
    broken: list[str] = []
    if out.exists():
        shutil.rmtree(out)
    nav = pages()
    for name, (body, _anchors) in rendered.items():
        depth = name.count("/")
        up = "../" * depth

        def fix(m: re.Match[str], name: str = name) -> str:
            target, anchor = m.group(1), m.group(2) or ""
            if re.match(r"^[a-z]+:", target):
                return m.group(0)
            resolved = (Path(name).parent / target).as_posix() if target else name
            resolved = _norm(resolved)
            if target and resolved not in rendered and not target.startswith("../"):
                broken.append(f"{name}: link to {target} (no such page)")
            elif anchor and resolved in rendered and anchor[1:] not in rendered[resolved][1]:
                broken.append(f"{name}: link to {target}{anchor} (no such heading)")
            return f'href="{target[:-3] + ".html" if target.endswith(".md") else target}{anchor}"'

        body = re.sub(r'href="([^"#]*)(#[^"]*)?"', fix, body)
        links = "".join(
            f"<h3>{html.escape(sec)}</h3>"
            + "".join(f'<a href="{up}{page[:-3]}.html">{html.escape(title)}</a>' for title, page in items)
            for sec, items in nav
        )
        title = re.search(r"<h1[^>]*>(.*?)</h1>", body)
        doc = (
            f"<!doctype html><html lang=en><head><meta charset=utf-8><title>"
            f"{re.sub(r'<[^>]+>', '', title.group(1)) if title else name} — dicomlake</title>"
            f'<meta name=viewport content="width=device-width"><style>{CSS}</style></head>'
            f'<body><nav><a href="{up}index.html"><b>dicomlake</b></a>{links}</nav><main>{body}</main></body></html>'
        )
        dest = out / (name[:-3] + ".html")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(doc, encoding="utf-8")
    for _sec, items in nav:
        for _t, page in items:
            if page not in rendered:
                broken.append(f"_nav.toml: {page} does not exist")
    return broken


def _norm(path: str) -> str:
    parts: list[str] = []
    for p in path.split("/"):
        if p == "..":
            if parts:
                parts.pop()
        elif p not in ("", "."):
            parts.append(p)
    return "/".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build docs/ into static HTML.")
    ap.add_argument("--out", type=Path, default=ROOT / "site")
    args = ap.parse_args(argv)
    broken = build(args.out)
    for b in broken:
        print(f"broken link: {b}", file=sys.stderr)
    n = len(list(args.out.rglob("*.html")))
    print(f"built {n} pages into {args.out}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
