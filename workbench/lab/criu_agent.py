"""The CRIU workload agent: keeps a whole process alive across the kexec. Runs in the lab VM instead of the default
agent when request.json says ``"workload": "criu"`` (see :func:`workbench.lab.agent.main`).

Before the kexec (``--phase prepare``):

prepare
    check CRIU (present, recent enough, ``criu check``), start the workload (a C program, see
    :mod:`workbench.lab.criu`) and fingerprint its memory page by page through ``/proc/PID/mem``;
load
    ``kexec_file_load`` the next kernel, before the freeze: it does not depend on the process;
dump
    ``criu dump``: freeze the process, write its images into a tmpfs folder, kill it. Its own shmem region (an
    unlinked tmpfs file) is declared ``--external``, so CRIU writes none of its pages;
convert
    images → preservable files. ``direct``: open every image file and unlink it; an unlinked tmpfs file is a shmem
    file with no links, which the LUO memfd handler preserves as it is (no copy). ``copy``: copy every image into a
    new memfd (``sendfile``) and delete the tmpfs file;
preserve
    one LUO session: every image and the process's own region, each with its token (``criu-tokens.json`` in the
    results folder maps tokens to image names); then ``reboot(LINUX_REBOOT_CMD_KEXEC)``.

After the kexec (``--phase restore``): retrieve (the session and every token), images (``direct``: a folder of
symbolic links to ``/proc/<agent>/fd/<n>``, which CRIU opens like files; ``copy``: write each memfd back into a
tmpfs file), criu-init (``criu check --feature mnt_id``: CRIU probes the new kernel once and caches the answer in
/run/criu.kdat; with ``criu_kdat: carry`` the previous kernel's cache comes through LUO instead, valid only for the
same kernel), restore (``criu restore --restore-detached``, the region handed over with ``--inherit-fd``; with
``lazy_pages`` a ``criu lazy-pages`` daemon hands the anonymous pages over through userfaultfd after the process
resumes), resume (wait for the workload to notice that it runs again), verify (fingerprint its memory again, check
the counter advances) and finish the session.

CRIU runs with ``LD_PRELOAD`` of the request's ``criu_preload`` (the nftables shim, see :mod:`workbench.lab.criu`).

Failure paths: CRIU missing, too old or failing ``criu check`` stops before the workload starts; a failed dump
leaves the process running (CRIU thaws it) and stops before the kexec; a failed restore keeps the images (copied
to ``criu-images/`` in the results folder) and CRIU's logs."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from workbench.lab.agent import Agent, fingerprint, load_hasher, mark
from workbench.lab.liveupdate import LiveUpdate, kexec_file_load, reboot_kexec

__all__ = [
    "CRIU_MIN_VERSION",
    "CriuUnavailable",
    "DumpFailed",
    "RestoreFailed",
    "check_criu",
    "parse_version",
    "seize_offset",
    "main",
]

CRIU_MIN_VERSION = (3, 17)
WORK = Path("/run/wb-criu")
HIGH_PID = 30000  # the workload's pid: far above anything the next kernel's boot and agent use
FIRST_TOKEN = 1000
REGION_TOKEN = 1
KDAT_TOKEN = 2
KDAT = Path("/run/criu.kdat")  # CRIU's cache of its kernel probe (kerndat)
STATUS = struct.Struct("<8sQQqqQii")  # struct status in the workload
CHUNK = 64 << 20
PR_SET_CHILD_SUBREAPER = 36


class CriuUnavailable(RuntimeError):
    """CRIU is missing, too old, or cannot work on this kernel."""


class DumpFailed(RuntimeError):
    """``criu dump`` failed; the process was left running and nothing was kexec'd."""


class RestoreFailed(RuntimeError):
    """``criu restore`` failed after the kexec; the images were kept in the results folder."""


def parse_version(text: str) -> tuple[int, ...]:
    """``Version: 3.17.1`` (``criu --version``) → (3, 17, 1)."""
    m = re.search(r"Version:\s*(\d+(?:\.\d+)*)", text)
    if not m:
        raise ValueError(f"no version in {text.strip()[:200]!r}")
    return tuple(int(x) for x in m.group(1).split("."))


def _errors(log: str, limit: int = 8) -> list[str]:
    return [ln.strip() for ln in log.splitlines() if "Error" in ln or "error" in ln.split(")", 1)[-1][:40]][-limit:]


def criu_env(preload: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if preload:
        env["LD_PRELOAD"] = preload
    return env


def check_criu(
    path: str,
    minimum: tuple[int, ...] | None = CRIU_MIN_VERSION,
    preload: str | None = None,
    args: tuple[str, ...] = (),
) -> dict:
    """``criu --version`` (unless ``minimum`` is None) and ``criu check`` (``args`` narrow it, e.g. ``--feature
    mnt_id``); raises :class:`CriuUnavailable` with what is wrong and what to do. Checks that fail without stopping
    CRIU's kernel probe (a terminal device, tun, veth: nothing this workload uses) are recorded, not fatal."""
    if not Path(path).exists():
        raise CriuUnavailable(
            f"CRIU not found at {path}: install Debian's criu on the host (workbench/lab/scripts/"
            "install-system-deps.sh); the lab VM runs the host's binary over 9p"
        )
    shown = "?"
    if minimum is not None:
        shown = _version_at_least(path, minimum)
    t0 = time.monotonic()
    chk = subprocess.run([path, "check", *args], capture_output=True, text=True, timeout=300, env=criu_env(preload))
    text = (chk.stdout + chk.stderr).strip()
    info = {"path": path, "version": shown, "check": text, "check_rc": chk.returncode, "check_s": time.monotonic() - t0}
    info["check_errors"] = _errors(text, 50)
    if chk.returncode != 0 and ("Could not initialize kernel features detection" in text or not info["check_errors"]):
        hint = ""
        if "Unexpected rt vDSO area bounds" in text:
            hint = (
                " -- CRIU before 4.1 does not know the [vvar_vclock] mapping of the x86 vDSO (Linux 6.13 and later);"
                " boot the lab kernel with vdso=0 (the CRIU cycle does) or use CRIU 4.1+"
            )
        if "Can't create nftables table" in text:
            hint = (
                " -- CRIU before 4.0 stops when the kernel has no nf_tables; the lab preloads a shim that answers"
                " CRIU's probe (workbench.lab.criu.NFT_SHIM_SOURCE)"
            )
        errors = "; ".join(_errors(text)) or text[-500:]
        raise CriuUnavailable(f"`criu check` failed with CRIU {shown} on Linux {os.uname().release}: {errors}{hint}")
    return info


def _version_at_least(path: str, minimum: tuple[int, ...]) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise CriuUnavailable(f"cannot run {path}: {exc}") from None
    try:
        version = parse_version(out.stdout + out.stderr)
    except ValueError:
        raise CriuUnavailable(f"{path} --version did not print a CRIU version: {out.stdout[:200]!r}") from None
    shown = ".".join(map(str, version))
    if version < tuple(minimum):
        raise CriuUnavailable(
            f"CRIU {shown} at {path} is too old: the workbench needs CRIU {'.'.join(map(str, minimum))} or newer"
        )
    return shown


def seize_offset(log: str) -> float | None:
    """Seconds from CRIU's start to the moment it began freezing the task (its log's own timestamps)."""
    m = re.search(r"^\((\d+\.\d+)\)\s+(?:Seized task|Freezing tasks|freezing processes)", log, re.M)
    return float(m.group(1)) if m else None


def _run(cmd: list[str], log: Path, preload: str | None = None, **kw) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=criu_env(preload), **kw)
    seconds = time.monotonic() - t0
    text = log.read_text(errors="replace") if log.exists() else ""
    return proc.returncode, seconds, text + proc.stdout + proc.stderr


class Workload:
    """The running workload, seen from the agent: its info record and its memory through /proc/PID/mem."""

    def __init__(self, info: dict, holder: subprocess.Popen | None = None):
        self.info = info
        self.pid = info["pid"]
        self.holder = holder

    @classmethod
    def start(cls, req: dict, info_path: Path) -> Workload:
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
            ["/bin/sh", "-c", '"$@" & wait', "wb-holder", *argv],
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


def _region_external_id(pid: int, fd: int, kind: str) -> str:
    """How CRIU names the workload's region: ``file[mnt_id:inode]`` (hex) for a tmpfs file, ``/memfd:NAME``."""
    if kind == "memfd":
        return "/memfd:wb-region"  # CRIU 3.17 names a memfd "/memfd:NAME" (MEMFD_PREFIX) for --inherit-fd
    fdinfo = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    mnt_id = int(re.search(r"^mnt_id:\s*(\d+)", fdinfo, re.M).group(1))
    ino = os.stat(f"/proc/{pid}/fd/{fd}").st_ino
    return f"file[{mnt_id:x}:{ino:x}]"


def _sendfile_all(dst: int, src: int, size: int) -> None:
    offset = 0
    while offset < size:
        n = os.sendfile(dst, src, offset, size - offset)
        if n <= 0:
            raise OSError(f"sendfile stopped at {offset} of {size} bytes")
        offset += n


def _mount_devpts() -> str | None:
    """The guest's /dev has no devpts on /dev/pts, so /dev/ptmx cannot open and ``criu check`` complains. Mounts
    one where it is missing. Returns what was done, or None."""
    if os.path.ismount("/dev/pts"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    Path("/dev/pts").mkdir(exist_ok=True)
    if libc.mount(b"devpts", b"/dev/pts", b"devpts", 0, b"ptmxmode=0666") != 0:
        return f"mounting devpts on /dev/pts failed: {os.strerror(ctypes.get_errno())}"
    return "mounted devpts on /dev/pts (for /dev/ptmx)"


def _read_rates(fd: int) -> dict[str, float]:
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


class CriuAgent(Agent):
    def __init__(self, results: Path, phase: str):
        super().__init__(results, phase)
        self.criu = self.request.get("criu") or "/usr/sbin/criu"
        self.preload = self.request.get("criu_preload")
        self.log_level = str(self.request.get("criu_log_level", 4))
        self.images = WORK / "images"
        self.lazy: subprocess.Popen | None = None
        self.lazy_t0 = self.lazy_done = 0.0
        self.lazy_watch: threading.Thread | None = None

    def quick_phase(self, name: str):
        """A phase inside the process's downtime: marks only, the state file is written later."""
        return self.phase(name, save=False)

    # -- before the kexec ------------------------------------------------------------------------------------
    def prepare_and_kexec(self) -> None:
        req = self.request
        faults = req.get("faults", {})
        self.state.update(
            kernel_release_before=os.uname().release,
            cmdline_before=Path("/proc/cmdline").read_text().strip(),
            images_mode=req.get("images", "direct"),
            region_kind=req.get("region_kind", "tmpfile") if req.get("memfd_region") else None,
            anon_size=req["anon_size"],
            memfd_region=req.get("memfd_region", 0),
            session=req["session"],
        )
        self.timed_setup("hasher", load_hasher)
        with self.phase("prepare"):
            if (done := _mount_devpts()) is not None:
                self.state["events"].append(done)
            minimum = tuple(int(x) for x in str(faults.get("criu_min_version", "3.17")).split("."))
            self.state["criu"] = check_criu(self.criu, minimum, self.preload)
            luo = LiveUpdate()  # fails clearly, before anything else, on a kernel without LUO
            WORK.mkdir(parents=True, exist_ok=True)
            self.images.mkdir(exist_ok=True)
            work = Workload.start(req, WORK / "workload.json")
            self.state["workload"] = work.info
            region_fd = None
            if work.info["region_size"]:
                region_fd = os.open(f"/proc/{work.pid}/fd/{work.info['region_fd']}", os.O_RDWR)
                self.state["region_external_id"] = _region_external_id(
                    work.pid, work.info["region_fd"], work.info["region_kind"]
                )
            before = work.fingerprints()
            np.savez(self.results / "fingerprints-before.npz", *before)
            self.state["hash_impl"] = self.state["setup"]["hasher"]
        self.save()
        self.pause("prepare")
        with self.phase("load"):
            cmdline = " ".join(a for a in self.state["cmdline_before"].split() if not a.startswith("wb.phase="))
            cmdline += " wb.phase=restore"
            kexec_file_load(req["next_kernel"], req["next_initrd"], cmdline)
        self.state["status_at_dump"] = work.status()
        self.save()
        # the process's downtime starts here: no state file writes until the kexec
        with self.quick_phase("dump"):
            self.dump(work, faults)
        with self.quick_phase("convert"):
            files = self.convert(self.state["images_mode"])
        with self.quick_phase("preserve"):
            session = luo.create_session(req["session"])
            tokens = {}
            for i, (name, fd, _size) in enumerate(files):
                session.preserve(fd, FIRST_TOKEN + i)
                tokens[str(FIRST_TOKEN + i)] = name
            if region_fd is not None:
                session.preserve(region_fd, REGION_TOKEN)
            kdat = self.carry_kdat(session)
        self.state["session_kernel_name"] = session.kernel_name()
        region = None
        if region_fd is not None:
            region = {
                "token": REGION_TOKEN,
                "kind": work.info["region_kind"],
                "criu_id": self.state["region_external_id"],
                "size": work.info["region_size"],
                "mode": os.fstat(region_fd).st_mode & 0o7777,
            }
        tokmap = {"session": req["session"], "images_mode": self.state["images_mode"], "images": tokens}
        tokmap["region"] = region
        tokmap["kdat"] = kdat
        (self.results / "criu-tokens.json").write_text(json.dumps(tokmap, indent=1))
        self.state["images"] = [{"name": n, "token": FIRST_TOKEN + i, "size": s} for i, (n, _, s) in enumerate(files)]
        self.state["image_bytes"] = sum(s for _, _, s in files)
        self.state["current_phase"] = "kexec"
        self.save()
        self.pause("preserve")
        os.sync()
        mark("kexec")
        reboot_kexec()
        raise RuntimeError("reboot(LINUX_REBOOT_CMD_KEXEC) returned")

    def carry_kdat(self, session) -> dict | None:
        """``criu_kdat: carry``: hands CRIU's kernel-probe cache to the next kernel (valid only when it is the same
        kernel on the same machine, as in the lab), so that ``criu restore`` need not probe the kernel again."""
        if self.request.get("criu_kdat", "probe") != "carry" or not KDAT.exists():
            return None
        data = KDAT.read_bytes()
        fd = os.memfd_create("criu.kdat", 0)
        os.write(fd, data)
        session.preserve(fd, KDAT_TOKEN)
        self.kdat_fd = fd
        return {"token": KDAT_TOKEN, "size": len(data)}

    def dump(self, work: Workload, faults: dict) -> None:
        log = self.images / "dump.log"
        cmd = [self.criu, "dump", "-t", str(work.pid), "-D", str(self.images), "-o", str(log), f"-v{self.log_level}"]
        if "region_external_id" in self.state and self.state["region_kind"] == "tmpfile":
            cmd += ["--external", self.state["region_external_id"]]
        cmd += faults.get("dump_args", [])
        rc, seconds, text = _run(cmd, log, self.preload, timeout=3600)
        offset = seize_offset(text)
        self.state["criu"].update(dump={"cmd": cmd, "rc": rc, "s": seconds}, seize_offset_s=offset or 0.0)
        if rc == 0 and not work.alive():
            return
        (self.results / "dump.log").write_text(text)
        survived = work.alive()
        before = self.state["status_at_dump"]["counter"]
        counter = None
        if survived:
            with contextlib.suppress(RuntimeError, OSError):
                counter = work.wait_counter_beyond(work.status()["counter"], 10)["counter"]
        self.state["workload_after_failed_dump"] = {"alive": survived, "counter": counter}
        if survived and counter is not None:
            state = f"the process {work.pid} is still running (its counter went from {before} to {counter})"
        else:
            state = f"the process {work.pid} is {'alive but not running' if survived else 'gone'}"
        if rc == 0:
            raise DumpFailed(f"criu dump returned 0 but {state}")
        errors = "; ".join(_errors(text)) or text[-500:]
        raise DumpFailed(f"criu dump failed (exit {rc}): {errors}; {state}; nothing was kexec'd; log: dump.log")

    def convert(self, mode: str) -> list[tuple[str, int, int]]:
        out = []
        for path in sorted(self.images.iterdir()):
            size = path.stat().st_size
            if mode == "direct":
                fd = os.open(path, os.O_RDWR)  # an unlinked tmpfs file is what the LUO memfd handler takes
            else:
                fd = os.memfd_create(path.name, 0)
                src = os.open(path, os.O_RDONLY)
                try:
                    _sendfile_all(fd, src, size)
                finally:
                    os.close(src)
            path.unlink()
            out.append((path.name, fd, size))
        return out

    # -- after the kexec -------------------------------------------------------------------------------------
    def restore(self) -> None:
        mark("agent-start", {"phase": "restore"})
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # the restored workload becomes our child
        self.state["kernel_release_after"] = os.uname().release
        tokmap = json.loads((self.results / "criu-tokens.json").read_text())
        prepare = json.loads((self.results / "prepare.json").read_text())
        mode = tokmap["images_mode"]
        region = tokmap.get("region")
        work = Workload(prepare["workload"])
        # the process is still down: phases write no state file until it runs again
        with self.quick_phase("retrieve"):
            luo = LiveUpdate()
            session = luo.retrieve_session(tokmap["session"])
            fds = {name: session.retrieve(int(tok)) for tok, name in tokmap["images"].items()}
            region_fd = session.retrieve(region["token"]) if region else None
            if region_fd is not None:
                os.fchmod(region_fd, region["mode"])  # a retrieved memfd is 0777; CRIU checks the dumped mode
            if tokmap.get("kdat"):
                kfd = session.retrieve(tokmap["kdat"]["token"])
                KDAT.write_bytes(os.pread(kfd, tokmap["kdat"]["size"], 0))
                os.close(kfd)
        with self.quick_phase("images"):
            self.images.mkdir(parents=True, exist_ok=True)
            for name, fd in fds.items():
                target = self.images / name
                if mode == "direct":
                    target.symlink_to(f"/proc/{os.getpid()}/fd/{fd}")  # CRIU opens the retrieved memfd itself
                else:
                    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    try:
                        _sendfile_all(out, fd, os.fstat(fd).st_size)
                    finally:
                        os.close(out)
                    os.close(fd)
            if mode == "copy":
                fds = {}
        with self.quick_phase("criu-init"):
            # CRIU's kernel probe (kerndat), cached in /run/criu.kdat by the first CRIU command of a boot
            self.state["criu"] = check_criu(self.criu, None, self.preload, ("--feature", "mnt_id"))
        with self.quick_phase("restore"):
            self.criu_restore(region, region_fd, work)
        with self.quick_phase("resume"):
            st = work.wait_resumed(prepare["status_at_dump"]["resumes"], 60)
        self.state["status_after_restore"] = st
        self.state["counter_after_restore"] = st["counter"]
        self.save()
        self.timed_setup("hasher", load_hasher)
        with self.phase("verify"):
            after = work.fingerprints()
            saved = np.load(self.results / "fingerprints-before.npz")
            before = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            report = []
            for i, ((kind, _addr, size), h) in enumerate(zip(work.regions(), after, strict=True)):
                expected = before[i] if i < len(before) else np.zeros(0, dtype=np.uint64)
                n = min(len(h), len(expected))
                differing = np.flatnonzero(h[:n] != expected[:n]).tolist()
                differing += list(range(n, max(len(h), len(expected))))
                report.append(
                    {
                        "memfd": i,
                        "region": kind,
                        "token": region["token"] if kind != "anon" and region else None,
                        "size": size,
                        "expected_size": size,
                        "pages": int(len(h)),
                        "differing_pages": differing[:1000],
                        "differing_count": len(differing),
                    }
                )
            np.savez(self.results / "fingerprints-after.npz", *after)
            later = work.wait_counter_beyond(st["counter"], 10)
        self.state["regions"] = report
        self.state["resume"] = later
        self.state["counter_later"] = later["counter"]
        self.state["verified"] = (
            bool(report) and all(r["differing_count"] == 0 for r in report) and later["counter"] > st["counter"]
        )
        self.state["pages_checked"] = int(sum(r["pages"] for r in report))
        self.wait_lazy_pages()
        if self.request.get("faults", {}).get("time_reads") and "pages-1.img" in fds:
            self.state["read_rates"] = _read_rates(fds["pages-1.img"])
        self.save_logs()  # dump.log came back with the images
        self.save()
        with self.phase("finish"):
            session.finish()
            for fd in fds.values():
                os.close(fd)
            if region_fd is not None:
                os.close(region_fd)
            session.close()
            luo.close()
        self.state["finished"] = True
        self.state["workload_alive_at_end"] = work.alive()
        with contextlib.suppress(ProcessLookupError):
            os.kill(work.pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(work.pid, 0)
        self.save()
        mark("done", {"verified": self.state["verified"], "pages_checked": self.state["pages_checked"]})

    def criu_restore(self, region: dict | None, region_fd: int | None, work: Workload) -> None:
        log = WORK / "restore.log"
        cmd = [self.criu, "restore", "-D", str(self.images), "-W", str(WORK), "-o", str(log), f"-v{self.log_level}"]
        cmd += ["--restore-detached"]
        pass_fds: tuple[int, ...] = ()
        if region is not None:
            cmd += ["--inherit-fd", f"fd[{region_fd}]:{region['criu_id']}"]
            pass_fds = (region_fd,)
        faults = self.request.get("faults", {})
        cmd += faults.get("restore_args", [])
        if self.request.get("lazy_pages"):
            cmd.append("--lazy-pages")
            self.start_lazy_pages()
        squatter = self._take_pid(work.pid) if faults.get("pid_taken") else None
        try:
            rc, seconds, text = _run(cmd, log, self.preload, timeout=3600, pass_fds=pass_fds)
        finally:
            if squatter is not None:
                squatter.kill()
                squatter.wait()
        self.state["criu"]["restore"] = {"cmd": cmd, "rc": rc, "s": seconds}
        if rc != 0 and self.lazy is not None:
            self.lazy.kill()
            self.lazy.wait()
        if rc != 0:
            (self.results / "restore.log").write_text(text)
            self.keep_images()
            errors = "; ".join(_errors(text)) or text[-500:]
            raise RestoreFailed(
                f"criu restore failed (exit {rc}): {errors}; the images are kept in the run folder (guest/criu-images)"
                ", CRIU's log in guest/restore.log"
            )

    def start_lazy_pages(self) -> None:
        """``criu lazy-pages``: the daemon that hands the process its anonymous pages from the images through
        userfaultfd, on demand and then in the background, so that the process runs before its memory is back."""
        log = WORK / "lazy-pages.log"
        sock = WORK / "lazy-pages.socket"
        cmd = [self.criu, "lazy-pages", "-D", str(self.images), "-W", str(WORK), "-o", str(log), f"-v{self.log_level}"]
        self.lazy_t0 = time.monotonic()
        self.lazy = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=criu_env(self.preload)
        )
        lazy = self.lazy

        def watch() -> None:  # the moment the daemon exits: it has handed over the last page
            lazy.wait()
            self.lazy_done = time.monotonic()

        self.lazy_watch = threading.Thread(target=watch, daemon=True)
        self.lazy_watch.start()
        deadline = time.monotonic() + 60
        while not sock.exists():
            if self.lazy.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                raise RestoreFailed(f"criu lazy-pages did not start: {'; '.join(_errors(text)) or text[-300:]}")
            time.sleep(0.002)

    def wait_lazy_pages(self) -> None:
        """Waits for the lazy-pages daemon to hand over the last page and exit; records when that was."""
        if self.lazy is None:
            return
        rc = self.lazy.wait(timeout=3600)
        self.lazy_watch.join()
        self.state["lazy_pages"] = {"rc": rc, "all_pages_s": self.lazy_done - self.lazy_t0}
        with contextlib.suppress(OSError):
            (self.results / "lazy-pages.log").write_bytes((WORK / "lazy-pages.log").read_bytes())

    def _take_pid(self, pid: int) -> subprocess.Popen:
        """Fault injection: another process holds the workload's pid when CRIU restores it."""
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(["/bin/sleep", "3600"])
        self.state["events"].append(f"fault injection: pid {proc.pid} taken by /bin/sleep before criu restore")
        return proc

    def keep_images(self) -> Path:
        """Copies the images (tmpfs files, or the retrieved memfds behind the links) into the results folder."""
        dest = self.results / "criu-images"
        dest.mkdir(exist_ok=True)
        for path in sorted(self.images.iterdir()):
            with open(path, "rb") as src, open(dest / path.name, "wb") as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
        return dest

    def save_logs(self) -> None:
        for src, name in ((self.images / "dump.log", "dump.log"), (WORK / "restore.log", "restore.log")):
            with contextlib.suppress(OSError):
                (self.results / name).write_bytes(Path(src).read_bytes())

    # -- exploration -----------------------------------------------------------------------------------------
    def probe(self) -> None:
        """Runs ``request["probe"]`` with /bin/sh and keeps its output (``probe.txt``): for finding out what CRIU
        does in the guest without a whole cycle."""
        mark("agent-start", {"phase": "probe"})
        proc = subprocess.run(
            ["/bin/sh", "-c", self.request["probe"]],
            capture_output=True,
            text=True,
            timeout=self.request.get("probe_timeout", 600),
            env={**criu_env(self.preload), "WB_RESULTS": str(self.results), "WB_CRIU": self.criu},
        )
        (self.results / "probe.txt").write_text(proc.stdout + proc.stderr)
        self.state["probe_rc"] = proc.returncode
        self.save()
        mark("done", {"probe_rc": proc.returncode})


def main(results: Path, phase: str) -> int:
    agent = CriuAgent(results, phase)
    try:
        if "probe" in agent.request:
            agent.probe()
        elif phase == "prepare":
            mark("agent-start", {"phase": "prepare"})
            agent.prepare_and_kexec()
        else:
            agent.restore()
    except BaseException as exc:
        with contextlib.suppress(Exception):
            agent.save_logs()
        agent.record_failure(exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
