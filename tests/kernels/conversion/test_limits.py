"""The machine's limits: copy bandwidth and page allocation rates, measured here."""

import pytest

from tests.kernels.conversion.helpers import THREADS
from workbench.kernels.conversion import limits
from workbench.kernels.conversion.limits import first_touch_seconds, measure_limits, memcpy_seconds
from workbench.kernels.pagehash import PAGE_SIZE


def test_measure_limits_gives_every_rate():
    measured = measure_limits(1 << 20, repeats=1, threads=THREADS[-1])
    assert measured["limits_size"] == 1 << 20
    assert measured["memcpy_parallel_threads"] == THREADS[-1]
    rates = [
        "memcpy_bytes_per_s",
        "memcpy_parallel_bytes_per_s",
        "fault_pages_per_s",
        "fault_pages_per_s_memfd_touch",
        "fault_pages_per_s_memfd_fallocate",
        "alloc_then_copy_bytes_per_s",
    ]
    assert all(measured[key] > 0 for key in rates)
    # allocating then copying is slower than either alone
    assert measured["alloc_then_copy_bytes_per_s"] < measured["memcpy_bytes_per_s"]
    assert measured["alloc_then_copy_bytes_per_s"] < measured["fault_pages_per_s_memfd_fallocate"] * PAGE_SIZE


def test_first_touch_and_memcpy_seconds_time_this_machine():
    seconds, all_huge = first_touch_seconds(4 << 20, threads=THREADS[-1])
    assert seconds > 0 and all_huge is False  # advised against transparent huge pages
    huge_seconds, _ = first_touch_seconds(4 << 20, huge=True)
    assert huge_seconds > 0
    assert memcpy_seconds(4 << 20, threads=THREADS[-1]) > 0


def test_memcpy_seconds_checks_the_copy(monkeypatch):
    monkeypatch.setattr(limits, "parallel_copy", lambda dst, src: None)
    with pytest.raises(RuntimeError, match="wrong bytes"):
        memcpy_seconds(1 << 20)


def test_rate_measurements_refuse_bad_arguments():
    with pytest.raises(ValueError, match="multiple of"):
        first_touch_seconds(PAGE_SIZE + 1)
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        memcpy_seconds(PAGE_SIZE, threads=0)
