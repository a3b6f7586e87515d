"""The whole handover: built as a 7.2 kernel leaves it after liveupdate_reboot(), decoded back from raw memory
through every kind of reader, from an FDT blob (complete or cut short like 7.2's kho/out/fdt), or with damage."""

import struct

import drgn
import numpy as np
import pytest

from tests.abi.helpers import area, as_set
from tests.abi.test_fdt import kernel_like_fdt
from tests.abi.test_physmem import write_elf
from workbench.abi import decode_fdt_blob, decode_handover
from workbench.abi.errors import AmbiguousHandover, HandoverNotFound, MalformedData, TruncatedData
from workbench.abi.fdt import encode_kho_fdt
from workbench.abi.handover import MemfdSpec, encode_handover
from workbench.abi.kexec_metadata import KEXEC_METADATA_SIZE
from workbench.abi.luo import LuoFlb
from workbench.abi.physmem import PAGE_SIZE, DrgnMemory, ElfVmcore, RawRamFile


def memfd_spec(alloc, token: int, orders) -> MemfdSpec:
    pfns, indexes, index = [], [], 0
    for order in orders:
        pfns.append(alloc.alloc(order) // PAGE_SIZE)
        indexes.append(index)
        index += 1 << order
    return MemfdSpec(token, np.array(pfns), np.array(orders), np.array(indexes), index * PAGE_SIZE - 10, pos=5)


@pytest.fixture
def built():
    mem, alloc = area(8192)
    sessions = {
        "vm0": [memfd_spec(alloc, 0x10, [0, 9, 0, 0, 4]), memfd_spec(alloc, 0x11, [0] * 300)],
        "vm1": [memfd_spec(alloc, 0x20, [9, 9])],
        "idle": [],
    }
    other = (np.array([(mem.base // PAGE_SIZE) + 8000]), np.array([0]))
    encoded = encode_handover(
        alloc,
        sessions,
        flbs=[LuoFlb("test-flb", 0x1234, 1)],
        other_folios=other,
        release="7.2.13-lab",
        kexec_count=2,
        liveupdate_num=3,
    )
    return mem, encoded, sessions


def check(handover, encoded, sessions, fdt_known=True):
    assert handover.errors == []
    assert as_set(*handover.memory_map.folios()) == as_set(encoded.preserved["pfn"], encoded.preserved["order"])
    summary = handover.summary()
    assert summary["sessions"] == ["vm0", "vm1", "idle"] and summary["files"] == 3
    assert summary["flbs"] == ["test-flb"] and summary["liveupdate_num"] == 3
    assert summary["previous_release"] == "7.2.13-lab" and summary["kexec_count"] == 2
    for name, specs in sessions.items():
        for spec in specs:
            memfd = handover.memfds[(name, spec.token)]
            np.testing.assert_array_equal(memfd.folios["pfn"].to_numpy(), spec.pfns.astype(np.uint64))
            np.testing.assert_array_equal(memfd.folios["index"].to_numpy(), spec.indexes.astype(np.uint64))
            assert memfd.size == spec.size and memfd.ser.pos == 5
    assert handover.unpreserved_references().empty
    refs = handover.referenced_pages()
    assert ("KHO FDT" in set(refs["what"])) == fdt_known
    folios = handover.memfd_folios()
    assert len(folios) == 5 + 300 + 2 and set(folios["session"]) == {"vm0", "vm1"}
    assert list(handover.files().columns) == ["session", "token", "compatible", "data"]


def test_decode_by_scanning(built):
    mem, encoded, sessions = built
    handover = decode_handover(mem)
    assert handover.fdt.phys == encoded.fdt_phys
    check(handover, encoded, sessions)


def test_decode_at_a_given_address_without_the_map(built):
    mem, encoded, _ = built
    handover = decode_handover(mem, encoded.fdt_phys, memory_map=False)
    assert handover.memory_map is None and handover.preserved().empty and len(handover.memfds) == 3


def test_decode_from_a_qemu_ram_file(built, tmp_path):
    mem, encoded, sessions = built
    path = tmp_path / "ram"
    path.write_bytes(bytes(PAGE_SIZE * 4) + mem.array.tobytes())
    with RawRamFile(path, [(mem.base, 4 * PAGE_SIZE, mem.size)]) as ram:
        check(decode_handover(ram), encoded, sessions)


def test_decode_from_an_elf_vmcore(built, tmp_path):
    mem, encoded, sessions = built
    path = tmp_path / "vmcore"
    half = mem.size // 2
    data = mem.array.tobytes()
    write_elf(path, [(mem.base, data[:half]), (mem.base + half, data[half:])])
    with ElfVmcore(path) as core:
        check(decode_handover(core), encoded, sessions)


def test_decode_through_drgn(built):
    mem, encoded, sessions = built
    flags = drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN
    prog = drgn.Program(drgn.Platform(drgn.Architecture.X86_64, flags))
    data = mem.array.tobytes()
    prog.add_memory_segment(mem.base, mem.size, lambda a, n, off, phys: data[off : off + n], True)
    check(decode_handover(DrgnMemory(prog, mem.ranges), encoded.fdt_phys), encoded, sessions)


def test_decode_from_a_complete_fdt_blob(built):
    mem, encoded, sessions = built
    blob = mem.read(encoded.fdt_phys, PAGE_SIZE)
    blob = blob[: struct.unpack(">I", blob[4:8])[0]]
    check(decode_fdt_blob(blob, mem), encoded, sessions, fdt_known=False)


def test_decode_from_the_truncated_debugfs_out_fdt(built):
    mem, encoded, sessions = built
    # kho_init registers kho/out/fdt with the size the FDT had then: root + kexec-metadata, before LUO's node.
    size_at_boot = len(encode_kho_fdt(encoded.memory_map_phys, [("kexec-metadata", 0, KEXEC_METADATA_SIZE)]))
    blob = mem.read(encoded.fdt_phys, size_at_boot)
    handover = decode_fdt_blob(blob, mem)
    assert handover.fdt.phys == encoded.fdt_phys
    check(handover, encoded, sessions)
    mem.write(encoded.fdt_phys + 60, b"\xff")  # memory no longer starts with the blob's bytes
    with pytest.raises(TruncatedData, match="debugfs"):
        decode_fdt_blob(blob, mem)


def test_two_fdts_need_an_address(built):
    mem, encoded, sessions = built
    copy = mem.base + 8191 * PAGE_SIZE
    mem.write(copy, mem.read(encoded.fdt_phys, PAGE_SIZE))
    with pytest.raises(AmbiguousHandover) as exc:
        decode_handover(mem)
    assert exc.value.candidates == [encoded.fdt_phys, copy]
    check(decode_handover(mem, encoded.fdt_phys), encoded, sessions)


def test_nothing_to_decode():
    mem, _ = area(16)
    with pytest.raises(HandoverNotFound):
        decode_handover(mem)


def test_non_strict_decoding_keeps_going(built):
    mem, encoded, _ = built
    broken = encoded.memfds[("vm0", 0x11)]
    mem.write(broken.phys + 16, struct.pack("<I", 0x80))  # an unknown seal
    with pytest.raises(MalformedData, match="seals"):
        decode_handover(mem, encoded.fdt_phys)
    handover = decode_handover(mem, encoded.fdt_phys, strict=False)
    assert len(handover.errors) == 1 and "0x11" in str(handover.errors[0])
    assert set(handover.memfds) == {("vm0", 0x10), ("vm1", 0x20)}
    assert handover.summary()["errors"] == [str(handover.errors[0])]


def test_unpreserved_folio_is_reported(built):
    mem, encoded, _ = built
    memfd = encoded.memfds[("vm1", 0x20)]
    array = int(memfd.area.block_phys[0])
    stray = mem.base // PAGE_SIZE + 8100  # in memory, never preserved
    mem.write_u64(array, stray | (3 << 52))
    missing = decode_handover(mem, encoded.fdt_phys).unpreserved_references()
    assert missing.to_dict("records") == [{"what": "memfd vm1/0x20 folio", "pfn": stray}]


def test_state_before_serialization_has_no_sessions(built):
    mem, encoded, _ = built
    mem.write_u64(encoded.luo.phys + 16, 0)  # sessions_pa is only set by luo_session_serialize()
    handover = decode_handover(mem, encoded.fdt_phys)
    assert handover.luo.sessions == [] and handover.memfds == {}


def test_other_producers_fdt_blobs_are_parsed(built):
    mem, encoded, sessions = built
    sub = kernel_like_fdt({"compatible": b"memblock-v1\0"}, {"r1": {"start": b"\0" * 8}})
    sub_phys = mem.base + 8190 * PAGE_SIZE
    mem.write(sub_phys, sub)
    subtrees = [
        ("kexec-metadata", encoded.kexec_metadata.phys, KEXEC_METADATA_SIZE),
        ("LUO", encoded.luo.phys, 32),
        ("memblock", sub_phys, len(sub)),
    ]
    mem.write(encoded.fdt_phys, encode_kho_fdt(encoded.memory_map_phys, subtrees))
    handover = decode_handover(mem, encoded.fdt_phys)
    assert handover.subtree_fdts["memblock"].strings("compatible") == ["memblock-v1"]
    assert handover.subtree_fdts["memblock"].child("r1").properties == {"start": b"\0" * 8}
    check(handover, encoded, sessions)
