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
         "page_identity_explanation": "copied", "converted_verified": True},
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
    assert "its conversion verified" in evidence.iloc[2]
    assert "SET throughput 0.97× (repeats 0.90-1.02)" in evidence.iloc[3] and "96%" in evidence.iloc[3]
    assert rows.iloc[3].startswith("allocate in memfds from birth: throughput 0.90-1.02× of plain")
    assert "was not measured in this run" in rows.iloc[3]
    text = decision_text(table)
    assert text.count(":") >= 4 and "memfds from birth" in text


def test_pages_that_moved_are_named_and_a_run_without_anything_decides_nothing():
    frame, limits = run_conversion([8 << 20], [1], strategies=["pwrite"], repeats=1)
    moved = VM_ROWS.assign(moved_pages=[0, 2048, 0, 0], copied_pages=[2048, 0, 2048, 2048])
    table = decision_table(frame, limits, moved)
    assert "vmsplice-gift moved pages" in table["choice"].iloc[1] and len(table) == 3
    empty = decision_table(frame[frame["strategy"] == "nothing"], limits)
    assert empty.empty and decision_text(empty) == "This run measured nothing to decide from."


def test_unknown_page_identity_is_said_unknown_not_counted_as_zero():
    frame, limits = run_conversion([8 << 20], [1], strategies=["pwrite"], repeats=1)
    unknown = VM_ROWS.assign(
        moved_pages=[None] * 4,
        copied_pages=[float("nan")] * 4,
        page_identity_explanation=["page identity unknown: /proc/self/pagemap: Permission denied"] * 4,
    )
    row = decision_table(frame, limits, unknown).iloc[1]
    assert row["choice"].startswith("unknown") and "moves pages" not in row["choice"]
    assert (
        "no page identity measured for the 4 strategies" in row["evidence"] and "Permission denied" in row["evidence"]
    )
    partly = VM_ROWS.assign(moved_pages=[None, 0, 0, 0], copied_pages=[None, 2048, 2048, 2048])
    row = decision_table(frame, limits, partly).iloc[1]
    assert row["choice"] == "no measured strategy moves pages; unknown for pwrite"
    assert (
        "0 pages moved, 6,144 copied over 3 strategies" in row["evidence"] and "unknown for pwrite" in row["evidence"]
    )


def test_a_refused_memfd_whose_conversion_broke_is_named():
    frame, limits = run_conversion([8 << 20], [1], strategies=["pwrite"], repeats=1)
    broken = VM_ROWS.assign(converted_verified=[None, None, None, False])
    assert "hugetlb refused by LUO: ENOENT" in decision_table(frame, limits, broken)["evidence"].iloc[2]
    assert "its conversion NOT verified" in decision_table(frame, limits, broken)["evidence"].iloc[2]


def test_memfd_from_birth_is_not_recommended_when_the_library_lost_data():
    frame, limits = run_conversion([8 << 20], [1], strategies=["pwrite"], repeats=1)
    lost = decision_table(frame, limits, None, PRELOAD | {"data_ok": False})["choice"].iloc[-1]
    assert lost.startswith("not memfd from birth") and "did not keep the program's data" in lost
    unchecked = decision_table(frame, limits, None, {k: v for k, v in PRELOAD.items() if k != "data_ok"})
    assert (
        unchecked["choice"].iloc[-1].startswith("not memfd from birth")
        and "did not check" in unchecked["choice"].iloc[-1]
    )
    two = PRELOAD | {"tests": PRELOAD["tests"] | {"get": {"rps": {"ratio": 1.01}, "minflt": {"ratio": 1.0},
                                                          "server_cpu_s": {"ratio": 1.0}}}}  # fmt: skip
    assert "throughput 0.90-1.02× of plain" in decision_table(frame, limits, None, two)["choice"].iloc[-1]
    single = PRELOAD | {"tests": {"get": two["tests"]["get"]}}
    assert "throughput 1.01× of plain" in decision_table(frame, limits, None, single)["choice"].iloc[-1]
