"""The ``memfd`` workload: memfds filled with a deterministic pattern, preserved in one LUO session, kexec'd,
retrieved and verified page by page.

prepare: create the memfds, fill them, fingerprint every page; preserve: create the LUO session and preserve each
memfd with its token; load: ``kexec_file_load`` the next kernel; kexec. restore (next kernel): retrieve the session
and every token; verify: re-fingerprint and compare; finish the session.

:class:`MemfdWorkload` is the host side, :class:`MemfdAgent` runs on the target."""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.lab.agent_core import (
    PAGE,
    Agent,
    differing_pages,
    fill_pattern,
    fingerprint,
    load_hasher,
    map_retrieved,
    mark,
    page_frames,
)
from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults
from workbench.lab.liveupdate import LiveUpdate
from workbench.lab.protocol import FINGERPRINTS_AFTER, FINGERPRINTS_BEFORE, FRAMES_AFTER, FRAMES_BEFORE, Event
from workbench.lab.workload import Workload, register

__all__ = ["MemfdWorkload", "MemfdAgent"]


@register
@dataclass
class MemfdWorkload(Workload):
    """``memfds`` memfds of ``memfd_size`` bytes each (whole 4 KiB pages), preserved with ``tokens`` (default
    1000, 1001, ...), filled with the pattern of ``seed``."""

    name = "memfd"
    agent = "workbench.lab.workloads.memfd:MemfdAgent"
    phases_before_kexec = ("prepare", "preserve", "load")
    phases_after_kexec = ("restore", "verify")
    crash_points = ("preserve", "retrieve", "restore")

    memfds: int = 2
    memfd_size: int = 64 << 20
    tokens: list[int] | None = None
    seed: int = 0

    def resolved_tokens(self) -> list[int]:
        return list(self.tokens) if self.tokens is not None else [1000 + i for i in range(self.memfds)]

    def validate(self) -> None:
        if self.memfds < 0:
            raise InvalidCycle("the number of memfds cannot be negative")
        self.check_pages("memfd size", self.memfd_size)
        if len(self.resolved_tokens()) != self.memfds:
            raise InvalidCycle(f"{len(self.resolved_tokens())} tokens given for {self.memfds} memfds")

    def validate_faults(self, faults: Faults) -> None:
        pages = self.memfd_size // PAGE
        for name in ("corrupt_page", "modify_after_preserve"):
            ref = getattr(faults, name)
            if ref is not None and not (0 <= ref.memfd < self.memfds and 0 <= ref.page < pages):
                raise InvalidCycle(
                    f"fault {name} names page {ref.page} of memfd {ref.memfd}, but the cycle has {self.memfds} "
                    f"memfds of {pages} pages"
                )

    def data_bytes(self) -> int:
        return self.memfds * self.memfd_size

    def request(self) -> dict[str, Any]:
        return {
            "memfds": self.memfds,
            "memfd_size": self.memfd_size,
            "tokens": self.resolved_tokens(),
            "seed": self.seed,
        }

    def summarize(self, result, prepare, restore, marks) -> dict[str, Any]:
        if "modify_after_preserve" in prepare:
            result["modify_after_preserve"] = prepare["modify_after_preserve"]
        return result


class MemfdAgent(Agent):
    """The target side. A workload that fills its memfds another way overrides :meth:`setup`, :meth:`make_memory`
    and :meth:`before_preserve` (see :mod:`workbench.lab.workloads.converted`)."""

    # -- before the kexec ------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Set-up outside the phases."""
        self.timed_setup("hasher", load_hasher)

    def make_memory(self) -> tuple[list[int], list[mmap.mmap], list[np.ndarray], str | None]:
        """The memory to keep, in the ``prepare`` phase: (memfds, their mappings, the fingerprints of the data
        that must come back, the hash's name)."""
        req = self.request
        memfds, maps, hashes, impl = [], [], [], None
        for i in range(req["memfds"]):
            fd = os.memfd_create(f"wb-{req['session']}-{i}", 0)
            os.ftruncate(fd, req["memfd_size"])
            m = mmap.mmap(fd, req["memfd_size"], mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            fill_pattern(m, i, req.get("seed", 0))
            h, impl = fingerprint(m)
            memfds.append(fd)
            maps.append(m)
            hashes.append(h)
        return memfds, maps, hashes, impl

    def before_preserve(self, memfds: list[int], maps: list[mmap.mmap]) -> tuple[list[int], list[mmap.mmap]]:
        """Work between ``prepare`` (and its pause) and ``preserve``; returns the memfds to preserve."""
        return memfds, maps

    def prepare_and_kexec(self) -> None:
        req = self.request
        self.setup()
        with self.phase("prepare"):
            luo = LiveUpdate()  # fails clearly, before anything else, on a kernel without LUO
            memfds, maps, hashes, impl = self.make_memory()
            np.save(self.results / FINGERPRINTS_BEFORE, np.stack(hashes) if hashes else np.zeros((0, 0)))
            self.state["hash_impl"] = impl if hashes else None
        self.save()
        self.pause("prepare")
        memfds, maps = self.before_preserve(memfds, maps)
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
        np.save(self.results / FRAMES_BEFORE, frames)
        self.hand_over(luo, session, memfds, maps)

    def hand_over(self, luo: LiveUpdate, session, memfds: list[int], maps: list[mmap.mmap]) -> None:
        """After ``preserve``: snapshot the outgoing KHO FDT, the ``modify_after_preserve`` fault, the pause, the
        load of the next kernel and the kexec (or standing down, closing ``session``, when there is to be none)."""
        faults = self.request.get("faults", {})
        self.kho_snapshot("out")
        if "modify_after_preserve" in faults:
            self.try_modify(memfds, maps, faults["modify_after_preserve"])
        self.save()
        self.pause("preserve")
        self.load_next_kernel()
        reason = self.go_ahead()
        if reason is not None:
            self.stand_down(reason, luo, session, maps, memfds)
            return
        self.kexec()

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

    def corrupt(self, maps: list[mmap.mmap], where: dict) -> None:
        """Fault injection: flip one bit of a page after the kexec, before verifying."""
        i, page = where.get("memfd", 0), where.get("page", 0)
        maps[i][page * PAGE + 17] ^= 0x01
        self.state["events"].append(f"fault injection: flipped one bit of page {page} of memfd {i}")

    def record_verification(self, report: list[dict[str, Any]]) -> None:
        """Keeps the per-file ``report`` of the verification and its verdict: every file whole and unchanged."""
        self.state["memfds"] = report
        self.state["verified"] = bool(report) and all(
            r["differing_count"] == 0 and r["size"] == r["expected_size"] for r in report
        )
        self.state["pages_checked"] = int(sum(r["pages"] for r in report))
        self.save()

    def report_done(self) -> None:
        """The cycle is over in the target: says so in the state and to the host."""
        self.state["finished"] = True
        self.save()
        mark(Event.DONE, {"verified": self.state["verified"], "pages_checked": self.state["pages_checked"]})

    # -- after the kexec -------------------------------------------------------------------------------------
    def restore(self) -> None:
        req = self.request
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
        sizes, maps = map_retrieved(fds)
        np.save(
            self.results / FRAMES_AFTER,
            np.stack([page_frames(m) for m in maps]) if maps else np.zeros((0, 0), dtype=np.uint64),
        )
        self.pause("restore")
        if "corrupt_page" in faults:
            self.corrupt(maps, faults["corrupt_page"])
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
            before = np.load(self.results / FINGERPRINTS_BEFORE)
            report = []
            for i, h in enumerate(after):
                expected = before[i] if i < len(before) else np.zeros(0, dtype=np.uint64)
                differing = differing_pages(expected, h)
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
            np.save(self.results / FINGERPRINTS_AFTER, np.stack(after) if after else np.zeros((0, 0)))
        self.state["hash_impl_after"] = impl[0] if impl else None
        self.record_verification(report)
        with self.phase("finish"):
            for m in maps:
                m.close()
            session.finish()
            for fd in fds:
                os.close(fd)
            session.close()
            luo.close()
        self.report_done()
