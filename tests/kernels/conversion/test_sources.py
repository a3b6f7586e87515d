"""Sources: touched anonymous private memory, here or in another process, with a fingerprint per page."""

import os
from pathlib import Path

import numpy as np
import pytest

from tests.kernels.conversion.helpers import SIZE
from workbench.kernels.conversion.sources import RemoteSource, make_source
from workbench.kernels.memfd_syscalls import buffer_address
from workbench.kernels.pagehash import PAGE_SIZE


def test_source_is_touched_anonymous_private_memory(source):
    address = buffer_address(source.mem)
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if start <= address < end:
            assert fields[1] == "rw-p", line
            assert fields[4] == "0" and len(fields) == 5, f"not anonymous: {line}"
            break
    else:
        pytest.fail(f"address {address:#x} not in /proc/self/maps")
    assert len(np.unique(source.hashes)) == SIZE // PAGE_SIZE


def test_a_remote_source_holds_the_same_pattern_in_another_process(source):
    remote = RemoteSource.start(SIZE)
    try:
        assert remote.pid != 0 and remote.size == SIZE
        np.testing.assert_array_equal(remote.hashes, source.hashes)
    finally:
        remote.close()
    with pytest.raises(ProcessLookupError):  # closing ends the process and reaps it
        os.kill(remote.pid, 0)


@pytest.mark.parametrize("size", [0, -PAGE_SIZE, PAGE_SIZE + 1])
def test_a_source_is_a_positive_number_of_pages(size):
    with pytest.raises(ValueError, match="positive multiple"):
        make_source(size)
