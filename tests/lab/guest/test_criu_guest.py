"""The ``criu`` workload in the Debian sid guest: the workbench's agent under the guest's Python, the guest's CRIU
4.x dumping a process before a real kexec and restoring it after, without CRIU 3.17's workarounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab


def test_criu_4_keeps_a_process_across_kexec_in_the_guest_without_workarounds(lab_kernel, tmp_path):
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "workbench.cli", "cycle", "--target", "guest", "--workload", "criu"]
    argv += ["--anon", "16M", "--memfd-region", "8M", "--json", "--data", str(data)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["verified"] is True and result["workload"] == "criu" and result["guest"] == "debian-sid"
    assert [(r["region"], r["differing_count"]) for r in result["memfds"]] == [("anon", 0), ("tmpfile", 0)]
    assert result["pages_checked"] == (16 << 20) // 4096 + (8 << 20) // 4096
    criu = result["criu"]
    assert criu["version"].startswith("4."), criu["version"]
    assert criu["workarounds"] == []  # neither vdso=0 nor the nftables shim
    assert criu["dump"]["cmd"][0] == "/usr/sbin/criu" and criu["dump"]["rc"] == criu["restore"]["rc"] == 0
    counter = criu["counter"]
    assert counter["later"] > counter["after_restore"] > counter["before_dump"]
    assert result["downtime_s"] > result["blackout_s"] > 0
    breakdown = result["blackout_breakdown"]  # systemd's part and the agent's Python's, beside the kernel's
    assert breakdown["init_to_unit_s"] + breakdown["unit_to_agent_s"] == pytest.approx(breakdown["init_to_agent_s"])
    assert sum(result["downtime_breakdown"].values()) == pytest.approx(result["downtime_s"])
    assert result["kernel_release_before"] == result["kernel_release_after"] == lab_kernel.release
    guest = Path(result["run_dir"]) / "guest"
    prepare = json.loads((guest / "prepare.json").read_text())
    assert "vdso=0" not in prepare["cmdline_before"].split() and prepare["criu"]["preload"] is None
    assert result["hash"].startswith("blake2b")  # the guest's Python has numpy but no numba: not the host's
