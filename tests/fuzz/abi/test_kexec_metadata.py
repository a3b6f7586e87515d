"""Hostile kexec-metadata blobs (workbench/abi/kexec_metadata.py): blobs the encoder writes with
hypothesis-chosen releases and counts, damaged or cut short, with any blob size the FDT may claim."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.abi.helpers import area
from tests.fuzz.contract import CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import EXTREME_U64, apply_memory_edits, memory_edits, used_pages
from workbench.abi.errors import AbiError
from workbench.abi.kexec_metadata import KEXEC_METADATA_SIZE, decode_kexec_metadata, encode_kexec_metadata

BLOB_SIZES = st.one_of(st.just(KEXEC_METADATA_SIZE), st.sampled_from(EXTREME_U64), st.integers(0, 200))


@fuzz_settings()
@given(st.data(), st.text(max_size=80), st.integers(0, (1 << 32) - 1), BLOB_SIZES, st.integers(-8, 8))
def test_damaged_metadata_fails_cleanly_within_budget(data, release, count, blob_size, shift):
    memory, allocator = area(2)
    written = encode_kexec_metadata(release, count, allocator)
    damaged = apply_memory_edits(memory, data.draw(memory_edits(memory, used_pages(allocator)), label="edits"))
    counted = CountingMemory(damaged)
    phys = written.phys + shift * 512  # also straddling the end of memory, or before it
    outcome = check_contract(
        lambda: decode_kexec_metadata(counted, phys, blob_size),
        input_size=damaged.size,
        errors=AbiError,
        memory=counted,
    )
    if outcome.error is None:
        assert outcome.result.version == 1 and len(outcome.result.previous_release) <= 64
