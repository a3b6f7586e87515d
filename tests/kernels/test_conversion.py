"""Anonymous memory into memfds: every strategy's result verified page by page, damage caught, reasons given."""

import dataclasses
import json
import os
from pathlib import Path

import numba
import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.kernels import conversion
from workbench.kernels.conversion import (
    COLUMNS,
    STRATEGIES,
    Options,
    RemoteSource,
    hugetlb_unavailable,
    make_source,
    measure_strategy,
    run_conversion,
    thp_shmem_unavailable,
    verify_memfd,
)
from workbench.kernels.memfd_syscalls import buffer_address
from workbench.kernels.pagehash import PAGE_SIZE

SIZE = 8 << 20
THREADS = sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})


@pytest.fixture(scope="module")
def results():
    return run_conversion([SIZE], THREADS, repeats=1)


@pytest.fixture(scope="module")
def source():
    source = make_source(SIZE)
    yield source
    source.close()


def test_every_strategy_gives_rows_with_the_columns(results):
    frame, _ = results
    assert list(frame.columns) == COLUMNS
    assert set(frame["strategy"]) == set(STRATEGIES)


def test_every_available_strategy_verifies(results):
    frame, _ = results
    available = frame[frame["available"]]
    assert len(available) > 0
    unverified = available[~available["verified"]]
    assert unverified.empty, unverified[["strategy", "copier", "threads", "pipe_size", "reason"]].to_string()
    assert (available["mismatched_pages"] == 0).all()
    assert (available["first_mismatched_page"] == -1).all()
    assert (available["seconds"] >= 0).all()
    assert (available["bytes_per_s"] > 0).all()


def test_copy_strategies_run_with_both_copiers_and_every_thread_count(results):
    frame, _ = results
    fresh = frame[frame["strategy"] == "copy-fresh"]
    assert set(zip(fresh["copier"], fresh["threads"], strict=True)) == {("numpy", 1)} | {("numba", t) for t in THREADS}


def test_pipe_strategies_record_the_pipe_size_obtained(results):
    frame, _ = results
    piped = frame[frame["strategy"].isin(["vmsplice-splice", "vmsplice-gift"])]
    assert set(piped["pipe_size"]) == set(conversion.DEFAULT_PIPE_SIZES)
    assert (piped["pipe_size_obtained"] >= piped["pipe_size"]).all()


def test_allocation_time_is_separate_where_it_can_be(results):
    frame, _ = results
    for strategy in ("copy-fallocate", "copy-populate"):
        rows = frame[frame["strategy"] == strategy]
        assert (rows["alloc_s"] > 0).all()
        assert (rows["alloc_s"] + rows["copy_s"] <= rows["seconds"] * 1.0001).all()
    assert frame.loc[frame["strategy"] == "copy-fresh", "alloc_s"].isna().all()


def test_limits_and_ratios(results):
    frame, limits = results
    for key in ("memcpy_bytes_per_s", "fault_pages_per_s", "fault_pages_per_s_memfd_fallocate"):
        assert limits[key] > 0
    available = frame[frame["available"]]
    np.testing.assert_allclose(available["ratio_to_memcpy"], available["bytes_per_s"] / limits["memcpy_bytes_per_s"])


def test_unavailable_strategies_give_a_reason(results):
    frame, _ = results
    unavailable = frame[~frame["available"]]
    assert (unavailable["reason"].str.len() > 0).all()
    assert not unavailable["verified"].any()
    for name, check in (("thp-shmem", thp_shmem_unavailable), ("hugetlb", hugetlb_unavailable)):
        rows = frame[frame["strategy"] == name]
        reason = check(SIZE)
        assert (rows["available"] == (reason is None)).all()
        if reason is not None:
            assert (rows["reason"] == reason).all()


def test_source_is_touched_anonymous_private_memory(source):
    address = buffer_address(source.mem)
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if start <= address < end:
            assert fields[1] == "rw-p", line
            assert fields[4] == "0" and len(fields) == 5, f"not anonymous: {line}"
            break
    else:
        pytest.fail(f"address {address:#x} not in /proc/self/maps")
    assert len(np.unique(source.hashes)) == SIZE // PAGE_SIZE


def _overwrite_page(page: int):
    def tamper(fd: int) -> None:
        original = os.pread(fd, PAGE_SIZE, page * PAGE_SIZE)
        os.pwrite(fd, bytes([original[100] ^ 0x10]), page * PAGE_SIZE + 100)

    return tamper


@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("copy-fresh", Options("numpy")),
        ("copy-populate", Options("numba", THREADS[-1])),
        ("write", Options()),
        ("pwrite", Options(threads=THREADS[-1])),
        ("vmsplice-gift", Options(pipe_size=1 << 16)),
        ("memfd-from-birth", Options("none")),
    ],
)
def test_a_corrupted_memfd_page_is_reported(source, strategy, options):
    row = measure_strategy(strategy, source, options, repeats=1, tamper=_overwrite_page(37))
    assert row["available"]
    assert not row["verified"]
    assert row["mismatched_pages"] == 1
    assert row["first_mismatched_page"] == 37


def test_a_corrupted_page_read_from_another_process_is_reported():
    remote = RemoteSource.start(SIZE)
    try:
        clean = measure_strategy("process_vm_readv", remote, Options(threads=THREADS[-1]), repeats=1)
        damaged = measure_strategy("process_vm_readv", remote, Options(), repeats=1, tamper=_overwrite_page(0))
    finally:
        remote.close()
    assert clean["verified"]
    assert (damaged["verified"], damaged["mismatched_pages"], damaged["first_mismatched_page"]) == (False, 1, 0)


def test_missing_pages_are_reported(source):
    row = measure_strategy("write", source, Options(), repeats=1, tamper=lambda fd: os.ftruncate(fd, SIZE // 2))
    assert not row["verified"]
    assert row["mismatched_pages"] == SIZE // PAGE_SIZE // 2
    assert row["first_mismatched_page"] == SIZE // PAGE_SIZE // 2


def test_verify_memfd_compares_contents(source):
    fd = os.memfd_create("test")
    try:
        os.write(fd, source.mem)
        assert len(verify_memfd(fd, source.hashes)) == 0
        os.pwrite(fd, b"\0" * 8, 3 * PAGE_SIZE + 8)
        assert list(verify_memfd(fd, source.hashes)) == [3]
    finally:
        os.close(fd)


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
    monkeypatch.setattr(conversion, "_SYSFS_THP", _fake_thp(tmp_path, top, per_size))
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
    monkeypatch.setattr(conversion, "_SYSFS_HUGETLB", _fake_hugetlb(tmp_path, total, free, reserved))
    monkeypatch.setattr(conversion, "_meminfo_kib", lambda field: 2048)
    assert hugetlb_unavailable(SIZE) == reason


def test_unavailable_strategy_rows_carry_the_reason(monkeypatch):
    reason = "no free hugetlb pages: nr_hugepages=0 (2048 kB pages)"
    monkeypatch.setitem(STRATEGIES, "hugetlb", dataclasses.replace(STRATEGIES["hugetlb"], unavailable=lambda s: reason))
    frame, _ = run_conversion([SIZE], [1], ["hugetlb"], repeats=1)
    assert len(frame) == 2
    assert not frame["available"].any()
    assert (frame["reason"] == reason).all()
    assert frame["bytes_per_s"].isna().all()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown strategies"):
        run_conversion([SIZE], [1], ["teleport"])
    with pytest.raises(ValueError, match="multiples of 4096"):
        run_conversion([SIZE + 1], [1])
    with pytest.raises(ValueError, match="thread counts"):
        run_conversion([SIZE], [numba.config.NUMBA_NUM_THREADS + 1])


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_slices_cover_the_size_in_whole_pages(parts):
    size = 37 * PAGE_SIZE
    slices = conversion._slices(size, parts)
    assert len(slices) == parts
    assert slices[0][0] == 0
    assert all(offset % PAGE_SIZE == 0 and length % PAGE_SIZE == 0 for offset, length in slices)
    assert all(a[0] + a[1] == b[0] for a, b in zip(slices, slices[1:], strict=False))
    assert sum(length for _, length in slices) == size


def test_cli_prints_json_with_the_required_fields(tmp_path):
    args = ["bench", "conversion", "--size", "8M", "--threads", "1", "--repeats", "1", "--json"]
    result = CliRunner().invoke(main, [*args, "--data", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["memcpy_bytes_per_s"] > 0
    assert summary["fault_pages_per_s"] > 0
    assert summary["fault_pages_per_s_memfd_fallocate"] > 0
    assert summary["all_verified"] is True
    assert summary["record_id"]
    assert set(summary["strategies"]) == set(STRATEGIES)
    for name, entry in summary["strategies"].items():
        assert {"bytes_per_s", "ratio_to_memcpy", "available", "verified", "reason"} <= set(entry)
        if entry["available"] and name != "memfd-from-birth":
            assert entry["bytes_per_s"] > 0 and entry["ratio_to_memcpy"] > 0
            assert entry["verified"] is True
        if not entry["available"]:
            assert entry["reason"] and summary["unavailable"][name] == entry["reason"]
    # no time at all is an infinite rate, which JSON cannot hold
    assert summary["strategies"]["memfd-from-birth"]["bytes_per_s"] is None
    assert len(summary["rows"]) >= len(STRATEGIES)


def test_cli_refuses_an_unknown_strategy(tmp_path):
    args = ["bench", "conversion", "--size", "8M", "--strategy", "teleport", "--data", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "unknown strategies" in result.output


def test_first_touch_and_memcpy_seconds_time_this_machine():
    seconds, all_huge = conversion.first_touch_seconds(4 << 20, threads=THREADS[-1])
    assert seconds > 0 and all_huge is False  # advised against transparent huge pages
    huge_seconds, _ = conversion.first_touch_seconds(4 << 20, huge=True)
    assert huge_seconds > 0
    assert conversion.memcpy_seconds(4 << 20, threads=THREADS[-1]) > 0


def test_memcpy_seconds_checks_the_copy(monkeypatch):
    monkeypatch.setattr(conversion, "_parallel_copy", lambda dst, src: None)
    with pytest.raises(RuntimeError, match="wrong bytes"):
        conversion.memcpy_seconds(1 << 20)


def test_rate_measurements_refuse_bad_arguments():
    with pytest.raises(ValueError, match="multiple of"):
        conversion.first_touch_seconds(PAGE_SIZE + 1)
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        conversion.memcpy_seconds(PAGE_SIZE, threads=0)
