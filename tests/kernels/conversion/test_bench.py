"""The conversion benchmark: every strategy's result verified page by page, damage caught, reasons given, and the
``workbench bench conversion`` command that runs it."""

import dataclasses
import json
import os

import numba
import numpy as np
import pytest
from click.testing import CliRunner

from tests.kernels.conversion.helpers import SIZE, THREADS, overwrite_page
from workbench.cli import main
from workbench.kernels.conversion.bench import COLUMNS, measure_strategy, run_conversion, verify_memfd
from workbench.kernels.conversion.sources import RemoteSource
from workbench.kernels.conversion.strategies import (
    DEFAULT_PIPE_SIZES,
    STRATEGIES,
    Options,
    hugetlb_unavailable,
    thp_shmem_unavailable,
)
from workbench.kernels.pagehash import PAGE_SIZE


@pytest.fixture(scope="module")
def results():
    return run_conversion([SIZE], THREADS, repeats=1)


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
    assert set(piped["pipe_size"]) == set(DEFAULT_PIPE_SIZES)
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
    row = measure_strategy(strategy, source, options, repeats=1, tamper=overwrite_page(37))
    assert row["available"]
    assert not row["verified"]
    assert row["mismatched_pages"] == 1
    assert row["first_mismatched_page"] == 37


def test_a_corrupted_page_read_from_another_process_is_reported():
    remote = RemoteSource.start(SIZE)
    try:
        clean = measure_strategy("process_vm_readv", remote, Options(threads=THREADS[-1]), repeats=1)
        damaged = measure_strategy("process_vm_readv", remote, Options(), repeats=1, tamper=overwrite_page(0))
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
