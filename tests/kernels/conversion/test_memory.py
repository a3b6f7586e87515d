"""Mappings, memfds and /proc/meminfo."""

import fcntl
import os
from pathlib import Path

import pytest

from workbench.kernels.conversion.memory import anonymous_private, closed_on_error, meminfo_kib, new_memfd
from workbench.kernels.memfd_syscalls import buffer_address
from workbench.kernels.pagehash import PAGE_SIZE


def _mapping_of(address: int) -> list[str]:
    """The fields of the line of /proc/self/maps whose range holds ``address``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if start <= address < end:
            return fields
    pytest.fail(f"address {address:#x} not in /proc/self/maps")


def test_anonymous_private_is_private_and_anonymous():
    mem = anonymous_private(4 * PAGE_SIZE)
    try:
        fields = _mapping_of(buffer_address(mem))
        assert fields[1] == "rw-p", fields
        assert fields[4] == "0" and len(fields) == 5, f"not anonymous: {fields}"
    finally:
        mem.close()


def test_a_new_memfd_has_its_size_and_closes_on_exec():
    fd = new_memfd(3 * PAGE_SIZE)
    try:
        assert os.fstat(fd).st_size == 3 * PAGE_SIZE
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)


def test_closed_on_error_closes_only_on_error():
    fd = os.memfd_create("test")
    with closed_on_error(fd):
        pass
    os.fstat(fd)  # still open
    with pytest.raises(RuntimeError), closed_on_error(fd):
        raise RuntimeError("boom")
    with pytest.raises(OSError):
        os.fstat(fd)


def test_meminfo_kib_reads_a_field_and_gives_zero_for_a_missing_one():
    assert meminfo_kib("MemTotal") > 0
    assert meminfo_kib("NoSuchField") == 0
