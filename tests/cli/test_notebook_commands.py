"""``workbench run-notebook`` and ``workbench demo`` write executed notebooks, HTML pages and records."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.records import RecordStore

WB = [sys.executable, "-m", "workbench.cli"]


@pytest.mark.notebook
def test_run_notebook_records_and_exports(tmp_path):
    data = tmp_path / "data"
    out = subprocess.run(
        [*WB, "run-notebook", "tour", "-p", "HASH_SIZE", "8M", "--data", str(data), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    record = RecordStore(data).get(result["record_id"])
    assert record.kind == "notebook" and record.status == "ok"
    assert record.params == {"notebook": "00-tour.ipynb", "HASH_SIZE": "8M"}
    assert "Plotly.newPlot" in Path(result["html"]).read_text()
    (headline,) = result["headlines"]
    assert headline["key"] == "tour" and record.result["headlines"] == result["headlines"]
    # the notebook's own benchmark went to the same record store
    assert RecordStore(data).runs(kind="bench.hash")[0].params["size"] == 8 << 20


def test_unknown_notebook_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [*WB, "run-notebook", "no-such-thing", "--data", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "the notebooks are: 00-tour" in proc.stderr


@pytest.mark.notebook
def test_demo_writes_an_index_and_says_where(tmp_path):
    data = tmp_path / "data"
    proc = subprocess.run(
        [*WB, "demo", "--smoke", "--only", "00-tour", "--data", str(data)], capture_output=True, text=True, check=True
    )
    index = proc.stdout.strip().removeprefix("report: ")
    page = Path(index).read_text()
    assert "00-tour.ipynb: ok" in page and 'href="00-tour.html"' in page
    assert "<section class='headline' data-key='tour'>" in page and "Page fingerprints" in page
    (record,) = RecordStore(data).runs(kind="demo")
    assert record.status == "ok" and [h["key"] for h in record.result["headlines"]] == ["tour"]
    assert record.result["changes"]["since"] == []  # the first report in this store
    assert "Kernel is running" not in proc.stderr  # the kernels' own chatter goes to the report's log
    assert (Path(index).parent / "kernels.log").exists()
    assert "00-tour.ipynb: ok" in proc.stderr


def test_demo_refuses_a_record_it_cannot_compare_with_before_running_anything(tmp_path):
    data = tmp_path / "data"
    store = RecordStore(data)
    with store.run("bench.hash", {}) as bench:
        pass
    proc = subprocess.run(
        [*WB, "demo", "--smoke", "--compare-with", bench.id, "--data", str(data)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert f"record {bench.id} is a bench.hash record, not a demo" in proc.stderr
    assert store.runs(kind="demo") == [] and not (data / "reports").exists()
