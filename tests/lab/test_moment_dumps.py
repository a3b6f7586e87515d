"""The moments a guest can be dumped at: named as the inspector names them, in the order a live update reaches
them, and a clear refusal of any other (the dumps themselves: tests/lab/workloads/test_systemd.py, lab)."""

import pytest

from workbench.abi.moment import MOMENTS
from workbench.lab.errors import InvalidCycle
from workbench.lab.moment_dumps import MOMENT_STOPS, check_moments


def test_the_moments_are_the_inspectors_in_the_order_a_live_update_reaches_them():
    assert set(MOMENT_STOPS) <= set(MOMENTS)
    assert list(MOMENT_STOPS) == sorted(MOMENT_STOPS, key=MOMENTS.index)
    assert MOMENT_STOPS["serialized"] == "machine_kexec"  # the previous kernel's last C function: the gate


def test_another_moment_is_refused_with_the_ones_there_are():
    check_moments(list(MOMENT_STOPS))
    with pytest.raises(InvalidCycle, match="--dump-at takes serialized, next_kernel_pending, deserialized, finished"):
        check_moments(["serialized", "retrieved"])
