"""The ``converted`` workload: anonymous memory → memfd inside the cycle's target, before LUO preserves the memfds.

The host asks for it in ``request.json`` (``convert``: one entry per memfd naming a strategy of
:mod:`workbench.kernels.conversion`, its copier, threads and pipe size). The agent then does not fill its
memfds directly: it maps touched anonymous memory (the "process" whose memory must survive), fingerprints it,
converts it into a memfd with the strategy (the ``convert`` phase), and hands that memfd to LUO. The fingerprints
checked after the kexec are the anonymous memory's, so a cycle that verifies proves the whole path: conversion,
preservation, kexec, retrieval.

:class:`ConvertedMemfdWorkload` is the host side; :class:`ConvertedMemfdAgent` and :class:`GuestConversion` run on
the target."""

from __future__ import annotations

import math
import mmap
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.kernels import conversion
from workbench.lab.errors import InvalidCycle
from workbench.lab.workload import register
from workbench.lab.workloads.memfd import MemfdAgent, MemfdWorkload

__all__ = [
    "ConversionSpec",
    "ConvertedMemfdWorkload",
    "ConvertedMemfdAgent",
    "GuestConversion",
    "resolve_specs",
    "summarize",
]


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
        return [source.hashes for source in self.sources]

    def convert(self) -> list[int]:
        """Runs each memfd's strategy on its source; returns the memfds (the caller owns them)."""
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

    def release_sources(self) -> None:
        """Frees the anonymous memory (the process that owned it is gone once its memory is in memfds)."""
        for source in self.sources:
            source.close()
        self.sources = []

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


def summarize(prepare: dict, restore: dict, phases: dict[str, float], blackout_s: float) -> dict:
    """The host's view of a converting cycle: one row per memfd (its strategy, conversion time and rate, its
    own preserve, retrieve and verify times, the shared blackout, and its end-to-end time: conversion, preserve,
    blackout, retrieve, verify) and ``anon_to_survived_s``, the whole path for all memfds (the convert, preserve,
    load, kexec, restore and verify phases)."""
    limits = prepare.get("setup", {}).get("limits") or {}
    memcpy = limits.get("memcpy_bytes_per_s")
    verified = {
        m["memfd"]: m["differing_count"] == 0 and m["size"] == m["expected_size"] for m in restore.get("memfds", [])
    }
    rows = []
    for i, done in enumerate(prepare.get("conversions", [])):
        preserve = _at(prepare.get("preserve_s"), i)
        retrieve = _at(restore.get("retrieve_s"), i)
        verify = _at(restore.get("verify_s"), i)
        rate = done["size"] / done["convert_s"] if done["convert_s"] > 0 else math.inf
        parts = (done["convert_s"], preserve, blackout_s, retrieve, verify)
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
                "blackout_s": blackout_s,
                "retrieve_s": retrieve,
                "verify_s": verify,
                "end_to_end_s": sum(parts) if all(x is not None for x in parts) else None,
                "verified": verified.get(i, False),
            }
        )
    total = sum(phases.get(name, 0.0) for name in ("convert", "preserve", "load", "kexec", "restore", "verify"))
    return {"conversions": rows, "anon_to_survived_s": total, "target_limits": limits}


def _at(values: list | None, i: int) -> float | None:
    return values[i] if values is not None and i < len(values) else None


class ConvertedMemfdAgent(MemfdAgent):
    """The target side: anonymous sources in ``prepare``, their conversion into memfds in ``convert``."""

    def setup(self) -> None:
        super().setup()
        req = self.request
        self.timed_setup("conversion_kernels", GuestConversion.warm_up)
        if req.get("convert_limits"):
            threads = max(e["threads"] for e in req["convert"])
            self.timed_setup("limits", lambda: GuestConversion.limits(req["memfd_size"], threads))
        self.conversion = GuestConversion(req["convert"], req["memfd_size"])

    def make_memory(self) -> tuple[list[int], list[mmap.mmap], list[np.ndarray], str | None]:
        return [], [], self.conversion.make_sources(), self.state["setup"]["hasher"]

    def before_preserve(self, memfds: list[int], maps: list[mmap.mmap]) -> tuple[list[int], list[mmap.mmap]]:
        size = self.request["memfd_size"]
        with self.phase("convert"):
            memfds = self.conversion.convert()
        self.conversion.release_sources()
        self.state["conversions"] = self.conversion.results
        maps = [mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) for fd in memfds]
        self.save()
        return memfds, maps
