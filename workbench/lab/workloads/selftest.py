"""The ``selftest`` workload: one of the kernel's own kexec-spanning liveupdate selftests (``luo_kexec_simple``,
``luo_multi_session``, ...), its stage 1 before the kexec and its stage 2 after it.

The binaries are built by :func:`workbench.lab.selftests.build_selftests` from the kernels' own trees: stage 1's
from ``stage1_kernel`` (the kernel the cycle kexecs from), stage 2's from ``stage2_kernel`` (the one it kexecs
into), each cached beside its kernel; the VM sees them at their host paths through the read-only 9p root.

stage1: ``<binary> -s 1``. The selftest creates its sessions and a state session, preserves its memfds and
forks a child that keeps the session file descriptors open (closed, they would be released), then exits 0. The
agent never opens ``/dev/liveupdate`` itself: the selftest owns every session of this cycle. load:
``kexec_file_load`` of the next kernel; kexec. stage2 (next kernel): ``<binary> -s 2``, which finds its state
session, retrieves and checks everything and finishes the sessions; the cycle is verified only when it exits 0.
The stage goes as ``-s N``, the one form every tree takes: 7.2's selftests also read ``--stage N``, 7.3's
read ``-s`` only (``--stage 2`` fails there with ``Bail out! [parse_stage_args:283] Unknown argument``).

Each stage's output goes to ``selftest-stage<N>.log`` in the results folder; the result keeps its last lines. A
stage that exits non-zero (kselftest's codes: 1 fail, 4 skip) fails the cycle in that phase with the selftest's
own failure line (its ``Bail out!`` line) in the message.

:class:`SelftestWorkload` is the host side, :class:`SelftestAgent` runs on the target."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.lab.agent_core import Agent, mark
from workbench.lab.errors import InvalidCycle, SelftestFailed
from workbench.lab.faults import Faults
from workbench.lab.kernel import resolve_kernel
from workbench.lab.kernel_name import DEFAULT_VERSION, parse_kernel_name
from workbench.lab.protocol import Event
from workbench.lab.selftests import KEXEC_SELFTESTS, build_selftests
from workbench.lab.workload import Workload, register

__all__ = [
    "SelftestWorkload",
    "SelftestAgent",
    "KSFT_EXIT",
    "OUTPUT_LINES",
    "stage_log",
    "output_tail",
    "failure_line",
    "stage_failure",
]

#: kselftest's exit statuses (``tools/testing/selftests/kselftest.h``)
KSFT_EXIT = {0: "pass", 1: "fail", 2: "xfail", 3: "xpass", 4: "skip"}
#: the lines of each stage's output that the result keeps
OUTPUT_LINES = 40
_OUTPUT_CHARS = 16_000
_LINE_CHARS = 500
_READ_BYTES = 256 << 10
_STRESS_TIMEOUT_BYTES = 1 << 30  # the stress tests' thousands of sessions or files: a 1 GiB workload's timeouts


def stage_log(stage: int) -> str:
    """The file in the results folder that gets stage ``stage``'s output."""
    return f"selftest-stage{stage}.log"


def _lines(output: bytes) -> list[str]:
    return output.decode("utf-8", errors="replace").splitlines()


def output_tail(output: bytes, lines: int = OUTPUT_LINES) -> str:
    """The last ``lines`` lines of a selftest's ``output`` (bytes from the target: decoded with replacement
    characters, each line cut at 500 characters, 16,000 characters at most)."""
    kept = [line[:_LINE_CHARS] for line in _lines(output)[-lines:]] if lines > 0 else []
    text = "\n".join(kept)
    return text[-_OUTPUT_CHARS:]


def failure_line(output: bytes) -> str:
    """The line of a selftest's ``output`` that says why it did not pass, on one line of at most 500 characters:
    its last ``Bail out!`` message (with the lines that continue it), else a ``# SKIP`` or ``not ok`` line, else
    its last line; ``(no output)`` when it printed nothing."""
    lines = [line.strip() for line in _lines(output)]
    found = ""
    for i in range(len(lines) - 1, -1, -1):
        if "Bail out!" in lines[i]:
            message = [lines[i][lines[i].index("Bail out!") :]]
            for line in lines[i + 1 :]:
                if not line or line.startswith(("#", "ok ", "not ok ", "Bail out!")):
                    break
                message.append(line)
            found = " ".join(message)
            break
    if not found:
        found = next((line for line in reversed(lines) if "# SKIP" in line or line.startswith("not ok")), "")
    if not found:
        found = next((line for line in reversed(lines) if line), "(no output)")
    return " ".join(found.split())[:_LINE_CHARS]


def _exit_meaning(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}, kselftest {KSFT_EXIT[code].upper()}" if code in KSFT_EXIT else f"exit {code}"


def stage_failure(test: str, stage: int, code: int, output: bytes) -> str:
    """The message of a stage that did not pass: which selftest and stage, its exit status and its failure line."""
    return (
        f"{test} stage {stage} did not pass ({_exit_meaning(code)}): {failure_line(output)} "
        f"[whole output: {stage_log(stage)} in the run's guest folder]"
    )


@register
@dataclass
class SelftestWorkload(Workload):
    """The kernel liveupdate selftest ``test`` (one of :data:`workbench.lab.selftests.KEXEC_SELFTESTS`), stage 1
    built from ``stage1_kernel``'s tree and stage 2 from ``stage2_kernel``'s (kernel names as
    :func:`~workbench.lab.kernel.resolve_kernel` takes them; None: the default lab kernel). A cycle from one kernel
    into another passes both, e.g. ``stage1_kernel="7.2", stage2_kernel="7.3"`` with ``next_kernel="7.3"``."""

    name = "selftest"
    agent = "workbench.lab.workloads.selftest:SelftestAgent"
    phases_before_kexec = ("stage1", "load")
    phases_after_kexec = ("stage2",)
    targets = ("qemu",)  # the binaries are at host paths, which only the lab VM sees

    test: str = "luo_kexec_simple"
    stage1_kernel: str | None = None
    stage2_kernel: str | None = None

    def validate(self) -> None:
        if self.test not in KEXEC_SELFTESTS:
            raise InvalidCycle(f"unknown selftest {self.test!r}: choose from {', '.join(KEXEC_SELFTESTS)}")
        for field_name in ("stage1_kernel", "stage2_kernel"):
            value = getattr(self, field_name)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise InvalidCycle(f"{field_name} is a kernel name such as 7.2 or 7.3 (or None), not {value!r}")
            parse_kernel_name(value)  # an unknown name raises UnknownName, an InvalidCycle, saying what is accepted

    def validate_faults(self, faults: Faults) -> None:
        for fault in ("corrupt_page", "modify_after_preserve"):
            if getattr(faults, fault) is not None:
                raise InvalidCycle(
                    f"fault {fault} names a page of the cycle's memfds, but the selftest workload has none (the "
                    "selftest preserves its own); only next_boot_hangs applies"
                )

    def timeout_bytes(self) -> int:
        return _STRESS_TIMEOUT_BYTES if "stress" in self.test else 0

    def stage_kernels(self) -> tuple[str, str]:
        """The names of the kernels whose trees stage 1's and stage 2's binaries come from."""
        return self.stage1_kernel or DEFAULT_VERSION, self.stage2_kernel or DEFAULT_VERSION

    def request(self) -> dict[str, Any]:
        """Builds (or finds cached) both stages' binaries and names them for the agent."""
        out: dict[str, Any] = {"selftest": self.test}
        for stage, kernel_name in enumerate(self.stage_kernels(), start=1):
            build = build_selftests(resolve_kernel(kernel_name))
            binary = build.binary(self.test)
            out[f"stage{stage}_binary"] = str(binary)
            out[f"stage{stage}_build"] = {
                "kernel": build.kernel,
                "release": build.release,
                "compiler": build.compiler,
                "binary": str(binary),
                "key": build.key,
            }
        return out

    def summarize(self, result, prepare, restore, marks) -> dict[str, Any]:
        """What every cycle reports plus the selftest, both stages' exit statuses and output tails, and the
        releases of the kernels the binaries were built from."""
        stage1 = prepare.get("stage1_build") or {}
        stage2 = restore.get("stage2_build") or {}
        result = dict(result)
        result.update(
            {
                "workload": self.name,
                "selftest": prepare.get("selftest", self.test),
                "verified": bool(restore.get("verified"))
                and bool(restore.get("finished"))
                and prepare.get("stage1_exit") == 0
                and restore.get("stage2_exit") == 0,
                "stage1_exit": prepare.get("stage1_exit"),
                "stage2_exit": restore.get("stage2_exit"),
                "stage1_output": prepare.get("stage1_output"),
                "stage2_output": restore.get("stage2_output"),
                "stage1_source_release": stage1.get("release"),
                "stage2_source_release": stage2.get("release"),
                "selftest_builds": {"stage1": stage1, "stage2": stage2},
            }
        )
        return result


class SelftestAgent(Agent):
    """The target side: runs stage 1, loads the next kernel and kexecs; in the next kernel runs stage 2."""

    def run_stage(self, stage: int, binary: str) -> None:
        """Runs ``binary -s N`` with its output in :func:`stage_log`; records its exit status and output tail,
        and raises :class:`SelftestFailed` when it did not exit 0."""
        log = self.results / stage_log(stage)
        with open(log, "wb") as out:
            proc = subprocess.run(
                [binary, "-s", str(stage)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        output = _read_end(log)
        self.state[f"stage{stage}_exit"] = proc.returncode
        self.state[f"stage{stage}_output"] = output_tail(output)
        if proc.returncode != 0:
            raise SelftestFailed(stage_failure(self.request["selftest"], stage, proc.returncode, output))

    # -- before the kexec ------------------------------------------------------------------------------------
    def prepare_and_kexec(self) -> None:
        req = self.request
        self.state["selftest"] = req["selftest"]
        self.state["stage1_build"] = req.get("stage1_build")
        with self.phase("stage1"):
            self.run_stage(1, req["stage1_binary"])
        self.kho_snapshot("out")
        self.save()
        self.load_next_kernel()
        self.kexec()

    # -- after the kexec -------------------------------------------------------------------------------------
    def restore(self) -> None:
        req = self.request
        self.state["selftest"] = req["selftest"]
        self.state["stage2_build"] = req.get("stage2_build")
        self.kho_snapshot("in")
        with self.phase("stage2"):
            self.run_stage(2, req["stage2_binary"])
        self.state.update(verified=True, finished=True, pages_checked=0)
        self.save()
        mark(Event.DONE, {"verified": True, "pages_checked": 0})


def _read_end(path: Path) -> bytes:
    """The last 256 KiB of ``path`` (all of a selftest's output, but for a runaway one)."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - _READ_BYTES))
        return f.read()
