"""The strategies' reasons for not running here (read from sysfs and /proc/meminfo), and how they share a size out
over threads. Their results are verified in test_bench.py."""

from pathlib import Path

import pytest

from tests.kernels.conversion.helpers import SIZE
from workbench.kernels.conversion import strategies
from workbench.kernels.conversion.strategies import hugetlb_unavailable, thp_shmem_unavailable
from workbench.kernels.pagehash import PAGE_SIZE


def _fake_thp(tmp_path: Path, top: str, per_size: str) -> Path:
    def setting(choices: str, chosen: str) -> str:
        return " ".join(f"[{choice}]" if choice == chosen else choice for choice in choices.split()) + "\n"

    (tmp_path / "hugepages-2048kB").mkdir(parents=True)
    (tmp_path / "shmem_enabled").write_text(setting("always within_size advise never deny force", top))
    (tmp_path / "hugepages-2048kB" / "shmem_enabled").write_text(
        setting("always inherit within_size advise never", per_size)
    )
    (tmp_path / "hpage_pmd_size").write_text("2097152\n")
    return tmp_path


@pytest.mark.parametrize(
    ("top", "per_size", "reason"),
    [
        ("never", "inherit", "shmem_enabled is never (hugepages-2048kB/shmem_enabled is inherit)"),
        ("deny", "inherit", "shmem_enabled is deny (hugepages-2048kB/shmem_enabled is inherit)"),
        ("always", "never", "shmem_enabled is always (hugepages-2048kB/shmem_enabled is never)"),
        ("never", "advise", None),
        ("advise", "inherit", None),
    ],
)
def test_thp_shmem_reason(tmp_path, monkeypatch, top, per_size, reason):
    monkeypatch.setattr(strategies, "_SYSFS_THP", _fake_thp(tmp_path, top, per_size))
    assert thp_shmem_unavailable(SIZE) == reason


def _fake_hugetlb(tmp_path: Path, total: int, free: int, reserved: int = 0) -> Path:
    folder = tmp_path / "hugepages-2048kB"
    folder.mkdir(parents=True)
    for name, value in (("nr_hugepages", total), ("free_hugepages", free), ("resv_hugepages", reserved)):
        (folder / name).write_text(f"{value}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("total", "free", "reserved", "reason"),
    [
        (0, 0, 0, "no free hugetlb pages: nr_hugepages=0 (2048 kB pages)"),
        (4, 4, 2, "not enough free hugetlb pages: 2 of nr_hugepages=4 free, 4 needed"),
        (8, 4, 0, None),
    ],
)
def test_hugetlb_reason(tmp_path, monkeypatch, total, free, reserved, reason):
    monkeypatch.setattr(strategies, "_SYSFS_HUGETLB", _fake_hugetlb(tmp_path, total, free, reserved))
    monkeypatch.setattr(strategies, "meminfo_kib", lambda field: 2048)
    assert hugetlb_unavailable(SIZE) == reason


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_slices_cover_the_size_in_whole_pages(parts):
    size = 37 * PAGE_SIZE
    slices = strategies._slices(size, parts)
    assert len(slices) == parts
    assert slices[0][0] == 0
    assert all(offset % PAGE_SIZE == 0 and length % PAGE_SIZE == 0 for offset, length in slices)
    assert all(a[0] + a[1] == b[0] for a, b in zip(slices, slices[1:], strict=False))
    assert sum(length for _, length in slices) == size
