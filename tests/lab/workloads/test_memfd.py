"""The ``memfd`` workload on the host: parameters, faults, sizing, request and summary (its cycles in the lab VM
are in tests/lab/test_cycle.py)."""

import pytest

from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults, PageRef
from workbench.lab.workloads.memfd import MemfdWorkload


def test_sizes_and_tokens_checked():
    with pytest.raises(InvalidCycle, match="multiple of the 4096-byte page size"):
        MemfdWorkload(memfd_size=1000).validate()
    with pytest.raises(InvalidCycle, match="3 tokens given for 2 memfds"):
        MemfdWorkload(memfds=2, tokens=[1, 2, 3]).validate()
    with pytest.raises(InvalidCycle, match="cannot be negative"):
        MemfdWorkload(memfds=-1).validate()
    MemfdWorkload().validate()


def test_faults_must_name_a_page_the_cycle_has():
    workload = MemfdWorkload(memfds=2, memfd_size=8 << 20)
    workload.validate_faults(Faults(corrupt_page=PageRef(1, 2047)))
    with pytest.raises(InvalidCycle, match="names page 2048 of memfd 1, but the cycle has 2 memfds of 2048 pages"):
        workload.validate_faults(Faults(corrupt_page=PageRef(1, 2048)))
    with pytest.raises(InvalidCycle, match="memfd 2"):
        workload.validate_faults(Faults(modify_after_preserve=PageRef(2, 0)))


def test_guest_memory_and_request():
    assert MemfdWorkload(memfds=2, memfd_size=64 << 20).memory_mb() == 1024
    assert MemfdWorkload(memfds=1, memfd_size=1 << 30).memory_mb() >= 2 * 1024 + 640
    assert MemfdWorkload(memfds=2, seed=7).request() == {
        "memfds": 2,
        "memfd_size": 64 << 20,
        "tokens": [1000, 1001],
        "seed": 7,
    }
    assert MemfdWorkload().record_params() == {
        "workload": "memfd",
        "memfds": 2,
        "memfd_size": 64 << 20,
        "tokens": None,
        "seed": 0,
    }


def test_summary_keeps_what_modifying_a_preserved_page_did():
    outcome = {"pwrite": "refused: Operation not permitted", "mmap_store": "written"}
    out = MemfdWorkload().summarize({"verified": True}, {"modify_after_preserve": outcome}, {}, [])
    assert out["modify_after_preserve"] == outcome
    assert "modify_after_preserve" not in MemfdWorkload().summarize({}, {}, {}, [])
