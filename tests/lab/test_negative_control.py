"""The negative control: a kexec into a kernel whose LUO accepts no stock kernel's handover. The preflight refuses
it before anything boots; forced, the cycle fails in the next kernel's boot, promptly, with a diagnosis naming LUO,
no VM left and the record kept."""

import subprocess

import pytest

from workbench.lab.cycle import run_cycle
from workbench.lab.errors import CycleFailed, PreflightRefused, PreflightUnavailable
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workloads.memfd import MemfdWorkload

pytestmark = pytest.mark.lab

NEGATIVE = "7.2+luo-compat-mismatch"


def test_preflight_refuses_without_booting_and_records_it(lab_kernel, store):
    with pytest.raises(PreflightRefused, match="LUO: 7.2 hands over 'luo-v5'.*accepts only 'luo-neg'") as caught:
        run_cycle(MemfdWorkload(memfds=1, memfd_size=4 << 20), CycleParams(next_kernel=NEGATIVE), store=store)
    record = store.get(caught.value.record_id)
    assert record.status == "failed" and record.result["outcome"] == "refused"
    assert record.result["preflight"]["verdict"] == "refuse" and record.result["failed_phase"] == "preflight"
    assert "run_dir" not in record.result  # nothing was booted


def test_forced_the_next_kernel_panics_in_luo_and_the_cycle_says_so(lab_kernel, store):
    params = CycleParams(next_kernel=NEGATIVE, force=True, return_timeout_s=600)
    with pytest.raises(CycleFailed) as caught:
        run_cycle(MemfdWorkload(memfds=1, memfd_size=4 << 20), params, store=store)
    failure = caught.value
    # the VM stopping (panic, no reboot) ends the wait, not the 600 s return timeout
    assert failure.phase == "kexec" and "the VM stopped" in str(failure) and "timed out" not in str(failure)
    assert failure.diagnosis["subsystem"] == "LUO" and failure.diagnosis["outcome"] == "panic"
    assert failure.diagnosis["panic_location"] == "liveupdate_early_init"
    assert "LUO refused the handover" in str(failure)
    record = store.get(failure.record_id)
    assert record.status == "failed" and record.result["diagnosis"]["subsystem"] == "LUO"
    assert record.result["preflight"]["verdict"] == "refuse" and record.result["preflight"]["forced"]
    left = subprocess.run(["pgrep", "-f", record.result["run_dir"]], capture_output=True).stdout
    assert left.strip() == b""


class WithoutStaticPreflight(QemuTarget):
    """The lab VM when the kernels' vmlinux is not at hand: the static preflight cannot run, the live one can."""

    def preflight(self, params):
        raise PreflightUnavailable("no vmlinux at hand (as for a prebuilt kernel)")


def test_the_live_preflight_in_the_target_refuses_what_the_static_one_could_not_check(lab_kernel, store):
    target = WithoutStaticPreflight(lab_kernel)
    with pytest.raises(PreflightRefused, match="LUO: the running kernel hands over 'luo-v5'") as caught:
        run_cycle(
            MemfdWorkload(memfds=1, memfd_size=4 << 20), CycleParams(next_kernel=NEGATIVE), target=target, store=store
        )
    failure = caught.value
    assert failure.phase == "preflight" and failure.diagnosis is None  # refused before the kexec: no panic
    record = store.get(failure.record_id)
    assert record.status == "failed" and record.result["outcome"] == "refused"
    assert record.result["preflight"]["verdict"] == "unavailable"
    assert subprocess.run(["pgrep", "-f", record.result["run_dir"]], capture_output=True).stdout == b""
