"""Huge pages for the huge-page strategies, set up at run time by root (the lab VM's agent): shmem transparent
huge pages on advice (``/sys/kernel/mm/transparent_hugepage/shmem_enabled``) and a pool of hugetlb pages of the
default size (``/proc/sys/vm/nr_hugepages``). :func:`prepare_huge_pages` does both as a set of strategies needs
them and says what it found and left."""

from __future__ import annotations

from pathlib import Path

from workbench.kernels.conversion.memory import meminfo_kib

__all__ = [
    "SHMEM_ENABLED",
    "NR_HUGEPAGES",
    "enable_shmem_thp",
    "hugetlb_page_size",
    "prepare_huge_pages",
    "reserve_hugetlb_pages",
]

SHMEM_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
"""The global shmem THP policy (``always within_size advise [never] deny force``)."""
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
"""The size of the default-size hugetlb pool, in pages."""


def _selected(text: str) -> str:
    return text[text.index("[") + 1 : text.index("]")] if "[" in text else text.strip()


def enable_shmem_thp(setting: Path = SHMEM_ENABLED) -> dict[str, str]:
    """Sets the shmem THP policy to ``advise`` (a mapping advised ``MADV_HUGEPAGE`` gets PMD-sized folios) when
    it is ``never`` or ``deny``; returns the policy ``before`` and ``after``.

    :param setting: the sysfs file (the default is the kernel's)"""
    before = _selected(setting.read_text())
    if before in ("never", "deny"):
        setting.write_text("advise")
    return {"before": before, "after": _selected(setting.read_text())}


def hugetlb_page_size() -> int:
    """The default hugetlb page size in bytes (0 when the kernel has no hugetlb support)."""
    return meminfo_kib("Hugepagesize") * 1024


def reserve_hugetlb_pages(extra: int, pool: Path = NR_HUGEPAGES) -> dict[str, int]:
    """Grows the default-size hugetlb pool by ``extra`` pages; returns the pool ``before``, ``requested`` and
    ``after`` (the kernel gives fewer when it cannot find that many free huge pages).

    :param extra: huge pages to add
    :param pool: the pool's sysctl file (the default is the kernel's)"""
    before = int(pool.read_text())
    pool.write_text(str(before + extra))
    return {"before": before, "requested": before + extra, "after": int(pool.read_text())}


def prepare_huge_pages(strategies: list[str], size: int, spare_pages: int = 1) -> dict[str, dict]:
    """What the huge-page strategies among ``strategies`` need to convert ``size`` bytes each: shmem THP on
    advice for ``thp-shmem``, ``size`` bytes of hugetlb pages per ``hugetlb`` entry plus ``spare_pages`` more;
    returns what was set, by setting (``shmem_enabled``, ``nr_hugepages``).

    :param strategies: the strategy of each memfd, one entry per memfd
    :param size: bytes per memfd
    :param spare_pages: hugetlb pages for something else (a preservation probe)"""
    done: dict[str, dict] = {}
    if "thp-shmem" in strategies and SHMEM_ENABLED.exists():
        done["shmem_enabled"] = enable_shmem_thp()
    hugetlb_memfds = strategies.count("hugetlb")
    page = hugetlb_page_size()
    if hugetlb_memfds and page:
        done["nr_hugepages"] = reserve_hugetlb_pages(hugetlb_memfds * -(-size // page) + spare_pages)
    return done
