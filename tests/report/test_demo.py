"""The demo: notebooks into a recorded report whose result keeps the headlines and what changed since the
previous report on this machine."""

import pytest

from workbench.report.demo import run_demo
from workbench.report.errors import ChangesError, DemoFailed

from .helpers import COUNTING_CELL, source_notebook


@pytest.mark.notebook
def test_two_reports_the_second_compared_with_the_first(tmp_path, store):
    counting = source_notebook(tmp_path / "nb" / "a-counting.ipynb", COUNTING_CELL)
    failing = source_notebook(tmp_path / "nb" / "b-failing.ipynb", "raise RuntimeError('boom')")
    started = []
    first = run_demo(store, [counting], {"SMOKE": True}, on_start=started.append)
    record = store.get(first.record_id)
    assert record.status == "ok" and record.params == {"smoke": True, "full": False, "notebooks": ["a-counting.ipynb"]}
    assert started == [store.data_dir / "reports" / first.record_id] and first.index.parent == started[0]
    (headline,) = record.result["headlines"]
    assert headline["numbers"][0] == {
        "name": "runs_before",
        "label": "runs before",
        "value": 0,
        "unit": "",
        "exact": True,
        "noise": None,
        "better": None,
    }
    assert record.result["notebooks"][0]["status"] == "ok" and "headlines" not in record.result["notebooks"][0]
    assert record.result["changes"]["since"] == [] and record.result["machine"]["hostname"]
    assert "this one is the first to compare with" in first.index.read_text()

    with pytest.raises(DemoFailed, match="notebooks failed: b-failing.ipynb") as failed:
        run_demo(store, [counting, failing], {"SMOKE": True})
    second = store.get(failed.value.record_id)
    assert second.status == "failed" and failed.value.failed == ["b-failing.ipynb"]
    assert second.result["headlines"][0]["numbers"][0]["value"] == 1  # kept although a notebook failed
    changes = failed.value.report.changes
    assert changes.reference[0]["id"] == first.record_id
    flagged = changes.flagged
    assert flagged["name"].tolist() == ["runs_before"] and flagged["verdict"].tolist() == ["changed"]
    seconds = changes.table[changes.table["name"] == "seconds"].iloc[0]
    assert seconds["verdict"] == "noise unknown"  # one earlier report: no run-to-run spread yet
    page = failed.value.index.read_text()
    assert f"Changes since {first.record_id}" in page and "failed: RuntimeError: boom" in page
    assert second.result["changes"]["flagged"] == 1


def test_records_to_compare_with_are_checked_before_anything_runs(tmp_path, store):
    with store.run("bench.hash", {}) as bench:
        pass
    with pytest.raises(ChangesError, match="not a demo"):
        run_demo(store, [tmp_path / "never-run.ipynb"], compare_with=[bench.id])
    assert store.runs(kind="demo") == []
