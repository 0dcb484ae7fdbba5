"""The run report's building blocks and their two renderings: Markdown (report.md) and one self-contained
HTML page (report.html: inline CSS and SVG, nothing fetched). Imports no torch.

A section is a title and blocks (text, tables, figures, folded text, links), or a "not run" line; both
renderings walk the same sections, so report.md and report.html never disagree (Markdown leaves the
figures to the HTML page).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from tuneforge.bench.report import fmt


def number(value: Any) -> str:
    """How a number reads in the report: 4 significant digits, a whole count with separators (34,696,
    not 3.47e+04), n/a when missing."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        value = int(value)
    return fmt(value)


@dataclass
class Text:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    code_columns: tuple[int, ...] = ()
    """Columns of model text (references, outputs): shown as code, wrapped, in a smaller font."""


@dataclass
class Figure:
    svg: str
    caption: str


@dataclass
class Folded:
    """Text shown on request (<details>): the full recipe."""

    summary: str
    text: str
    language: str = ""


@dataclass
class Links:
    label: str
    targets: list[tuple[str, str]]
    """(name, path relative to the run folder)."""


Block = Text | Table | Figure | Folded | Links


@dataclass
class Section:
    key: str
    """The section's id in the page (#recipe, #cost...)."""
    title: str
    blocks: list[Block] = field(default_factory=list)
    not_run: str | None = None
    """Why there is nothing to show (a stage that did not run), instead of the blocks."""


def not_run(key: str, title: str, stage: str) -> Section:
    """The section of a stage that did not run: one line saying so."""
    why = f"the {stage} stage did not run for these settings (add it to --stages, or run without --stages)."
    return Section(key, title, not_run=why)


# --------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block) -> list[str]:
    if isinstance(block, Text):
        return [block.text]
    if isinstance(block, Table):
        return [
            "| " + " | ".join(_md_cell(h) for h in block.header) + " |",
            "|" + "---|" * len(block.header),
            *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows),
        ]
    if isinstance(block, Figure):
        return [f"*Plot in report.html: {block.caption}*"]
    if isinstance(block, Folded):
        return [f"<details><summary>{block.summary}</summary>", "", f"```{block.language}",
                block.text.rstrip("\n"), "```", "", "</details>"]  # fmt: skip
    return [f"{block.label}: " + ", ".join(f"[{name}]({path})" for name, path in block.targets)]


def markdown(title: str, lead: list[str], sections: list[Section]) -> str:
    lines = [f"# {title}", "", *lead, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.not_run:
            lines += [f"*Not run:* {section.not_run}", ""]
            continue
        for block in section.blocks:
            lines += [*_md_block(block), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1120px;margin:1.5em auto;
  padding:0 1.2em;color:#1f2933;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #e4e7eb;
  padding-bottom:.2em}
.lead{color:#52606d;margin:.2em 0}
nav{margin:1em 0;padding:.6em .8em;background:#f5f7fa;border-radius:6px;font-size:.92em}
nav a{margin-right:1.1em;white-space:nowrap;color:#2f6fde;text-decoration:none}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}
td,th{border:1px solid #cbd2d9;padding:4px 8px;text-align:left;vertical-align:top}
td{white-space:nowrap}td.long{white-space:normal;min-width:16em}
th{background:#f5f7fa}td{font-variant-numeric:tabular-nums}
table.wide{font-size:12px;width:100%}table.wide td{word-break:break-word}
table.wide code{white-space:pre-wrap}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.95em}
figure{margin:.8em 0}figcaption{color:#52606d;font-size:.9em}svg{max-width:100%;height:auto}
details{margin:.8em 0}summary{cursor:pointer;color:#2f6fde}
pre{background:#f5f7fa;padding:.8em;overflow-x:auto;font-size:12px}
.not-run{color:#7b8794;font-style:italic}
"""


LONG = 40  # characters: a longer cell may wrap, a shorter one (a number, a date, an id) never does


def _cell(text: str, code: bool) -> str:
    """One table cell: model text as code, a URL as a link."""
    if code:
        inner = f"<code>{html.escape(text)}</code>"
    elif text.startswith(("https://", "http://")) and " " not in text:
        inner = f'<a href="{html.escape(text)}">{html.escape(text)}</a>'
    else:
        inner = html.escape(text)
    return f"<td class=long>{inner}</td>" if code or len(text) > LONG else f"<td>{inner}</td>"


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        body = "".join(
            "<tr>" + "".join(_cell(c, i in block.code_columns) for i, c in enumerate(row)) + "</tr>"
            for row in block.rows
        )
        return f"<table{' class=wide' if block.code_columns else ''}><tr>{head}</tr>{body}</table>"
    if isinstance(block, Figure):
        return f"<figure>{block.svg}<figcaption>{html.escape(block.caption)}</figcaption></figure>"
    if isinstance(block, Folded):
        return (
            f"<details><summary>{html.escape(block.summary)}</summary>"
            f"<pre>{html.escape(block.text)}</pre></details>"
        )
    links = ", ".join(
        f'<a href="{html.escape(path)}">{html.escape(name)}</a>' for name, path in block.targets
    )
    return f"<p>{html.escape(block.label)}: {links}</p>"


def html_page(title: str, lead: list[str], sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    parts = [
        f"<!doctype html><html lang=en><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p class=lead>{html.escape(line)}</p>" for line in lead),
        f"<nav>{nav}</nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>')
        if section.not_run:
            parts.append(f"<p class=not-run>Not run: {html.escape(section.not_run)}</p>")
        else:
            parts += [_html_block(b) for b in section.blocks]
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
