"""Anonymous memory converted into memfds inside the lab VM, then preserved, kexec'd, restored and verified: one
bench run of every strategy the VM runs (one VM cycle), checked for what each test names."""

import json
import subprocess
import sys

import pytest

from workbench.lab.conversion_bench import VM_SKIPPED
from workbench.records import RecordStore

BASE = ["copy-fresh", "pwrite", "vmsplice-splice", "process_vm_readv", "memfd-from-birth", "vmsplice-gift"]
HUGE = ["thp-shmem", "hugetlb"]
SIZE = 4 << 20


@pytest.fixture(scope="module")
def bench(lab_kernel, tmp_path_factory) -> tuple[dict, RecordStore]:
    data = tmp_path_factory.mktemp("conversion") / "data"
    argv = [sys.executable, "-m", "workbench.cli", "bench", "conversion", "--target", "vm", "--size", "4M", "--json"]
    for name in BASE + HUGE:
        argv += ["--strategy", name]
    argv += ["--data", str(data)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), RecordStore(data)


@pytest.mark.lab
def test_conversions_in_the_vm_survive_the_kexec(bench):
    out, store = bench
    assert out["target"] == "vm" and out["all_verified"] is True
    assert list(out["strategies"]) == BASE + HUGE
    assert out["memcpy_bytes_per_s"] > 0 and out["guest_fault_pages_per_s"] > 0
    for name in BASE:
        row = out["strategies"][name]
        assert row["verified"] is True, name
        assert row["end_to_end_s"] >= row["blackout_s"] > 0
        if name != "memfd-from-birth":
            assert row["ratio_to_memcpy"] == pytest.approx(row["bytes_per_s"] / out["memcpy_bytes_per_s"])
    birth = out["strategies"]["memfd-from-birth"]
    assert birth["convert_s"] == 0 and birth["bytes_per_s"] is None  # infinitely fast: nothing to convert
    [cycle_id] = out["cycle_records"]
    cycle = store.get(cycle_id)
    assert cycle.kind == "lab.cycle" and cycle.status == "ok"
    assert cycle.result["phases"]["convert"] > 0
    preserved = [n for n in BASE + HUGE if n not in out["refused"]]
    assert cycle.result["pages_checked"] == len(preserved) * SIZE // 4096
    bench_record = store.get(out["record_id"])
    assert bench_record.kind == "bench.conversion" and "conversion_vm" in bench_record.table_names
    assert set(VM_SKIPPED) & set(out["strategies"]) == set()


@pytest.mark.lab
def test_every_row_counts_its_pages_and_the_huge_strategies_survive_or_carry_the_refusal(bench):
    out, _ = bench
    assert [row["strategy"] for row in out["rows"]] == BASE + HUGE
    for row in out["rows"]:
        expected = 0 if row["strategy"] == "memfd-from-birth" else SIZE // 4096
        assert row["pages_converted"] == expected, row
        assert row["moved_pages"] + row["copied_pages"] == row["pages_converted"], row
        assert row["page_identity_explanation"], row
    for name in HUGE:
        row = out["strategies"][name]
        assert row["verified"] is True or (name in out["refused"] and "LUO refused" in row["preserve_refused"]), row
        assert row["bytes_per_s"] > 0
    assert out["strategies"]["thp-shmem"]["huge_pages"] > 0  # the memfd really had transparent huge pages
