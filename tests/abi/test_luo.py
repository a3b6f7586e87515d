"""luo-v5 state: sessions and files in block lists, FLBs, and the checks of the kernel's deserialization."""

import struct

import pytest

from tests.abi.helpers import area
from workbench.abi.block import read_block_list
from workbench.abi.errors import (
    AddressNotInMemory,
    CountMismatch,
    IncompatibleFormat,
    LoopDetected,
    MalformedData,
    TruncatedData,
)
from workbench.abi.luo import (
    FILE_SER_SIZE,
    FLB_SER_SIZE,
    LUO_SER_SIZE,
    SESSION_SER_SIZE,
    LuoFile,
    LuoFlb,
    decode_luo,
    encode_luo,
)
from workbench.abi.physmem import PAGE_SIZE


def sessions(n_files: int = 70):
    return [
        ("vm-a", [LuoFile("memfd-v2", 0x1000 * (i + 1), 0x100 + i) for i in range(n_files)]),
        ("empty", []),
        ("vm-b", [LuoFile("iommufd-v1", 0xDEAD000, 7)]),
    ]


TEST_FLB = LuoFlb("liveupdate-test-flb-v1", 0x4242000, 2)


def build(n_files: int = 70):
    mem, alloc = area(64)
    state = encode_luo(sessions(n_files), alloc, [TEST_FLB], liveupdate_num=5)
    return mem, state


def test_struct_sizes_match_the_abi():
    assert (LUO_SER_SIZE, SESSION_SER_SIZE, FILE_SER_SIZE, FLB_SER_SIZE) == (32, 80, 64, 64)


def test_round_trip():
    mem, written = build()
    state = decode_luo(mem, written.phys, LUO_SER_SIZE)
    assert state.compatible == "luo-v5" and state.liveupdate_num == 5
    assert [s.name for s in state.sessions] == ["vm-a", "empty", "vm-b"]
    assert state.session("vm-a").files == sessions()[0][1]
    assert len(state.session("vm-a").block_pages) == 2  # 70 files, 63 per block
    assert state.session("empty").files == [] and state.session("empty").files_phys == 0
    assert state.flbs == [LuoFlb("liveupdate-test-flb-v1", 0x4242000, 2)]
    frame = state.files_frame()
    assert len(frame) == 71 and set(frame["session"]) == {"vm-a", "vm-b"}
    assert frame.loc[frame.token == 7, "compatible"].item() == "iommufd-v1"
    assert set(state.metadata_pages()) == set(written.metadata_pages())


def test_luo_ser_layout():
    mem, written = build()
    compatible, num, sessions_pa, flbs_pa = struct.unpack("<8sQQQ", mem.read(written.phys, 32))
    assert compatible == b"luo-v5\0\0" and num == 5
    assert sessions_pa == written.sessions_pa and flbs_pa == written.flbs_pa
    assert struct.unpack("<QQ", mem.read(flbs_pa, 16)) == (1, 1)
    entry = read_block_list(mem, sessions_pa, SESSION_SER_SIZE).entries[0]
    assert entry[:5] == b"vm-a\0" and struct.unpack_from("<Q", entry, 72)[0] == 70


def test_wrong_compatible_and_small_blob():
    mem, written = build()
    with pytest.raises(TruncatedData, match="16 bytes"):
        decode_luo(mem, written.phys, 16)
    mem.write(written.phys, b"luo-v4\0\0")
    with pytest.raises(IncompatibleFormat, match="luo-v4") as exc:
        decode_luo(mem, written.phys)
    assert exc.value.phys == written.phys


def session_entry_phys(mem, state, index: int) -> int:
    per_block = (PAGE_SIZE - 16) // SESSION_SER_SIZE
    return state.session_block_pages[index // per_block] + 16 + (index % per_block) * SESSION_SER_SIZE


def test_file_count_disagreeing_with_blocks():
    mem, written = build()
    mem.write_u64(session_entry_phys(mem, written, 0) + 72, 71)
    with pytest.raises(CountMismatch, match="'vm-a'.*71.*70"):
        decode_luo(mem, written.phys)


def test_count_without_file_blocks():
    mem, written = build()
    mem.write_u64(session_entry_phys(mem, written, 1) + 72, 3)
    with pytest.raises(CountMismatch, match="'empty'"):
        decode_luo(mem, written.phys)


def test_loop_in_a_file_list():
    mem, written = build(63 * 3)
    pages = written.session("vm-a").block_pages
    mem.write_u64(pages[2], pages[0])
    with pytest.raises(LoopDetected, match="vm-a"):
        decode_luo(mem, written.phys)


def test_session_list_pointer_outside_memory():
    mem, written = build()
    outside = mem.base + 100 * PAGE_SIZE
    mem.write_u64(written.phys + 16, outside)
    with pytest.raises(AddressNotInMemory, match=f"{outside:#x}"):
        decode_luo(mem, written.phys)
    with pytest.raises(AddressNotInMemory):
        decode_luo(mem, mem.base + 64 * PAGE_SIZE - 16)


def test_duplicate_session_names():
    mem, written = build()
    mem.write(session_entry_phys(mem, written, 2), b"vm-a\0")
    with pytest.raises(MalformedData, match="twice"):
        decode_luo(mem, written.phys)


def test_flb_header_checks():
    mem, written = build()
    mem.write_u64(written.flbs_pa + 8, 64)
    with pytest.raises(CountMismatch, match="64 entries"):
        decode_luo(mem, written.phys)
    mem.write_u64(written.flbs_pa, 0)
    with pytest.raises(MalformedData, match="0 pages"):
        decode_luo(mem, written.phys)


def test_names_must_fit():
    _, alloc = area(8)
    with pytest.raises(ValueError):
        encode_luo([("x" * 64, [])], alloc)
    with pytest.raises(ValueError):
        encode_luo([("ok", [LuoFile("c" * 48, 0, 0)])], alloc)
