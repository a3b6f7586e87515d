"""The negative control: a kexec into a kernel whose LUO accepts no stock kernel's handover. The preflight refuses
it before anything boots; forced, the cycle fails in the next kernel's boot, promptly, with a diagnosis naming LUO,
no VM left and the record kept."""

import subprocess

import pytest

from workbench.lab.cycle import run_cycle
from workbench.lab.errors import CycleFailed, PreflightRefused
from workbench.lab.params import CycleParams
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
