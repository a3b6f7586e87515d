"""The ``lab.cycle`` experiment: a recorded cycle is rebuilt from its parameters alone and run again."""

import pytest

from workbench.experiments.lab_cycle import EXPERIMENT
from workbench.experiments.rerun import rerun
from workbench.lab.cycle import cycle_from_record, run_cycle
from workbench.lab.faults import Faults, PageRef
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workloads.converted import ConvertedMemfdWorkload
from workbench.lab.workloads.memfd import MemfdWorkload


def _record_params(workload, params, target):
    return {"target": target.label, **params.record_params(), **workload.record_params(), **target.record_params()}


@pytest.mark.parametrize(
    "workload",
    [
        MemfdWorkload(memfds=3, memfd_size=4 << 20, tokens=[7, 8, 9], seed=5),
        ConvertedMemfdWorkload(memfds=2, memfd_size=8 << 20, convert=["pwrite", "copy-fresh"]),
    ],
    ids=["memfd", "converted"],
)
def test_a_cycle_is_rebuilt_from_its_record(workload):
    params = CycleParams(session="again", pause_after=["preserve"], faults=Faults(corrupt_page=PageRef(0, 1)))
    target = QemuTarget(kernel="7.3", memory_mb=1536, cpus=1, kernel_args="quiet")
    again_workload, again_params, again_target = cycle_from_record(_record_params(workload, params, target))
    assert again_workload == workload
    again_params.validate()
    assert again_params.record_params() == params.record_params()
    assert again_target.record_params() == target.record_params()


def test_a_record_from_before_workloads_had_names_is_a_memfd_cycle():
    workload, _, target = cycle_from_record({"target": "qemu", "memfds": 1, "memfd_size": 4096, "kernel": "7.2"})
    assert isinstance(workload, MemfdWorkload) and isinstance(target, QemuTarget) and target.kernel == "7.2"


@pytest.mark.lab
def test_a_recorded_cycle_reruns_agrees_and_a_changed_size_disagrees(lab_kernel, store):
    original = run_cycle(MemfdWorkload(memfds=1, memfd_size=8 << 20), CycleParams(), store=store)
    assert original["verified"]
    report = rerun(store, original["record_id"])
    table = report.comparison.table()
    assert report.verdict == "agree", table[~table["agrees"]].to_string()
    paths = {f.path: f.klass for f in report.comparison.fields}
    assert paths["verified"] == paths["pages_checked"] == "exact" and paths["blackout_s"] == "measured"
    assert store.get(report.rerun_ids[0]).params == store.get(original["record_id"]).params
    changed = rerun(store, original["record_id"], overrides={"memfd_size": "4M"})
    assert changed.verdict == "disagree"
    assert {"pages_checked", "memfds.0.size"} <= {f.path for f in changed.comparison.differences}
    assert EXPERIMENT.kind == "lab.cycle"
