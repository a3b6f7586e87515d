"""The lab VM target's options, checked before anything boots (the cycles themselves are in test_cycle.py)."""

import pytest

from workbench.lab.errors import InvalidCycle
from workbench.lab.kdump import CRASHKERNEL, CRASHKERNEL_MB
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget, lab_kernel_args
from workbench.lab.workloads.memfd import MemfdWorkload


def _check(**options) -> None:
    QemuTarget(**options).validate(MemfdWorkload(), CycleParams())


def test_options_are_checked():
    with pytest.raises(InvalidCycle, match="--dump-after takes preserve or restore, not 'kexec'"):
        _check(dump_after=["kexec"])
    with pytest.raises(InvalidCycle, match="TCG threads are single or multi"):
        _check(tcg_threads="many")
    with pytest.raises(InvalidCycle, match="dump format is elf or kdump-zlib"):
        _check(dump_format="raw")
    with pytest.raises(InvalidCycle, match="at least one CPU"):
        _check(cpus=0)
    with pytest.raises(InvalidCycle, match="too small"):
        _check(memory_mb=16)
    _check(dump_after=["preserve", "restore"], tcg_threads="multi", memory_mb=2048)


def test_guest_memory_grows_with_the_memfds_unless_given():
    assert QemuTarget().memory_for(MemfdWorkload(memfds=2, memfd_size=64 << 20)) == 1024
    assert QemuTarget().memory_for(MemfdWorkload(memfds=1, memfd_size=1 << 30)) >= 2 * 1024 + 640
    assert QemuTarget(memory_mb=3000).memory_for(MemfdWorkload()) == 3000


def test_a_crashing_cycle_gets_the_capture_kernels_reservation_on_top_of_what_the_workload_needs():
    workload = MemfdWorkload(memfds=2, memfd_size=64 << 20)
    assert CRASHKERNEL.removesuffix("M") == str(CRASHKERNEL_MB)
    assert QemuTarget().memory_for(workload, "preserve") == workload.memory_mb() + CRASHKERNEL_MB
    assert QemuTarget().memory_for(workload, None) == workload.memory_mb()
    assert QemuTarget(memory_mb=2048).memory_for(workload, "preserve") == 2048  # memory given: the user's call
    # a reservation of the user's own is not the workbench's to size
    assert QemuTarget(kernel_args="crashkernel=256M").memory_for(workload, "restore") == workload.memory_mb()


def test_record_params_keep_the_names_earlier_records_used():
    params = QemuTarget(cpus=3, kho_scratch="16M,64M,32M").record_params()
    assert params["cpus"] == 3 and params["kho_scratch"] == "16M,64M,32M" and params["memory_mb"] is None
    assert set(params) >= {"tcg_threads", "kernel_args", "live_update", "dump_after", "dump_format", "ram_file"}


def test_kernel_command_line():
    assert lab_kernel_args() == [
        "console=ttyS0",
        "panic=-1",
        "loglevel=6",
        "wb.phase=prepare",
        "kho=on",
        "liveupdate=on",
    ]
    tcg = lab_kernel_args("restore", tcg=True, live_update=False)
    assert "wb.phase=restore" in tcg and "no_timer_check" in tcg and "kho=on" not in tcg


def test_a_missing_next_kernel_is_refused_before_boot(tmp_path):
    from workbench.lab.errors import KernelWithoutLiveUpdate
    from workbench.lab.kernel import REQUIRED_FOR_CYCLE, LabKernel

    (tmp_path / "config").write_text("".join(f"{option}=y\n" for option in REQUIRED_FOR_CYCLE))
    target = QemuTarget(kernel=LabKernel(path=tmp_path, version="7.2", config_hash="0", release="7.2.0"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        target.prepare(MemfdWorkload(), CycleParams(next_kernel=str(tmp_path / "nope")))
    other = tmp_path / "other"
    other.mkdir()
    (other / "bzImage").write_bytes(b"")
    with pytest.raises(InvalidCycle, match="put its config beside it"):
        target.prepare(MemfdWorkload(), CycleParams(next_kernel=str(other / "bzImage")))
    (other / "config").write_text("CONFIG_KEXEC_HANDOVER=y\n")
    with pytest.raises(KernelWithoutLiveUpdate, match="the next kernel"):
        target.prepare(MemfdWorkload(), CycleParams(next_kernel=str(other / "bzImage")))
    (tmp_path / "config").write_text("")
    with pytest.raises(KernelWithoutLiveUpdate, match="the lab kernel"):
        target.prepare(MemfdWorkload(), CycleParams())
