"""Headlines read back from an executed notebook's outputs."""

import json

import nbformat
import pytest

from workbench.report.collect import headlines_of
from workbench.report.errors import BadHeadline
from workbench.report.headline import MIME_TYPE

from .helpers import a_headline, display_output, executed_notebook


def _bundle(headline):
    return {MIME_TYPE: headline, "text/html": "<p>headline</p>", "text/plain": "headline"}


def test_every_headline_in_cell_order_with_notebook_and_page(tmp_path):
    first, second = a_headline("cycle"), a_headline("criu", 2.5, verified=False)
    path = executed_notebook(
        tmp_path / "10-cycle.ipynb",
        [
            [nbformat.v4.new_output("stream", name="stdout", text="hello\n")],
            [display_output(_bundle(first))],
            [display_output({"text/plain": "no headline"}), display_output(_bundle(second))],
        ],
    )
    found = headlines_of(path)
    assert [h["key"] for h in found] == ["cycle", "criu"]
    assert found[0] == {**first, "notebook": "10-cycle.ipynb", "page": "10-cycle.html"}
    assert found[1]["numbers"][1]["value"] is False
    assert headlines_of(path, page="elsewhere.html")[0]["page"] == "elsewhere.html"


def test_json_stored_as_text_is_read_too(tmp_path):
    path = executed_notebook(tmp_path / "nb.ipynb", [[display_output({"text/plain": "x"})]])
    nb = json.loads(path.read_text())
    nb["cells"][1]["outputs"][0]["data"][MIME_TYPE] = json.dumps(a_headline())
    path.write_text(json.dumps(nb))
    assert headlines_of(path)[0]["key"] == "cycle"


def test_a_notebook_without_headlines_has_none(tmp_path):
    assert headlines_of(executed_notebook(tmp_path / "nb.ipynb", [[], [display_output({"text/plain": "x"})]])) == []


def test_a_malformed_headline_names_its_cell(tmp_path):
    bad = {**a_headline(), "numbers": [{"name": "bad name", "label": "x", "value": 1}]}
    path = executed_notebook(tmp_path / "nb.ipynb", [[], [display_output(_bundle(bad))]])
    with pytest.raises(BadHeadline, match=r"nb.ipynb, cell 2: number name 'bad name'"):
        headlines_of(path)
