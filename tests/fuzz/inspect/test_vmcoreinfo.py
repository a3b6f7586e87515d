"""Hostile VMCOREINFO (workbench/inspect/vmcoreinfo.py): guest RAM holding VMCOREINFO texts of hypothesis-chosen
releases and addresses among garbage, damaged, or filled with what makes a scanner work hardest (``OSRELEASE=``
and key lines over and over); scanned, the running kernel's copy chosen, and any bytes parsed."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.contract import check_contract, fuzz_settings
from tests.fuzz.mutation import apply_blob_edits, blob_edits
from workbench.abi.physmem import MemoryRange
from workbench.inspect.errors import InspectError
from workbench.inspect.vmcoreinfo import parse_vmcoreinfo, running_vmcoreinfo, vmcoreinfo_candidates

PAGE = 4096
RELEASES = st.text("0123456789.-abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=20)
TEXTS = st.builds(
    lambda release, uts, phys_base, extra: (
        f"OSRELEASE={release}\nPAGESIZE=4096\nKERNELOFFSET=0\nSYMBOL(init_uts_ns)={uts:x}\n"
        f"NUMBER(phys_base)={phys_base:#x}\nOFFSET(uts_namespace.name)=4\n{extra}"
    ).encode(),
    RELEASES,
    st.integers(0, (1 << 64) - 1),
    st.integers(0, 1 << 24),
    st.text(max_size=30).filter(lambda t: "\0" not in t),
)
# What makes a scanner work hardest: starts of candidates, key lines and text without a NUL, over and over.
WORST = st.sampled_from(
    [
        b"OSRELEASE=",
        b"OSRELEASE=\n",
        b"OSRELEASE=x\nPAGESIZE=1\nKERNELOFFSET=0\nSYMBOL(init_uts_ns)=1\n",
        b"OSRELEASE=x\nPAGESIZE=1\nKERNELOFFSET=0\nSYMBOL(init_uts_ns)=1\n\0",
        b"\nPAGESIZE=\nKERNELOFFSET=",
    ]
)


def scan_checked(ram: bytes):
    """vmcoreinfo_candidates, then running_vmcoreinfo over the RAM as one range, under the contract."""

    def scan():
        candidates = vmcoreinfo_candidates(ram)
        return candidates, running_vmcoreinfo(candidates, None, ram, [MemoryRange(0, len(ram))]) if candidates else None

    outcome = check_contract(scan, input_size=len(ram), errors=InspectError)
    if outcome.error is None:
        candidates, chosen = outcome.result
        assert len(candidates) == len(set(candidates)) <= 64
        assert chosen is None or chosen[0] in candidates
    return outcome


@fuzz_settings()
@given(st.lists(st.tuples(st.integers(0, 15 * PAGE), TEXTS), max_size=4), st.data())
def test_ram_with_vmcoreinfo_texts_scans_cleanly_within_budget(placed, data):
    ram = bytearray(16 * PAGE)
    for at, text in placed:
        ram[at : at + len(text) + 1] = (text + b"\0")[: len(ram) - at]
    damaged = apply_blob_edits(bytes(ram), data.draw(st.one_of(st.just([]), blob_edits(len(ram))), label="edits"))
    scan_checked(damaged)


@fuzz_settings()
@given(WORST, st.integers(1, 64 * PAGE), st.binary(max_size=8))
@example(pattern=b"OSRELEASE=x\nPAGESIZE=1\nKERNELOFFSET=0\nSYMBOL(init_uts_ns)=1\n", size=64 * PAGE, tail=b"\0")
def test_ram_full_of_near_candidates_is_scanned_in_linear_work(pattern, size, tail):
    """Each ``OSRELEASE=`` used to have up to 4 KiB after it decoded and parsed: hundreds of times the RAM."""
    ram = (pattern * (size // len(pattern) + 1))[:size] + tail
    scan_checked(ram)


@fuzz_settings()
@given(st.one_of(st.binary(max_size=2000), st.text(max_size=2000), TEXTS))
def test_any_bytes_or_text_parse(text):
    outcome = check_contract(lambda: parse_vmcoreinfo(text), input_size=len(text), errors=InspectError)
    assert isinstance(outcome.result, dict)
