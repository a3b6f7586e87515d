"""The agent's entry point on the target: ``python -m workbench.lab.agent --results DIR --phase prepare|restore``.

It marks ``agent-start`` at once (in the next kernel that mark ends the blackout, so nothing the workload's agent
imports is counted in it), then runs the request's workload's agent class
(:func:`workbench.lab.workload.agent_class`, a :class:`workbench.lab.agent_core.Agent`). A workload whose agent
cannot be loaded is recorded as a failure like any other. Run as PID 1's child in the lab VM's initramfs, the VM
powers off when it exits (``WB_POWEROFF_ON_EXIT``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from workbench.lab.agent_core import mark, record_failure
from workbench.lab.liveupdate import power_off
from workbench.lab.protocol import REQUEST, Event, read_json, state_file
from workbench.lab.workload import agent_class

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--phase", choices=["prepare", "restore"], required=True)
    args = parser.parse_args(argv)
    mark(Event.AGENT_START, {"phase": args.phase})
    try:
        workload = read_json(args.results / REQUEST).get("workload", "memfd")
        agent = agent_class(workload)(args.results, args.phase)
    except Exception as exc:  # noqa: BLE001 (the host learns of any failure through the state file and the mark)
        record_failure(args.results / state_file(args.phase), {"current_phase": args.phase}, exc)
        return 1
    return agent.run(args.phase)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    if os.getpid() == 1 or os.environ.get("WB_POWEROFF_ON_EXIT"):
        power_off()
    sys.exit(code)
