"""The ``kexec-metadata`` KHO sub-node (Linux 7.2 ``struct kho_kexec_metadata``): which kernel release started
the kexec and how many kexecs there have been since the last cold boot."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from workbench.abi.alloc import PageAllocator
from workbench.abi.errors import IncompatibleFormat, TruncatedData
from workbench.abi.physmem import PhysicalMemory

__all__ = [
    "KHO_METADATA_NODE_NAME",
    "KHO_KEXEC_METADATA_VERSION",
    "KEXEC_METADATA_SIZE",
    "KexecMetadata",
    "decode_kexec_metadata",
    "encode_kexec_metadata",
]

KHO_METADATA_NODE_NAME = "kexec-metadata"
KHO_KEXEC_METADATA_VERSION = 1
_RELEASE_LEN = 65  # __NEW_UTS_LEN + 1
_FORMAT = struct.Struct(f"<I{_RELEASE_LEN}sI")
KEXEC_METADATA_SIZE = _FORMAT.size


@dataclass
class KexecMetadata:
    """``struct kho_kexec_metadata`` (73 bytes, packed)."""

    phys: int
    version: int
    previous_release: str
    kexec_count: int


def decode_kexec_metadata(mem: PhysicalMemory, phys: int, blob_size: int) -> KexecMetadata:
    """Decodes the blob with the kernel's checks: the version first, then the size of that version."""
    if blob_size < 4:
        raise TruncatedData(f"kexec-metadata at {phys:#x} is {blob_size} bytes: no room for its version", phys)
    (version,) = struct.unpack("<I", mem.read(phys, 4))
    if version != KHO_KEXEC_METADATA_VERSION:
        raise IncompatibleFormat(
            f"kexec-metadata at {phys:#x} has version {version}, not {KHO_KEXEC_METADATA_VERSION}", phys
        )
    if blob_size < KEXEC_METADATA_SIZE:
        raise TruncatedData(
            f"kexec-metadata at {phys:#x} is {blob_size} bytes, version 1 needs {KEXEC_METADATA_SIZE}", phys
        )
    version, release, count = _FORMAT.unpack(mem.read(phys, KEXEC_METADATA_SIZE))
    return KexecMetadata(phys, version, release.split(b"\0", 1)[0].decode("utf-8", "replace"), count)


def encode_kexec_metadata(release: str, kexec_count: int, allocator: PageAllocator) -> KexecMetadata:
    """Writes the blob ``kho_out_kexec_metadata`` writes, in a page of its own."""
    raw = release.encode()[: _RELEASE_LEN - 1]
    phys = allocator.alloc_for(KEXEC_METADATA_SIZE)
    allocator.memory.write(phys, _FORMAT.pack(KHO_KEXEC_METADATA_VERSION, raw, kexec_count))
    return KexecMetadata(phys, KHO_KEXEC_METADATA_VERSION, raw.decode("utf-8", "replace"), kexec_count)
