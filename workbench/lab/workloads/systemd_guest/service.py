"""The guest side of the ``systemd`` workload, run by the Debian guest's own ``python3`` (standard library only).

``serve`` is a ``Type=notify`` service. Before the kexec (the kernel command line's ``wb.phase`` is not
``restore``) it creates memfds of the request's sizes, fills each with bytes from a seeded generator, keeps a
fingerprint of every page (BLAKE2b, 8 bytes) in the share, and pushes each memfd into its file descriptor store
with ``FDSTORE=1`` and ``FDNAME=wb-<index>`` over ``$NOTIFY_SOCKET``; then ``READY=1``. systemd keeps the store
across ``systemctl kexec`` when the unit has ``FileDescriptorStorePreserve=yes``: PID 1 hands the store to
``systemd-shutdown``, which preserves every fd in the LUO session ``systemd`` (token 0 is a sealed memfd holding
the JSON mapping of units to fd names and tokens) just before ``reboot(LINUX_REBOOT_CMD_KEXEC)``. After the kexec
PID 1 retrieves that session, puts the fds back into the unit's store and starts the unit with ``LISTEN_FDS`` and
``LISTEN_FDNAMES``: ``serve`` then checks every page against the fingerprints and reports.

``operate`` is the operator: it loads the next kernel (``kexec -s -l``, i.e. ``kexec_file_load``) and runs
``systemctl kexec``.

Progress goes to the console as the workbench's ``WB-MARK`` lines; state goes to ``prepare.json`` and
``restore.json`` in the share, in the shape every agent's state files have."""

from __future__ import annotations

import array
import hashlib
import json
import mmap
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = [
    "CONSOLE_ENV",
    "FDNAME_PREFIX",
    "HASH_NAME",
    "SERVICE_UNIT",
    "OPERATOR_UNIT",
    "fill",
    "fingerprint",
    "fdstore_names",
    "listen_fds",
    "notify",
    "serve_before",
    "serve_after",
    "operate",
    "main",
]

PAGE = 4096
FDNAME_PREFIX = "wb-"
HASH_NAME = "blake2b64-python"
SERVICE_UNIT = "wb-fdstore.service"
OPERATOR_UNIT = "wb-operator.service"
MARK = "WB-MARK "
#: names the file the marks go to instead of /dev/console (a test on the host)
CONSOLE_ENV = "WB_CONSOLE"
SD_LISTEN_FDS_START = 3


def mark(event: str, payload: dict | None = None, console: str | None = None) -> None:
    """Prints a ``WB-MARK`` line on the console, where the host reads it (only there: a second copy would be read
    as a second mark)."""
    line = MARK + event + ("" if payload is None else " " + json.dumps(payload, separators=(",", ":")))
    console = console or os.environ.get(CONSOLE_ENV, "/dev/console")
    try:
        with open(console, "a") as tty:
            tty.write("\n" + line + "\n")
    except OSError:
        print(line, flush=True)  # no console (a test on the host): standard output


def write_json(path: Path, data: dict) -> None:
    """Writes ``data`` whole or not at all (a temporary file renamed over ``path``)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def fill(buf: mmap.mmap, index: int, seed: int) -> None:
    """Fills ``buf`` with bytes that differ with every memfd ``index`` and ``seed``."""
    gen = random.Random(seed * 1_000_003 + index)
    chunk = 1 << 20
    for start in range(0, len(buf), chunk):
        end = min(start + chunk, len(buf))
        buf[start:end] = gen.randbytes(end - start)


def fingerprint(buf) -> bytes:
    """Eight bytes of BLAKE2b for every 4 KiB page of ``buf``, concatenated."""
    view = memoryview(buf)
    return b"".join(hashlib.blake2b(view[i : i + PAGE], digest_size=8).digest() for i in range(0, len(view), PAGE))


def differing(expected: bytes, found: bytes) -> list[int]:
    """The pages whose fingerprints differ, then those only one side has."""
    n = min(len(expected), len(found)) // 8
    pages = [p for p in range(n) if expected[p * 8 : p * 8 + 8] != found[p * 8 : p * 8 + 8]]
    return pages + list(range(n, max(len(expected), len(found)) // 8))


def fdstore_names(count: int) -> list[str]:
    """The ``FDNAME=`` of each memfd."""
    return [f"{FDNAME_PREFIX}{i}" for i in range(count)]


def notify(message: str, fds: list[int] | None = None, address: str | None = None) -> None:
    """Sends ``message`` (with ``fds`` attached) to systemd's notification socket ``address`` (default
    ``$NOTIFY_SOCKET``), as ``sd_pid_notify_with_fds`` does."""
    address = address or os.environ.get("NOTIFY_SOCKET")
    if not address:
        raise RuntimeError("NOTIFY_SOCKET is not set: the service must run under systemd with Type=notify")
    if address.startswith("@"):
        address = "\0" + address[1:]
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendmsg([message.encode()], ancillary, 0, address)


def listen_fds(environ: dict[str, str] | None = None) -> dict[str, int]:
    """The fds systemd passed (``LISTEN_FDS``, ``LISTEN_FDNAMES``, ``LISTEN_PID``), by name; empty when none."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") not in (None, str(os.getpid())):
        return {}
    count = int(env.get("LISTEN_FDS", "0") or 0)
    names = env.get("LISTEN_FDNAMES", "").split(":") if count else []
    names += [f"unknown-{i}" for i in range(len(names), count)]
    return {names[i]: SD_LISTEN_FDS_START + i for i in range(count)}


def _phase(state: dict, name: str, t0: float) -> None:
    seconds = time.monotonic() - t0
    state["phases"][name] = seconds
    mark("phase-end", {"phase": name, "s": round(seconds, 6)})


def serve_before(share: Path, request: dict, notify_address: str | None = None) -> dict:
    """Before the kexec: memfds of ``request["sizes"]`` filled, fingerprinted into ``share`` and pushed into the
    file descriptor store; returns the state written to ``prepare.json``."""
    state: dict = {"phases": {}, "events": [], "session": "systemd", "kernel_release_before": os.uname().release}
    state["cmdline_before"] = Path("/proc/cmdline").read_text().strip()
    mark("phase-begin", {"phase": "prepare"})
    t0 = time.monotonic()
    fds, maps = [], []
    for i, size in enumerate(request["sizes"]):
        fd = os.memfd_create(f"wb-fdstore-{i}", 0)
        os.ftruncate(fd, size)
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        fill(m, i, request.get("seed", 0))
        (share / f"fingerprints-{i}.bin").write_bytes(fingerprint(m))
        fds.append(fd)
        maps.append(m)
    state["hash_impl"] = HASH_NAME
    _phase(state, "prepare", t0)
    mark("phase-begin", {"phase": "store"})
    t0 = time.monotonic()
    for fd, name in zip(fds, fdstore_names(len(fds)), strict=True):
        notify(f"FDSTORE=1\nFDNAME={name}", [fd], notify_address)
    _phase(state, "store", t0)
    state["fdstore"] = {"names": fdstore_names(len(fds)), "sizes": list(request["sizes"])}
    write_json(share / "prepare.json", state)
    for m in maps:
        m.close()
    for fd in fds:
        os.close(fd)  # the store holds its own references
    notify("READY=1\nSTATUS=memfds in the fd store", None, notify_address)
    return state


#: PID 1's properties kept with the timing: how many kexecs it has come through (from its LUO mapping's state) and
#: its own boot timestamps
_MANAGER_PROPERTIES = (
    "KExecCount",
    "UserspaceTimestampMonotonic",
    "FinishTimestampMonotonic",
    "Version",
)


def _systemd_times(unit: str) -> dict:
    """systemd's own timestamps (microseconds on the monotonic clock since this kernel started, and realtime) of
    PID 1's start and of ``unit`` starting and becoming active, waiting up to 30 s for it to be active."""
    props = (
        "ActiveEnterTimestampMonotonic",
        "ActiveEnterTimestamp",
        "ExecMainStartTimestampMonotonic",
    )
    out: dict = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            text = subprocess.run(
                ["systemctl", "show", "--timestamp=us+utc", *(f"-p{p}" for p in props), unit],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"error": str(exc)}
        out = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        if out.get("ActiveEnterTimestampMonotonic", "0") not in ("", "0"):
            break
        time.sleep(0.2)
    text = subprocess.run(["systemctl", "show"], capture_output=True, text=True, timeout=10).stdout
    manager = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    out["UserspaceTimestampMonotonic"] = manager.get("UserspaceTimestampMonotonic", "")
    return {**out, "manager": {k: v for k, v in manager.items() if k in _MANAGER_PROPERTIES}}


def serve_after(share: Path, request: dict, environ: dict[str, str] | None = None, unit: str = SERVICE_UNIT) -> dict:
    """After the kexec: takes the memfds back from ``LISTEN_FDS``, checks every page and reports; returns the
    state written to ``restore.json`` (``verified`` false when a memfd did not come back or differs)."""
    state: dict = {"phases": {}, "events": [], "session": "systemd", "kernel_release_after": os.uname().release}
    mark("phase-begin", {"phase": "restore"})
    t0 = time.monotonic()
    passed = listen_fds(environ)
    names = fdstore_names(len(request["sizes"]))
    state["fdstore"] = {"expected": names, "returned": sorted(passed)}
    missing = [n for n in names if n not in passed]
    if missing:
        state["events"].append(
            f"systemd gave back {len(names) - len(missing)} of {len(names)} fds after the kexec (missing "
            f"{', '.join(missing)}): the unit's file descriptor store was not preserved"
        )
    maps = {}
    for name in names:
        if name in passed:
            fd = passed[name]
            size = os.fstat(fd).st_size
            maps[name] = (size, mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) if size else b"")
    _phase(state, "restore", t0)
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if address:  # under systemd (a test on the host has no manager to tell)
        notify("READY=1\nSTATUS=memfds back from the fd store", None, address)
    mark("phase-begin", {"phase": "verify"})
    t0 = time.monotonic()
    report = []
    for i, (name, expected_size) in enumerate(zip(names, request["sizes"], strict=True)):
        expected = (share / f"fingerprints-{i}.bin").read_bytes()
        size, m = maps.get(name, (0, b""))
        found = fingerprint(m) if name in maps else b""
        diff = differing(expected, found)
        report.append(
            {
                "memfd": i,
                "token": name,
                "size": size,
                "expected_size": expected_size,
                "pages": len(found) // 8,
                "differing_pages": diff[:1000],
                "differing_count": len(diff),
                "returned": name in maps,
            }
        )
    _phase(state, "verify", t0)
    state["memfds"] = report
    state["pages_checked"] = sum(r["pages"] for r in report)
    state["verified"] = not missing and all(
        r["differing_count"] == 0 and r["size"] == r["expected_size"] for r in report
    )
    state["hash_impl_after"] = HASH_NAME
    state["systemd_times"] = _systemd_times(unit) if address else {}
    state["finished"] = True
    write_json(share / "restore.json", state)
    mark("done", {"verified": state["verified"], "pages_checked": state["pages_checked"]})
    return state


def operate(share: Path, request: dict) -> int:
    """The operator: ``kexec -s -l`` of the next kernel with this boot's command line (``wb.phase=restore``), then
    ``systemctl kexec``; a refusal of either is reported as the cycle's error."""
    state_path = share / "operator.json"
    state: dict = {"phases": {}}
    cmdline = " ".join(a for a in Path("/proc/cmdline").read_text().split() if not a.startswith("wb.phase="))
    cmdline += " wb.phase=restore"
    mark("phase-begin", {"phase": "load"})
    t0 = time.monotonic()
    load = ["kexec", "-s", "-l", request["next_kernel"], f"--initrd={request['next_initrd']}", f"--append={cmdline}"]
    if not request.get("load_next_kernel", True):  # the operator who forgot: systemctl kexec finds nothing loaded
        load = ["true"]
    done = subprocess.run(load, capture_output=True, text=True)
    if done.returncode:
        message = f"kexec -s -l failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
        mark("error", {"phase": "load", "message": message, "type": "KexecLoadFailed"})
        return 1
    _phase(state, "load", t0)
    state["request_realtime_us"] = time.time_ns() // 1000
    state["request_monotonic_us"] = time.monotonic_ns() // 1000
    write_json(state_path, state)
    os.sync()
    mark("kexec")
    done = subprocess.run(["systemctl", "kexec"], capture_output=True, text=True)
    if done.returncode:
        message = f"systemctl kexec refused (exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
        mark("error", {"phase": "kexec", "message": message, "type": "KexecRefused"})
        return 1
    return 0


def _stopping(signum, frame) -> None:
    mark("service-stopping", {"realtime_us": time.time_ns() // 1000})
    sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    """``serve SHARE`` or ``operate SHARE``: SHARE is the run's share, holding ``request.json``."""
    command, share = (argv if argv is not None else sys.argv[1:])[:2]
    share = Path(share)
    request = json.loads((share / "request.json").read_text())
    if command == "operate":
        return operate(share, request)
    phase = "restore" if "wb.phase=restore" in Path("/proc/cmdline").read_text().split() else "prepare"
    mark("agent-start", {"phase": phase})
    try:
        if phase == "prepare":
            serve_before(share, request)
        else:
            serve_after(share, request)
    except Exception as exc:
        mark("error", {"phase": phase, "message": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__})
        raise
    signal.signal(signal.SIGTERM, _stopping)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
