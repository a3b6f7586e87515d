"""Hostile KHO FDTs (workbench/abi/fdt.py): trees of hypothesis-chosen nodes, properties and nesting written with
libfdt, the encoder's KHO FDTs, and mutations of both and of a real 7.2 capture (tests/lab/kho-out-7.2-debugfs.fdt,
the ``kho/out/fdt`` debugfs file: cut short, as 7.2 shows it); decoded as blobs and found in memory."""

from __future__ import annotations

import struct
import subprocess
import sys

import libfdt
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.contract import CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import REAL_KHO_OUT_7_2, apply_blob_edits, blob_edits
from workbench.abi.errors import AbiError, MalformedData
from workbench.abi.fdt import (
    MAX_FDT_DEPTH,
    FdtNode,
    decode_kho_fdt,
    encode_kho_fdt,
    find_kho_fdts,
    parse_fdt,
    read_kho_fdt,
)
from workbench.abi.physmem import PAGE_SIZE, BufferMemory

REAL_7_2 = REAL_KHO_OUT_7_2
REAL_7_2_WHOLE = REAL_7_2[:4] + struct.pack(">I", len(REAL_7_2)) + REAL_7_2[8:]  # its header's size made true

NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789,._+-@", min_size=1, max_size=12)
U64 = st.integers(0, (1 << 64) - 1)
PROPERTY_VALUES = st.one_of(
    U64.map(lambda v: struct.pack("<Q", v)), st.binary(max_size=24), st.just(b"kho-v4\0"), st.just(b"")
)
NODES = st.recursive(
    st.tuples(st.dictionaries(NAMES, PROPERTY_VALUES, max_size=3), st.just({})),
    lambda children: st.tuples(
        st.dictionaries(NAMES, PROPERTY_VALUES, max_size=3), st.dictionaries(NAMES, children, max_size=3)
    ),
    max_leaves=12,
)
SUBTREES = st.lists(  # libfdt takes "a" and "a@1" for the same node when adding one: no unit addresses here
    st.tuples(st.text("abcdefghijklmnopqrstuvwxyz0123456789,._+-", min_size=1, max_size=12), U64, U64),
    max_size=6,
    unique_by=lambda s: s[0],
)


def write_fdt(node: tuple[dict, dict]) -> bytes:
    """The blob of a tree of ``(properties, children)`` written with libfdt's sequential writer."""
    sw = libfdt.FdtSw(64 << 10)
    sw.finish_reservemap()

    def emit(name: str, properties: dict, children: dict) -> None:
        sw.begin_node(name)
        for key, value in properties.items():
            sw.property(key, value)
        for child, (child_properties, grandchildren) in children.items():
            emit(child, child_properties, grandchildren)
        sw.end_node()

    emit("", *node)
    fdt = sw.as_fdt()
    return bytes(fdt.as_bytearray())[: fdt.totalsize()]


def nested_fdt(depth: int) -> bytes:
    """An FDT of ``depth`` nodes each inside the previous one, written tag by tag."""
    begin = struct.pack(">I", 1) + b"n\0\0\0"
    body = struct.pack(">I", 1) + bytes(4) + begin * depth + struct.pack(">I", 2) * (depth + 1) + struct.pack(">I", 9)
    header = struct.pack(">10I", 0xD00DFEED, 56 + len(body), 56, 56 + len(body), 40, 17, 16, 0, 0, len(body))
    return header + bytes(16) + body


def decode_checked(blob: bytes):
    """decode_kho_fdt (which parses the whole tree) under the contract."""
    outcome = check_contract(lambda: decode_kho_fdt(blob, 0x1000), input_size=len(blob), errors=AbiError)
    if outcome.error is None:
        assert outcome.result.totalsize <= len(blob)
    return outcome


def depth_of(node: FdtNode) -> int:
    return 1 + max((depth_of(c) for c in node.children), default=0)


@fuzz_settings()
@given(st.integers(0, (1 << 64) - 1), SUBTREES)
def test_encoded_kho_fdts_decode_exactly(memory_map, subtrees):
    blob = encode_kho_fdt(memory_map, subtrees)
    outcome = decode_checked(blob)
    assert outcome.error is None and outcome.result.memory_map_phys == memory_map
    assert {(s.name, s.data_phys, s.blob_size) for s in outcome.result.subtrees} == set(subtrees)


@fuzz_settings()
@given(NODES)
def test_any_tree_parses_or_fails_cleanly(tree):
    blob = write_fdt(tree)
    outcome = check_contract(lambda: parse_fdt(blob), input_size=len(blob), errors=AbiError)
    assert outcome.error is None, outcome.error  # every tree libfdt writes, at this depth, is read back
    decode_checked(blob)


@fuzz_settings()
@given(st.data(), st.sampled_from(["encoded", "real 7.2", "real 7.2 whole", "tree"]))
def test_damaged_fdts_fail_cleanly_within_budget(data, seed):
    if seed == "encoded":
        blob = encode_kho_fdt(0x1234000, data.draw(SUBTREES, label="subtrees"))
    elif seed == "tree":
        blob = write_fdt(data.draw(NODES, label="tree"))
    else:
        blob = REAL_7_2 if seed == "real 7.2" else REAL_7_2_WHOLE
    damaged = apply_blob_edits(blob, data.draw(blob_edits(len(blob)), label="edits"))
    decode_checked(damaged)


@fuzz_settings()
@given(st.integers(1, 2000))
@example(depth=1000)  # was a RecursionError
def test_deep_nesting_fails_cleanly_within_budget(depth):
    outcome = decode_checked(nested_fdt(depth))
    assert isinstance(outcome.error, AbiError)
    blob = nested_fdt(depth)
    parsed = check_contract(lambda: parse_fdt(blob), input_size=len(blob), errors=AbiError)
    if depth + 1 <= MAX_FDT_DEPTH:
        assert parsed.error is None and depth_of(parsed.result) == depth + 1
    else:
        assert isinstance(parsed.error, MalformedData) and "deeper" in str(parsed.error)


@fuzz_settings()
@given(
    st.lists(st.tuples(st.integers(0, 15), st.sampled_from(["encoded", "real 7.2 whole", "header"])), max_size=6),
    st.data(),
)
def test_fdts_in_memory_are_found_and_read_within_budget(placed, data):
    """FDTs (whole, damaged, or just a header claiming any size) at page starts of 16 pages of memory."""
    memory = BufferMemory(16 * PAGE_SIZE, base=0x20_0000)
    for page, kind in placed:
        if kind == "header":
            blob = struct.pack(">II", 0xD00DFEED, data.draw(st.integers(0, (1 << 32) - 1), label="totalsize"))
        else:
            blob = encode_kho_fdt(0x1234000, [("LUO", 0x5000, 32)]) if kind == "encoded" else REAL_7_2_WHOLE
            blob = apply_blob_edits(blob, data.draw(st.one_of(st.just([]), blob_edits(len(blob))), label="edits"))
        phys = memory.base + page * PAGE_SIZE
        memory.write(phys, blob[: memory.base + memory.size - phys])
    counted = CountingMemory(memory)
    outcome = check_contract(lambda: find_kho_fdts(counted), input_size=memory.size, errors=AbiError, memory=counted)
    assert outcome.error is None  # scanning never fails: what does not decode is skipped
    for phys in outcome.result:
        read = check_contract(
            lambda p=phys: read_kho_fdt(counted, p), input_size=memory.size, errors=AbiError, memory=counted
        )
        assert read.error is None and read.result.phys == phys


def test_a_page_of_fdt_headers_claiming_all_memory_is_scanned_within_budget():
    """Every page starts with an FDT header whose size reaches the end of memory: the scan reads each candidate's
    first page only (the KHO FDT is one page), not the rest of memory from every page."""
    memory = BufferMemory(256 * PAGE_SIZE, base=0x20_0000)
    for page in range(256):
        memory.write(memory.base + page * PAGE_SIZE, struct.pack(">II", 0xD00DFEED, (256 - page) * PAGE_SIZE))
    counted = CountingMemory(memory)
    outcome = check_contract(lambda: find_kho_fdts(counted), input_size=memory.size, errors=AbiError, memory=counted)
    assert outcome.result == [] and outcome.bytes_read <= 3 * memory.size


def _with_first_property_name_at(name_offset: int) -> bytes:
    blob = bytearray(encode_kho_fdt(0x1000, [("LUO", 1, 2)]))
    off_struct = struct.unpack_from(">I", blob, 8)[0]
    struct.pack_into(">I", blob, off_struct + 16, name_offset)  # root: BEGIN_NODE "", then PROP (tag, len, nameoff)
    return bytes(blob)


def test_a_property_name_outside_the_strings_block_is_malformed_not_a_crash():
    """pylibfdt's property getter dereferences the NULL name libfdt gives for such an offset and kills the
    interpreter; the check runs in a child process so that a regression fails this test, not the suite."""
    code = (
        "import sys; from workbench.abi.fdt import parse_fdt; from workbench.abi.errors import MalformedData\n"
        "try:\n    parse_fdt(bytes.fromhex(sys.argv[1]))\nexcept MalformedData as exc:\n    print(exc)\n"
    )
    for name_offset in (1000, 0xFFFFFFFF):
        blob = _with_first_property_name_at(name_offset)
        done = subprocess.run([sys.executable, "-c", code, blob.hex()], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "property name" in done.stdout and "does not end inside its block" in done.stdout


def test_names_that_are_not_utf8_are_read_with_replacement():
    blob = bytearray(encode_kho_fdt(0x1000, [("LUO", 1, 2)]))
    blob[blob.index(b"LUO")] = 0x80  # the node name
    blob[blob.index(b"blob-size")] = 0xFF  # a property name in the strings block (was a SystemError)
    outcome = check_contract(lambda: parse_fdt(bytes(blob)), input_size=len(blob), errors=AbiError)
    assert outcome.error is None
    (sub,) = outcome.result.children
    assert sub.name == "\ufffdUO" and "\ufffdlob-size" in sub.properties
