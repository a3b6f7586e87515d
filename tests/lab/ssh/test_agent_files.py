"""The agent's files on an SSH host: what is copied to a host without a checkout is enough to run the agent (the
SFTP copy itself is exercised by the ``lab`` dry run in test_target.py)."""

import hashlib
import json
import shutil
import subprocess
import sys

from workbench.environment import REPO_ROOT
from workbench.lab.ssh.agent_files import AGENT_FILES, AGENT_SHA, agent_dirs, fetch_results, local_agent_sha256

#: the agent as the SSH target starts it, and the memfd workload's agent side, loaded from sys.path[0] only
_IMPORT_AGENT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import workbench.lab.agent
from workbench.lab.workload import agent_class
agent_class("memfd")
print(json.dumps({n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.startswith("workbench")}))
"""


def test_the_copied_files_are_enough_for_the_agent(tmp_path):
    agent_dir = tmp_path / "agent"
    for rel in AGENT_FILES:
        (agent_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, agent_dir / rel)
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_AGENT, str(agent_dir)], capture_output=True, text=True, cwd="/", timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert "workbench.lab.agent" in loaded
    # a file missing from AGENT_FILES would have been found in this checkout instead
    outside = {name: path for name, path in loaded.items() if path and not path.startswith(str(agent_dir))}
    assert outside == {}


def test_agent_dirs_hold_every_file():
    dirs = agent_dirs("/var/tmp/wb/agent")
    assert dirs == sorted(set(dirs))
    assert {"/var/tmp/wb/agent/workbench", "/var/tmp/wb/agent/workbench/lab"} <= set(dirs)
    assert all(f"/var/tmp/wb/agent/{rel}".rsplit("/", 1)[0] in dirs for rel in AGENT_FILES)


def test_local_agent_sha256_hashes_this_checkout():
    expected = {n: hashlib.sha256((REPO_ROOT / "workbench" / "lab" / n).read_bytes()).hexdigest() for n in AGENT_SHA}
    assert local_agent_sha256() == expected


def test_fetch_results_without_a_connection_copies_nothing(tmp_path):
    fetch_results(None, "/var/tmp/wb/results", tmp_path)
    assert list(tmp_path.iterdir()) == []
