"""A report built from real notebook runs (small hand-made notebooks, each executed once)."""

import re

import pytest

from workbench.records import RecordStore
from workbench.report.build import build_report, describe_parameters

from .helpers import COUNTING_CELL, source_notebook

pytestmark = pytest.mark.notebook


def test_pages_headlines_and_failures(tmp_path):
    good = source_notebook(tmp_path / "nb" / "a-good.ipynb", COUNTING_CELL)
    failing = source_notebook(tmp_path / "nb" / "b-failing.ipynb", "raise RuntimeError('boom')")
    malformed = source_notebook(
        tmp_path / "nb" / "c-malformed.ipynb",
        "from IPython.display import display\nfrom workbench.report import MIME_TYPE\n"
        "display({MIME_TYPE: {'key': 'k'}, 'text/plain': 'x'}, raw=True)",
    )
    seen = []
    data = tmp_path / "data"
    index, rows = build_report(
        tmp_path / "report", [good, failing, malformed], {"SMOKE": True}, lambda *a: seen.append(a[:2]), data
    )
    assert [(nb.name, status) for nb, status in seen] == [
        ("a-good.ipynb", "ok"),
        ("b-failing.ipynb", "failed"),
        ("c-malformed.ipynb", "failed"),
    ]
    ok, boom, bad = rows
    assert ok["page"] == "a-good.html" and (tmp_path / "report" / "a-good.html").exists()
    (headline,) = ok["headlines"]
    assert headline["key"] == "tiny" and headline["notebook"] == "a-good.ipynb" and headline["figure"]["data"]
    assert RecordStore(data).runs(kind="test.tiny")[0].id == headline["record_ids"][0]  # the kernel used `data`
    assert boom["error"] == "RuntimeError: boom" and boom["page"] == "b-failing.html"
    assert re.fullmatch(r"malformed headline: c-malformed.ipynb, cell \d+: headline 'k' has no 'title'", bad["error"])
    page = index.read_text()
    assert "A tiny finding" in page and "failed: RuntimeError: boom" in page and "a-good.ipynb: ok in" in page


def test_parameters_in_words():
    assert describe_parameters(None) == "meeting-sized"
    assert describe_parameters({"SMOKE": True}) == "smoke"
    assert describe_parameters({"FULL": True, "SIZE": "1G"}) == "full, SIZE='1G'"
