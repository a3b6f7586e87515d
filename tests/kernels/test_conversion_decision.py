"""The conversion study's decision, from a real host run, lab-VM rows and a memfd-from-birth price."""

import pandas as pd

from workbench.kernels.conversion import run_conversion
from workbench.kernels.conversion_answer import best_by_strategy
from workbench.kernels.conversion_decision import DECISION_COLUMNS, decision_table, decision_text

VM_ROWS = pd.DataFrame(
    [
        {"strategy": "pwrite", "verified": True, "moved_pages": 0, "copied_pages": 2048, "preserve_refused": None,
         "page_identity_explanation": "copied: shmem_file_write_iter"},
        {"strategy": "vmsplice-gift", "verified": True, "moved_pages": 0, "copied_pages": 2048,
         "preserve_refused": None, "page_identity_explanation": "copied: iter_file_splice_write never steals"},
        {"strategy": "thp-shmem", "verified": True, "moved_pages": 0, "copied_pages": 2048, "preserve_refused": None,
         "page_identity_explanation": "copied"},
        {"strategy": "hugetlb", "verified": True, "moved_pages": 0, "copied_pages": 2048,
         "preserve_refused": "ENOENT: memfd_luo_can_preserve accepts only shmem files",
         "page_identity_explanation": "copied"},
    ]
)  # fmt: skip

PRELOAD = {
    "program": "redis-server",
    "program_version": "Redis server v=7.0.15",
    "tests": {
        "set": {"rps": {"ratio": 0.97, "paired_ratio": {"median": 0.96, "low": 0.9, "high": 1.02}},
                "minflt": {"ratio": 1.01}, "server_cpu_s": {"ratio": 1.05}},
    },
    "birth_share": 0.96,
    "data_ok": True,
}  # fmt: skip


def test_the_decision_from_a_real_host_run_the_vm_rows_and_the_birth_price():
    frame, limits = run_conversion([8 << 20], [1], strategies=["pwrite", "copy-fresh"], repeats=1)
    table = decision_table(frame, limits, VM_ROWS, PRELOAD)
    assert list(table.columns) == list(DECISION_COLUMNS) and len(table) == 4
    rows = table.set_index("situation")["choice"]
    top = best_by_strategy(frame).iloc[0]
    assert rows.iloc[0].startswith(top["strategy"])
    assert "no strategy moves pages" in rows.iloc[1]
    assert rows.iloc[2].startswith("thp-shmem")
    evidence = table.set_index("situation")["evidence"]
    assert "hugetlb refused by LUO: ENOENT" in evidence.iloc[2] and "8,192 copied" in evidence.iloc[1]
    assert "SET throughput 0.97× (repeats 0.90-1.02)" in evidence.iloc[3] and "96%" in evidence.iloc[3]
    text = decision_text(table)
    assert text.count(":") >= 4 and "memfds from birth" in text


def test_pages_that_moved_are_named_and_a_run_without_anything_decides_nothing():
    frame, limits = run_conversion([8 << 20], [1], strategies=["pwrite"], repeats=1)
    moved = VM_ROWS.assign(moved_pages=[0, 2048, 0, 0], copied_pages=[2048, 0, 2048, 2048])
    table = decision_table(frame, limits, moved)
    assert "vmsplice-gift moved pages" in table["choice"].iloc[1] and len(table) == 3
    empty = decision_table(frame[frame["strategy"] == "nothing"], limits)
    assert empty.empty and decision_text(empty) == "This run measured nothing to decide from."
