"""The report's front page (``index.html``): each notebook's headline finding with its numbers, figure, page and
records; where it ran; what changed since last time; and the list of pages with their run times.

Made to be read on a projector: large type, cards in a grid that fits 1920×1080 without horizontal scrolling.
The page works offline: plotly.js is embedded once, from the installed plotly package."""

from __future__ import annotations

import copy
import html
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.report.changes import Changes
from workbench.report.headline import Number, format_value
from workbench.report.machine import Machine

__all__ = ["write_front_page", "render_front_page", "FIGURE_HEIGHT"]

#: the height of every figure on the front page, in CSS pixels (two rows of cards fit 1080 lines)
FIGURE_HEIGHT = 420

_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:21px;line-height:1.4;margin:0;
 padding:20px 28px;color:#1a202c;background:#f4f6f9}
h1{font-size:40px;margin:0 0 4px}
h2{font-size:30px;margin:0 0 6px}
h3{font-size:24px;margin:14px 0 4px}
a{color:#2b6cb0}
code{font-size:.85em;background:#edf2f7;padding:1px 5px;border-radius:4px;overflow-wrap:anywhere}
.sub{color:#4a5568;margin:0 0 14px}
.machine{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,360px),1fr));gap:6px 24px;
 background:#fff;border-radius:10px;padding:12px 18px;margin-bottom:18px}
.machine div{overflow-wrap:anywhere}
.machine b{display:block;font-size:.75em;color:#4a5568;text-transform:uppercase;letter-spacing:.04em}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,780px),1fr));gap:22px}
.card{background:#fff;border-radius:10px;padding:16px 20px;border-top:6px solid #2b6cb0;min-width:0}
.card.failed{border-top-color:#c53030;background:#fff5f5}
.card .file{color:#4a5568;font-size:.8em}
.card p{margin:6px 0}
.error{color:#c53030;font-weight:bold;overflow-wrap:anywhere;white-space:pre-wrap}
table{border-collapse:collapse;width:100%;table-layout:fixed}
td,th{padding:3px 8px;border-bottom:1px solid #e2e8f0;text-align:left;overflow-wrap:anywhere;vertical-align:top}
td.value{text-align:right;font-weight:bold;font-variant-numeric:tabular-nums}
th{font-size:.8em;color:#4a5568}
.exact{font-size:.7em;color:#2f855a;border:1px solid #2f855a;border-radius:4px;padding:0 4px;margin-left:6px}
.figure{width:100%;min-height:200px;margin-top:8px}
.records{font-size:.8em;color:#4a5568}
.changes{background:#fff;border-radius:10px;padding:12px 18px;margin-bottom:18px}
.changes tr.flagged td{background:#fefcbf}
.changes tr.flagged td.verdict{color:#c05621;font-weight:bold}
.pages{font-size:.85em;margin-top:24px}
.pages li{margin:.3em 0}
.pages .failed a{color:#c53030}
"""

_FIGURE_SCRIPT = """
document.querySelectorAll('.figure[data-figure]').forEach(function (div) {
  var fig = JSON.parse(document.getElementById(div.dataset.figure).textContent);
  Plotly.newPlot(div, fig.data || [], fig.layout || {}, {responsive: true, displaylogo: false});
});
"""


def _json_in_html(data: Any) -> str:
    """JSON that cannot end the ``<script>`` element holding it."""
    return (
        json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )


def _projector_layout(figure: dict[str, Any]) -> dict[str, Any]:
    """``figure`` sized for a card: its width follows the card, its height is :data:`FIGURE_HEIGHT`, larger
    type."""
    fig = copy.deepcopy(figure)
    layout = fig.setdefault("layout", {})
    layout.pop("width", None)
    layout["height"] = FIGURE_HEIGHT
    layout["autosize"] = True
    layout["font"] = {**layout.get("font", {}), "size": 15}
    layout["margin"] = {"l": 60, "r": 20, "t": 60, "b": 50}
    return fig


def _numbers_table(numbers: Sequence[dict[str, Any]]) -> str:
    rows = []
    for raw in numbers:
        number = Number.from_json(raw)
        badge = "<span class='exact' title='must be the same on a re-run'>exact</span>" if number.exact else ""
        rows.append(
            f"<tr><td>{html.escape(number.label)}{badge}</td>"
            f"<td class='value'>{html.escape(number.formatted())}</td></tr>"
        )
    return f"<table class='numbers'>{''.join(rows)}</table>" if rows else ""


def _record_ids(record_ids: Sequence[str]) -> str:
    if not record_ids:
        return ""
    commands = " ".join(f"<code>workbench records show {html.escape(r)}</code>" for r in record_ids)
    return f"<p class='records'>records: {commands}</p>"


class _Figures:
    """The figures of the page: each a ``<div>`` placeholder and a JSON ``<script>`` that plotly.js draws."""

    def __init__(self) -> None:
        self.scripts: list[str] = []

    def placeholder(self, figure: dict[str, Any] | None) -> str:
        if not figure:
            return ""
        name = f"figure-{len(self.scripts)}"
        self.scripts.append(
            f"<script type='application/json' id='{name}'>{_json_in_html(_projector_layout(figure))}</script>"
        )
        return f"<div class='figure' data-figure='{name}'></div>"


def _card(row: dict[str, Any], figures: _Figures) -> str:
    page = row.get("page")
    title = html.escape(row.get("title") or row["notebook"])
    heading = f"<a href='{html.escape(page)}'>{title}</a>" if page else title
    parts = [
        f"<h2>{heading}</h2><div class='file'>{html.escape(row['notebook'])} · {row.get('seconds', 0):.0f} s</div>"
    ]
    if row.get("status") != "ok":
        parts.append(f"<p class='error'>failed: {html.escape(row.get('error') or 'unknown error')}</p>")
    headlines = row.get("headlines") or []
    if not headlines and row.get("status") == "ok":
        parts.append("<p>This notebook published no headline.</p>")
    for headline in headlines:
        parts.append(
            f"<section class='headline' data-key='{html.escape(headline['key'])}'>"
            f"<h3>{html.escape(headline['title'])}</h3><p>{html.escape(headline['text'])}</p>"
            f"{_numbers_table(headline.get('numbers', []))}{figures.placeholder(headline.get('figure'))}"
            f"{_record_ids(headline.get('record_ids', []))}</section>"
        )
    status = "failed" if row.get("status") != "ok" else "ok"
    return f"<article class='card {status}' data-notebook='{html.escape(row['notebook'])}'>{''.join(parts)}</article>"


def _counted(values: dict[str, int]) -> str:
    if not values:
        return "none in this run"
    return ", ".join(f"{html.escape(v)} ({n} record{'s' if n != 1 else ''})" for v, n in values.items())


def _machine(machine: Machine, parameters: str, record_id: str | None) -> str:
    commit = (machine.git_commit or "unknown")[:12] + (" (modified)" if machine.git_dirty else "")
    facts = [
        ("host", html.escape(machine.hostname or "unknown")),
        ("CPU", f"{html.escape(machine.cpu_model or 'unknown')} × {machine.cpu_count or '?'}"),
        ("host kernel", html.escape(machine.host_kernel or "unknown")),
        ("git commit", html.escape(commit)),
        ("lab VM accelerator", _counted(machine.accelerators)),
        ("lab kernel", _counted(machine.lab_kernels)),
        ("parameters", html.escape(parameters)),
    ]
    if record_id:
        facts.append(("demo record", f"<code>workbench records show {html.escape(record_id)}</code>"))
    cells = "".join(f"<div><b>{name}</b>{value}</div>" for name, value in facts)
    return f"<section class='machine'>{cells}</section>"


def _signed(value: Any, unit: str) -> str:
    if value is None or isinstance(value, bool) or value != value:
        return ""
    return ("+" if value > 0 else "") + format_value(value, unit)


def _changes(changes: Changes | None) -> str:
    if changes is None:
        return ""
    if not changes.reference:
        return (
            "<section class='changes'><h2>Changes since last time</h2><p>No earlier report on this machine with "
            "the same parameters stores its headlines: this one is the first to compare with.</p></section>"
        )
    table = changes.table
    flagged = int(table["flagged"].sum()) if len(table) else 0
    rows = []
    for r in table.to_dict("records"):
        unit = r["unit"] or ""
        relative = r["relative_change"]
        rel = f" ({relative:+.1%})" if isinstance(relative, float) and relative == relative else ""
        noise = "exact" if r["exact"] else ("unknown" if r["noise"] is None else "± " + format_value(r["noise"], unit))
        verdict = r["verdict"] + (f", {r['direction']}" if r["flagged"] and r["direction"] else "")
        rows.append(
            f"<tr class='{'flagged' if r['flagged'] else ''}'><td>{html.escape(str(r['headline'] or r['key']))}</td>"
            f"<td>{html.escape(str(r['label'] or r['name']))}</td>"
            f"<td class='value'>{html.escape(format_value(r['previous'], unit))}</td>"
            f"<td class='value'>{html.escape(format_value(r['now'], unit))}</td>"
            f"<td class='value'>{html.escape(_signed(r['change'], unit) + rel)}</td>"
            f"<td>{html.escape(noise)}</td><td class='verdict'>{html.escape(verdict)}</td></tr>"
        )
    head = (
        "<tr><th style='width:22%'>headline</th><th style='width:22%'>number</th><th>before</th><th>now</th>"
        "<th>change</th><th>noise</th><th>verdict</th></tr>"
    )
    spread = len(changes.history)
    return (
        f"<section class='changes'><h2>Changes since {html.escape(changes.since())}</h2>"
        f"<p>{flagged} of {len(table)} numbers flagged: exact numbers whenever they differ, measured ones beyond "
        f"3 × their noise (the run's own repeats and the spread over {spread} earlier report"
        f"{'s' if spread != 1 else ''} on this machine).</p>"
        f"<table>{head}{''.join(rows)}</table></section>"
    )


def _pages(rows: Sequence[dict[str, Any]]) -> str:
    items = "\n".join(
        f'<li class="{r["status"]}"><a href="{html.escape(r["page"] or "")}">{html.escape(r["title"])}</a> '
        f"<small>{html.escape(r['notebook'])}: {r['status']} in {r['seconds']:.0f} s"
        f"{' (' + html.escape(r['error']) + ')' if r['error'] else ''}</small></li>"
        for r in rows
    )
    return f"<section class='pages'><h2>Pages</h2><ol>{items}</ol></section>"


def render_front_page(
    rows: Sequence[dict[str, Any]],
    machine: Machine,
    *,
    changes: Changes | None = None,
    parameters: str = "meeting-sized",
    record_id: str | None = None,
    generated: str | None = None,
) -> str:
    """The front page's HTML.

    :param rows: one per notebook, in order: ``notebook``, ``title``, ``status`` (``ok`` or ``failed``), ``error``,
        ``seconds``, ``page`` (its HTML page's file name, or None) and ``headlines`` (as
        :func:`workbench.report.collect.headlines_of` returns them)
    :param machine: where the report ran (:func:`workbench.report.machine.machine_of`)
    :param changes: the comparison with earlier reports, or None to leave that section out
    :param parameters: which parameters the notebooks ran with, in words
    :param record_id: the demo record of this report, if any
    :param generated: when the report was made, as shown; default: now
    """
    import plotly.offline

    figures = _Figures()
    cards = "".join(_card(row, figures) for row in rows)
    ok = sum(1 for r in rows if r.get("status") == "ok")
    findings = sum(len(r.get("headlines") or []) for r in rows)
    generated = generated or time.strftime("%Y-%m-%d %H:%M %Z")
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Live Update Workbench report</title><style>{_STYLE}</style></head><body>"
        "<h1>Live Update Workbench: findings</h1>"
        f"<p class='sub'>Generated {html.escape(generated)}. {ok} of {len(rows)} notebooks ran, {findings} "
        "headline finding" + ("s" if findings != 1 else "") + ", every number computed in this run.</p>"
        f"{_machine(machine, parameters, record_id)}{_changes(changes)}<main class='cards'>{cards}</main>"
        f"{_pages(rows)}{''.join(figures.scripts)}"
        f"<script>{plotly.offline.get_plotlyjs()}</script><script>{_FIGURE_SCRIPT}</script></body></html>"
    )


def write_front_page(
    path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], machine: Machine, **kwargs: Any
) -> Path:
    """Writes :func:`render_front_page` to ``path`` (``index.html`` of the report) whole or not at all; the
    keyword arguments are :func:`render_front_page`'s."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_front_page(rows, machine, **kwargs))
    tmp.replace(path)
    return path
