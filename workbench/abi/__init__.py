"""Linux 7.2 handover ABI: decode KHO/LUO state from raw guest physical memory, encode it, and compare the
preserved-memory metadata designs. One module per format:

* :mod:`~workbench.abi.physmem` — physical memory readers (buffer, QEMU RAM file, ELF vmcore, drgn)
* :mod:`~workbench.abi.fdt` — the ``kho-v4`` FDT
* :mod:`~workbench.abi.radix` — the preserved-memory radix tree
* :mod:`~workbench.abi.block` — ``kho_block`` lists
* :mod:`~workbench.abi.vmalloc` — ``kho_vmalloc`` chunk lists
* :mod:`~workbench.abi.luo` — ``luo-v5`` sessions, files and FLBs
* :mod:`~workbench.abi.memfd` — ``memfd-v2``
* :mod:`~workbench.abi.kexec_metadata` — the ``kexec-metadata`` blob
* :mod:`~workbench.abi.handover` — all of it from one FDT
* :mod:`~workbench.abi.handovers` — every FDT in memory, labelled (incoming, outgoing) from the kexec metadata
* :mod:`~workbench.abi.moment` — which moment of a live update the bytes show
* :mod:`~workbench.abi.encoder_check` — the encoders compared with what a kernel wrote
* :mod:`~workbench.abi.alternatives`, :mod:`~workbench.abi.design_space` — other designs, the benchmark
"""

from workbench.abi.errors import (
    AbiError,
    AddressNotInMemory,
    AmbiguousHandover,
    CountMismatch,
    HandoverNotFound,
    IncompatibleFormat,
    LoopDetected,
    MalformedData,
    TruncatedData,
)
from workbench.abi.handover import Handover, decode_fdt_blob, decode_handover
from workbench.abi.physmem import BufferMemory, DrgnMemory, ElfVmcore, MemoryRange, PhysicalMemory, RawRamFile
from workbench.abi.radix import preserved_pages

__all__ = [
    "AbiError",
    "AddressNotInMemory",
    "AmbiguousHandover",
    "CountMismatch",
    "HandoverNotFound",
    "IncompatibleFormat",
    "LoopDetected",
    "MalformedData",
    "TruncatedData",
    "Handover",
    "decode_handover",
    "decode_fdt_blob",
    "PhysicalMemory",
    "MemoryRange",
    "BufferMemory",
    "RawRamFile",
    "ElfVmcore",
    "DrgnMemory",
    "preserved_pages",
]
