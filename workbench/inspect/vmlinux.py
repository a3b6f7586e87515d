"""Finding a kernel's vmlinux: what a vmlinux says about itself (GNU build id, release) and where to look for the
one that matches a running kernel or a dump (the standard debug-info locations, the lab kernel cache)."""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

from workbench.elf import ElfFile

__all__ = ["elf_build_id", "vmlinux_release", "find_vmlinux"]

_BANNER = b"Linux version "


def elf_build_id(path: str | os.PathLike[str]) -> str | None:
    """The GNU build id (hex) of an ELF file, from its ``SHT_NOTE`` sections or ``PT_NOTE`` segments; ``None``
    when it has none.

    :param path: an ELF file, e.g. a vmlinux
    :raises ValueError: not a 64- or 32-bit ELF file, or a damaged one (:class:`workbench.elf.ElfError`)
    """
    with ElfFile(path) as elf:
        return elf.build_id()


def vmlinux_release(path: str | os.PathLike[str]) -> str | None:
    """The release in a vmlinux's ``linux_banner`` ("Linux version <release> (...)"), or ``None``.

    :param path: a vmlinux (any file: it is searched for the banner's text)
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = mm.find(_BANNER)
        while pos >= 0:
            tail = mm[pos + len(_BANNER) : pos + len(_BANNER) + 80]
            release = tail.split(b" ", 1)[0]
            if release and b"%" not in release and b"(" in tail:
                return release.decode("ascii", "replace")
            pos = mm.find(_BANNER, pos + len(_BANNER))
    return None


def _standard_vmlinux_paths(release: str | None, build_id: str | None) -> list[Path]:
    paths: list[Path] = []
    if build_id and len(build_id) > 2:
        paths.append(Path(f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"))
    if release:
        paths += [
            Path(f"/usr/lib/debug/boot/vmlinux-{release}"),
            Path(f"/usr/lib/debug/lib/modules/{release}/vmlinux"),
            Path(f"/usr/lib/debug/vmlinux-{release}"),
            Path(f"/boot/vmlinux-{release}"),
            Path(f"/lib/modules/{release}/build/vmlinux"),
            Path(f"/lib/modules/{release}/vmlinux"),
        ]
    with contextlib.suppress(Exception):
        from workbench.lab.kernel import cache_root

        kernels = cache_root() / "kernels"
        if kernels.is_dir():
            paths += sorted(kernels.glob("*/vmlinux"))
    return paths


def find_vmlinux(build_id: str | None, release: str | None = None, extra: Iterable[Path] = ()) -> Path | None:
    """The first vmlinux whose build id is ``build_id``: ``extra`` paths, the standard debug-info locations for
    ``release`` (``/usr/lib/debug/...``, ``/boot``, ``/lib/modules/<release>``) and the lab kernel cache.

    Without a build id to compare, the first existing file of the standard locations for ``release`` is taken.

    :param build_id: the GNU build id (hex) the kernel's VMCOREINFO gives, if any
    :param release: the kernel release (``OSRELEASE``), if known
    :param extra: paths to try first
    """
    for path in [*extra, *_standard_vmlinux_paths(release, build_id)]:
        if not path.is_file():
            continue
        if build_id is None:
            if release and release in str(path):
                return path
            continue
        with contextlib.suppress(OSError, ValueError):
            if elf_build_id(path) == build_id:
                return path
    return None
