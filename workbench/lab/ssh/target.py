"""The SSH target: the preserve → kexec → restore cycle on a real host, driven over SSH.

The host runs the very agent the lab VM runs (:mod:`workbench.lab.agent`, same ``request.json``, same ``WB-MARK``
lines, which arrive on the SSH channel's stdout and are timestamped here as they arrive). The cycle:

connect (key authentication; the host key must be in known_hosts unless the host says ``accept-new``) → check
(the agent copied over SFTP if the host has no workbench of its own, then the preconditions of
:mod:`workbench.lab.ssh.preconditions`, and not this very machine) → prepare, preserve, load (the agent, which
then waits for the host's go-ahead on stdin: a dropped connection makes it unload the kernel and close the
session) → kexec → reconnect until a command runs on a new boot id → restore, verify, finish (the agent again)
→ the agent's files are copied back and the run recorded as ``lab.cycle`` with target ``ssh:NAME``.

Blackout over SSH: the host's clock from the agent's ``kexec`` mark (the go-ahead if the mark was lost with the
connection) to the first command that completed on the new boot."""

from __future__ import annotations

import contextlib
import json
import posixpath
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from workbench.lab.cycle import run_cycle
from workbench.lab.errors import (
    CycleCancelled,
    CycleFailed,
    InvalidCycle,
    PreconditionFailed,
    SshTargetError,
    ThisMachineRefused,
)
from workbench.lab.inventory import Inventory, LabHost, default_inventory_path, load_inventory, resolve_hosts
from workbench.lab.params import CycleParams
from workbench.lab.protocol import Request, parse_mark
from workbench.lab.runner import CycleEvent, MarkRunner
from workbench.lab.ssh.agent_files import (
    RESULT_FILES,
    agent_dirs,
    copy_agent,
    fetch_results,
    local_agent_sha256,
    write_remote_file,
)
from workbench.lab.ssh.connection import SshChannelSource, TransientConnectError, connect, run_command
from workbench.lab.ssh.preconditions import missing_preconditions, probe_host, this_machine
from workbench.lab.target import Target, register
from workbench.lab.workload import Workload
from workbench.records import RecordStore

__all__ = ["SshTarget", "failure_result", "run_ssh_cycle"]


class _SshRunner(MarkRunner):
    """One cycle on one SSH host. ``params``: the cycle; ``host``: the inventory entry; ``run``: the record's run
    (its artifacts folder holds the agent log and the agent's files); ``on_event``, ``cancel``, ``on_pause``,
    ``dry_run`` and ``allow_this_machine``: as for :func:`run_ssh_cycle`."""

    log_name = "agent log"
    kexec_ends_at_agent = False  # over SSH the kexec ends at the first command on the new boot

    def __init__(self, target: SshTarget, workload: Workload, params: CycleParams, run, on_event, cancel, on_pause):
        super().__init__(workload, params, run, on_event, cancel)
        host = self.host = target.host
        self.on_pause = on_pause
        self.dry_run = target.dry_run
        self.allow_this_machine = target.allow_this_machine
        self.agent_log = self.workdir / "agent.log"
        self.agent_log.touch()
        self.t0 = time.monotonic()
        self.client: paramiko.SSHClient | None = None
        self.chan: SshChannelSource | None = None
        self.remote_dir = host.results_dir.replace("{record_id}", run.id)
        self.phase = "connect"
        self.facts: dict[str, Any] = {}
        self.confirmed = False
        self.info: dict[str, Any] = {}

    @property
    def log_path(self) -> Path | None:
        return self.agent_log

    def source_stopped(self, what: str) -> str:
        status = self.chan.exit_status if self.chan is not None else None
        tail = ""
        if self.chan is not None and self.chan.lines:
            tail = "; last output: " + " | ".join(ln.text for ln in self.chan.lines[-3:] if ln.text.strip())
        return f"the SSH channel to {self.host.name} closed while {what} (remote exit status {status}){tail}"

    def failure_details(self) -> dict[str, Any]:
        own = {"host": self.host.name, "address": self.host.address, "remote_results": self.remote_dir, **self.info}
        return {**super().failure_details(), **own}

    def agent_error(self) -> str | None:
        self._fetch_results(("prepare.json", "restore.json"))
        return super().agent_error()

    def note(self, event: str, data: dict, t: float, table: bool = True) -> None:
        """A host-side mark (connected, kexec confirmed, back) in the agent log and the marks table."""
        if table:
            self.marks.append((event, data, t))
        with open(self.agent_log, "a") as f:
            f.write(f"[{t - self.t0:10.3f}] (host) {event} {json.dumps(data)}\n")

    def sh(self, command: str, timeout: float = 60.0, client: paramiko.SSHClient | None = None) -> str:
        status, out, err = run_command(client or self.client, command, timeout)
        if status != 0:
            raise self.fail(f"{command!r} failed on {self.host.name} (exit {status}): {err.strip()[-500:]}")
        return out

    # -- steps -------------------------------------------------------------------------------------------------
    def connect_first(self) -> None:
        self.emit(kind="state", name="connecting", text=self.host.address)
        t = time.monotonic()
        self.emit(kind="phase", name="connect", status="begin", host_time=t)
        try:
            self.client = connect(self.host)
        except SshTargetError as exc:
            raise SshTargetError(exc.args[0], "connect", self.agent_log, log_name=self.log_name) from None
        except TransientConnectError as exc:
            raise SshTargetError(
                f"{exc} (within {self.host.connect_timeout_s:.0f} s)", "connect", self.agent_log, log_name=self.log_name
            ) from None
        t_end = time.monotonic()
        self.info["connect_s"] = t_end - t
        self.note("ssh-connected", {"address": self.host.address}, t_end)
        self.emit(kind="phase", name="connect", status="end", seconds=t_end - t, host_time=t_end)

    def agent_env(self) -> tuple[str, dict[str, str]]:
        pythonpath = self.host.workbench or self.host.agent_dir
        env = {
            "PYTHONPATH": pythonpath,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            **self.host.env,
        }
        return pythonpath, env

    def install_agent(self) -> None:
        """Copies the agent's files into ``agent_dir`` over SFTP (when the host has no workbench of its own)."""
        self.sh("mkdir -p " + " ".join(shlex.quote(d) for d in agent_dirs(self.host.agent_dir)))
        copy_agent(self.client, self.host.agent_dir)
        self.info["agent_copied_to"] = self.host.agent_dir

    def check(self) -> None:
        self.phase = "check"
        t = time.monotonic()
        self.emit(kind="phase", name="check", status="begin", host_time=t)
        if self.host.workbench is None:
            self.install_agent()
        pythonpath, env = self.agent_env()
        try:
            facts = probe_host(self.client, self.host, pythonpath, self.remote_dir, env)
        except RuntimeError as exc:
            raise PreconditionFailed(
                f"{self.host.name} cannot run the agent: {exc}", ["python"], self.agent_log
            ) from None
        self.facts = facts
        self.run.update_environment(
            target_host=self.host.name,
            target_address=self.host.address,
            target_hostname=facts["hostname"],
            target_kernel_release=facts["release"],
            target_boot_id=facts["boot_id"],
            target_python=facts["python"],
            target_numpy=facts.get("numpy"),
            target_numba=facts.get("numba"),
        )
        me = this_machine(self.host, facts)
        self.info["this_machine"] = me
        missing = missing_preconditions(facts, self.host.workbench is None)
        if missing:
            lines = "\n".join(f"  - {why}" for _, why in missing)
            raise PreconditionFailed(
                f"{self.host.name} ({facts['hostname']}, {facts['release']}) is not ready for a live-update cycle; "
                f"missing: {', '.join(name for name, _ in missing)}\n{lines}",
                [name for name, _ in missing],
                self.agent_log,
            )
        if me["is_this_machine"] and not self.allow_this_machine and not self.dry_run:
            why = (
                "it has this machine's boot id"
                if me["same_boot_id"]
                else "it has no boot id to compare and shares this machine's machine-id or address"
            )
            raise ThisMachineRefused(
                f"{self.host.name} is the machine the workbench runs on ({why}): a cycle would kexec it. Refused; "
                "pass --i-really-want-to-kexec-this-machine if that is what you want (or --dry-run to stop before "
                "the kexec)",
                ["another machine"],
                self.agent_log,
            )
        self.info["agent_matches_local"] = facts.get("agent_sha256") == local_agent_sha256()
        t_end = time.monotonic()
        self.info["check_s"] = t_end - t
        self.emit(kind="phase", name="check", status="end", seconds=t_end - t, host_time=t_end)

    def start_agent(self, phase: str, client: paramiko.SSHClient) -> SshChannelSource:
        _, env = self.agent_env()
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        cmd = (
            f"cd / && exec env {envs} {shlex.quote(self.host.python)} -m workbench.lab.agent "
            f"--results {shlex.quote(self.remote_dir)} --phase {phase}"
        )
        self.chan = SshChannelSource(client, cmd, self.agent_log, on_line=self.on_line, t0=self.t0)
        self.source = self.chan
        self._pos = 0
        return self.chan

    def write_remote(self, name: str, text: str) -> None:
        write_remote_file(self.client, posixpath.join(self.remote_dir, name), text)

    def _fetch_results(self, names: tuple[str, ...] = RESULT_FILES) -> None:
        fetch_results(self.client, self.remote_dir, self.results, names)

    def paused(self, phase: str, timeout: float) -> None:
        self.wait_mark(("paused",), timeout, f"waiting for the pause after {phase}")
        self.emit(kind="state", name="paused", text=phase)
        try:
            if self.on_pause is not None:
                self.on_pause(phase, self)
        finally:
            self.write_remote(f"continue-{phase}", "go\n")
        self.emit(kind="state", name="running")

    def stand_down_agent(self) -> None:
        """After a failure before the kexec: tells the agent not to kexec (it unloads the kernel and closes the
        session when it gets there) and gives it a little time to do so."""
        chan = self.chan
        if chan is None or self.confirmed or not chan.running:
            return
        with contextlib.suppress(Exception):
            chan.send("abort\n")
            chan.wait_for(lambda ln: (m := parse_mark(ln.text)) is not None and m[0] in ("aborted", "error"), 30)

    def await_return(self, old_boot: str, timeout: float) -> tuple[paramiko.SSHClient, float, float, str, int]:
        """Reconnects until a command runs on a new boot id; returns (client, authenticated at, command done at,
        boot id, attempts)."""
        deadline = time.monotonic() + timeout
        attempts, last = 0, "no attempt yet"
        banner = 3.0  # short while nothing answers, so that a new attempt starts soon after sshd listens
        while True:
            if self.cancel.is_set():
                raise CycleCancelled()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(
                    f"{self.host.name} did not come back within {timeout:.0f} s after the kexec (no SSH login on a "
                    f"new boot after {attempts} attempts; last: {last})",
                    "kexec",
                )
            attempts += 1
            t_try = time.monotonic()
            try:
                client = connect(self.host, timeout=min(3.0, max(1.0, remaining)), banner_timeout=banner, quiet=True)
            except SshTargetError as exc:
                raise self.fail(f"{self.host.name} came back but refused the login: {exc.args[0]}", "kexec") from None
            except TransientConnectError as exc:
                if str(exc) != last:  # log changes only: a host that is down fails the same way many times
                    self.note("reconnect-failed", {"attempt": attempts, "error": str(exc)}, t_try, table=False)
                last = str(exc)
                if "banner" in last:  # something answered but said nothing yet: maybe a slow sshd, wait longer
                    banner = min(banner + 1.0, 15.0)
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            t_auth = time.monotonic()
            try:
                status, out, _ = run_command(client, "cat /proc/sys/kernel/random/boot_id", timeout=30)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                client.close()
                last = f"connected but the first command failed: {exc}"
                continue
            t_done = time.monotonic()
            boot = out.strip().splitlines()[-1] if out.strip() else ""
            if status == 0 and boot and boot != old_boot:
                return client, t_auth, t_done, boot, attempts
            if boot == old_boot:
                last = "still the old boot"
                err = self._remote_error(client)
                client.close()
                if err:
                    raise self.fail(f"the kexec did not happen on {self.host.name}: {err}", "kexec")
                time.sleep(0.5)
            else:
                client.close()
                last = f"boot id command exit {status}"

    def _remote_error(self, client: paramiko.SSHClient) -> str | None:
        with contextlib.suppress(Exception):
            status, out, _ = run_command(
                client, f"cat {shlex.quote(posixpath.join(self.remote_dir, 'prepare.json'))}", 30
            )
            if status == 0:
                err = json.loads(out).get("error")
                if err:
                    return f"{err['type']}: {err['message']}"
        return None

    def execute(self) -> dict[str, Any]:
        try:
            return self._execute()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.stand_down_agent()
            self._fetch_results()
            raise self.fail(
                f"talking to {self.host.name} failed in phase {self.phase}: {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:
            self.stand_down_agent()
            self._fetch_results()
            raise
        finally:
            if self.chan is not None:
                self.chan.close()
            if self.client is not None:
                self.client.close()

    def _execute(self) -> dict[str, Any]:
        p, host, w = self.p, self.host, self.workload
        work_timeout = p.timeout_s or (120 + 240 * w.timeout_bytes() / (1 << 30))
        start_timeout = p.timeout_s or 180
        return_timeout = p.return_timeout_s or host.return_timeout_s or 600
        self.connect_first()
        self.check()
        facts = self.facts
        request = Request(
            workload=w.name,
            session=p.session,
            next_kernel=facts["next_kernel"],
            next_initrd=facts["next_initrd"],
            pause_after=sorted(set(p.pause_after)),
            faults={**p.faults.to_request(), **w.faults()},
            next_phase="shell",
            confirm_kexec=True,
            dry_run=self.dry_run,
            workload_fields=w.request(),
        ).to_json()
        (self.results / "request.json").write_text(json.dumps(request, indent=1))
        q = shlex.quote(self.remote_dir)
        stale = " ".join(shlex.quote(n) for n in RESULT_FILES)
        status, _, err = run_command(
            self.client,
            f"mkdir -p {q} && cd {q} && rm -f {stale} continue-* && cat > request.json",
            stdin=json.dumps(request, indent=1).encode(),
        )
        if status != 0:
            raise self.fail(f"cannot write {self.remote_dir}/request.json on {self.host.name}: {err.strip()[-500:]}")
        self.emit(kind="state", name="running", text=f"{facts['hostname']} {facts['release']}")
        self.phase = "prepare"
        self.start_agent("prepare", self.client)
        _, _, t_agent = self.wait_mark(("agent-start",), start_timeout, "waiting for the agent to start")
        self.wait_phases(w.phases_before_kexec, request["pause_after"], work_timeout)
        event, data, _ = self.wait_mark(
            ("kexec-ready", "dry-run-done", "aborted"), work_timeout, "waiting for the agent to be ready to kexec"
        )
        if event != "kexec-ready":
            if event == "aborted" or not self.dry_run:
                raise self.fail(f"the agent stood down before the kexec: {data.get('reason')}")
            return self.dry_run_result(data)
        self.phase = "kexec"
        old_boot = facts["boot_id"]
        t_go = time.monotonic()
        self.chan.send("kexec\n")
        self.confirmed = True
        self.note("kexec-confirmed", {}, t_go)
        self.emit(kind="state", name="kexec", text="waiting for the host to come back")
        hit = self.chan.wait_for(
            lambda ln: (m := parse_mark(ln.text)) is not None and m[0] in ("kexec", "error"), 30, start=self._pos
        )
        if hit is not None and parse_mark(hit[1].text)[0] == "error":
            raise self.fail(f"the agent reported: {self.agent_error() or parse_mark(hit[1].text)[1].get('message')}")
        t_kexec = hit[1].host_time if hit is not None else t_go
        if hit is None:
            self.emit(kind="phase", name="kexec", status="begin", host_time=t_go)
        self.info["kexec_mark_seen"] = hit is not None
        self.chan.close()
        self.client.close()
        self.client, t_auth, t_back, new_boot, attempts = self.await_return(old_boot, return_timeout)
        self.note("ssh-back", {"boot_id": new_boot, "attempts": attempts}, t_back)
        self.emit(kind="phase", name="kexec", status="end", seconds=t_back - t_kexec, host_time=t_back)
        self.phase = "restore"
        self.start_agent("restore", self.client)
        self.wait_mark(("agent-start",), start_timeout, "waiting for the agent in the next kernel")
        self.wait_phases(w.phases_after_kexec, request["pause_after"], work_timeout)
        self.phase = "finish"
        self.wait_mark(("done",), work_timeout, "finishing the session")
        self.chan.wait_exit(30)
        self._fetch_results()
        self.emit(kind="state", name="done")
        prepare, restore = self.read_state("prepare"), self.read_state("restore")
        result = self.agent_result(prepare, restore, t_kexec, t_back)
        result.update(
            {
                "target": f"ssh:{host.name}",
                "host": host.name,
                "address": host.address,
                "hostname": facts["hostname"],
                "dry_run": False,
                "blackout_breakdown": {
                    "kexec_to_login_s": t_auth - t_kexec,
                    "login_to_command_s": t_back - t_auth,
                    "kexec_mark_seen": self.info["kexec_mark_seen"],
                    "reconnect_attempts": attempts,
                },
                # the controlling host's time.monotonic() at the kexec, the login and the first command, to line
                # up with other logs timed by the same clock (a lab VM's serial console)
                "host_times": {"kexec": t_kexec, "login": t_auth, "first_command": t_back},
                "boot_id_before": old_boot,
                "boot_id_after": new_boot,
                "agent_start_s": t_agent - self.t0,
                "connect_s": self.info["connect_s"],
                "check_s": self.info["check_s"],
                "next_kernel": facts["next_kernel"],
                "next_initrd": facts["next_initrd"],
                "this_machine": self.info["this_machine"],
                "agent_matches_local": self.info["agent_matches_local"],
                "remote_results": self.remote_dir,
                "agent_log": str(self.agent_log),
                "serial_log": str(self.agent_log),
                "run_dir": str(self.workdir),
            }
        )
        return result

    def dry_run_result(self, data: dict) -> dict[str, Any]:
        self.chan.wait_exit(30)
        self._fetch_results()
        prepare = self.read_state("prepare")
        before = self.workload.phases_before_kexec
        phases = {n: prepare["phases"][n] for n in before if n in prepare.get("phases", {})}
        self.emit(kind="state", name="done", text="dry run: stopped before the kexec")
        return {
            "verified": None,
            "dry_run": True,
            "pages_checked": 0,
            "session": prepare.get("session", self.p.session),
            "phases": phases,
            "blackout_s": None,
            "kernel_release_before": prepare.get("kernel_release_before"),
            "kernel_release_after": None,
            "memfds": [],
            "hash": prepare.get("hash_impl"),
            "stood_down": prepare.get("stood_down") or data,
            "would_kexec": {
                "kernel": self.facts["next_kernel"],
                "initrd": self.facts["next_initrd"],
                "cmdline": prepare.get("next_cmdline"),
            },
            "target": f"ssh:{self.host.name}",
            "host": self.host.name,
            "address": self.host.address,
            "hostname": self.facts["hostname"],
            "this_machine": self.info["this_machine"],
            "agent_matches_local": self.info["agent_matches_local"],
            "remote_results": self.remote_dir,
            "agent_log": str(self.agent_log),
            "run_dir": str(self.workdir),
        }


@register
@dataclass
class SshTarget(Target):
    """A lab host over SSH. ``host``: its inventory entry; ``dry_run``: stop after the load, unload the kernel and
    close the session (nothing is kexec'd; recorded ``ok`` with ``verified`` null); ``allow_this_machine``: run
    even if the host is the machine the workbench runs on."""

    name = "ssh"
    #: what the command line may set besides the fields: where hosts are looked up, and per-run overrides
    spec_options = ("inventory", "key", "known_hosts", "next_initrd", "results_dir")

    host: LabHost
    dry_run: bool = False
    allow_this_machine: bool = False

    @property
    def label(self) -> str:
        return f"ssh:{self.host.name}"

    @classmethod
    def option_names(cls) -> set[str]:
        return {"dry_run", "allow_this_machine", *cls.spec_options}

    @classmethod
    def from_spec(cls, rest: str, options: dict[str, Any], *, data_dir: str | None = None) -> list[Target]:
        """``ssh:HOST[,HOST...]``: hosts from the inventory by name, or ``user@host[:port]``; ``options`` may name
        the inventory file (default: ``lab-hosts.toml`` in ``data_dir``) and override the hosts' ``key``,
        ``known_hosts``, ``next_initrd`` and ``results_dir``."""
        cls.check_options(options)
        options = dict(options)
        path = options.pop("inventory", None)
        overrides = {k: options.pop(k) for k in ("key", "known_hosts", "next_initrd", "results_dir") if k in options}
        inventory = load_inventory(path or default_inventory_path(data_dir), missing_ok=path is None)
        return [cls(host.replace(**overrides), **options) for host in resolve_hosts(rest, inventory)]

    @classmethod
    def from_record(cls, params: dict[str, Any]) -> Target:
        """The host a ``lab.cycle`` record ran on, by its address (its key and known hosts from the default
        inventory when it lists that address)."""
        ssh = params.get("ssh") or {}
        if not ssh.get("address"):
            raise InvalidCycle("the record names no SSH host address to run the cycle on again")
        options = {k: ssh[k] for k in ("results_dir", "next_initrd") if ssh.get(k)}
        (target,) = cls.from_spec(ssh["address"], {"dry_run": bool(params.get("dry_run")), **options})
        return target

    def prepare(self, workload: Workload, params: CycleParams) -> None:
        if params.next_kernel:
            self.host = self.host.replace(next_kernel=params.next_kernel)

    def record_params(self) -> dict[str, Any]:
        host = self.host
        return {
            "dry_run": self.dry_run,
            "ssh": {
                "address": host.address,
                "results_dir": host.results_dir,
                "python": host.python,
                "workbench": host.workbench,
                "next_kernel": host.next_kernel,
                "next_initrd": host.next_initrd,
            },
        }

    def runner(self, workload, params, run, on_event, cancel, on_pause) -> MarkRunner:
        return _SshRunner(self, workload, params, run, on_event, cancel, on_pause)

    def failure_result(self, exc: CycleFailed) -> dict[str, Any]:
        return failure_result(self.host.name, exc)


def failure_result(host_name: str, exc: CycleFailed) -> dict[str, Any]:
    """What ``--json`` prints for a host whose cycle failed: where, why, its record and agent log, and for a
    refused host the preconditions it misses. ``host_name``: the host's inventory name; ``exc``: the failure."""
    out = {
        "host": host_name,
        "target": f"ssh:{host_name}",
        "verified": False,
        "error": str(exc),
        "failed_phase": exc.phase,
        "record_id": exc.record_id,
        "agent_log": str(exc.serial_log) if exc.serial_log else None,
    }
    if isinstance(exc, PreconditionFailed):
        out["missing"] = exc.missing
    return out


def run_ssh_cycle(
    host: LabHost | str,
    workload: Workload | None = None,
    params: CycleParams | None = None,
    *,
    store: RecordStore | None = None,
    inventory: Inventory | None = None,
    on_event: Callable[[CycleEvent], None] | None = None,
    cancel: threading.Event | None = None,
    on_pause: Callable[[str, Any], None] | None = None,
    dry_run: bool = False,
    allow_this_machine: bool = False,
) -> dict[str, Any]:
    """:func:`~workbench.lab.cycle.run_cycle` on ``host`` (a :class:`LabHost`, an inventory name or
    ``user@host:port``, looked up in ``inventory``) over SSH, recorded as ``lab.cycle`` with target ``ssh:NAME``.
    Raises :class:`CycleFailed` (:class:`SshTargetError`, :class:`PreconditionFailed`,
    :class:`ThisMachineRefused` are kinds of it) or :class:`CycleCancelled`; ``on_pause`` gets the phase and the
    runner at each pause."""
    if isinstance(host, str):
        host = resolve_hosts([host], inventory)[0]
    target = SshTarget(host, dry_run=dry_run, allow_this_machine=allow_this_machine)
    return run_cycle(workload, params, target=target, store=store, on_event=on_event, cancel=cancel, on_pause=on_pause)
