"""One self-contained HTML page: figures embedded as base64 PNG, tables as HTML.

No template engine and no JavaScript: the page must open from an e-mail
attachment or a paper's supplementary material, years from now.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlens.artifact_io import atomic_write

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #222;padding-bottom:.2em}
h2{margin-top:2.2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}.note{background:#fff8e1;border-left:4px solid #f0b400;
padding:.5em 1em}.toc{columns:2;font-size:.95em}code{background:#f4f4f4;padding:0 .2em}
"""


@dataclass
class Table:
    caption: str
    rows: Sequence[Mapping[str, Any]]


@dataclass
class Section:
    """One ``<h2>`` section. ``paragraphs`` are plain text (escaped), ``notes`` are
    highlighted caveats (e.g. weak or absent effects), figures are PNG paths."""

    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw_html: str = ""  # trusted HTML from another traitlens stage (e.g. fingerprint)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return html.escape(str(value))


def table_html(table: Table) -> str:
    if not table.rows:
        return f"<p><em>{html.escape(table.caption)}: no rows</em></p>"
    columns = list(dict.fromkeys(k for row in table.rows for k in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(row.get(c, ''))}</td>" for c in columns) + "</tr>"
        for row in table.rows
    )
    return (
        f"<table><caption>{html.escape(table.caption)}</caption><thead><tr>{head}</tr>"
        f"</thead><tbody>{body}</tbody></table>"
    )


def figure_html(path: Path, caption: str) -> str:
    if not path.exists():
        return f"<p><em>figure missing: {html.escape(path.name)}</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def section_html(section: Section) -> str:
    head = f'<section id="{html.escape(section.id)}"><h2>{html.escape(section.title)}</h2>'
    return "\n".join([head, *_section_body(section), "</section>"])


def subsection_html(section: Section, level: int = 3) -> str:
    """A :class:`Section` as one titled block (``<h3>`` by default) inside another
    section: a stage whose part of the report has several parts (the fingerprint:
    profile, calibration, reliability, drift…) renders each with this and hands
    the whole to its report section as ``raw_html``."""
    head = f'<div id="{html.escape(section.id)}"><h{level}>{html.escape(section.title)}</h{level}>'
    return "\n".join([head, *_section_body(section), "</div>"])


def _section_body(section: Section) -> list[str]:
    parts = [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in section.notes]
    parts += [figure_html(path, caption) for path, caption in section.figures]
    parts += [table_html(t) for t in section.tables]
    if section.raw_html:
        parts.append(section.raw_html)
    return parts


def quotes_html(quotes: Sequence[tuple[str, str]]) -> str:
    """Quoted texts under a bold label each (e.g. example answers under their question),
    all escaped: model output is never trusted HTML."""
    return "\n".join(
        f"<p><b>{html.escape(label)}</b></p><blockquote>{html.escape(text)}</blockquote>"
        for label, text in quotes
    )


def render_page(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    toc = "".join(
        f'<li><a href="#{html.escape(s.id)}">{html.escape(s.title)}</a></li>' for s in sections
    )
    body = "\n".join(section_html(s) for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"
        f'<nav><ul class="toc">{toc}</ul></nav>{body}</body></html>\n'
    )


def write_page(
    path: str | Path, title: str, sections: Sequence[Section], subtitle: str = ""
) -> Path:
    return atomic_write(Path(path), render_page(title, sections, subtitle))
