"""One self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no script, no external resource."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["FigureRef", "Table", "Section", "render_page", "esc"]


def esc(text) -> str:
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class FigureRef:
    """A rendered figure: its PNG bytes, its file name beside the HTML, and a caption (plain text)."""

    png: bytes
    filename: str
    caption: str
    alt: str


@dataclass(frozen=True)
class Table:
    """A plain table: header and rows of cells (plain text, escaped on output)."""

    header: Sequence[str]
    rows: Sequence[Sequence]
    caption: str = ""


@dataclass
class Section:
    """A titled part of the page. ``paragraphs`` are plain text; ``items`` are figures and tables in order."""

    anchor: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    items: list = field(default_factory=list)
    collapsed: bool = False


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1b1b1b;
       background: #fafafa; }
main { max-width: 1360px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 18px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
nav a { margin-right: 14px; }
.meta { color: #555; }
.note { background: #fff6d9; border-left: 4px solid #e0b000; padding: 6px 10px; margin: 10px 0; }
figure { margin: 12px 0 20px; background: #fff; border: 1px solid #e3e3e3; padding: 8px; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #444; font-size: 13px; margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; background: #fff; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; color: #444; padding: 4px 0; }
details > summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
code { background: #f0f0f0; padding: 0 3px; }
"""


def _cell(v) -> str:
    if isinstance(v, float):
        return f'<td class="num">{v:.4f}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="num">{v}</td>'
    return f"<td>{esc(v)}</td>"


def _table(t: Table) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in t.rows)
    cap = f"<caption>{esc(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(f: FigureRef) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure><img alt="{esc(f.alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(f.caption)} <span class=\"meta\">({esc(f.filename)})</span></figcaption></figure>")


def render_page(title: str, meta_lines: Sequence[str], notes: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole page as one string.

    Args:
        title: page title and heading.
        meta_lines: plain-text lines under the heading (what was reported, from which files).
        notes: highlighted plain-text notes (subsampling, missing inputs).
        sections: the page's sections, in order.
    """
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           # no favicon request: a data URI icon
           '<link rel="icon" href="data:,">',
           f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>",
           f"<h1>{esc(title)}</h1>"]
    out += [f'<div class="meta">{esc(line)}</div>' for line in meta_lines]
    out.append("<nav>" + "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections) + "</nav>")
    out += [f'<p class="note">{esc(n)}</p>' for n in notes]
    for s in sections:
        out.append(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>')
        out += [f"<p>{esc(p)}</p>" for p in s.paragraphs]
        body = []
        for item in s.items:
            if isinstance(item, FigureRef):
                body.append(_figure(item))
            elif isinstance(item, Table):
                body.append(_table(item))
            elif isinstance(item, Section):  # a collapsible sub-part
                inner = "".join(f"<p>{esc(p)}</p>" for p in item.paragraphs)
                inner += "".join(_figure(x) if isinstance(x, FigureRef) else _table(x) for x in item.items)
                opened = "" if item.collapsed else " open"
                body.append(f'<details id="{esc(item.anchor)}"{opened}><summary>{esc(item.title)}</summary>'
                            f"{inner}</details>")
            else:
                raise TypeError(f"unknown report item {type(item).__name__}")
        out += body
        out.append("</section>")
    out.append("</main></body></html>")
    return "\n".join(out)
