"""The CRIU workload agent: keeps a whole process alive across the kexec. Runs in the lab VM instead of the default
agent when request.json says ``"workload": "criu"`` (see :mod:`workbench.lab.agent`).

Before the kexec (``--phase prepare``):

prepare
    check CRIU (present, recent enough, ``criu check``), start the workload (a C program, see
    :mod:`workbench.lab.workloads.criu.program`) and fingerprint its memory page by page through ``/proc/PID/mem``;
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

CRIU runs with ``LD_PRELOAD`` of the request's ``criu_preload`` (the nftables shim, see
:mod:`workbench.lab.workloads.criu.program`).

Failure paths: CRIU missing, too old or failing ``criu check`` stops before the workload starts; a failed dump
leaves the process running (CRIU thaws it) and stops before the kexec; a failed restore keeps the images (copied
to ``criu-images/`` in the results folder) and CRIU's logs."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from workbench.lab.agent_core import Agent, load_hasher, mark
from workbench.lab.errors import DumpFailed, RestoreFailed
from workbench.lab.liveupdate import LiveUpdate
from workbench.lab.protocol import Event
from workbench.lab.workloads.criu.process import (
    WORK,
    WorkloadProcess,
    mount_devpts,
    read_rates,
    region_external_id,
    sendfile_all,
)
from workbench.lab.workloads.criu.tool import check_criu, criu_env, log_errors, run_criu, seize_offset

__all__ = ["CriuAgent"]

PR_SET_CHILD_SUBREAPER = 36
FIRST_TOKEN = 1000
REGION_TOKEN = 1
KDAT_TOKEN = 2
KDAT = Path("/run/criu.kdat")  # CRIU's cache of its kernel probe (kerndat)


class CriuAgent(Agent):
    """The target side of the ``criu`` workload (see the module's description); with ``probe`` in the request it
    only runs that shell script (:func:`workbench.lab.workloads.criu.probe.run_probe`)."""

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
            images_mode=req.get("images", "direct"),
            region_kind=req.get("region_kind", "tmpfile") if req.get("memfd_region") else None,
            anon_size=req["anon_size"],
            memfd_region=req.get("memfd_region", 0),
            session=req["session"],
        )
        self.timed_setup("hasher", load_hasher)
        with self.phase("prepare"):
            if (done := mount_devpts()) is not None:
                self.state["events"].append(done)
            minimum = tuple(int(x) for x in str(faults.get("criu_min_version", "3.17")).split("."))
            self.state["criu"] = check_criu(self.criu, minimum, self.preload)
            luo = LiveUpdate()  # fails clearly, before anything else, on a kernel without LUO
            WORK.mkdir(parents=True, exist_ok=True)
            self.images.mkdir(exist_ok=True)
            work = WorkloadProcess.start(req, WORK / "workload.json")
            self.state["workload"] = work.info
            region_fd = None
            if work.info["region_size"]:
                region_fd = os.open(f"/proc/{work.pid}/fd/{work.info['region_fd']}", os.O_RDWR)
                self.state["region_external_id"] = region_external_id(
                    work.pid, work.info["region_fd"], work.info["region_kind"]
                )
            before = work.fingerprints()
            np.savez(self.results / "fingerprints-before.npz", *before)
            self.state["hash_impl"] = self.state["setup"]["hasher"]
        self.save()
        self.pause("prepare")
        self.load_next_kernel()
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
        self.kexec(save=False)  # inside the process's downtime: the state file was written just above

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

    def dump(self, work: WorkloadProcess, faults: dict) -> None:
        log = self.images / "dump.log"
        cmd = [self.criu, "dump", "-t", str(work.pid), "-D", str(self.images), "-o", str(log), f"-v{self.log_level}"]
        if "region_external_id" in self.state and self.state["region_kind"] == "tmpfile":
            cmd += ["--external", self.state["region_external_id"]]
        cmd += faults.get("dump_args", [])
        rc, seconds, text = run_criu(cmd, log, self.preload, timeout=3600)
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
        errors = "; ".join(log_errors(text)) or text[-500:]
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
                    sendfile_all(fd, src, size)
                finally:
                    os.close(src)
            path.unlink()
            out.append((path.name, fd, size))
        return out

    # -- after the kexec -------------------------------------------------------------------------------------
    def restore(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # the restored workload becomes our child
        tokmap = json.loads((self.results / "criu-tokens.json").read_text())
        prepare = json.loads((self.results / "prepare.json").read_text())
        mode = tokmap["images_mode"]
        region = tokmap.get("region")
        work = WorkloadProcess(prepare["workload"])
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
                        sendfile_all(out, fd, os.fstat(fd).st_size)
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
            self.state["read_rates"] = read_rates(fds["pages-1.img"])
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
        mark(Event.DONE, {"verified": self.state["verified"], "pages_checked": self.state["pages_checked"]})

    def criu_restore(self, region: dict | None, region_fd: int | None, work: WorkloadProcess) -> None:
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
            rc, seconds, text = run_criu(cmd, log, self.preload, timeout=3600, pass_fds=pass_fds)
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
            errors = "; ".join(log_errors(text)) or text[-500:]
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
                raise RestoreFailed(f"criu lazy-pages did not start: {'; '.join(log_errors(text)) or text[-300:]}")
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
    def run(self, phase: str) -> int:
        if "probe" not in self.request:
            return super().run(phase)
        try:
            self.probe()
        except BaseException as exc:
            self.on_failure()
            self.record_failure(exc)
            return 1
        return 0

    def on_failure(self) -> None:
        with contextlib.suppress(Exception):
            self.save_logs()

    def probe(self) -> None:
        """Runs ``request["probe"]`` with /bin/sh and keeps its output (``probe.txt``): for finding out what CRIU
        does in the guest without a whole cycle."""
        mark(Event.AGENT_START, {"phase": "probe"})
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
        mark(Event.DONE, {"probe_rc": proc.returncode})
