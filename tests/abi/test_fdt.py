"""The kho-v4 FDT: decoded as the kernel lays it out, found by scanning, and every malformation reported."""

import struct

import libfdt
import pytest

from tests.abi.helpers import area
from workbench.abi.errors import (
    AddressNotInMemory,
    AmbiguousHandover,
    HandoverNotFound,
    IncompatibleFormat,
    MalformedData,
    TruncatedData,
)
from workbench.abi.fdt import (
    FDT_MAGIC,
    decode_kho_fdt,
    encode_kho_fdt,
    find_kho_fdt,
    find_kho_fdts,
    parse_fdt,
    read_fdt_blob,
    read_kho_fdt,
)
from workbench.abi.physmem import PAGE_SIZE, BufferMemory


def kernel_like_fdt(props: dict[str, bytes], subnodes: dict[str, dict[str, bytes]]) -> bytes:
    """An FDT written with plain libfdt calls, independently of encode_kho_fdt."""
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    for name, value in props.items():
        sw.property(name, value)
    for node, node_props in subnodes.items():
        sw.begin_node(node)
        for name, value in node_props.items():
            sw.property(name, value)
        sw.end_node()
    sw.end_node()
    fdt = sw.as_fdt()
    return bytes(fdt.as_bytearray())[: fdt.totalsize()]


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def test_encoded_fdt_has_the_kernel_layout():
    blob = encode_kho_fdt(0x1_2345_6000, [("kexec-metadata", 0x7000, 73), ("LUO", 0x9000, 32)])
    assert struct.unpack(">I", blob[:4])[0] == FDT_MAGIC
    assert struct.unpack(">I", blob[4:8])[0] == len(blob) <= PAGE_SIZE
    fdt = libfdt.Fdt(blob)
    assert fdt.getprop(0, "compatible") == b"kho-v4\0"
    assert bytes(fdt.getprop(0, "preserved-memory-map")) == bytes.fromhex("0060452301000000")  # little-endian
    luo = fdt.path_offset("/LUO")
    assert bytes(fdt.getprop(luo, "preserved-data")) == u64(0x9000)
    assert bytes(fdt.getprop(luo, "blob-size")) == u64(32)


def test_decode_round_trip():
    blob = encode_kho_fdt(0xABC000, [("kexec-metadata", 0x7000, 73), ("LUO", 0x9000, 32)])
    kho = decode_kho_fdt(blob, 0x5000)
    assert kho.phys == 0x5000 and kho.totalsize == len(blob)
    assert kho.compatible == ["kho-v4"] and kho.memory_map_phys == 0xABC000
    assert {(s.name, s.data_phys, s.blob_size) for s in kho.subtrees} == {
        ("kexec-metadata", 0x7000, 73),
        ("LUO", 0x9000, 32),
    }
    assert kho.subtree("LUO").data_phys == 0x9000 and kho.subtree("nope") is None
    assert kho.root.child("LUO").path == "/LUO"


def test_decodes_an_independently_written_fdt():
    blob = kernel_like_fdt(
        {"compatible": b"kho-v4\0", "preserved-memory-map": u64(0x4000)},
        {"memblock": {"preserved-data": u64(0x8000), "blob-size": u64(512)}},
    )
    kho = decode_kho_fdt(blob)
    assert kho.memory_map_phys == 0x4000 and kho.subtrees[0].name == "memblock"


@pytest.mark.parametrize(
    "props,subnodes,error,match",
    [
        ({"compatible": b"kho-v3\0", "preserved-memory-map": u64(1)}, {}, IncompatibleFormat, "kho-v3"),
        ({"preserved-memory-map": u64(1)}, {}, IncompatibleFormat, "missing"),
        ({"compatible": b"kho-v4\0"}, {}, MalformedData, "preserved-memory-map"),
        ({"compatible": b"kho-v4\0", "preserved-memory-map": struct.pack("<I", 1)}, {}, MalformedData, "4 bytes"),
        (
            {"compatible": b"kho-v4\0", "preserved-memory-map": u64(1)},
            {"LUO": {"preserved-data": u64(1)}},
            MalformedData,
            "blob-size",
        ),
        (
            {"compatible": b"kho-v4\0", "preserved-memory-map": u64(1)},
            {"LUO": {"preserved-data": b"\1", "blob-size": u64(1)}},
            MalformedData,
            "/LUO:preserved-data",
        ),
    ],
)
def test_malformed_kho_fdts(props, subnodes, error, match):
    with pytest.raises(error, match=match) as exc:
        decode_kho_fdt(kernel_like_fdt(props, subnodes), 0x7000)
    assert exc.value.phys == 0x7000 and "0x7000" in str(exc.value)


def test_bad_magic_and_truncation():
    blob = encode_kho_fdt(0x1000, [("LUO", 0x2000, 32)])
    with pytest.raises(IncompatibleFormat, match="magic"):
        decode_kho_fdt(b"\0" * 4 + blob[4:])
    with pytest.raises(TruncatedData, match=f"{len(blob)} bytes but only {len(blob) - 1}"):
        decode_kho_fdt(blob[:-1], 0x3000)
    with pytest.raises(TruncatedData):
        decode_kho_fdt(blob[:20])
    broken = bytearray(blob)
    struct.pack_into(">I", broken, 8, len(blob) + 64)  # struct block offset past the end
    with pytest.raises((MalformedData, TruncatedData)):
        parse_fdt(bytes(broken))


def place(mem: BufferMemory, phys: int, blob: bytes) -> None:
    mem.write(phys, blob)


def test_scan_finds_only_kho_fdts_at_page_starts():
    mem, _ = area(64)
    base = mem.base
    good = encode_kho_fdt(0x1000, [])
    other = kernel_like_fdt({"compatible": b"memblock-v1\0"}, {})
    place(mem, base + 3 * PAGE_SIZE, good)
    place(mem, base + 7 * PAGE_SIZE, other)  # an FDT, not KHO's
    place(mem, base + 9 * PAGE_SIZE + 8, good)  # not at a page start
    mem.write(base + 11 * PAGE_SIZE, struct.pack(">II", FDT_MAGIC, 0x7FFFFFFF))  # garbage after a magic
    assert find_kho_fdts(mem) == [base + 3 * PAGE_SIZE]
    assert find_kho_fdt(mem) == base + 3 * PAGE_SIZE
    assert read_kho_fdt(mem, base + 3 * PAGE_SIZE).memory_map_phys == 0x1000
    place(mem, base + 60 * PAGE_SIZE, good)
    with pytest.raises(AmbiguousHandover) as exc:
        find_kho_fdt(mem)
    assert exc.value.candidates == [base + 3 * PAGE_SIZE, base + 60 * PAGE_SIZE]


def test_scan_with_small_chunks_sees_every_page():
    mem, _ = area(40)
    good = encode_kho_fdt(0x1000, [])
    for page in (0, 13, 39):
        place(mem, mem.base + page * PAGE_SIZE, good)
    expected = [mem.base + p * PAGE_SIZE for p in (0, 13, 39)]
    assert find_kho_fdts(mem, chunk_bytes=3 * PAGE_SIZE) == expected


def test_nothing_found():
    mem, _ = area(8)
    with pytest.raises(HandoverNotFound):
        find_kho_fdt(mem)


def test_reading_fdts_from_memory_checks_bounds():
    mem, _ = area(4)
    blob = encode_kho_fdt(0x1000, [("LUO", 0x2000, 32)])
    end = mem.base + 4 * PAGE_SIZE
    place(mem, end - 64, blob[:64])
    with pytest.raises(TruncatedData, match="past the end of memory"):
        read_fdt_blob(mem, end - 64)
    with pytest.raises(AddressNotInMemory):
        read_fdt_blob(mem, end)
    with pytest.raises(IncompatibleFormat):
        read_fdt_blob(mem, mem.base)
