"""The next version's lab kernel: a cycle on 7.3 and a kexec from 7.2 into 7.3."""

import pytest

from workbench.lab.cycle import run_cycle
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workloads.memfd import MemfdWorkload

pytestmark = pytest.mark.lab

SMALL = 8 << 20


@pytest.fixture(scope="module")
def kernel_7_3():
    """Linux 7.3 (Debian's experimental suite), built on first use."""
    from workbench.lab.kernel import resolve_kernel

    return resolve_kernel("7.3", progress=False)


def test_a_cycle_boots_7_3(kernel_7_3, store):
    result = run_cycle(MemfdWorkload(memfds=1, memfd_size=SMALL), target=QemuTarget("7.3"), store=store)
    assert result["verified"] is True
    assert result["kernel_release_before"] == result["kernel_release_after"] == kernel_7_3.release
    assert result["kernel_release_before"].startswith("7.3")
    assert store.get(result["record_id"]).params["kernel"] == "7.3"


def test_kexec_from_7_2_into_7_3_keeps_the_memfds(lab_kernel, kernel_7_3, store):
    params = CycleParams(next_kernel="7.3")
    result = run_cycle(MemfdWorkload(memfds=2, memfd_size=SMALL), params, target=QemuTarget(lab_kernel), store=store)
    assert result["verified"] is True and result["pages_checked"] == 2 * SMALL // 4096
    assert result["kernel_release_before"] == lab_kernel.release
    assert result["kernel_release_after"] == kernel_7_3.release
    assert store.get(result["record_id"]).environment["next_kernel_release"] == kernel_7_3.release
