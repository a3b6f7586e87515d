"""The ``guest`` target's runner without a VM: what it shares with the guest, and systemd's timing from the
properties the service reads back (the real cycle is in tests/lab/workloads/test_systemd.py)."""

from __future__ import annotations

import pytest

from workbench.lab.guest.runner import stage_run_share, systemd_timing
from workbench.lab.workloads.systemd import SERVICE_PROGRAM, SystemdWorkload


def test_the_share_holds_the_program_the_enabled_units_and_the_next_kernel(tmp_path):
    kernel, initrd = tmp_path / "bzImage-src", tmp_path / "initrd-src"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    share = tmp_path / "share"
    share.mkdir()
    paths = stage_run_share(share, SystemdWorkload(), kernel, initrd)
    assert paths == {"next_kernel": "/mnt/boot/bzImage", "next_initrd": "/mnt/boot/initrd"}
    assert (share / "boot/bzImage").read_bytes() == b"kernel" and (share / "boot/initrd").read_bytes() == b"initrd"
    assert "def serve_after" in (share / SERVICE_PROGRAM).read_text()
    wants = share / "etc/systemd/system/multi-user.target.wants"
    for unit in ("wb-fdstore.service", "wb-operator.service"):
        assert (wants / unit).is_symlink() and str((wants / unit).readlink()) == f"../{unit}"
        assert (share / "etc/systemd/system" / unit).read_text().startswith("[Unit]")


def test_systemds_timing_from_the_services_timestamps():
    times = {
        "UserspaceTimestampMonotonic": "2500000",
        "ActiveEnterTimestampMonotonic": "9000000",
        "ActiveEnterTimestamp": "Sun 2026-11-29 17:00:10.500000 UTC",
        "ExecMainStartTimestampMonotonic": "8000000",
        "manager": {"KExecCount": "1"},
    }
    request = 1795971600_000000  # 2026-11-29 17:00:00 UTC in microseconds
    timing = systemd_timing(times, request)
    assert timing["kernel_to_service_ready_s"] == 9.0 and timing["kernel_to_userspace_s"] == 2.5
    assert timing["userspace_to_service_ready_s"] == 6.5 and timing["service_start_to_ready_s"] == 1.0
    assert timing["kexec_count"] == 1
    assert timing["request_to_service_ready_s"] == pytest.approx(10.5)


def test_missing_or_malformed_timestamps_give_none_not_an_error():
    timing = systemd_timing({"ActiveEnterTimestamp": "n/a", "UserspaceTimestampMonotonic": "x"}, 1)
    assert set(timing.values()) == {None}
