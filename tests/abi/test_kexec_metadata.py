"""The kexec-metadata blob."""

import struct

import pytest

from tests.abi.helpers import area
from workbench.abi.errors import IncompatibleFormat, TruncatedData
from workbench.abi.kexec_metadata import KEXEC_METADATA_SIZE, decode_kexec_metadata, encode_kexec_metadata


def test_round_trip_and_layout():
    mem, alloc = area(4)
    written = encode_kexec_metadata("7.2.13-lab", 3, alloc)
    raw = mem.read(written.phys, KEXEC_METADATA_SIZE)
    assert KEXEC_METADATA_SIZE == 73
    assert struct.unpack_from("<I", raw)[0] == 1 and raw[4:14] == b"7.2.13-lab" and raw[14] == 0
    assert struct.unpack_from("<I", raw, 69)[0] == 3
    read = decode_kexec_metadata(mem, written.phys, KEXEC_METADATA_SIZE)
    assert (read.version, read.previous_release, read.kexec_count) == (1, "7.2.13-lab", 3)


def test_version_and_size_checks():
    mem, alloc = area(4)
    written = encode_kexec_metadata("x", 1, alloc)
    with pytest.raises(TruncatedData, match="version"):
        decode_kexec_metadata(mem, written.phys, 2)
    with pytest.raises(TruncatedData, match="needs 73"):
        decode_kexec_metadata(mem, written.phys, 40)
    mem.write(written.phys, struct.pack("<I", 2))
    with pytest.raises(IncompatibleFormat, match="version 2"):
        decode_kexec_metadata(mem, written.phys, KEXEC_METADATA_SIZE)
