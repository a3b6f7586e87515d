"""Cycles on several SSH hosts at once, and what is reported for a host that failed: the report without a VM,
and (``lab``) two lab VMs with sshd at once through the command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.sshd_vm import SshdLabVM
from workbench.lab.errors import PreconditionFailed, SshTargetError
from workbench.lab.inventory import LabHost
from workbench.lab.ssh.target import failure_result
from workbench.records import RecordStore

SMALL = 8 << 20
lab = pytest.mark.lab


# -- without a VM ----------------------------------------------------------------------------------------------
def test_failure_result_says_where_why_and_what_is_missing():
    refused = PreconditionFailed("box1 is not ready", ["kho=on"], Path("/runs/r1/agent.log"))
    refused.record_id = "r1"
    assert failure_result("box1", refused) == {
        "host": "box1",
        "target": "ssh:box1",
        "verified": False,
        "error": str(refused),
        "failed_phase": "check",
        "record_id": "r1",
        "agent_log": "/runs/r1/agent.log",
        "missing": ["kho=on"],
    }
    unreachable = failure_result("box2", SshTargetError("cannot reach root@box2:22", "connect", None))
    assert unreachable["failed_phase"] == "connect" and unreachable["agent_log"] is None
    assert unreachable["record_id"] is None and "missing" not in unreachable
    assert unreachable["error"] == "cycle failed in phase connect: cannot reach root@box2:22"


# -- lab VMs with sshd -----------------------------------------------------------------------------------------
def _inventory_toml(hosts: list[LabHost]) -> str:
    out = []
    for h in hosts:
        out.append(f"[hosts.{h.name}]")
        for key in ("host", "port", "user", "key", "known_hosts", "python", "workbench", "results_dir"):
            out.append(f"{key} = {json.dumps(getattr(h, key))}")
        for key in ("next_kernel", "next_initrd", "connect_timeout_s"):
            out.append(f"{key} = {json.dumps(getattr(h, key))}")
        out.append("env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in h.env.items()) + " }")
        out.append("")
    return "\n".join(out)


@lab
def test_two_hosts_at_once_through_the_cli(lab_kernel, tmp_path):
    data = tmp_path / "data"
    with (
        SshdLabVM(tmp_path / "vm1", name="vm1", kernel=lab_kernel) as vm1,
        SshdLabVM(tmp_path / "vm2", name="vm2", kernel=lab_kernel) as vm2,
    ):
        inventory = tmp_path / "lab-hosts.toml"
        inventory.write_text(_inventory_toml([vm1.host(), vm2.host()]))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "workbench.cli",
                "cycle",
                "--target",
                "ssh:vm1,vm2",
                "--inventory",
                str(inventory),
                "--memfds",
                "1",
                "--memfd-size",
                "8M",
                "--json",
                "--data",
                str(data),
            ],
            capture_output=True,
            text=True,
            timeout=2400,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert [r["host"] for r in results] == ["vm1", "vm2"]
    assert all(r["verified"] and r["pages_checked"] == SMALL // 4096 for r in results)
    store = RecordStore(data)
    r1, r2 = (store.get(r["record_id"]) for r in results)
    assert (r1.params["target"], r2.params["target"]) == ("ssh:vm1", "ssh:vm2")
    assert r1.status == r2.status == "ok"
    assert r2.started < r1.ended and r1.started < r2.ended  # concurrent, not one after the other
    print("\ntwo hosts:", json.dumps([{k: r[k] for k in ("host", "blackout_s", "phases")} for r in results]))
