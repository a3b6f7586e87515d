"""The memory a conversion starts from: ``size`` bytes of anonymous private memory, touched (filled with a pattern
distinct on every page), with the XXH3-64 fingerprint of each page; in this process (:class:`AnonymousSource`) or
in another one (:class:`RemoteSource`, as a dumper such as CRIU sees its target)."""

from __future__ import annotations

import mmap
import struct
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from workbench.kernels.conversion.copy import fill_mapping
from workbench.kernels.conversion.memory import anonymous_private
from workbench.kernels.memfd_syscalls import buffer_address
from workbench.kernels.pagehash import PAGE_SIZE, page_hashes

__all__ = ["AnonymousSource", "RemoteSource", "Source", "make_source"]


@dataclass
class AnonymousSource:
    """``size`` bytes of touched anonymous private memory in this process, and the fingerprint of each page."""

    mem: mmap.mmap
    hashes: np.ndarray

    @property
    def size(self) -> int:
        return len(self.mem)

    def close(self) -> None:
        self.mem.close()


def make_source(size: int) -> AnonymousSource:
    """Maps ``size`` bytes of anonymous private memory, fills every page with the pattern and fingerprints it."""
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"size {size} is not a positive multiple of {PAGE_SIZE}")
    mem = anonymous_private(size)
    fill_mapping(mem)
    return AnonymousSource(mem, page_hashes(mem))


def _serve_anonymous_memory(size: int) -> None:
    """The body of the process that owns a :class:`RemoteSource`'s memory: maps and fills it, writes its
    address and page fingerprints to stdout, then keeps it until its stdin is closed."""
    source = make_source(size)
    sys.stdout.buffer.write(struct.pack("=QQ", buffer_address(source.mem), len(source.hashes)))
    sys.stdout.buffer.write(source.hashes.tobytes())
    sys.stdout.buffer.flush()
    sys.stdin.buffer.read()
    source.close()


@dataclass
class RemoteSource:
    """Anonymous memory owned by another process (as CRIU sees its target): its pid, address and fingerprints."""

    size: int
    pid: int
    address: int
    hashes: np.ndarray
    _process: subprocess.Popen

    @classmethod
    def start(cls, size: int) -> RemoteSource:
        """Starts a process that maps and fills ``size`` bytes; returns once its memory is ready."""
        code = f"from {__name__} import _serve_anonymous_memory; _serve_anonymous_memory({size})"
        process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        header = process.stdout.read(16)
        if len(header) < 16:
            process.stdin.close()
            raise RuntimeError(f"the source process exited with code {process.wait()} before its memory was ready")
        address, pages = struct.unpack("=QQ", header)
        hashes = np.frombuffer(process.stdout.read(pages * 8), dtype=np.uint64)
        if len(hashes) != pages:
            process.stdin.close()
            raise RuntimeError(f"the source process sent {len(hashes)} of {pages} page fingerprints")
        return cls(size, process.pid, address, hashes, process)

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait()
        self._process.stdout.close()


Source = AnonymousSource | RemoteSource
"""Either kind of source; the strategies say in their signatures which one they take."""
