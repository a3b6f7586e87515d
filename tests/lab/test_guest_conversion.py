"""Anonymous memory converted into memfds inside the lab VM, then preserved, kexec'd, restored and verified."""

import json
import subprocess
import sys

import pytest

from workbench.lab.cycle import CycleParams
from workbench.lab.guest_conversion import VM_SKIPPED, conversion_request, resolve_specs, summarize


def test_one_strategy_applies_to_every_memfd_and_copiers_default_to_numba():
    specs = resolve_specs(["copy-fresh"], 3)
    assert [s.strategy for s in specs] == ["copy-fresh"] * 3
    assert {s.copier for s in specs} == {"numba"}
    kernel_side = resolve_specs(["pwrite", "vmsplice-gift"], 2, threads=2)
    assert [s.copier for s in kernel_side] == ["kernel", "kernel"]
    assert kernel_side[1].pipe_size > 0 and kernel_side[0].pipe_size == 0
    assert conversion_request(kernel_side, True)["convert"][1]["strategy"] == "vmsplice-gift"


@pytest.mark.parametrize(
    ("strategies", "memfds", "copier", "message"),
    [
        (["teleport"], 1, "", "unknown conversion strategy 'teleport'"),
        (["write", "pwrite"], 3, "", "2 conversion strategies given for 3 memfds"),
        (["write"], 1, "numba", "strategy write copies with kernel, not 'numba'"),
    ],
)
def test_bad_conversion_requests_are_refused_before_boot(strategies, memfds, copier, message):
    with pytest.raises(ValueError, match=message):
        CycleParams(memfds=memfds, convert=strategies, convert_copier=copier).validate()


def test_convert_is_for_the_memfd_workload_and_needs_room_for_the_sources():
    with pytest.raises(ValueError, match="memfd workload"):
        CycleParams(workload="criu", convert=["write"]).validate()
    plain = CycleParams(memfds=4, memfd_size=512 << 20)
    converting = CycleParams(memfds=4, memfd_size=512 << 20, convert=["write"])
    assert converting.resolved_memory_mb() >= plain.resolved_memory_mb() + 2048
    assert converting.phases_before_load() == ("prepare", "convert", "preserve")


def test_summary_adds_each_memfds_own_times_to_the_shared_blackout():
    prepare = {
        "setup": {"limits": {"memcpy_bytes_per_s": 4e9}},
        "conversions": [
            {"strategy": "write", "copier": "kernel", "threads": 1, "pipe_size": 0, "size": 1 << 30, "convert_s": 0.5}
            | {"alloc_s": None, "copy_s": 0.5},
        ],
        "preserve_s": [0.25],
    }
    restore = {
        "retrieve_s": [0.125],
        "verify_s": [1.0],
        "memfds": [{"memfd": 0, "differing_count": 0, "size": 1 << 30, "expected_size": 1 << 30}],
    }
    phases = {"prepare": 9.0, "convert": 0.5, "preserve": 0.25, "load": 1.0, "kexec": 3.0, "restore": 0.125}
    out = summarize(prepare, restore, phases | {"verify": 1.0}, blackout_s=3.0)
    row = out["conversions"][0]
    assert row["end_to_end_s"] == 0.5 + 0.25 + 3.0 + 0.125 + 1.0
    assert row["bytes_per_s"] == (1 << 30) / 0.5 and row["ratio_to_memcpy"] == (1 << 30) / 0.5 / 4e9
    assert row["verified"] is True
    assert out["anon_to_survived_s"] == 0.5 + 0.25 + 1.0 + 3.0 + 0.125 + 1.0  # prepare is not part of the path


@pytest.mark.lab
def test_conversions_in_the_vm_survive_the_kexec(lab_kernel, tmp_path):
    data = tmp_path / "data"
    strategies = ["copy-fresh", "pwrite", "vmsplice-splice", "process_vm_readv", "memfd-from-birth"]
    argv = [sys.executable, "-m", "workbench.cli", "bench", "conversion", "--target", "vm", "--size", "8M", "--json"]
    for name in strategies:
        argv += ["--strategy", name]
    argv += ["--data", str(data)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["target"] == "vm" and out["all_verified"] is True
    assert list(out["strategies"]) == strategies
    assert out["memcpy_bytes_per_s"] > 0 and out["guest_fault_pages_per_s"] > 0
    for name, row in out["strategies"].items():
        assert row["verified"] is True, name
        assert row["end_to_end_s"] >= row["blackout_s"] > 0
        if name != "memfd-from-birth":
            assert row["ratio_to_memcpy"] == pytest.approx(row["bytes_per_s"] / out["memcpy_bytes_per_s"])
    birth = out["strategies"]["memfd-from-birth"]
    assert birth["convert_s"] == 0 and birth["bytes_per_s"] is None  # infinitely fast: nothing to convert
    [cycle_id] = out["cycle_records"]
    from workbench.records import RecordStore

    store = RecordStore(data)
    cycle = store.get(cycle_id)
    assert cycle.kind == "lab.cycle" and cycle.status == "ok"
    assert cycle.result["phases"]["convert"] > 0
    assert cycle.result["pages_checked"] == len(strategies) * (8 << 20) // 4096
    bench = store.get(out["record_id"])
    assert bench.kind == "bench.conversion" and "conversion_vm" in bench.table_names
    assert set(VM_SKIPPED) & set(out["strategies"]) == set()
