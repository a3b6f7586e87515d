"""Cycle results flattened into a table (:mod:`workbench.lab.results`), from result dicts shaped like the ones
``run_cycle`` returns for a memfd cycle, a converting cycle and a CRIU cycle, and ``workbench cycle --json`` prints
for a failed one."""

import math

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.lab.results import COLUMNS, cycles_table


def _memfd(i: int, size: int, differing: int = 0) -> dict:
    return {
        "memfd": i,
        "token": 1000 + i,
        "size": size,
        "expected_size": size,
        "pages": size // 4096,
        "differing_pages": list(range(differing)),
        "differing_count": differing,
    }


MEMFD_CYCLE = {
    "verified": True,
    "pages_checked": 2 * 16384,
    "session": "workbench",
    "phases": {
        "prepare": 1.2,
        "preserve": 0.05,
        "load": 0.4,
        "kexec": 21.5,
        "restore": 0.02,
        "verify": 0.9,
        "finish": 0.01,
    },
    "blackout_s": 21.5,
    "kernel_release_before": "7.2.0-lab",
    "kernel_release_after": "7.2.0-lab",
    "kernel_release": {"before": "7.2.0-lab", "after": "7.2.0-lab"},
    "memfds": [_memfd(0, 64 << 20), _memfd(1, 64 << 20)],
    "differing_pages": {},
    "hash": "xxh3-numba",
    "blackout_breakdown": {"kexec_to_init_s": 19.0, "init_to_agent_s": 2.5},
    "boot_s": 30.1,
    "accelerator": "tcg",
    "accelerator_reason": "no /dev/kvm",
    "memory_mb": 1024,
    "serial_log": "/data/runs/a/serial.log",
    "run_dir": "/data/runs/a",
    "record_id": "20250101-120000-aaaaaa",
}

CONVERTED_CYCLE = {
    **MEMFD_CYCLE,
    "verified": False,
    "phases": {"prepare": 1.0, "convert": 0.3, "preserve": 0.05, "load": 0.4, "kexec": 20.0, "restore": 0.02},
    "blackout_s": 20.0,
    "memfds": [_memfd(0, 8 << 20), _memfd(1, 8 << 20, differing=3)],
    "differing_pages": {"1": [0, 1, 2]},
    "conversions": [
        {"memfd": 0, "strategy": "copy", "convert_s": 0.1, "verified": True},
        {"memfd": 1, "strategy": "splice", "convert_s": 0.2, "verified": False},
    ],
    "anon_to_survived_s": 20.8,
    "target_limits": {},
    "accelerator": "kvm",
    "record_id": "20250101-120100-bbbbbb",
}

CRIU_CYCLE = {
    **MEMFD_CYCLE,
    "workload": "criu",
    "pages_checked": 4096 + 2048,
    "phases": {
        "prepare": 0.5,
        "load": 0.4,
        "dump": 0.2,
        "convert": 0.01,
        "preserve": 0.03,
        "kexec": 25.0,
        "retrieve": 0.02,
        "images": 0.01,
        "criu-init": 2.5,
        "restore": 0.9,
        "resume": 0.01,
        "verify": 0.3,
        "finish": 0.01,
    },
    "blackout_s": 25.0,
    "downtime_s": 29.4,
    "downtime_breakdown": {
        "dump": 0.19,
        "convert": 0.01,
        "preserve": 0.03,
        "to-kexec": 0.3,
        "blackout": 25.0,
        "retrieve": 0.02,
        "images": 0.01,
        "criu-init": 2.5,
        "restore": 1.34,
    },
    "freeze_to_kexec_s": 0.53,
    "memfds": [
        {**_memfd(0, 16 << 20), "region": "anon", "token": None},
        {**_memfd(1, 8 << 20), "region": "memfd"},
    ],
    "criu": {
        "version": "3.17.1",
        "check": "Looks good.",
        "images_mode": "direct",
        "region_kind": "tmpfile",
        "anon_size": 16 << 20,
        "memfd_region": 8 << 20,
        "image_bytes": 17 << 20,
        "images": ["pages-1.img", "core-1.img"],
        "lazy_pages": {"all_pages_s": 1.7},
        "counter": {"before_dump": 1200, "after_restore": 1201, "later": 1300},
        "workload_alive_at_end": True,
    },
    "record_id": "20250101-120200-cccccc",
}

FAILED_ENTRY = {
    "verified": False,
    "error": "cycle failed in phase kexec: timed out after 240 s waiting for the next kernel to boot",
    "failed_phase": "kexec",
    "serial_log": "/data/runs/d/serial.log",
    "record_id": "20250101-120300-dddddd",
}


def test_one_row_per_cycle_with_its_identity_and_sizes():
    table = cycles_table([MEMFD_CYCLE, CONVERTED_CYCLE, CRIU_CYCLE, FAILED_ENTRY])
    assert list(table["record_id"]) == [
        r["record_id"] for r in (MEMFD_CYCLE, CONVERTED_CYCLE, CRIU_CYCLE, FAILED_ENTRY)
    ]
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    memfd, converted, criu, failed = (table.iloc[i] for i in range(4))
    assert (memfd["workload"], memfd["memfds"], memfd["data_bytes"]) == ("memfd", 2, 128 << 20)
    assert (memfd["verified"], memfd["pages_checked"], memfd["differing_pages"]) == (True, 32768, 0)
    assert (memfd["accelerator"], memfd["memory_mb"], memfd["boot_s"]) == ("tcg", 1024, 30.1)
    assert (converted["verified"], converted["differing_pages"], converted["conversions"]) == (False, 3, 2)
    assert converted["anon_to_survived_s"] == 20.8 and converted["accelerator"] == "kvm"
    assert (criu["workload"], criu["data_bytes"], criu["anon_bytes"], criu["memfd_region_bytes"]) == (
        "criu",
        24 << 20,
        16 << 20,
        8 << 20,
    )
    assert (criu["image_bytes"], criu["criu_version"], criu["criu_images_mode"]) == (17 << 20, "3.17.1", "direct")
    assert failed["error"].startswith("cycle failed in phase kexec") and failed["failed_phase"] == "kexec"
    assert list(table["verified"]) == [True, False, True, False]


def test_every_phase_gets_a_column_in_the_order_seen():
    table = cycles_table([MEMFD_CYCLE, CRIU_CYCLE])
    phases = [c for c in table.columns if c.startswith("phase_")]
    assert phases[:7] == [f"phase_{p}_s" for p in MEMFD_CYCLE["phases"]]
    assert {"phase_dump_s", "phase_criu_init_s", "phase_resume_s"} <= set(phases)
    assert table.loc[0, "phase_kexec_s"] == 21.5 and table.loc[1, "phase_criu_init_s"] == 2.5
    assert math.isnan(table.loc[0, "phase_dump_s"])  # a memfd cycle has no dump
    assert table.loc[0, "blackout_kexec_to_init_s"] == 19.0 and table.loc[0, "blackout_init_to_agent_s"] == 2.5


def test_criu_downtime_and_its_breakdown():
    table = cycles_table([CRIU_CYCLE, MEMFD_CYCLE])
    criu, memfd = table.iloc[0], table.iloc[1]
    steps = [c for c in table.columns if c.startswith("downtime_") and c != "downtime_s"]
    assert steps == [f"downtime_{s.replace('-', '_')}_s" for s in CRIU_CYCLE["downtime_breakdown"]]
    assert criu[steps].sum() == pytest.approx(sum(CRIU_CYCLE["downtime_breakdown"].values()))
    assert (criu["downtime_s"], criu["freeze_to_kexec_s"], criu["criu_lazy_all_pages_s"]) == (29.4, 0.53, 1.7)
    counters = criu[["criu_counter_before_dump", "criu_counter_after_restore", "criu_counter_later"]]
    assert list(counters) == [1200, 1201, 1300]
    assert memfd[steps].isna().all() and math.isnan(memfd["downtime_s"])


def test_missing_fields_are_empty_not_errors():
    table = cycles_table([FAILED_ENTRY, {}])
    assert len(table) == 2 and list(table.columns) == list(COLUMNS)
    failed = table.iloc[0]
    for column in ("memfds", "data_bytes", "pages_checked", "blackout_s", "downtime_s", "criu_counter_later"):
        assert math.isnan(failed[column]), column
    for column in ("workload", "accelerator", "criu_version", "target"):
        assert failed[column] is None, column
    assert pd.api.types.is_float_dtype(table["blackout_s"])


def test_numbers_stay_numbers_for_arithmetic():
    table = cycles_table([CRIU_CYCLE, FAILED_ENTRY])
    outside = table["downtime_s"] - table["blackout_s"]
    assert outside[0] == pytest.approx(4.4) and math.isnan(outside[1])
    assert pd.api.types.is_numeric_dtype(table["image_bytes"])


def test_no_results_is_an_empty_table_with_the_columns():
    table = cycles_table([])
    assert table.empty and list(table.columns) == list(COLUMNS)
    assert pd.api.types.is_float_dtype(table["downtime_s"])


def test_fields_of_the_wrong_type_are_empty_not_errors():
    # a workload's part of a result comes from the agent's files: whatever their types, the table is built
    odd = {
        "memfds": [_memfd(0, 8192), "not a memfd", {**_memfd(1, 8192), "differing_count": "2"}],
        "pages_checked": "4",
        "blackout_s": True,
        "criu": {"counter": [1, 2], "lazy_pages": "none", "image_bytes": 10},
        "phases": ["prepare"],
        "downtime_breakdown": {"freeze": "slow", 3: 0.5},
        "conversions": {"0": {}},
    }
    row = cycles_table([odd]).iloc[0]
    assert row["memfds"] == 2 and row["data_bytes"] == 16384 and math.isnan(row["differing_pages"])
    assert math.isnan(row["pages_checked"]) and math.isnan(row["blackout_s"]) and math.isnan(row["conversions"])
    assert row["image_bytes"] == 10 and math.isnan(row["criu_counter_later"])
    assert math.isnan(row["downtime_freeze_s"]) and row["downtime_3_s"] == 0.5
    assert not any(c.startswith("phase_") for c in row.index)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
result_keys = st.sampled_from([*COLUMNS, "memfds", "criu", "phases", "blackout_breakdown", "downtime_breakdown"])


@given(st.lists(st.dictionaries(result_keys, json_values, max_size=10), max_size=3))
def test_any_json_result_makes_a_table_with_every_column(results):
    table = cycles_table(results)
    assert len(table) == len(results) and list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
