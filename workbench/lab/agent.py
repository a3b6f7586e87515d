"""The cycle agent: runs on the target as root, before the kexec (``--phase prepare``) and after it
(``--phase restore``).

It reads ``request.json`` from its results folder, reports progress as ``WB-MARK`` lines on stdout (the serial
console, which the host timestamps with its own clock) and writes its results as JSON and ``.npy`` files into the
results folder (a writable share the host reads). Phase times use the target's monotonic clock.

prepare: create the memfds, fill them with a deterministic pattern, fingerprint every page; preserve: create the
LUO session and preserve each memfd with its token; load: ``kexec_file_load`` the next kernel with
``wb.phase=restore``; kexec: keep the session open and ``reboot(LINUX_REBOOT_CMD_KEXEC)``.
With ``convert`` in the request, prepare maps and fingerprints anonymous memory instead, and a convert phase
moves it into the memfds with the strategies named (:mod:`workbench.lab.guest_conversion`).
restore (next kernel): retrieve the session and every token, re-fingerprint, compare; finish the session.

Over SSH the host asks for two more things in request.json: ``dry_run`` (stop after the load: unload the kernel,
close the session so that nothing stays preserved, exit) and ``confirm_kexec`` (after the load, print
``kexec-ready`` and read one line from stdin: ``kexec`` goes on, anything else or end of file, e.g. a dropped
connection, aborts like a dry run). ``next_phase`` names the next kernel's ``wb.phase=`` (default restore)."""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from workbench.lab.liveupdate import LiveUpdate, kexec_file_load, power_off, reboot_kexec

KEXEC_FILE_UNLOAD = 0x1
#: what request.json may ask for; 2 added dry_run, confirm_kexec and next_phase (the SSH target needs 2)
PROTOCOL = 2

__all__ = ["fill_pattern", "fingerprint", "page_frames", "main"]

PAGE = 4096


def mark(event: str, payload: dict | None = None) -> None:
    line = f"WB-MARK {event}"
    if payload is not None:
        line += " " + json.dumps(payload, separators=(",", ":"))
    sys.stdout.write("\n" + line + "\n")
    sys.stdout.flush()


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fill_pattern(buf, memfd_index: int, seed: int) -> None:
    """Fills ``buf`` with words that differ on every page, every memfd and every seed (and are never all zero)."""
    words = np.frombuffer(buf, dtype=np.uint64)
    chunk = 1 << 20
    salt = np.uint64((seed * 1_000_003 + memfd_index * 7919 + 1) & 0xFFFFFFFFFFFFFFFF)
    for start in range(0, words.size, chunk):
        idx = np.arange(start, min(start + chunk, words.size), dtype=np.uint64)
        words[start : start + idx.size] = (idx + salt) * np.uint64(0x9E3779B97F4A7C15) ^ salt


def load_hasher() -> str:
    """Imports and compiles (or loads from numba's cache) the page hash kernel; returns its name."""
    try:
        from workbench.kernels.pagehash import ALGORITHM, page_hashes

        page_hashes(np.zeros(PAGE, dtype=np.uint8))
        return f"{ALGORITHM}-numba"
    except ImportError:
        return "blake2b64-python"


def fingerprint(buf) -> tuple[np.ndarray, str]:
    """Per-page fingerprints: the workbench's numba XXH3-64 kernel, or BLAKE2b-64 if numba cannot run here."""
    try:
        from workbench.kernels.pagehash import ALGORITHM, page_hashes

        return page_hashes(buf), f"{ALGORITHM}-numba"
    except ImportError:
        import hashlib

        view = memoryview(buf)
        out = np.empty(len(view) // PAGE, dtype=np.uint64)
        for i in range(out.size):
            out[i] = int.from_bytes(hashlib.blake2b(view[i * PAGE : (i + 1) * PAGE], digest_size=8).digest(), "little")
        return out, "blake2b64-python"


def kexec_file_unload() -> None:
    """Unloads the kernel ``kexec_file_load`` loaded (``KEXEC_FILE_UNLOAD``): nothing stays armed for a kexec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(
        ctypes.c_long(320),  # SYS_kexec_file_load on x86_64
        ctypes.c_int(-1),
        ctypes.c_int(-1),
        ctypes.c_ulong(0),
        ctypes.c_char_p(None),
        ctypes.c_ulong(KEXEC_FILE_UNLOAD),
    )
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"kexec_file_load(KEXEC_FILE_UNLOAD): {os.strerror(err)}")


def page_frames(mapping: mmap.mmap) -> np.ndarray:
    """The physical frame number behind each page of ``mapping`` (from /proc/self/pagemap; 0 where not present)."""
    addr = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    n = len(mapping) // PAGE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek((addr // PAGE) * 8)
        entries = np.frombuffer(f.read(n * 8), dtype=np.uint64)
    present = (entries >> np.uint64(63)) & np.uint64(1)
    return np.where(present == 1, entries & np.uint64((1 << 55) - 1), 0).astype(np.uint64)


class Agent:
    def __init__(self, results: Path, phase: str):
        self.results = results
        self.request = json.loads((results / "request.json").read_text())
        self.state_path = results / f"{phase}.json"
        self.state: dict = {"phases": {}, "events": []}

    def save(self) -> None:
        write_json(self.state_path, self.state)

    @contextmanager
    def phase(self, name: str, save: bool = True) -> Iterator[None]:
        """Times a phase on the target's clock and marks its begin and end; ``save`` writes the state file after."""
        mark("phase-begin", {"phase": name})
        t0 = time.monotonic()
        self.state["current_phase"] = name
        yield
        seconds = time.monotonic() - t0
        self.state["phases"][name] = seconds
        mark("phase-end", {"phase": name, "s": round(seconds, 6)})
        if save:
            self.save()

    def timed_setup(self, name: str, work) -> None:
        """Set-up outside the phases (importing and compiling the hash kernel), timed and reported separately."""
        t0 = time.monotonic()
        self.state.setdefault("setup", {})[name] = work()
        self.state["setup"][f"{name}_s"] = time.monotonic() - t0
        mark("setup", {"name": name, "s": round(self.state["setup"][f"{name}_s"], 6)})

    def record_failure(self, exc: BaseException) -> None:
        """Keeps what went wrong, and in which phase, in the state file and tells the host."""
        self.state["error"] = {
            "phase": self.state.get("current_phase"),
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
        }
        self.save()
        mark("error", {"phase": self.state.get("current_phase"), "message": str(exc)})

    def pause(self, after: str) -> None:
        """Stops after a phase until the host creates ``continue-<phase>`` (inspection and vmcore dumps)."""
        if after not in self.request.get("pause_after", []):
            return
        mark("paused", {"phase": after})
        flag = self.results / f"continue-{after}"
        while not flag.exists():
            time.sleep(0.05)
        mark("resumed", {"phase": after})

    def kho_snapshot(self, which: str) -> None:
        """Copies the handover FDT that debugfs shows (``out`` before the kexec, ``in`` after) for the host."""
        src = Path("/sys/kernel/debug/kho") / which / "fdt"
        try:
            (self.results / f"kho-{which}.fdt").write_bytes(src.read_bytes())
        except OSError as exc:
            self.state["events"].append(f"could not read {src}: {exc}")

    # -- before the kexec ------------------------------------------------------------------------------------
    def prepare_and_kexec(self) -> None:
        req = self.request
        self.state["kernel_release_before"] = os.uname().release
        self.state["cmdline_before"] = Path("/proc/cmdline").read_text().strip()
        faults = req.get("faults", {})
        self.timed_setup("hasher", load_hasher)
        converting = bool(req.get("convert"))
        if converting:
            from workbench.lab.guest_conversion import GuestConversion

            self.timed_setup("conversion_kernels", GuestConversion.warm_up)
            if req.get("convert_limits"):
                threads = max(e["threads"] for e in req["convert"])
                self.timed_setup("limits", lambda: GuestConversion.limits(req["memfd_size"], threads))
            conversion = GuestConversion(req["convert"], req["memfd_size"])
        with self.phase("prepare"):
            luo = LiveUpdate()  # fails clearly, before anything else, on a kernel without LUO
            memfds, maps, hashes = [], [], []
            if converting:
                hashes = conversion.make_sources()
                impl = self.state["setup"]["hasher"]
            for i in range(0 if converting else req["memfds"]):
                fd = os.memfd_create(f"wb-{req['session']}-{i}", 0)
                os.ftruncate(fd, req["memfd_size"])
                m = mmap.mmap(fd, req["memfd_size"], mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                fill_pattern(m, i, req.get("seed", 0))
                h, impl = fingerprint(m)
                memfds.append(fd)
                maps.append(m)
                hashes.append(h)
            np.save(self.results / "fingerprints-before.npy", np.stack(hashes) if hashes else np.zeros((0, 0)))
            self.state["hash_impl"] = impl if hashes else None
        self.save()
        self.pause("prepare")
        if converting:
            with self.phase("convert"):
                memfds = conversion.convert()
            conversion.release_sources()
            self.state["conversions"] = conversion.results
            maps = [
                mmap.mmap(fd, req["memfd_size"], mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) for fd in memfds
            ]
            self.save()
        preserve_s = []
        with self.phase("preserve"):
            session = luo.create_session(req["session"])
            for fd, token in zip(memfds, req["tokens"], strict=True):
                t0 = time.monotonic()
                session.preserve(fd, token)
                preserve_s.append(time.monotonic() - t0)
        self.state["preserve_s"] = preserve_s
        self.state["session"] = session.kernel_name()
        frames = np.stack([page_frames(m) for m in maps]) if maps else np.zeros((0, 0), dtype=np.uint64)
        np.save(self.results / "frames-before.npy", frames)
        self.kho_snapshot("out")
        if "modify_after_preserve" in faults:
            self.try_modify(memfds, maps, faults["modify_after_preserve"])
        self.save()
        self.pause("preserve")
        with self.phase("load"):
            cmdline = " ".join(a for a in self.state["cmdline_before"].split() if not a.startswith("wb.phase="))
            cmdline += f" wb.phase={req.get('next_phase', 'restore')}"
            if faults.get("next_boot_hangs"):
                cmdline += " wb.hang=1"
            kexec_file_load(req["next_kernel"], req["next_initrd"], cmdline)
        self.state["next_cmdline"] = cmdline
        if req.get("dry_run"):
            self.stand_down("dry run", luo, session, maps, memfds)
            return
        if req.get("confirm_kexec"):
            mark("kexec-ready")
            answer = sys.stdin.readline().strip()
            if answer != "kexec":
                self.stand_down(
                    f"the host did not confirm the kexec (got {answer or 'end of file'!r})", luo, session, maps, memfds
                )
                return
        self.state["current_phase"] = "kexec"
        self.save()
        os.sync()
        mark("kexec")
        reboot_kexec()
        raise RuntimeError("reboot(LINUX_REBOOT_CMD_KEXEC) returned")

    def stand_down(self, reason: str, luo: LiveUpdate, session, maps: list[mmap.mmap], memfds: list[int]) -> None:
        """No kexec after all: unload the next kernel and close the session, which releases what it preserved."""
        self.state["current_phase"] = "stand-down"
        undone = []
        for what, step in (
            ("kexec unload", kexec_file_unload),
            ("session close", session.close),
            ("/dev/liveupdate close", luo.close),
        ):
            try:
                step()
                undone.append(what)
            except OSError as exc:
                self.state["events"].append(f"{what} failed: {exc}")
        for m in maps:
            with contextlib.suppress(BufferError):
                m.close()
        for fd in memfds:
            os.close(fd)
        self.state["stood_down"] = {"reason": reason, "undone": undone}
        self.state["dry_run"] = bool(self.request.get("dry_run"))
        self.state["current_phase"] = None
        self.save()
        with contextlib.suppress(OSError):  # the host went away: nothing left to tell it
            mark("dry-run-done" if self.state["dry_run"] else "aborted", {"reason": reason, "undone": undone})

    def try_modify(self, memfds: list[int], maps: list[mmap.mmap], where: dict) -> None:
        """Fault injection: change a page after preservation, through write(2) and through the mapping."""
        i, page = where.get("memfd", 0), where.get("page", 0)
        outcome = {}
        try:
            os.pwrite(memfds[i], b"\xa5" * 8, page * PAGE)
            outcome["pwrite"] = "written"
        except OSError as exc:
            outcome["pwrite"] = f"refused: {os.strerror(exc.errno)}"
        try:
            maps[i][page * PAGE] ^= 0xFF
            outcome["mmap_store"] = "written"
        except (OSError, ValueError, TypeError) as exc:
            outcome["mmap_store"] = f"refused: {exc}"
        self.state["modify_after_preserve"] = outcome

    # -- after the kexec -------------------------------------------------------------------------------------
    def restore(self) -> None:
        req = self.request
        mark("agent-start", {"phase": "restore"})
        self.state["kernel_release_after"] = os.uname().release
        self.kho_snapshot("in")
        faults = req.get("faults", {})
        retrieve_s, fds = [], []
        with self.phase("restore"):
            luo = LiveUpdate()
            session = luo.retrieve_session(req["session"])
            for token in req["tokens"]:
                t0 = time.monotonic()
                fds.append(session.retrieve(token))
                retrieve_s.append(time.monotonic() - t0)
        self.state["retrieve_s"] = retrieve_s
        sizes = [os.fstat(fd).st_size for fd in fds]
        maps = [
            mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            for fd, size in zip(fds, sizes, strict=True)
        ]
        for m in maps:  # fault every page in: pagemap shows only mapped pages, and a fresh mapping has none
            np.frombuffer(m, dtype=np.uint8)[::PAGE].sum()
        np.save(
            self.results / "frames-after.npy",
            np.stack([page_frames(m) for m in maps]) if maps else np.zeros((0, 0), dtype=np.uint64),
        )
        self.pause("restore")
        if "corrupt_page" in faults:
            i, page = faults["corrupt_page"].get("memfd", 0), faults["corrupt_page"].get("page", 0)
            maps[i][page * PAGE + 17] ^= 0x01
            self.state["events"].append(f"fault injection: flipped one bit of page {page} of memfd {i}")
        self.timed_setup("hasher", load_hasher)
        with self.phase("verify"):
            after, impl, verify_s = [], [], []
            for m in maps:
                t0 = time.monotonic()
                h, name = fingerprint(m)
                verify_s.append(time.monotonic() - t0)
                after.append(h)
                impl.append(name)
            self.state["verify_s"] = verify_s
            before = np.load(self.results / "fingerprints-before.npy")
            report = []
            for i, h in enumerate(after):
                expected = before[i] if i < len(before) else np.zeros(0, dtype=np.uint64)
                n = min(len(h), len(expected))
                differing = np.flatnonzero(h[:n] != expected[:n]).tolist()
                differing += list(range(n, max(len(h), len(expected))))
                report.append(
                    {
                        "memfd": i,
                        "token": req["tokens"][i],
                        "size": sizes[i],
                        "expected_size": req["memfd_size"],
                        "pages": int(len(h)),
                        "differing_pages": differing[:1000],
                        "differing_count": len(differing),
                    }
                )
            np.save(self.results / "fingerprints-after.npy", np.stack(after) if after else np.zeros((0, 0)))
        self.state["hash_impl_after"] = impl[0] if impl else None
        self.state["memfds"] = report
        self.state["verified"] = bool(report) and all(
            r["differing_count"] == 0 and r["size"] == r["expected_size"] for r in report
        )
        self.state["pages_checked"] = int(sum(r["pages"] for r in report))
        self.save()
        with self.phase("finish"):
            for m in maps:
                m.close()
            session.finish()
            for fd in fds:
                os.close(fd)
            session.close()
            luo.close()
        self.state["finished"] = True
        self.save()
        mark("done", {"verified": self.state["verified"], "pages_checked": self.state["pages_checked"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--phase", choices=["prepare", "restore"], required=True)
    args = parser.parse_args(argv)
    if json.loads((args.results / "request.json").read_text()).get("workload", "memfd") == "criu":
        from workbench.lab.criu_agent import main as criu_main  # a whole process kept alive with CRIU

        return criu_main(args.results, args.phase)
    agent = Agent(args.results, args.phase)
    if args.phase == "prepare":
        mark("agent-start", {"phase": "prepare"})
    try:
        if args.phase == "prepare":
            agent.prepare_and_kexec()
        else:
            agent.restore()
    except BaseException as exc:
        agent.record_failure(exc)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    if os.getpid() == 1 or os.environ.get("WB_POWEROFF_ON_EXIT"):
        power_off()
    sys.exit(code)
