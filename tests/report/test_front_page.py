"""The front page from hand-made headlines: cards, numbers, figures, records, machine, changes and pages; and, in
headless Chromium at 1920×1080, every figure drawn with no console error and no horizontal scroll."""

import re
from html.parser import HTMLParser

import plotly.offline
import pytest

from tests.chromium import open_page
from workbench.report.changes import Changes, compare_headlines
from workbench.report.front_page import render_front_page, write_front_page
from workbench.report.machine import Machine

from .helpers import a_headline

MACHINE = Machine("lab-1", "Some CPU", 2, "6.12.0", "0123456789abcdef", False, {"tcg": 3}, {"7.2.0-lab": 3})


def _rows():
    long_text = "a-very-long-unbroken-word-" * 12
    return [
        {
            "notebook": "00-tour.ipynb",
            "title": "A tour",
            "status": "ok",
            "error": None,
            "seconds": 12.0,
            "page": "00-tour.html",
            "headlines": [a_headline("tour", 0.5)],
        },
        {
            "notebook": "10-live-update-cycle.ipynb",
            "title": "A cycle",
            "status": "ok",
            "error": None,
            "seconds": 75.0,
            "page": "10-live-update-cycle.html",
            "headlines": [a_headline("cycle", 1.5), {**a_headline("cycle2", 2.5), "text": long_text}],
        },
        {
            "notebook": "20-conversion.ipynb",
            "title": "Conversions",
            "status": "failed",
            "error": "CycleFailed: <the VM> stopped",
            "seconds": 3.0,
            "page": "20-conversion.html",
            "headlines": [],
        },
        {
            "notebook": "30-quiet.ipynb",
            "title": "Quiet",
            "status": "ok",
            "error": None,
            "seconds": 1.0,
            "page": "30-quiet.html",
            "headlines": [],
        },
    ]


def _changes():
    earlier = [a_headline("tour", 0.1), a_headline("cycle", 1.5, verified=False)]
    now = [a_headline("tour", 0.5), a_headline("cycle", 1.5)]
    table = compare_headlines(now, [earlier], [])
    return Changes(table, [{"id": "20260101-000000-aaaaaa", "started": "2026-01-01T00:00:00+00:00"}], [])


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page, tag, cls=None):
    parser = _Tags()
    parser.feed(page)
    return [a for t, a in parser.tags if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def test_cards_numbers_figures_and_records():
    page = render_front_page(_rows(), MACHINE, parameters="smoke", record_id="20260102-000000-bbbbbb")
    cards = _tags(page, "article", "card")
    assert [c["data-notebook"] for c in cards] == [
        "00-tour.ipynb",
        "10-live-update-cycle.ipynb",
        "20-conversion.ipynb",
        "30-quiet.ipynb",
    ]
    assert [c["class"] for c in cards] == ["card ok", "card ok", "card failed", "card ok"]
    assert [s["data-key"] for s in _tags(page, "section", "headline")] == ["tour", "cycle", "cycle2"]
    assert len(_tags(page, "div", "figure")) == 3 and len(_tags(page, "script", None)) == 3 + 2
    assert "The tour finding &lt;b&gt;in words&lt;/b&gt;." in page  # text is escaped, never markup
    assert "500 ms" in page and "every page came back" in page and ">exact<" in page
    assert "<code>workbench records show 20260101-000000-abcdef</code>" in page
    assert "href='10-live-update-cycle.html'" in page
    assert "failed: CycleFailed: &lt;the VM&gt; stopped" in page
    assert "This notebook published no headline." in page


def test_plotly_js_once_and_offline():
    page = render_front_page(_rows(), MACHINE)
    bundle = plotly.offline.get_plotlyjs()
    assert page.count(bundle[:60]) == 1  # the installed package's plotly.js, embedded once for every figure
    assert page.count("<script>") == 2  # plotly.js, then the script drawing the figures
    assert not re.search(r"<script[^>]+src=", page)  # nothing to fetch


def test_machine_changes_and_pages():
    page = render_front_page(
        _rows(), MACHINE, changes=_changes(), parameters="smoke", record_id="20260102-000000-bbbbbb"
    )
    for fact in (
        "lab-1",
        "Some CPU × 2",
        "6.12.0",
        "0123456789ab",
        "tcg (3 records)",
        "7.2.0-lab (3 records)",
        "smoke",
    ):
        assert fact in page
    assert "Changes since 20260101-000000-aaaaaa, 2026-01-01 00:00" in page
    flagged = page.index("class='flagged'")
    assert flagged < page.index("<tr class=''>")  # flagged rows first
    assert "changed" in page and "noise unknown" in page
    assert '<li class="failed"><a href="20-conversion.html">Conversions</a>' in page
    assert "00-tour.ipynb: ok in 12 s" in page


def test_no_earlier_report_is_said():
    empty = Changes(compare_headlines([a_headline()], []), [], [])
    assert "this one is the first to compare with" in render_front_page(_rows(), MACHINE, changes=empty)


def test_written_whole(tmp_path):
    index = write_front_page(tmp_path / "report" / "index.html", _rows(), MACHINE)
    assert index.read_text().startswith("<!doctype html>") and not list(index.parent.glob("*.tmp"))


@pytest.mark.browser
def test_renders_at_1920x1080_without_errors_or_horizontal_scroll(tmp_path):
    index = write_front_page(tmp_path / "index.html", _rows(), MACHINE, changes=_changes(), parameters="smoke")
    with open_page({"width": 1920, "height": 1080}) as (page, errors):
        page.goto(index.as_uri())
        page.wait_for_selector(".headline .js-plotly-plot .main-svg", timeout=60_000)
        drawn = page.evaluate(
            "() => [...document.querySelectorAll('.headline')].map(h => !!h.querySelector('.js-plotly-plot .main-svg'))"
        )
        widths = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        columns = page.evaluate(
            "() => new Set([...document.querySelectorAll('.card')].map(c => c.getBoundingClientRect().left)).size"
        )
        page.screenshot(path=str(tmp_path / "front-page.png"), full_page=True)
    assert drawn == [True, True, True]
    assert widths[0] <= widths[1], f"horizontal scroll: {widths}"
    assert columns == 2  # two cards side by side on a projector
    assert not errors
