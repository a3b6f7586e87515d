"""Hostile memory holding several KHO FDTs (workbench/abi/handovers.py): a next kernel's RAM (the handover it was
handed and its own) and handovers the encoder writes with hypothesis-chosen kexec counts and sessions beside
stale ones, then damaged anywhere or given a second FDT mutated from the real 7.2 capture; labelling (fdt_roles),
choosing and decoding (decode_handovers) and what ``workbench abi decode`` reports raise only the project's
errors, within the contract's budget, and damage to the FDTs not chosen never stops the chosen one's report."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tests.abi.helpers import area
from tests.abi.test_handovers import next_kernel_ram
from tests.abi.test_moment import one_memfd
from tests.fuzz.contract import Budget, CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import (
    REAL_KHO_OUT_7_2,
    apply_blob_edits,
    apply_memory_edits,
    blob_edits,
    memory_edits,
)
from workbench.abi.errors import AbiError
from workbench.abi.handover import encode_handover
from workbench.abi.handovers import decode_handovers, fdt_roles
from workbench.abi.physmem import PAGE_SIZE, BufferMemory

HANDOVERS_BUDGET = Budget(memory_factor=256)  # the radix trees' folios: see tests/fuzz/test_radix.py
ROLES = ("outgoing", "incoming", "older", "unknown")
#: per handover: its kexec count (``None``: its kexec-metadata does not decode) and its memfds' page counts
HANDOVER = st.tuples(st.one_of(st.none(), st.integers(0, 5)), st.lists(st.integers(1, 4), max_size=2))
SEVERAL = st.lists(HANDOVER, min_size=1, max_size=3)


def build(handovers) -> tuple[BufferMemory, list, list[list[int]]]:
    """Memory holding ``handovers`` (from :data:`SEVERAL`), their encodings and the pages each one took."""
    mem, alloc = area(48 + 24 * len(handovers))
    encoded, pages = [], []
    for i, (count, memfds) in enumerate(handovers):
        before = len(alloc.allocated)
        specs = [one_memfd(alloc, token=t, pages=n) for t, n in enumerate(memfds)]
        h = encode_handover(alloc, {f"s{i}": specs}, kexec_count=count or 0)
        if count is None:
            mem.write(h.kexec_metadata.phys, b"\xff" * 4)  # no version that decodes
        encoded.append(h)
        pages.append([p for phys, n in alloc.allocated[before:] for p in range(phys, phys + n * PAGE_SIZE, PAGE_SIZE)])
    return mem, encoded, pages


def decode_checked(memory: BufferMemory, **kwargs):
    """decode_handovers and what the report derives from it, under the contract."""
    counted = CountingMemory(memory)

    def call():
        found = decode_handovers(counted, **kwargs)
        return found, found.labelled(), found.chosen.unpreserved_references()

    outcome = check_contract(call, input_size=memory.size, errors=AbiError, memory=counted, budget=HANDOVERS_BUDGET)
    if outcome.error is None:
        found, labelled, _refs = outcome.result
        assert found.chosen in found.handovers and sum(entry["chosen"] for entry in labelled) == 1
        assert all(h.role in ROLES for h in found.handovers)
        json.dumps(labelled)
    return outcome


def roles_checked(memory: BufferMemory, fdts: list[int]):
    counted = CountingMemory(memory)
    outcome = check_contract(lambda: fdt_roles(counted, fdts), input_size=memory.size, errors=AbiError, memory=counted)
    assert outcome.error is None  # a role for every FDT, whatever its bytes
    roles = outcome.result
    assert [r.phys for r in roles] == fdts and sum(r.role == "outgoing" for r in roles) <= 1
    return roles


@fuzz_settings()
@given(SEVERAL)
def test_the_kexec_counts_label_every_fdt(handovers):
    mem, encoded, _pages = build(handovers)
    roles = roles_checked(mem, [h.fdt_phys for h in encoded])
    counts = [count for count, _memfds in handovers]
    known = [c for c in counts if c is not None]
    for role, count in zip(roles, counts, strict=True):
        assert role.kexec_count == count
        if len(handovers) == 1:
            assert role.role == "outgoing"
        elif count is None or known.count(count) > 1 and count == max(known):
            assert role.role == "unknown"
        else:
            expected = {max(known): "outgoing", max(known) - 1: "incoming"}.get(count, "older")
            assert role.role == expected


@fuzz_settings()
@given(SEVERAL, st.booleans())
def test_valid_handovers_decode_without_errors(handovers, strict):
    mem, encoded, _pages = build(handovers)
    outcome = decode_checked(mem, strict=strict)
    known = [c for c, _memfds in handovers if c is not None]
    if len(handovers) > 1 and (not known or known.count(max(known)) > 1):
        assert outcome.error is not None and "does not say which" in str(outcome.error)
        return
    if strict and handovers == [(None, handovers[0][1])]:  # the only one, chosen, strictly: its metadata is wrong
        assert "kexec-metadata" in str(outcome.error)
        return
    assert outcome.error is None
    found = outcome.result[0]
    assert [h.fdt.phys for h in found.handovers] == [h.fdt_phys for h in encoded]
    for h, (count, memfds) in zip(found.handovers, handovers, strict=True):
        undecoded = [] if count is not None else ["kexec-metadata"]
        assert [str(e).split(" at ")[0] for e in h.errors] == undecoded
        assert len(h.memfds) == len(memfds)


@fuzz_settings()
@given(st.data(), SEVERAL, st.booleans())
def test_damaged_handovers_fail_cleanly_within_budget(data, handovers, strict):
    mem, _encoded, pages = build(handovers)
    every_page = sorted(p for own in pages for p in own)
    damaged = apply_memory_edits(mem, data.draw(memory_edits(mem, every_page), label="edits"))
    decode_checked(damaged, strict=strict)


@fuzz_settings()
@given(st.data(), SEVERAL, st.booleans())
def test_damage_to_the_fdts_not_chosen_never_stops_the_chosen_ones_report(data, handovers, strict):
    """The first handover asked for; the others damaged anywhere (memory never cut): it is decoded exactly, strictly
    when asked so, whatever the others' bytes say."""
    mem, encoded, pages = build([(5, [2]), *handovers])
    others = sorted(p for own in pages[1:] for p in own)
    edits = [e for e in data.draw(memory_edits(mem, others), label="edits") if e[0] != "cut"]
    damaged = apply_memory_edits(mem, edits)
    outcome = decode_checked(damaged, fdt_phys=encoded[0].fdt_phys, strict=strict)
    assert outcome.error is None
    chosen = outcome.result[0].chosen
    assert chosen.fdt.phys == encoded[0].fdt_phys and chosen.errors == [] and list(chosen.memfds) == [("s0", 0)]


@fuzz_settings()
@given(st.data(), st.booleans(), st.booleans())
def test_damaged_next_kernel_ram_fails_cleanly_within_budget(data, strict, serialized):
    """Both FDTs of a next kernel's RAM and everything they point to, damaged anywhere."""
    mem, _incoming, _outgoing = next_kernel_ram(own_serialized=serialized)
    pages = sorted({p for p in range(mem.base, mem.base + mem.size, PAGE_SIZE) if any(mem.read(p, PAGE_SIZE))})
    damaged = apply_memory_edits(mem, data.draw(memory_edits(mem, pages), label="edits"))
    decode_checked(damaged, strict=strict)


@fuzz_settings()
@given(st.data(), st.sampled_from(["real 7.2", "encoded"]), st.booleans())
def test_a_mutated_second_fdt_beside_the_running_kernels_fails_cleanly(data, seed, strict):
    """A stale FDT written over a free page beside an intact handover: the real 7.2 capture (its pointers lead
    outside this memory) or the intact FDT's own bytes, mutated."""
    mem, alloc = area(96)
    own = encode_handover(alloc, {"vm": [one_memfd(alloc, token=42)]}, kexec_count=3)
    blob = REAL_KHO_OUT_7_2 if seed == "real 7.2" else mem.read(own.fdt_phys, PAGE_SIZE)
    stale = alloc.alloc()
    mem.write(stale, apply_blob_edits(blob, data.draw(blob_edits(len(blob)), label="edits"))[:PAGE_SIZE])
    outcome = decode_checked(mem, strict=strict)
    if outcome.error is None and outcome.result[0].chosen.fdt.phys == own.fdt_phys:
        assert outcome.result[0].chosen.errors == [] and list(outcome.result[0].chosen.memfds) == [("vm", 42)]
    asked = decode_checked(mem, fdt_phys=own.fdt_phys, strict=strict)
    assert asked.error is None and asked.result[0].chosen.errors == []
