"""The CRIU workload's process seen from the agent in the target: started from the workload program
(:mod:`workbench.lab.workloads.criu.program`), its status page and memory read through ``/proc/PID/mem``, and the
file helpers the agent uses around ``criu dump`` and ``criu restore``."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import struct
import subprocess
import time
from pathlib import Path

import numpy as np

from workbench.lab.agent_core import fingerprint

__all__ = [
    "WorkloadProcess",
    "STATUS",
    "HIGH_PID",
    "WORK",
    "region_external_id",
    "sendfile_all",
    "mount_devpts",
    "read_rates",
]

HIGH_PID = 30000  # the workload's pid: far above anything the next kernel's boot and agent use
STATUS = struct.Struct("<8sQQqqQii")  # struct status in the workload
CHUNK = 64 << 20
WORK = Path("/run/wb-criu")  # the agent's working folder in the target (tmpfs)


class WorkloadProcess:
    """The running workload, seen from the agent: its info record and its memory through /proc/PID/mem."""

    def __init__(self, info: dict, holder: subprocess.Popen | None = None):
        self.info = info
        self.pid = info["pid"]
        self.holder = holder

    @classmethod
    def start(cls, req: dict, info_path: Path) -> WorkloadProcess:
        with contextlib.suppress(OSError):
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(HIGH_PID - 2))
        argv = [req["workload_binary"], "-i", str(info_path), "-s", str(req.get("seed", 0))]
        argv += ["-a", str(req["anon_size"])]
        if req.get("memfd_region"):
            argv += ["-r", str(req["memfd_region"]), "-k", req.get("region_kind", "tmpfile"), "-d", str(WORK)]
        if req.get("faults", {}).get("undumpable"):
            argv.append("-u")
        # a shell in between, with a high pid, stays the workload's parent: after the restore the parent differs
        holder = subprocess.Popen(
            ["/bin/sh", "-c", '"$@" & wait $!', "wb-holder", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
        )
        deadline = time.monotonic() + 600
        while not info_path.exists():
            if holder.poll() is not None:
                raise RuntimeError(f"the workload exited ({holder.returncode}) before it was ready: {argv}")
            if time.monotonic() > deadline:
                raise RuntimeError("the workload did not become ready in 600 s")
            time.sleep(0.02)
        return cls(json.loads(info_path.read_text()), holder)

    def alive(self) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")

    def status(self) -> dict:
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as f:
            f.seek(self.info["status_addr"])
            raw = f.read(STATUS.size)
        magic, counter, resumes, last_ns, resume_ns, counter_at_resume, ppid, reason = STATUS.unpack(raw)
        return {
            "magic": magic.decode(errors="replace"),
            "counter": counter,
            "resumes": resumes,
            "last_s": last_ns / 1e9,
            "resume_s": resume_ns / 1e9,
            "counter_at_resume": counter_at_resume,
            "ppid": ppid,
            "resume_reason": reason,
        }

    def regions(self) -> list[tuple[str, int, int]]:
        out = []
        if self.info["anon_size"]:
            out.append(("anon", self.info["anon_addr"], self.info["anon_size"]))
        if self.info["region_size"]:
            out.append((self.info["region_kind"], self.info["region_addr"], self.info["region_size"]))
        return out

    def fingerprints(self) -> list[np.ndarray]:
        """Per-page fingerprints of each region, read in 64 MiB pieces through /proc/PID/mem."""
        result = []
        buf = np.empty(CHUNK, dtype=np.uint8)
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as f:
            for _, addr, size in self.regions():
                parts = []
                for off in range(0, size, CHUNK):
                    n = min(CHUNK, size - off)
                    view = memoryview(buf)[:n]
                    f.seek(addr + off)
                    got = f.readinto(view)
                    if got != n:
                        raise RuntimeError(f"short read of the workload's memory at {addr + off:#x}: {got} of {n}")
                    parts.append(fingerprint(buf[:n])[0].copy())
                result.append(np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64))
        return result

    def wait_resumed(self, resumes: int, timeout: float) -> dict:
        """Waits until the workload has noticed one more resumption than ``resumes`` (after a restore)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                st = self.status()
                if st["resumes"] > resumes:
                    return st
            if time.monotonic() > deadline:
                raise RuntimeError(f"the restored workload {self.pid} did not run within {timeout:.0f} s")
            time.sleep(0.001)

    def wait_counter_beyond(self, value: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st["counter"] > value:
                return st
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workload's counter stayed at {st['counter']} for {timeout:.0f} s")
            time.sleep(0.002)


def region_external_id(pid: int, fd: int, kind: str) -> str:
    """How CRIU names the workload's region: ``file[mnt_id:inode]`` (hex) for a tmpfs file, ``/memfd:NAME``."""
    if kind == "memfd":
        return "/memfd:wb-region"  # CRIU 3.17 names a memfd "/memfd:NAME" (MEMFD_PREFIX) for --inherit-fd
    fdinfo = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    mnt_id = int(re.search(r"^mnt_id:\s*(\d+)", fdinfo, re.M).group(1))
    ino = os.stat(f"/proc/{pid}/fd/{fd}").st_ino
    return f"file[{mnt_id:x}:{ino:x}]"


def sendfile_all(dst: int, src: int, size: int) -> None:
    offset = 0
    while offset < size:
        n = os.sendfile(dst, src, offset, size - offset)
        if n <= 0:
            raise OSError(f"sendfile stopped at {offset} of {size} bytes")
        offset += n


def mount_devpts() -> str | None:
    """The guest's /dev has no devpts on /dev/pts, so /dev/ptmx cannot open and ``criu check`` complains. Mounts
    one where it is missing. Returns what was done, or None."""
    if os.path.ismount("/dev/pts"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    Path("/dev/pts").mkdir(exist_ok=True)
    if libc.mount(b"devpts", b"/dev/pts", b"devpts", 0, b"ptmxmode=0666") != 0:
        return f"mounting devpts on /dev/pts failed: {os.strerror(ctypes.get_errno())}"
    return "mounted devpts on /dev/pts (for /dev/ptmx)"


def read_rates(fd: int) -> dict[str, float]:
    """Diagnostics (``faults: {"time_reads": true}``): bytes per second reading a retrieved memfd with pread, with
    a mapping, and reading a fresh tmpfs copy of it with pread."""
    import mmap

    size = os.fstat(fd).st_size
    buf = bytearray(8 << 20)

    def pread_all(f: int) -> float:
        t0 = time.monotonic()
        off = 0
        while off < size:
            n = os.preadv(f, [buf], off)
            if n <= 0:
                break
            off += n
        return size / (time.monotonic() - t0)

    out = {"retrieved_pread": pread_all(fd)}
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    t0 = time.monotonic()
    fingerprint(np.frombuffer(m, dtype=np.uint8)[: size - size % 4096])
    out["retrieved_mmap_hash"] = size / (time.monotonic() - t0)
    copy = WORK / "read-test"
    with open(copy, "wb") as f:
        f.write(m[:])
    m.close()
    c = os.open(copy, os.O_RDONLY)
    out["tmpfs_pread"] = pread_all(c)
    m = mmap.mmap(c, size, mmap.MAP_SHARED, mmap.PROT_READ)
    t0 = time.monotonic()
    fingerprint(np.frombuffer(m, dtype=np.uint8)[: size - size % 4096])
    out["tmpfs_mmap_hash"] = size / (time.monotonic() - t0)
    m.close()
    os.close(c)
    copy.unlink()
    out["retrieved_pread_again"] = pread_all(fd)
    return out
