"""The ``preload`` workload: an unmodified program's memory kept across a real kexec through its birth memfds.

In the lab VM the agent (:mod:`~workbench.lab.workloads.preload_agent`) starts ``program`` (Debian's
redis-server, this machine's binary over the read-only 9p root) with the ``memfd_birth`` library
(:mod:`workbench.lab.preload`) preloaded, fills it with about ``size`` bytes of a known data set
(:mod:`~workbench.lab.workloads.preload_data`: ``SET`` over its unix socket), and at the checkpoint stops it with
``SIGSTOP``, takes every birth memfd with ``pidfd_getfd``, fingerprints every page, preserves the memfds in one LUO
session and kexecs. In the next kernel it retrieves them, verifies every page, and shows that the program's data
came back: it rebuilds the program's address space from the memfds and the mappings recorded at the checkpoint
and finds every key's value intact in it (the program itself is not restarted: its registers, descriptors and
other memory are not preserved, only the memory that was a memfd from birth).

The result adds ``program``, ``birth_memfds``, ``birth_bytes`` (the memfds' sizes), ``bytes_preserved`` (their
resident pages, what LUO preserves), ``pages_verified``, ``preserve_s``, ``retrieve_s`` (summed over the memfds),
``keys``, ``data_before`` and ``data_after`` (what the search found); ``verified`` needs every page and every
key's value."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults
from workbench.lab.preload import build_preload
from workbench.lab.workload import Workload, register
from workbench.lab.workloads.preload_data import key_count

__all__ = ["PreloadWorkload", "PROGRAMS"]

#: the programs the workload knows how to fill and check: name → the Debian packages that have them
PROGRAMS = {"redis-server": "redis-server redis-tools"}
_FAULTS = ("corrupt_page", "modify_after_preserve")


@register
@dataclass
class PreloadWorkload(Workload):
    """``program`` (one of :data:`PROGRAMS`) filled with about ``size`` bytes of values of ``value_size`` bytes
    from the data set of ``seed``; ``threshold``: the library's smallest birth mapping, in bytes."""

    name = "preload"
    agent = "workbench.lab.workloads.preload_agent:PreloadAgent"
    phases_before_kexec = ("prepare", "checkpoint", "fingerprint", "preserve", "load")
    phases_after_kexec = ("restore", "verify", "data")
    targets = ("qemu",)
    base_memory_mb = 768

    program: str = "redis-server"
    size: int = 32 << 20
    value_size: int = 4000
    seed: int = 0
    threshold: int = 1 << 20

    def validate(self) -> None:
        if self.program not in PROGRAMS:
            raise InvalidCycle(f"program {self.program!r} is not one of {', '.join(PROGRAMS)}")
        if self.size <= 0:
            raise InvalidCycle(f"size {self.size} must be positive: the bytes of data to put into the program")
        if not 64 <= self.value_size <= 1 << 20:
            raise InvalidCycle(f"value size {self.value_size} must be between 64 bytes and 1 MiB")
        if self.threshold < 4096:
            raise InvalidCycle(f"threshold {self.threshold} must be at least a page (4096 bytes)")
        if shutil.which(self.program) is None:
            raise InvalidCycle(
                f"{self.program} is not installed on this machine (the lab VM runs this machine's binary): run "
                f"workbench/lab/scripts/install-system-deps.sh as root (it installs {PROGRAMS[self.program]})"
            )

    def validate_faults(self, faults: Faults) -> None:
        for name in _FAULTS:
            if getattr(faults, name, None) is not None:
                raise InvalidCycle(f"the preload workload takes no fault {name}: its memory is the program's")

    def keys(self) -> int:
        return key_count(self.size, self.value_size)

    def data_bytes(self) -> int:
        return self.size

    def timeout_bytes(self) -> int:
        return 4 * self.size  # filled over a socket, read twice, searched twice

    def memory_copies(self) -> int:
        return 4  # the program's memory (with its overhead), the agent's reads of it and the rebuilt address space

    def request(self) -> dict[str, Any]:
        return {
            "program": shutil.which(self.program) or self.program,
            "library": str(build_preload().path),
            "keys": self.keys(),
            "value_size": self.value_size,
            "seed": self.seed,
            "threshold": self.threshold,
        }

    def summarize(self, result, prepare, restore, marks) -> dict[str, Any]:
        birth = prepare.get("birth", [])
        after = restore.get("data_after") or {}
        pages_ok = sum(m["pages"] for m in restore.get("memfds", []) if m["differing_count"] == 0)
        result = dict(result)
        result.update(
            {
                "workload": "preload",
                "program": self.program,
                "keys": prepare.get("keys_written"),
                "program_rss": prepare.get("program_rss"),
                "birth_memfds": len(birth),
                "birth_bytes": sum(m["size"] for m in birth),
                "bytes_preserved": sum(m["resident"] for m in birth),
                "pages_verified": pages_ok,
                "preserve_s": sum(prepare.get("preserve_s", [])),
                "retrieve_s": sum(restore.get("retrieve_s", [])),
                "data_before": prepare.get("data_before"),
                "data_after": after or None,
                "verified": bool(result.get("verified")) and bool(after.get("complete")),
            }
        )
        return result
