"""The contract checker itself: it must fail on exactly what it is there to catch (a foreign exception, too many
reads, a loop that never ends, a large allocation) and let a well-behaved decoder through."""

from __future__ import annotations

import numpy as np
import pytest

from tests.abi.helpers import area
from tests.fuzz.contract import Budget, BudgetExceeded, CountingMemory, check_contract
from workbench.abi.errors import AbiError, MalformedData
from workbench.abi.physmem import PAGE_SIZE
from workbench.abi.radix import decode_leaves


def test_a_project_error_is_the_outcome():
    def decoder():
        raise MalformedData("bad", 0x1000)

    outcome = check_contract(decoder, input_size=4096, errors=AbiError)
    assert isinstance(outcome.error, MalformedData) and outcome.result is None


def test_a_foreign_exception_escapes():
    with pytest.raises(KeyError):
        check_contract(lambda: {}["missing"], input_size=4096, errors=AbiError)


def test_rereading_memory_exceeds_the_read_budget():
    memory, _ = area(4)
    counted = CountingMemory(memory)

    def decoder():
        while True:
            counted.read(memory.base, PAGE_SIZE)

    with pytest.raises(BudgetExceeded, match="bytes read|physical reads"):
        check_contract(decoder, input_size=memory.size, errors=AbiError, memory=counted)
    assert counted.bytes_read <= 4 * memory.size + 64 * PAGE_SIZE + PAGE_SIZE


def test_an_endless_loop_is_stopped():
    def endless():
        while True:
            decode_leaves(np.empty(0, np.uint64), np.empty((0, 512), np.uint64))

    with pytest.raises(BudgetExceeded, match="Python steps"):
        check_contract(endless, input_size=4096, errors=AbiError, budget=Budget(fixed_steps=10_000))


def test_a_large_allocation_exceeds_the_memory_budget():
    with pytest.raises(BudgetExceeded, match="peak allocation"):
        check_contract(lambda: np.ones(64 << 20, np.uint8), input_size=4096, errors=AbiError)


def test_a_runaway_allocation_is_a_memory_error_not_an_exhausted_machine():
    with pytest.raises(MemoryError):
        check_contract(lambda: np.ones(64 << 30, np.uint8), input_size=4096, errors=AbiError)


def test_what_a_call_did_is_reported():
    memory, _ = area(4)
    counted = CountingMemory(memory)
    outcome = check_contract(
        lambda: counted.read(memory.base, 100), input_size=memory.size, errors=AbiError, memory=counted
    )
    assert outcome.result == bytes(100) and (outcome.reads, outcome.bytes_read) == (1, 100)
    assert outcome.steps >= 1 and outcome.peak_bytes >= 100
