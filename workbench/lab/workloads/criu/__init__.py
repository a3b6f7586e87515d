"""The ``criu`` workload: a whole process kept alive across the kexec with CRIU, its images in LUO-preserved memfds.

:class:`CriuWorkload` is the host side: its parameters, the request, the guest's size and the result the host
assembles from the agent's state files and the host timestamps of the marks. The process is a C program
(:mod:`~workbench.lab.workloads.criu.program`); the target side is :mod:`~workbench.lab.workloads.criu.agent`
(with :mod:`~workbench.lab.workloads.criu.tool` and :mod:`~workbench.lab.workloads.criu.process`); the process's
downtime is cut in :mod:`~workbench.lab.workloads.criu.downtime`.

Why ``vdso=0``: CRIU 3.17 (Debian 12) fails to initialise on any x86 kernel from 6.13 on, whose vDSO has a third
mapping, ``[vvar_vclock]`` (commit e93d2521b27f): ``vdso: Unexpected rt vDSO area bounds`` ... ``Could not
initialize kernel features detection``. CRIU learnt about it in 4.1 (commit 8ee2eba47). Booting the lab kernel
with ``vdso=0`` maps no vDSO at all, which CRIU 3.17 handles ("Kernel doesn't premap vDSO"); no kernel rebuild.

Why the shim: CRIU 3.17's kernel probe also stops when the kernel has no nf_tables (fixed in CRIU 4.0, commit
13854a988); the lab kernel has none, so a two-line ``LD_PRELOAD`` library answers CRIU's nftables probe (see
:data:`NFT_SHIM_SOURCE`). With both, ``criu check`` still says "Does not look good", for things this workload does
not use: no tun device and no veth pairs in the lab kernel, and its check of mremapping the vDSO, which cannot run
without a vDSO (``mmap(0) failed``). Dump, restore and lazy restore work.

In the Debian guest (the ``guest`` target, CRIU 4.2.1 from Debian's package) neither workaround is applied by
default (:meth:`CriuWorkload.guest_kernel_args`, :meth:`CriuWorkload.guest_request`); ``guest_workarounds`` puts
either back for a comparison. Every result says which were applied (``criu.workarounds``), from what the agent
saw: ``vdso=0`` on its kernel's command line, a preload library in CRIU's environment.

The process's region ("memfd from birth") is an unlinked tmpfs file by default (``region_kind="tmpfile"``): CRIU
3.17 treats it as a regular file and can be told it is external (``--external file[mnt_id:inode]``), so it writes
none of its pages; LUO preserves it like a memfd (a shmem file with no links) and hands it back as a memfd, which
``criu restore --inherit-fd`` maps in its place. A real memfd (``region_kind="memfd"``) cannot be skipped: CRIU
3.17 always dumps a memfd's contents (there is no external memfd), though the restore can still take it from LUO
(``--inherit-fd fd[N]:/memfd:NAME``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.lab.errors import InvalidCycle
from workbench.lab.workload import Workload, register
from workbench.lab.workloads.criu.downtime import downtime_breakdown
from workbench.lab.workloads.criu.program import build_nft_shim, build_workload

__all__ = ["CriuWorkload", "CriuFaults", "CRIU_KERNEL_ARGS", "CRIU_PATH", "WORKAROUNDS", "applied_workarounds"]

CRIU_PATH = "/usr/sbin/criu"
CRIU_KERNEL_ARGS = "vdso=0"
IMAGE_MODES = ("direct", "copy")
REGION_KINDS = ("tmpfile", "memfd")
KDAT_MODES = ("probe", "carry")
#: the workarounds CRIU 3.17 needs on the lab kernels: no vDSO, and the nftables shim preloaded into CRIU
WORKAROUNDS = ("vdso=0", "nft-shim")


def applied_workarounds(prepare: dict[str, Any]) -> list[str]:
    """Which of :data:`WORKAROUNDS` a cycle ran with, from the agent's state before the kexec (``prepare``): its
    kernel's command line (``cmdline_before``) and CRIU's preload library (``criu.preload``)."""
    applied = []
    if "vdso=0" in str(prepare.get("cmdline_before", "")).split():
        applied.append("vdso=0")
    if prepare.get("criu", {}).get("preload"):
        applied.append("nft-shim")
    return applied


@dataclass(frozen=True)
class CriuFaults:
    """What a CRIU cycle breaks on purpose: ``criu_min_version`` (refuse a CRIU older than this, e.g. ``"99.0"``),
    ``undumpable`` (the process makes itself undumpable, so ``criu dump`` fails), ``pid_taken`` (another process
    holds the workload's pid when ``criu restore`` runs), ``dump_args``/``restore_args`` (extra CRIU arguments),
    ``time_reads`` (diagnostics: read rates of a retrieved image)."""

    criu_min_version: str | None = None
    undumpable: bool = False
    pid_taken: bool = False
    dump_args: tuple[str, ...] = ()
    restore_args: tuple[str, ...] = ()
    time_reads: bool = False

    def to_request(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.criu_min_version is not None:
            out["criu_min_version"] = self.criu_min_version
        for name in ("undumpable", "pid_taken", "time_reads"):
            if getattr(self, name):
                out[name] = True
        for name in ("dump_args", "restore_args"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        return out


@register
@dataclass
class CriuWorkload(Workload):
    """A process with ``anon_size`` bytes of private anonymous memory and a ``memfd_region`` of shared memory
    (``region_kind`` ``tmpfile``: an unlinked tmpfs file CRIU skips, or ``memfd``), dumped by the CRIU binary
    ``criu``; ``images`` ``direct`` preserves CRIU's tmpfs image files as they are, ``copy`` copies them into
    memfds; ``criu_kdat`` ``probe`` lets CRIU probe the next kernel, ``carry`` hands it its probe cache through
    LUO (same kernel only); ``lazy_pages`` restores with ``criu lazy-pages``; ``seed`` is the fill pattern's;
    ``guest_workarounds``: which of :data:`WORKAROUNDS` a cycle in the Debian guest applies anyway (none by
    default: its CRIU 4.2.1 needs neither)."""

    name = "criu"
    agent = "workbench.lab.workloads.criu.agent:CriuAgent"
    phases_before_kexec = ("prepare", "load", "dump", "convert", "preserve")
    phases_after_kexec = ("retrieve", "images", "criu-init", "restore", "resume", "verify")
    crash_points = ("preserve",)
    targets = ("qemu", "guest")
    base_memory_mb = 768

    anon_size: int = 64 << 20
    memfd_region: int = 0
    region_kind: str = "tmpfile"
    images: str = "direct"
    criu: str = CRIU_PATH
    criu_kdat: str = "probe"
    lazy_pages: bool = False
    seed: int = 0
    criu_faults: CriuFaults = field(default_factory=CriuFaults)
    guest_workarounds: tuple[str, ...] = ()

    def validate(self) -> None:
        self.check_pages("anonymous size", self.anon_size, allow_zero=True)
        self.check_pages("memfd region", self.memfd_region, allow_zero=True)
        if self.anon_size + self.memfd_region == 0:
            raise InvalidCycle("the CRIU workload needs some memory: give anon_size or memfd_region")
        for name, value, choices in (
            ("images", self.images, IMAGE_MODES),
            ("criu_kdat", self.criu_kdat, KDAT_MODES),
            ("region_kind", self.region_kind, REGION_KINDS),
        ):
            if value not in choices:
                raise InvalidCycle(f"{name} is one of {', '.join(choices)}, not {value!r}")
        for name in self.guest_workarounds:
            if name not in WORKAROUNDS:
                raise InvalidCycle(f"guest workarounds are among {', '.join(WORKAROUNDS)}, not {name!r}")

    def data_bytes(self) -> int:
        return self.anon_size + self.memfd_region

    def timeout_bytes(self) -> int:
        return 3 * self.data_bytes()  # dump, convert and restore each go through all of it

    def memory_copies(self) -> int:
        return 3 if self.images == "copy" else 2  # the process, its images (and their memfd copies)

    def kernel_args(self) -> list[str]:
        return CRIU_KERNEL_ARGS.split()

    def guest_kernel_args(self) -> list[str]:
        """The kernel arguments of a cycle in the Debian guest: ``vdso=0`` only when ``guest_workarounds`` asks for
        it (CRIU 4.1 and later know the ``[vvar_vclock]`` mapping)."""
        return CRIU_KERNEL_ARGS.split() if "vdso=0" in self.guest_workarounds else []

    def guest_request(self, stage: Callable[[Path], str]) -> dict[str, Any]:
        """:meth:`request` for a cycle in the Debian guest, which cannot see the host's cache: the program (and the
        nftables shim, only when ``guest_workarounds`` asks for it: CRIU 4.0 and later run without nf_tables)
        staged into the cycle's share.

        :param stage: copies a host file where the guest sees it and returns its path in the guest"""
        fields = self.request()
        fields["workload_binary"] = stage(build_workload())
        fields["criu_preload"] = stage(build_nft_shim()) if "nft-shim" in self.guest_workarounds else None
        return fields

    def faults(self) -> dict[str, Any]:
        return self.criu_faults.to_request()

    def request(self) -> dict[str, Any]:
        return {
            "anon_size": self.anon_size,
            "memfd_region": self.memfd_region,
            "region_kind": self.region_kind,
            "images": self.images,
            "criu": self.criu,
            "criu_preload": str(build_nft_shim()),
            "criu_kdat": self.criu_kdat,
            "lazy_pages": self.lazy_pages,
            "seed": self.seed,
            "workload_binary": str(build_workload()),
        }

    def record_params(self) -> dict[str, Any]:
        out = super().record_params()
        out["criu_faults"] = self.criu_faults.to_request()
        out["guest_workarounds"] = list(self.guest_workarounds)
        return out

    def summarize(self, result, prepare, restore, marks) -> dict[str, Any]:
        """What every cycle reports plus the CRIU phases, the process's downtime and CRIU's own figures."""
        breakdown = downtime_breakdown(marks, prepare)
        regions = restore.get("regions", [])
        result = dict(result)
        result.update(
            {
                "workload": "criu",
                "verified": bool(restore.get("verified")) and bool(restore.get("finished")),
                "pages_checked": restore.get("pages_checked", 0),
                "downtime_s": breakdown.get("downtime_s"),
                "downtime_breakdown": breakdown.get("steps", {}),
                "freeze_to_kexec_s": breakdown.get("freeze_to_kexec_s"),
                "memfds": regions,
                "differing_pages": {str(r["memfd"]): r["differing_pages"] for r in regions if r["differing_count"]},
                "criu": {
                    "version": prepare.get("criu", {}).get("version"),
                    "check": prepare.get("criu", {}).get("check"),
                    "workarounds": applied_workarounds(prepare),
                    "images_mode": prepare.get("images_mode"),
                    "region_kind": prepare.get("region_kind"),
                    "anon_size": prepare.get("anon_size"),
                    "memfd_region": prepare.get("memfd_region"),
                    "image_bytes": prepare.get("image_bytes"),
                    "images": prepare.get("images", []),
                    "dump": prepare.get("criu", {}).get("dump"),
                    "restore": restore.get("criu", {}).get("restore"),
                    "seize_offset_s": prepare.get("criu", {}).get("seize_offset_s"),
                    "lazy_pages": restore.get("lazy_pages"),
                    "counter": {
                        "before_dump": prepare.get("status_at_dump", {}).get("counter"),
                        "after_restore": restore.get("counter_after_restore"),
                        "later": restore.get("counter_later"),
                    },
                    "status_after_restore": restore.get("status_after_restore"),
                    "workload_alive_at_end": restore.get("workload_alive_at_end"),
                    "token_map": "criu-tokens.json",
                },
            }
        )
        return result
