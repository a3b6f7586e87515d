"""The ``converted`` workload: anonymous memory → memfd inside the cycle's target, before LUO preserves the memfds.

The host asks for it in ``request.json`` (``convert``: one entry per memfd naming a strategy of
:mod:`workbench.kernels.conversion`, its copier, threads and pipe size). The agent then does not fill its
memfds directly: it maps touched anonymous memory (the "process" whose memory must survive), fingerprints it,
converts it into a memfd with the strategy (the ``convert`` phase), and hands that memfd to LUO. The fingerprints
checked after the kexec are the anonymous memory's, so a cycle that verifies proves the whole path: conversion,
preservation, kexec, retrieval.

Each conversion also records its page identity (:mod:`workbench.kernels.conversion.page_identity`): the physical
frames of the source before and of the memfd after, counted as ``moved_pages`` and ``copied_pages``, read once the
timed ``convert`` phase is over (reading them is measurement, not conversion). The
huge-page strategies get what they need at run time (shmem THP on advice, a hugetlb pool), and, before anything
is converted, LUO is asked to preserve a small memfd of their kind: a kind the kernel refuses (7.2's memfd
handler does not take hugetlbfs files) is still converted and checked, but left out of the preservation, its row
carrying the kernel's refusal (``preserve_refused``) instead of failing the cycle.

:class:`ConvertedMemfdWorkload` is the host side; :class:`ConvertedMemfdAgent` and :class:`GuestConversion` run on
the target."""

from __future__ import annotations

import errno
import math
import mmap
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.kernels import conversion
from workbench.kernels.conversion import huge_pages, page_identity
from workbench.kernels.pagehash import PAGE_SIZE
from workbench.lab.errors import InvalidCycle
from workbench.lab.liveupdate import LiveUpdate
from workbench.lab.protocol import FINGERPRINTS_BEFORE, read_json, state_file
from workbench.lab.workload import register
from workbench.lab.workloads.memfd import MemfdAgent, MemfdWorkload

__all__ = [
    "ConversionSpec",
    "ConvertedMemfdWorkload",
    "ConvertedMemfdAgent",
    "GuestConversion",
    "PRESERVE_PROBED",
    "REFUSAL_CODE_PATHS",
    "probe_preservation",
    "resolve_specs",
    "summarize",
]

PRESERVE_PROBED = ("thp-shmem", "hugetlb")
"""The strategies whose memfds are not plain base-page shmem files: LUO is asked first whether it takes them."""

REFUSAL_CODE_PATHS = {
    errno.ENOENT: "luo_preserve_file (kernel/liveupdate/luo_file.c) found no file handler whose can_preserve "
    "accepts the file: memfd_luo_can_preserve (mm/memfd_luo.c) requires shmem_file(file), and an MFD_HUGETLB memfd "
    "is a hugetlbfs file",
    errno.EOPNOTSUPP: "memfd_luo_preserve (mm/memfd_luo.c) refuses seals it does not know",
    errno.EINVAL: "memfd_luo_preserve_folios (mm/memfd_luo.c) could not pin or preserve the file's folios",
}
"""The lab kernel's code that answers a preserve request with each errno, for a refusal's reason."""

_PROBE_TOKEN = 999_999


@dataclass(frozen=True)
class ConversionSpec:
    """How one memfd is filled from anonymous memory: a strategy name, its copier, threads and pipe size."""

    strategy: str
    copier: str = ""
    threads: int = 1
    pipe_size: int = 0

    def as_request(self) -> dict:
        return {"strategy": self.strategy, "copier": self.copier, "threads": self.threads, "pipe_size": self.pipe_size}


def resolve_specs(strategies: list[str], memfds: int, copier: str = "", threads: int = 1, pipe_size: int = 0):
    """One :class:`ConversionSpec` per memfd: a single strategy applies to every memfd, otherwise there is one
    strategy per memfd. The copier defaults to the strategy's fastest (numba for the copies), the pipe size of
    the vmsplice strategies to the largest of the benchmark's defaults. Raises
    ``ValueError`` naming what is wrong."""
    if not strategies:
        return []
    unknown = [s for s in strategies if s not in conversion.STRATEGIES]
    if unknown:
        raise InvalidCycle(
            f"unknown conversion strategy {unknown[0]!r}: choose from {', '.join(conversion.STRATEGIES)}"
        )
    if len(strategies) == 1:
        strategies = strategies * memfds
    if len(strategies) != memfds:
        raise InvalidCycle(f"{len(strategies)} conversion strategies given for {memfds} memfds: give one, or one each")
    if threads < 1:
        raise InvalidCycle("conversion threads must be at least 1")
    specs = []
    for name in strategies:
        copiers = conversion.STRATEGIES[name].copiers
        chosen = copier or copiers[-1]
        if chosen not in copiers:
            raise InvalidCycle(f"strategy {name} copies with {', '.join(copiers)}, not {chosen!r}")
        pipe = pipe_size or (conversion.DEFAULT_PIPE_SIZES[-1] if conversion.STRATEGIES[name].uses_pipe else 0)
        specs.append(ConversionSpec(name, chosen, threads, pipe))
    return specs


@register
@dataclass
class ConvertedMemfdWorkload(MemfdWorkload):
    """The memfd workload whose memfds are filled from anonymous memory in the target: ``convert`` names one
    strategy of :mod:`workbench.kernels.conversion` for every memfd, or one each; ``convert_copier``,
    ``convert_threads`` and ``pipe_size`` tune the strategies (defaults: each strategy's fastest copier, one
    thread, the largest benchmark pipe); ``convert_limits`` also measures the target's memcpy bandwidth and page
    fault rate, for ``ratio_to_memcpy``."""

    name = "converted"
    agent = "workbench.lab.workloads.converted:ConvertedMemfdAgent"
    phases_before_kexec = ("prepare", "convert", "preserve", "load")

    convert: list[str] = field(default_factory=lambda: ["copy-fresh"])
    convert_copier: str = ""
    convert_threads: int = 1
    pipe_size: int = 0
    convert_limits: bool = False

    def specs(self) -> list[ConversionSpec]:
        return resolve_specs(self.convert, self.memfds, self.convert_copier, self.convert_threads, self.pipe_size)

    def validate(self) -> None:
        super().validate()
        if not self.convert:
            raise InvalidCycle("the converted workload needs at least one conversion strategy")
        self.specs()

    def memory_copies(self) -> int:
        return 3  # the anonymous sources exist beside the memfds until converted

    def memory_mb(self) -> int:
        """The guest RAM of the memfd workload, plus the hugetlb pool the agent sets aside for ``hugetlb``
        memfds (pages the rest of the guest cannot use) and one 2 MiB page for the preservation probe."""
        hugetlb = sum(spec.strategy == "hugetlb" for spec in self.specs())
        if not hugetlb:
            return super().memory_mb()
        extra_mb = (hugetlb * self.memfd_size + (2 << 20)) / (1 << 20)
        return super().memory_mb() + int(math.ceil(extra_mb / 256) * 256)

    def request(self) -> dict[str, Any]:
        return {
            **super().request(),
            "convert": [s.as_request() for s in self.specs()],
            "convert_limits": self.convert_limits,
        }

    def summarize(self, result, prepare, restore, marks) -> dict[str, Any]:
        result = super().summarize(result, prepare, restore, marks)
        if prepare.get("conversions"):
            result.update(summarize(prepare, restore, result["phases"], result["blackout_s"]))
        return result


class GuestConversion:
    """On the target: the anonymous sources (one per memfd), then their conversion into memfds."""

    def __init__(self, entries: list[dict], size: int):
        self.entries = entries
        self.size = size
        self.sources: list[conversion.Source] = []
        self.source_frames: list[np.ndarray | str] = []
        self.results: list[dict] = []

    def make_sources(self) -> list:
        """Maps, fills and fingerprints one anonymous source per memfd (in a process of its own for strategies
        that read another process's memory); returns the fingerprints."""
        for entry in self.entries:
            strategy = conversion.STRATEGIES[entry["strategy"]]
            reason = strategy.unavailable(self.size)
            if reason:
                raise RuntimeError(f"conversion strategy {entry['strategy']} cannot run on this target: {reason}")
            maker = conversion.RemoteSource.start if strategy.remote else conversion.make_source
            self.sources.append(maker(self.size))
            self.source_frames.append(_frames_or_reason(page_identity.source_frames, self.sources[-1]))
        return [source.hashes for source in self.sources]

    def convert(self) -> list[int]:
        """Runs each memfd's strategy on its source; returns the memfds (the caller owns them). Only the
        conversion is done here: :meth:`record_identity` adds the page identity, outside the timed phase."""
        fds = []
        for entry, source in zip(self.entries, self.sources, strict=True):
            options = conversion.Options(entry["copier"], entry["threads"], entry["pipe_size"])
            converted = conversion.STRATEGIES[entry["strategy"]].convert(source, options)
            fds.append(converted.fd)
            self.results.append(
                {
                    **entry,
                    "size": self.size,
                    "convert_s": converted.seconds,
                    "alloc_s": None if math.isnan(converted.alloc_s) else converted.alloc_s,
                    "copy_s": None if math.isnan(converted.copy_s) else converted.copy_s,
                    "pipe_size_obtained": converted.pipe_size_obtained,
                }
            )
        return fds

    def record_identity(self, fds: list[int]) -> None:
        """Adds to each conversion's result the page identity of its memfd (``fds``, as :meth:`convert`
        returned them): reading the memfds' frames and flags is measurement, not part of the conversion."""
        for result, source_frames, fd in zip(self.results, self.source_frames, fds, strict=True):
            result.update(self.identity(result["strategy"], source_frames, fd))

    def identity(self, strategy: str, source_frames: np.ndarray | str, fd: int) -> dict:
        """The page identity of the memfd ``fd`` that ``strategy`` filled from a source whose frames were
        ``source_frames`` (or the reason they could not be read): ``pages_converted`` (0 when the strategy reads
        no source), ``moved_pages``, ``copied_pages``, ``huge_pages`` (memfd pages in huge folios, from
        /proc/kpageflags) and ``page_identity_explanation``."""
        pages = self.size // PAGE_SIZE if conversion.STRATEGIES[strategy].reads_source else 0
        mem = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            memfd_frames = _frames_or_reason(page_identity.mapping_frames, mem)
        finally:
            mem.close()
        flags = _frames_or_reason(page_identity.read_kpageflags, memfd_frames)
        unknown = next((x for x in (source_frames, memfd_frames, flags) if isinstance(x, str)), None)
        if unknown is not None:
            return {
                "pages_converted": pages,
                "moved_pages": None,
                "copied_pages": None,
                "huge_pages": None,
                "page_identity_explanation": f"page identity unknown: {unknown}",
            }
        nothing = page_identity.PageIdentity(0, 0)
        found = page_identity.count_identity(source_frames, memfd_frames) if pages else nothing
        absent = f"; {found.absent_pages} pages not present on one side" if found.absent_pages else ""
        return {
            "pages_converted": pages,
            "moved_pages": found.moved_pages,
            "copied_pages": found.copied_pages,
            "huge_pages": page_identity.huge_frame_count(flags),
            "page_identity_explanation": page_identity.explain(strategy, found) + absent,
        }

    def release_sources(self) -> None:
        """Frees the anonymous memory (the process that owned it is gone once its memory is in memfds)."""
        for source in self.sources:
            source.close()
        self.sources = []

    @staticmethod
    def prepare_huge_pages(entries: list[dict], size: int) -> dict:
        """Shmem THP on advice and a hugetlb pool as the ``entries`` need them (one spare hugetlb page for the
        preservation probe)."""
        return huge_pages.prepare_huge_pages([entry["strategy"] for entry in entries], size)

    @staticmethod
    def warm_up() -> str:
        """Compiles (or loads from numba's cache) the copy kernels, so that no conversion time includes it."""
        conversion.compile_kernels()
        return "numba kernels ready"

    @staticmethod
    def limits(size: int, threads: int) -> dict:
        """The target's memcpy bandwidth and page allocation rate, for ``ratio_to_memcpy``."""
        t0 = time.monotonic()
        limits = conversion.measure_limits(size, repeats=2, threads=threads)
        limits["limits_s"] = time.monotonic() - t0
        limits["cpus"] = os.cpu_count()
        return limits


def _frames_or_reason(read, what) -> np.ndarray | str:
    """``read(what)``: physical frames or their flags, or why they could not be read (not root, no pagemap, the
    frames themselves unknown: ``what`` a reason already)."""
    if isinstance(what, str):
        return what
    try:
        return read(what)
    except OSError as exc:
        return str(exc)


def probe_preservation(strategy: str, session_name: str) -> dict | None:
    """Asks LUO to preserve a memfd that ``strategy`` fills with one 2 MiB source, in a session of its own that
    is closed at once (releasing what it preserved); returns ``None`` when LUO takes it, else the refusal:
    ``errno`` (its name), ``message`` and ``code_path`` (the lab kernel's code that refuses). Needs
    ``/dev/liveupdate`` free (no other LiveUpdate open)."""
    source = conversion.make_source(2 << 20)
    try:
        options = conversion.Options(conversion.STRATEGIES[strategy].copiers[0], 1, 0)
        fd = conversion.STRATEGIES[strategy].convert(source, options).fd
    finally:
        source.close()
    try:
        luo = LiveUpdate()
        try:
            session = luo.create_session(session_name)
            try:
                session.preserve(fd, _PROBE_TOKEN)
            except OSError as exc:
                code = errno.errorcode.get(exc.errno, str(exc.errno))
                return {
                    "errno": code,
                    "message": str(exc),
                    "code_path": REFUSAL_CODE_PATHS.get(exc.errno, "not traced in the lab kernel's sources"),
                }
            finally:
                session.close()
        finally:
            luo.close()
    finally:
        os.close(fd)
    return None


def summarize(prepare: dict, restore: dict, phases: dict[str, float], blackout_s: float) -> dict:
    """The host's view of a converting cycle: one row per memfd (its strategy, conversion time and rate, its
    own preserve, retrieve and verify times, the shared blackout, and its end-to-end time: conversion, preserve,
    blackout, retrieve, verify) and ``anon_to_survived_s``, the whole path for all memfds (the convert, preserve,
    load, kexec, restore and verify phases)."""
    limits = prepare.get("setup", {}).get("limits") or {}
    memcpy = limits.get("memcpy_bytes_per_s")
    conversions = prepare.get("conversions", [])
    preserved = prepare.get("preserved_memfds", list(range(len(conversions))))
    refused = prepare.get("preserve_refused", {})
    verified = {
        m["memfd"]: m["differing_count"] == 0 and m["size"] == m["expected_size"] for m in restore.get("memfds", [])
    }
    rows = []
    for i, done in enumerate(conversions):
        slot = preserved.index(i) if i in preserved else None  # its place among the preserved memfds
        preserve = _at(prepare.get("preserve_s"), slot)
        retrieve = _at(restore.get("retrieve_s"), slot)
        verify = _at(restore.get("verify_s"), slot)
        rate = done["size"] / done["convert_s"] if done["convert_s"] > 0 else math.inf
        parts = (done["convert_s"], preserve, blackout_s, retrieve, verify)
        refusal = refused.get(str(i))
        rows.append(
            {
                "memfd": i,
                **{k: done[k] for k in ("strategy", "copier", "threads", "pipe_size", "size")},
                "convert_s": done["convert_s"],
                "alloc_s": done["alloc_s"],
                "copy_s": done["copy_s"],
                "bytes_per_s": rate,
                "ratio_to_memcpy": rate / memcpy if memcpy else None,
                "preserve_s": preserve,
                "blackout_s": blackout_s if slot is not None else None,
                "retrieve_s": retrieve,
                "verify_s": verify,
                "end_to_end_s": sum(parts) if all(x is not None for x in parts) else None,
                "verified": slot is not None and verified.get(slot, False),
                **{key: done.get(key) for key in _IDENTITY_FIELDS},
                "preserve_refused": _refusal_text(done["strategy"], refusal) if refusal else "",
                "converted_verified": refusal.get("converted_verified") if refusal else None,
            }
        )
    total = sum(phases.get(name, 0.0) for name in ("convert", "preserve", "load", "kexec", "restore", "verify"))
    return {"conversions": rows, "anon_to_survived_s": total, "target_limits": limits}


_IDENTITY_FIELDS = ("pages_converted", "moved_pages", "copied_pages", "huge_pages", "page_identity_explanation")


def _at(values: list | None, i: int | None) -> float | None:
    return values[i] if values is not None and i is not None and i < len(values) else None


def _refusal_text(strategy: str, refusal: dict) -> str:
    reason = f"{refusal['errno']} ({refusal['message']})"
    return f"LUO refused to preserve the {strategy} memfd: {reason}; {refusal['code_path']}"


class ConvertedMemfdAgent(MemfdAgent):
    """The target side: huge pages and the preservation probe in the set-up, anonymous sources in ``prepare``,
    their conversion into memfds in ``convert``; memfds whose kind LUO refused are checked and left out of the
    preservation (``preserved_memfds`` in the state says which are preserved, for the next kernel)."""

    def setup(self) -> None:
        super().setup()
        req = self.request
        self.timed_setup("conversion_kernels", GuestConversion.warm_up)
        if any(entry["strategy"] in PRESERVE_PROBED for entry in req["convert"]):
            self.timed_setup(
                "huge_pages", lambda: GuestConversion.prepare_huge_pages(req["convert"], req["memfd_size"])
            )
            self.timed_setup("preserve_probe", self.probe)
        if req.get("convert_limits"):
            threads = max(e["threads"] for e in req["convert"])
            self.timed_setup("limits", lambda: GuestConversion.limits(req["memfd_size"], threads))
        self.conversion = GuestConversion(req["convert"], req["memfd_size"])

    def probe(self) -> dict:
        """Whether LUO takes each probed strategy's kind of memfd: the refusal, or ``None``, by strategy."""
        strategies = dict.fromkeys(e["strategy"] for e in self.request["convert"] if e["strategy"] in PRESERVE_PROBED)
        return {name: probe_preservation(name, f"{self.request['session']}-probe") for name in strategies}

    def make_memory(self) -> tuple[list[int], list[mmap.mmap], list[np.ndarray], str | None]:
        return [], [], self.conversion.make_sources(), self.state["setup"]["hasher"]

    def before_preserve(self, memfds: list[int], maps: list[mmap.mmap]) -> tuple[list[int], list[mmap.mmap]]:
        size = self.request["memfd_size"]
        with self.phase("convert"):
            memfds = self.conversion.convert()
        self.conversion.release_sources()
        self.conversion.record_identity(memfds)
        self.state["conversions"] = self.conversion.results
        memfds = self.leave_out_refused(memfds)
        maps = [mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) for fd in memfds]
        self.save()
        return memfds, maps

    def leave_out_refused(self, memfds: list[int]) -> list[int]:
        """Checks and closes the memfds of the kinds LUO refused in the probe, keeps their refusal, and narrows
        the tokens and the fingerprints to the memfds that will be preserved; returns those memfds."""
        verdicts = self.state.get("setup", {}).get("preserve_probe") or {}
        strategies = [entry["strategy"] for entry in self.request["convert"]]
        kept = [i for i, name in enumerate(strategies) if not verdicts.get(name)]
        self.state["preserved_memfds"] = kept
        if len(kept) == len(memfds):
            return memfds
        before = np.load(self.results / FINGERPRINTS_BEFORE)
        refused = {}
        for i, fd in enumerate(memfds):
            if i not in kept:
                converted_ok = len(conversion.verify_memfd(fd, before[i])) == 0
                refused[str(i)] = {**verdicts[strategies[i]], "converted_verified": converted_ok}
                os.close(fd)
        self.state["preserve_refused"] = refused
        np.save(self.results / FINGERPRINTS_BEFORE, before[kept] if kept else np.zeros((0, 0)))
        self.request["tokens"] = [self.request["tokens"][i] for i in kept]
        return [memfds[i] for i in kept]

    def restore(self) -> None:
        kept = read_json(self.results / state_file("prepare")).get("preserved_memfds")
        if kept is not None:
            self.request["tokens"] = [self.request["tokens"][i] for i in kept]
        super().restore()
