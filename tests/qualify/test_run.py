"""The qualification's orchestration on a real Dask cluster (in-process workers) with cells that need no VM:
one record, rows in the cells' order, the summary, and a run that stops early keeping what finished.
The VM-backed cells are in tests/qualify/test_qualify_lab.py."""

import json
import threading

import pytest

from workbench.qualify.cell import CELL_COLUMNS
from workbench.qualify.matrix import plan_cells
from workbench.qualify.params import QualifyParams
from workbench.qualify.run import RECORD_KIND, default_workers, pair_table, run_matrix, summarize

distributed = pytest.importorskip("distributed")


def judged_cell(cell, params, data_dir):
    """A cell judged without a VM: into itself passes, 7.3 → 7.2 hangs, other pairs are refused at preflight."""
    outcome = "pass" if cell["source"] == cell["target"] else "hang" if cell["source"] == "7.3" else "refused"
    row = {name: None for name in CELL_COLUMNS}
    row.update(
        {"from": cell["source"], "to": cell["target"], "check": cell["check"], "outcome": outcome}
        | {"record_ids": [f"rid-{cell['source']}-{cell['target']}"], "phases": {"kexec": 1.5}, "cell_s": 2.0}
        | {"accelerator": "tcg", "stage": None if outcome == "pass" else "preflight"}
    )
    return row


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(n_workers=2, processes=False, threads_per_worker=1, dashboard_address=None) as c,
        distributed.Client(c) as client,
    ):
        yield client


def test_one_record_holds_every_cell_in_order(client, store):
    params = QualifyParams(kernels=["7.2", "7.3"], checks=["memfd", "criu"])
    cells = plan_cells(params.kernels, params.checks, ["criu"])
    seen = []
    result = run_matrix(params, cells, judged_cell, scheduler=client, store=store, on_cell=seen.append)
    assert len(seen) == len(cells) == 6
    assert [(r["from"], r["to"], r["check"]) for r in result["cells"]] == [(c.source, c.target, c.check) for c in cells]
    assert result["qualified"] is False and result["complete"] is True
    assert result["outcomes"] == {"pass": 4, "refused": 1, "hang": 1}
    assert {(p["from"], p["to"]): p["outcome"] for p in result["pairs"]}[("7.3", "7.2")] == "hang"
    assert result["cells_s"] == pytest.approx(12.0) and result["accelerators"] == ["tcg"]
    record = store.get(result["record_id"])
    assert record.kind == RECORD_KIND and record.status == "ok"
    assert record.params["kernels"] == ["7.2", "7.3"] and record.result["cells_done"] == 6
    table = store.table(result["record_id"], "cells")
    assert list(table.columns) == list(CELL_COLUMNS) and len(table) == 6
    assert json.loads(table["record_ids"].iloc[0]) == ["rid-7.2-7.2"]


def test_a_run_stopped_early_keeps_the_cells_it_finished(client, store):
    params = QualifyParams(kernels=["7.2", "7.3"], checks=["memfd"])
    cells = plan_cells(params.kernels, params.checks)
    cancel = threading.Event()
    result = run_matrix(
        params,
        cells,
        judged_cell,
        scheduler=client,
        workers=1,
        store=store,
        on_cell=lambda r: cancel.set(),
        cancel=cancel,
    )
    assert 1 <= result["cells_done"] < len(cells) and result["complete"] is False
    record = store.get(result["record_id"])
    assert record.result["cells_done"] == result["cells_done"] == len(store.table(record.id, "cells"))
    assert record.result["complete"] is False


def test_summary_of_a_qualified_matrix():
    rows = [
        {"from": "a", "to": "a", "check": "memfd", "outcome": "pass", "cell_s": 3.0, "accelerator": "kvm"},
        {"from": "a", "to": "a", "check": "criu", "outcome": "pass", "cell_s": 5.0, "accelerator": "kvm"},
    ]
    summary = summarize(rows, wall_s=4.0, workers=2)
    assert summary["qualified"] is True and summary["parallel_speedup"] == pytest.approx(2.0)
    assert pair_table(rows) == [
        {"from": "a", "to": "a", "checks": {"memfd": "pass", "criu": "pass"}, "outcome": "pass"}
    ]
    assert summarize([], wall_s=0.0, workers=1)["qualified"] is False


def test_default_workers_fit_cores_and_memory():
    assert default_workers(cpus_per_vm=1, guest_memory_mb=1024) >= 1
    assert default_workers(cpus_per_vm=1, guest_memory_mb=10**9) == 1


def crashing_cell(cell, params, data_dir):
    """A task that dies for 7.3 → 7.2 (as a lost worker's would), the others as :func:`judged_cell`."""
    if (cell["source"], cell["target"]) == ("7.3", "7.2"):
        raise RuntimeError("worker lost")
    return judged_cell(cell, params, data_dir)


def test_a_task_that_dies_is_an_error_row_and_the_others_still_run(client, store):
    params = QualifyParams(kernels=["7.2", "7.3"], checks=["memfd"])
    result = run_matrix(params, plan_cells(params.kernels, params.checks), crashing_cell, scheduler=client, store=store)
    (lost,) = [r for r in result["cells"] if r["outcome"] == "error"]
    assert (lost["from"], lost["to"], lost["stage"]) == ("7.3", "7.2", "worker")
    assert "RuntimeError: worker lost" in lost["message"]
    assert result["cells_done"] == 4 and result["complete"] is True and result["qualified"] is False
    assert store.get(result["record_id"]).status == "ok"


def test_an_unfinished_matrix_is_never_qualified():
    rows = [{"from": "a", "to": "a", "check": "memfd", "outcome": "pass", "cell_s": 1.0, "accelerator": None}]
    assert summarize(rows, wall_s=1.0, workers=1, planned=4)["qualified"] is False
    assert summarize(rows, wall_s=1.0, workers=1, planned=1)["qualified"] is True
