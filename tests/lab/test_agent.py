"""The agent's entry point, run as the target runs it, on this machine: it picks the request's workload's agent,
which fails clearly where there is no /dev/liveupdate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.lab.protocol import Event, Request, parse_mark
from workbench.lab.workloads.memfd import MemfdWorkload

pytestmark = pytest.mark.skipif(Path("/dev/liveupdate").exists(), reason="this machine has LUO: the agent would run")


def _agent(results: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workbench.lab.agent", "--results", str(results), "--phase", "prepare"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WB_POWEROFF_ON_EXIT": ""},
    )


def test_the_memfd_agent_runs_and_fails_clearly_without_luo(tmp_path):
    workload = MemfdWorkload(memfds=1, memfd_size=1 << 20)
    Request(workload="memfd", session="s", workload_fields=workload.request()).write(tmp_path)
    proc = _agent(tmp_path)
    assert proc.returncode == 1, proc.stderr
    marks = [m for line in proc.stdout.splitlines() if (m := parse_mark(line)) is not None]
    assert marks[0] == (Event.AGENT_START, {"phase": "prepare"})
    assert marks[-1][0] == Event.ERROR and marks[-1][1]["phase"] == "prepare"
    assert "liveupdate" in marks[-1][1]["message"].lower()
    state = json.loads((tmp_path / "prepare.json").read_text())
    assert state["setup"]["hasher"] and state["error"]["phase"] == "prepare"


def test_an_unknown_workload_is_refused_by_name(tmp_path):
    Request(workload="teleport", session="s").write(tmp_path)
    proc = _agent(tmp_path)
    assert proc.returncode == 1, proc.stderr
    marks = [m for line in proc.stdout.splitlines() if (m := parse_mark(line)) is not None]
    assert [e for e, _ in marks] == [Event.AGENT_START, Event.ERROR]
    assert "unknown workload 'teleport'" in marks[-1][1]["message"]
    state = json.loads((tmp_path / "prepare.json").read_text())
    assert state["error"]["type"] == "UnknownName" and state["error"]["phase"] == "prepare"
