"""The agent's runner in the Debian guest without a VM: its unit, what it stages in the cycle's folder, and which
workloads it takes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from workbench.lab.errors import InvalidCycle
from workbench.lab.guest.agent_runner import (
    AGENT_UNIT,
    SHARE_MOUNT,
    UNIT_STARTED,
    GuestAgentRunner,
    GuestAgentWorkload,
    agent_unit,
    stage_agent_share,
)
from workbench.lab.guest.boot import REPO_MOUNT
from workbench.lab.guest.runner import GuestRunner
from workbench.lab.guest.target import GuestTarget
from workbench.lab.params import CycleParams
from workbench.lab.protocol import parse_mark
from workbench.lab.workloads.criu import CriuWorkload
from workbench.lab.workloads.memfd import MemfdWorkload
from workbench.lab.workloads.systemd import SystemdWorkload


def _exec_start(unit: str) -> str:
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    return line.removeprefix("ExecStart=")


def test_unit_runs_the_agent_from_the_shared_repository_on_the_console():
    unit = agent_unit()
    assert f"Environment=PYTHONPATH={REPO_MOUNT} " in unit and f"PYTHONPYCACHEPREFIX={SHARE_MOUNT}/pycache" in unit
    assert "StandardOutput=tty\n" in unit and "TTYPath=/dev/console\n" in unit
    assert "WantedBy=multi-user.target" in unit and "Type=simple" in unit
    assert f"-m workbench.lab.agent --results {SHARE_MOUNT} --phase $$phase" in _exec_start(unit)


@pytest.mark.parametrize(
    ("cmdline", "phase"),
    [
        ("console=ttyS0 wb.phase=guest kho=on", "prepare"),
        ("console=ttyS0 kho=on wb.phase=restore", "restore"),
        ("console=ttyS0 wb.phase=restored", "prepare"),
    ],
)
def test_unit_takes_the_phase_from_the_kernel_command_line(tmp_path, cmdline, phase):
    """The unit's shell command, with systemd's "$$" unescaped, run against a stand-in /proc/cmdline and agent."""
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    command = _exec_start(agent_unit()).removeprefix("/bin/sh -c '").removesuffix("'").replace("$$", "$")
    command = command.replace("/proc/cmdline", str(tmp_path / "cmdline")).replace("exec /usr/bin/python3", "echo")
    out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert parse_mark(lines[1]) == (UNIT_STARTED, {"text": phase})
    assert lines[2].split() == ["-m", "workbench.lab.agent", "--results", SHARE_MOUNT, "--phase", phase]


def test_share_holds_the_enabled_unit_the_next_kernel_and_staged_files(tmp_path):
    kernel, initrd, program = tmp_path / "bzImage-7.2", tmp_path / "guest.cpio", tmp_path / "criu-workload-abc"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    program.write_bytes(b"\x7fELF")
    program.chmod(0o755)
    folder = tmp_path / "guest"
    folder.mkdir()
    stage = stage_agent_share(folder, kernel, initrd)
    units = folder / "etc" / "systemd" / "system"
    assert (units / AGENT_UNIT).read_text() == agent_unit()
    wanted = units / "multi-user.target.wants" / AGENT_UNIT
    assert wanted.is_symlink() and str(wanted.readlink()) == f"../{AGENT_UNIT}"
    assert (folder / "boot" / "bzImage").read_bytes() == b"kernel"
    assert (folder / "boot" / "initrd").read_bytes() == b"initrd"
    assert stage(program) == f"{SHARE_MOUNT}/bin/criu-workload-abc"
    staged = folder / "bin" / "criu-workload-abc"
    assert staged.read_bytes() == b"\x7fELF" and staged.stat().st_mode & 0o111
    stage_agent_share(folder, kernel, initrd)  # a second staging into the same folder replaces, never fails
    assert wanted.is_symlink()


def test_criu_without_the_workarounds_in_the_guest(tmp_path):
    workload = CriuWorkload(anon_size=16 << 20, memfd_region=8 << 20)
    assert isinstance(workload, GuestAgentWorkload)
    assert workload.guest_kernel_args() == [] and workload.kernel_args() == ["vdso=0"]
    staged: list[Path] = []

    def stage(path: Path) -> str:
        staged.append(path)
        return f"/mnt/bin/{path.name}"

    fields = workload.guest_request(stage)
    assert fields["criu_preload"] is None and fields["criu"] == "/usr/sbin/criu"
    assert fields["workload_binary"] == f"/mnt/bin/{staged[0].name}" and len(staged) == 1
    both = CriuWorkload(guest_workarounds=("vdso=0", "nft-shim"))
    assert both.guest_kernel_args() == ["vdso=0"]
    assert both.guest_request(stage)["criu_preload"].startswith("/mnt/bin/")


def test_target_picks_the_runner_by_the_workloads_targets(tmp_path):
    target = GuestTarget()
    args = (CycleParams(), SimpleNamespace(artifacts_dir=tmp_path), None, None, None)
    assert type(target.runner(SystemdWorkload(), *args)) is GuestRunner
    assert type(target.runner(CriuWorkload(), *args)) is GuestAgentRunner
    GuestTarget().validate(CriuWorkload(), CycleParams())
    assert not isinstance(MemfdWorkload(), GuestAgentWorkload) or "guest" not in MemfdWorkload.targets


def test_moment_dumps_are_refused_for_the_agents_workloads(tmp_path):
    target = GuestTarget(dump_at=["serialized"])
    with pytest.raises(InvalidCycle, match="--dump-at is for the systemd workload in the guest, not criu"):
        target.runner(CriuWorkload(), CycleParams(), SimpleNamespace(artifacts_dir=tmp_path), None, None, None)
