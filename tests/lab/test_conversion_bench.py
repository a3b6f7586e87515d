"""Anonymous memory converted into memfds inside the lab VM, then preserved, kexec'd, restored and verified."""

import json
import subprocess
import sys

import pytest

from workbench.lab.conversion_bench import VM_SKIPPED


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


@pytest.mark.lab
def test_every_row_counts_its_pages_and_the_huge_strategies_survive_or_carry_the_refusal(lab_kernel, tmp_path):
    strategies = ["copy-fresh", "vmsplice-gift", "memfd-from-birth", "thp-shmem", "hugetlb"]
    argv = [sys.executable, "-m", "workbench.cli", "bench", "conversion", "--target", "vm", "--size", "4M", "--json"]
    for name in strategies:
        argv += ["--strategy", name]
    argv += ["--data", str(tmp_path / "data")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert [row["strategy"] for row in out["rows"]] == strategies
    for row in out["rows"]:
        expected = 0 if row["strategy"] == "memfd-from-birth" else (4 << 20) // 4096
        assert row["pages_converted"] == expected, row
        assert row["moved_pages"] + row["copied_pages"] == row["pages_converted"], row
        assert row["page_identity_explanation"], row
    for name in ("thp-shmem", "hugetlb"):
        row = out["strategies"][name]
        assert row["verified"] is True or (name in out["refused"] and "LUO refused" in row["preserve_refused"]), row
        assert row["bytes_per_s"] > 0
    assert out["strategies"]["thp-shmem"]["huge_pages"] > 0  # the memfd really had transparent huge pages
    assert out["all_verified"] is True
