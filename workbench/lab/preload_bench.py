"""``workbench bench preload``: the runtime price of memfd from birth on a real Debian program, with and without the
``memfd_birth`` library (:mod:`workbench.lab.preload`), side by side in one run.

The program is Debian's ``redis-server`` (jemalloc maps all its memory through ``mmap``, so the library backs every
extent with a birth memfd) driven by ``redis-benchmark`` over a unix socket. Each repeat starts a fresh server in
both modes, ``plain`` and ``preload``, the order alternating from one repeat to the next (interleaved, so a drift
of the machine falls on both); each server runs every test in turn (``SET`` first, which grows the dataset) with
random keys from a keyspace. Per test and mode: the benchmark's requests per second and median latency, and the
server's own minor and major page faults and CPU seconds over that test (``/proc/PID/stat``, before and after).
Per server: its resident memory, its birth memfds (count, resident bytes: how much of its memory LUO could preserve
as it is) and a check that its data is right (a key written, read back, and the key count ``DBSIZE`` reports).
The summary gives the medians per mode and the ratios ``preload / plain``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.lab.preload import PreloadError, PreloadLibrary, birth_memfds, build_preload, preload_environment

__all__ = [
    "PROGRAMS",
    "PreloadBench",
    "ProcessCounters",
    "process_counters",
    "run_preload_bench",
    "summarize_preload_runs",
]

#: the programs the benchmark knows how to drive: name → the Debian package that has them
PROGRAMS = {"redis-server": "redis-server redis-tools"}
MODES = ("plain", "preload")
REDIS_TESTS = ("set", "get", "lpush", "lpop", "incr", "hset", "sadd")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_START_TIMEOUT_S = 20.0


@dataclass
class PreloadBench:
    """``program``: one of :data:`PROGRAMS`; ``tests``: redis-benchmark tests, run in this order; ``requests`` per
    test; ``keyspace``: random keys drawn from this many; ``value_size`` bytes; ``pipeline`` requests in flight per
    connection; ``clients`` connections; ``repeats``: servers per mode; ``threshold``: the library's smallest
    birth mapping in bytes."""

    program: str = "redis-server"
    tests: list[str] = field(default_factory=lambda: ["set", "get"])
    requests: int = 200_000
    keyspace: int = 100_000
    value_size: int = 256
    pipeline: int = 16
    clients: int = 50
    repeats: int = 5
    threshold: int = 1 << 20

    def validate(self) -> None:
        """Raises :class:`PreloadError` naming the first parameter that is wrong."""
        if self.program not in PROGRAMS:
            raise PreloadError(f"--program {self.program!r} is not one of {', '.join(PROGRAMS)}")
        unknown = [t for t in self.tests if t not in REDIS_TESTS]
        if not self.tests or unknown:
            raise PreloadError(f"--tests takes some of {', '.join(REDIS_TESTS)}, not {','.join(self.tests)}")
        for name in ("requests", "keyspace", "value_size", "pipeline", "clients", "repeats"):
            if getattr(self, name) < 1:
                raise PreloadError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.threshold < 4096:
            raise PreloadError(f"--threshold must be at least a page (4096 bytes), not {self.threshold}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProcessCounters:
    """What ``/proc/PID/stat`` counts for a process: minor and major page faults and CPU seconds (user + system)."""

    minflt: int
    majflt: int
    cpu_s: float

    def __sub__(self, other: ProcessCounters) -> ProcessCounters:
        return ProcessCounters(self.minflt - other.minflt, self.majflt - other.majflt, self.cpu_s - other.cpu_s)


def process_counters(pid: int) -> ProcessCounters:
    """The page faults and CPU time of the process ``pid`` so far.

    :raises PreloadError: the process is gone"""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        raise PreloadError(f"no process {pid}: it has exited") from None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 of proc(5) is fields[0]
    return ProcessCounters(int(fields[7]), int(fields[9]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)


def _resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PreloadError(
            f"{name} is not installed: run workbench/lab/scripts/install-system-deps.sh as root (it installs "
            f"{PROGRAMS['redis-server']})"
        )
    return path


class _Redis:
    """A redis-server on a unix socket in ``folder``, without persistence, in ``env``."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.socket_path = folder / "redis.sock"
        self.log = folder / "redis.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    _tool("redis-server"),
                    "--port",
                    "0",
                    "--unixsocket",
                    str(self.socket_path),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(folder),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
                raise PreloadError("redis-server did not start; its log ends:\n" + "\n".join(tail))
            time.sleep(0.05)

    def command(self, *words: str) -> str | int | None:
        """Sends one command (RESP) and returns its simple reply."""
        request = f"*{len(words)}\r\n" + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(self.socket_path))
            sock.sendall(request.encode())
            reply = b""
            while not reply.endswith(b"\r\n") or (reply[:1] == b"$" and reply.count(b"\r\n") < 2):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        kind, body = reply[:1], reply[1:].split(b"\r\n")
        if kind == b"-":
            raise PreloadError(f"redis refused {words[0]}: {body[0].decode()}")
        if kind == b":":
            return int(body[0])
        if kind == b"$":
            return None if body[0] == b"-1" else body[1].decode()
        return body[0].decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _benchmark(bench: PreloadBench, server: _Redis, test: str) -> dict[str, float]:
    out = subprocess.run(
        [
            _tool("redis-benchmark"),
            "-s",
            str(server.socket_path),
            "-t",
            test,
            "-n",
            str(bench.requests),
            "-r",
            str(bench.keyspace),
            "-d",
            str(bench.value_size),
            "-P",
            str(bench.pipeline),
            "-c",
            str(bench.clients),
            "--csv",
        ],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith('"')]
    if out.returncode or len(lines) < 2:
        raise PreloadError(f"redis-benchmark -t {test} failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    header = [h.strip('"') for h in lines[0].split(",")]
    values = dict(zip(header, (v.strip('"') for v in lines[1].split(",")), strict=False))
    return {"rps": float(values["rps"]), "p50_ms": float(values["p50_latency_ms"])}


def _run_server(
    bench: PreloadBench, library: PreloadLibrary, mode: str, repeat: int, folder: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if mode == "preload":
        env = preload_environment(library, threshold=bench.threshold, registry_dir=folder, base=env)
    server = _Redis(folder, env)
    rows: list[dict[str, Any]] = []
    try:
        pid = server.process.pid
        for test in bench.tests:
            before = process_counters(pid)
            measured = _benchmark(bench, server, test)
            spent = process_counters(pid) - before
            rows.append(
                {
                    "repeat": repeat,
                    "mode": mode,
                    "test": test,
                    **measured,
                    "minflt": spent.minflt,
                    "majflt": spent.majflt,
                    "server_cpu_s": spent.cpu_s,
                    "minflt_per_request": spent.minflt / bench.requests,
                }
            )
        marker = f"workbench-check-{repeat}-{mode}"
        server.command("SET", "workbench:check", marker)
        memfds = birth_memfds(pid)
        server_row = {
            "repeat": repeat,
            "mode": mode,
            "rss_bytes": _resident_bytes(pid),
            "birth_memfds": len(memfds),
            "birth_resident_bytes": sum(m.resident for m in memfds),
            "birth_mapped_bytes": sum(mp.length for m in memfds for mp in m.mappings),
            "keys": server.command("DBSIZE"),
            "data_ok": server.command("GET", "workbench:check") == marker,
        }
    finally:
        server.stop()
    return rows, server_row


def run_preload_bench(
    bench: PreloadBench,
    *,
    library: PreloadLibrary | None = None,
    on_server: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs ``bench`` (see the module's description) and returns its summary (:func:`summarize_preload_runs`) with
    the tables ``runs`` (one row per repeat, mode and test) and ``servers`` (one per server).

    :param bench: what to run; validated first
    :param library: the library (default: :func:`workbench.lab.preload.build_preload`)
    :param on_server: called with each server's row as it finishes
    :raises PreloadError: bad parameters, redis missing, or a server or benchmark that failed"""
    bench.validate()
    library = library or build_preload()
    version = subprocess.run([_tool("redis-server"), "--version"], capture_output=True, text=True).stdout.strip()
    runs: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="wb-preload-") as scratch:
        for repeat in range(bench.repeats):
            for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
                folder = Path(scratch) / f"{repeat}-{mode}"
                folder.mkdir()
                rows, server_row = _run_server(bench, library, mode, repeat, folder)
                runs += rows
                servers.append(server_row)
                if on_server:
                    on_server(server_row)
    summary = summarize_preload_runs(pd.DataFrame(runs), pd.DataFrame(servers))
    summary.update(program=bench.program, program_version=version, library_key=library.key)
    summary["tables"] = {"runs": pd.DataFrame(runs), "servers": pd.DataFrame(servers)}
    return summary


def _median(values: pd.Series) -> float:
    return float(statistics.median(values)) if len(values) else float("nan")


def _paired_ratios(rows: pd.DataFrame, column: str) -> pd.Series:
    """preload / plain of ``column`` within each repeat (the two servers that ran back to back)."""
    table = rows.pivot_table(index="repeat", columns="mode", values=column)
    if not set(MODES) <= set(table.columns):
        return pd.Series(dtype=float)
    return (table["preload"] / table["plain"]).dropna()


def summarize_preload_runs(runs: pd.DataFrame, servers: pd.DataFrame) -> dict[str, Any]:
    """The medians per mode and the ratios ``preload / plain``: per test ``rps``, ``p50_ms``, ``minflt``,
    ``majflt`` and ``server_cpu_s`` (``tests``; for ``rps`` also ``paired_ratio``, the ratio within each repeat:
    its median, lowest and highest, which show the run-to-run noise), and per server ``rss_bytes``, ``birth_memfds`` and
    ``birth_resident_bytes`` (``servers``); ``data_ok`` when every server gave its data back right and the
    preloaded ones had birth memfds, and ``birth_share`` (of the preloaded servers' resident memory in birth
    memfds).

    :param runs: rows with ``mode``, ``test`` and the measured columns
    :param servers: rows with ``mode`` and the per-server columns"""
    tests: dict[str, Any] = {}
    for test, rows in runs.groupby("test", sort=False):
        entry: dict[str, Any] = {}
        for column in ("rps", "p50_ms", "minflt", "majflt", "server_cpu_s"):
            plain = _median(rows.loc[rows["mode"] == "plain", column])
            preload = _median(rows.loc[rows["mode"] == "preload", column])
            entry[column] = {
                "plain": plain,
                "preload": preload,
                "ratio": preload / plain if plain else None,
            }
        paired = _paired_ratios(rows, "rps")
        entry["rps"]["paired_ratio"] = {
            "median": _median(paired),
            "low": float(paired.min()) if len(paired) else None,
            "high": float(paired.max()) if len(paired) else None,
        }
        tests[str(test)] = entry
    per_server = {
        column: {mode: _median(servers.loc[servers["mode"] == mode, column]) for mode in MODES}
        for column in ("rss_bytes", "birth_memfds", "birth_resident_bytes")
    }
    preloaded = servers[servers["mode"] == "preload"]
    share = preloaded["birth_resident_bytes"].sum() / max(int(preloaded["rss_bytes"].sum()), 1)
    return {
        "tests": tests,
        "servers": per_server,
        "repeats": int(servers["repeat"].nunique()),
        "data_ok": bool(servers["data_ok"].all() and (preloaded["birth_memfds"] > 0).all()),
        "birth_share": float(share),
    }
