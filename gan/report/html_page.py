"""report.md as one self-contained HTML page: its images inlined as data URIs, tables rendered.

Converts only the Markdown that ``gan.report`` writes (headings, paragraphs, bullet lists, pipe
tables, images on their own line, ``> `` warnings, ``**bold**`` and ``code``), so it needs no
Markdown package.
A page that travels alone (e-mail, a chat, a CI artifact) keeps its figures.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
.warning { background: #fff3cd; border-left: 6px solid #d98c00; padding: 0.6em 1em;
           margin: 1em 0; }
"""
MERGING = ("table", "list", "text", "warning")  # kinds whose consecutive lines form one block
IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")


def inline(text: str) -> str:
    """Escaped text with **bold** and `code` made into tags."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def image(alt: str, src: str, base: Path) -> str:
    """An <img> whose PNG (a figure of this report, under ``base``) is inlined; a note when the
    file is missing, or lies elsewhere (a run's name can put any Markdown line on the page)."""
    path = (base / src).resolve()
    if not path.is_file() or not path.is_relative_to(Path(base).resolve()):
        return f"<p><em>(missing figure {html.escape(src)})</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def table(rows: list[str]) -> str:
    """A pipe table: the header row, the |---| row, then the body rows."""

    def cells(row: str) -> list[str]:
        return [c.strip() for c in row.strip().strip("|").split("|")]

    head = "".join(f"<th>{inline(c)}</th>" for c in cells(rows[0]))
    body = "".join(
        "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(r)) + "</tr>" for r in rows[2:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def blocks(markdown: str) -> list[list[str]]:
    """Consecutive non-blank lines grouped; a table, list or image line starts its own block."""
    groups: list[list[str]] = []
    for line in markdown.splitlines():
        kind = _kind(line)
        if kind == "blank":
            groups.append([])
        elif kind in MERGING and groups and groups[-1] and _kind(groups[-1][-1]) == kind:
            groups[-1].append(line)
        else:
            groups.append([line])
    return [g for g in groups if g]


def _kind(line: str) -> str:
    if not line.strip():
        return "blank"
    if line.startswith("|"):
        return "table"
    if line.startswith("- "):
        return "list"
    if line.startswith("> "):
        return "warning"
    if line.startswith("#"):
        return "heading"
    return "image" if IMAGE.match(line.strip()) else "text"


def render(markdown: str, base: Path, title: str) -> str:
    """The whole page; images are read from ``base`` (the report's directory)."""
    parts = []
    for block in blocks(markdown):
        kind = _kind(block[0])
        if kind == "table":
            parts.append(table(block))
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{inline(x[2:])}</li>" for x in block) + "</ul>")
        elif kind == "warning":
            text = " ".join(x[2:] for x in block)
            parts.append(f'<div class="warning" role="alert">{inline(text)}</div>')
        elif kind == "heading":
            level = min(len(block[0]) - len(block[0].lstrip("#")), 6)
            parts.append(f"<h{level}>{inline(block[0].lstrip('#').strip())}</h{level}>")
        elif kind == "image":
            match = IMAGE.match(block[0].strip())
            parts.append(image(match["alt"], match["src"], base))
        else:
            parts.append(f"<p>{inline(' '.join(block))}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )
