"""The SSH target: the same preserve → kexec → restore cycle as the lab VM's, on a real host driven over SSH with
paramiko. ``from workbench.lab.ssh import run_ssh_cycle`` is the entry point.

- :mod:`~workbench.lab.ssh.connection`: connecting (host keys, known_hosts), running commands, following output;
- :mod:`~workbench.lab.ssh.probe`: the facts about a host, found out on the host itself (a standalone script);
- :mod:`~workbench.lab.ssh.preconditions`: what a host must offer before a cycle, and whether it is this machine;
- :mod:`~workbench.lab.ssh.agent_files`: the agent copied to a host, and its results copied back;
- :mod:`~workbench.lab.ssh.target`: one cycle on one host;
- :mod:`~workbench.lab.ssh.multihost`: cycles on several hosts at once."""

from workbench.lab.errors import PreconditionFailed, SshTargetError, ThisMachineRefused
from workbench.lab.ssh.agent_files import AGENT_FILES
from workbench.lab.ssh.connection import SshChannelSource, connect
from workbench.lab.ssh.multihost import run_ssh_cycles
from workbench.lab.ssh.preconditions import probe_host
from workbench.lab.ssh.target import SshTarget, failure_result, run_ssh_cycle

__all__ = [
    "SshTarget",
    "SshTargetError",
    "failure_result",
    "PreconditionFailed",
    "ThisMachineRefused",
    "SshChannelSource",
    "connect",
    "probe_host",
    "run_ssh_cycle",
    "run_ssh_cycles",
    "AGENT_FILES",
]
