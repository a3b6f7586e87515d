"""The cycle controller runs a real cycle in a worker thread; the records controller filters and compares."""

import subprocess
import threading
import time

import pandas as pd
import pytest

from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workloads.memfd import MemfdWorkload
from workbench.widgets.controller import CycleController, RecordsController


@pytest.mark.lab
def test_controller_runs_a_cycle_without_blocking_and_reports_phases(lab_kernel, store):
    seen = []
    controller = CycleController(store)
    controller.observe(lambda c, what: seen.append((what, c.state)))
    controller.start(MemfdWorkload(memfds=1, memfd_size=4 << 20), target=QemuTarget(lab_kernel))
    assert controller.running  # start() returned while the cycle runs
    with pytest.raises(RuntimeError, match="already running"):
        controller.start(MemfdWorkload(memfds=1, memfd_size=4 << 20), target=QemuTarget(lab_kernel))
    assert controller.wait(1800) == "done"
    assert controller.result["verified"] is True
    assert all(controller.phases[p].status == "done" for p in ("prepare", "preserve", "kexec", "restore", "verify"))
    assert controller.phases["kexec"].seconds == pytest.approx(controller.result["blackout_s"], rel=0.2)
    assert any(what == "line" for what, _ in seen) and seen[-1] == ("state", "done")
    assert any("WB-MARK" in line for line in controller.log)
    assert store.get(controller.record_id).status == "ok"


@pytest.mark.lab
def test_cancel_tears_the_vm_down_and_records_interrupted(lab_kernel, store):
    controller = CycleController(store)
    booted = threading.Event()
    controller.observe(lambda c, what: booted.set() if c.phases["prepare"].status != "pending" else None)
    controller.start(MemfdWorkload(memfds=1, memfd_size=64 << 20), target=QemuTarget(lab_kernel))
    assert booted.wait(600), "the agent never started"
    controller.cancel()
    assert controller.wait(120) == "cancelled"
    record = store.get(controller.record_id)
    assert record.status == "interrupted"
    time.sleep(0.5)
    stray = subprocess.run(["pgrep", "-f", f"wbresults.*{record.id}|{record.id}.*wbresults"], capture_output=True)
    assert stray.stdout.strip() == b""


def test_records_controller_filters_and_compares(store):
    for n in (1, 2):
        with store.run("bench.example", {"n": n}) as run:
            run.add_table("t", pd.DataFrame({"phase": ["a", "b"], "seconds": [n, n * 2.0]}))
            run.update_result(score=n * 10)
    controller = RecordsController(store)
    assert controller.kinds() == ["bench.example"]
    runs = controller.runs("bench.example", n="2")
    assert len(runs) == 1
    ids = list(controller.runs("bench.example")["id"])
    assert controller.common_tables(ids) == ["t"]
    side_by_side = controller.compare_results(ids)
    assert list(side_by_side.loc["score"]) == [10, 20]
    assert len(controller.compare(ids, "t")) == 4
