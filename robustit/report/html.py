"""One self-contained HTML page: inline CSS, images as base64 data URIs, no external links.

The page can be mailed or archived as one file and opened offline; it holds every table, every
plot, the warnings (skipped or corrupt cells, duplicates) and the run's configuration.
"""

from __future__ import annotations

import base64
import html as _html
import json
from typing import Dict, List, Sequence, Tuple

from .tables import Table, cell_text

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; }
th { background: #f0f0f0; } td.num { text-align: right; white-space: nowrap; }
tr.paper td { background: #f7f3e8; color: #555; font-style: italic; }
ul.notes { font-size: 12px; color: #444; } ul.warnings li { color: #8a1c1c; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
pre { background: #f6f6f6; padding: .6em; font-size: 11px; overflow-x: auto; }
"""


def esc(text: object) -> str:
    return _html.escape(str(text), quote=True)


def _td(kind: str, text: str) -> str:
    """A cell; numbers are right-aligned."""
    cls = "" if kind == "text" else ' class="num"'
    return f"<td{cls}>{esc(text)}</td>"


def table_html(table: Table) -> str:
    """A table with its title and notes; paper rows carry class ``paper``."""
    head = "".join(f"<th>{esc(c.label)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = "".join(_td(c.kind, cell_text(row.cells.get(c.name))) for c in table.columns)
        row_class = ' class="paper"' if row.is_paper else ""
        body.append(f"<tr{row_class}>{cells}</tr>")
    notes = "".join(f"<li>{esc(n)}</li>" for n in table.notes)
    return (f"<h3 id=\"{esc(table.name)}\">{esc(table.title)}</h3>\n"
            f"<table class=\"results\" data-name=\"{esc(table.name)}\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>\n" + (f"<ul class=\"notes\">{notes}</ul>\n" if notes else ""))


def image_html(name: str, png: bytes) -> str:
    """A PNG embedded as a data URI, with its file name as caption."""
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img alt=\"{esc(name)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{esc(name)}</figcaption></figure>\n")


def config_html(rows: Sequence[Tuple[str, str]], specs: Sequence[Tuple[str, Dict]]) -> str:
    """The configuration table and each results folder's spec.json (collapsed)."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    out = f"<table class=\"config\"><tbody>{body}</tbody></table>\n"
    for folder, spec in specs:
        out += (f"<details><summary>spec.json of {esc(folder)}</summary>"
                f"<pre>{esc(json.dumps(spec, indent=1, sort_keys=True))}</pre></details>\n")
    return out


def warnings_html(warnings: Sequence[str]) -> str:
    if not warnings:
        return "<p>None: every cell file was read.</p>\n"
    return "<ul class=\"warnings\">" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>\n"


def page(title: str, intro: str, tables: Sequence[Table], plots: Dict[str, bytes],
         warnings: Sequence[str], config: Sequence[Tuple[str, str]], specs: Sequence[Tuple[str, Dict]]) -> str:
    """The whole page as text."""
    parts: List[str] = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n",
                        f"<h1>{esc(title)}</h1>\n<p>{esc(intro)}</p>\n"]
    parts.append("<h2>Warnings</h2>\n" + warnings_html(warnings))
    parts.append("<h2>Tables</h2>\n" + "".join(table_html(t) for t in tables))
    parts.append("<h2>Plots</h2>\n" + ("".join(image_html(n, p) for n, p in plots.items())
                                       or "<p>No plots (no VanillaIT/RobustIT caption results).</p>\n"))
    parts.append("<h2>Configuration</h2>\n" + config_html(config, specs))
    parts.append("</body></html>\n")
    return "".join(parts)
