"""The runtime price of memfd from birth: the counters, the summary, and short real runs of Debian's redis-server
with and without the library (through the library and through ``workbench bench preload``)."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from workbench.cli.bench import bench as bench_group
from workbench.lab.preload import PreloadError
from workbench.lab.preload_bench import (
    PreloadBench,
    ProcessCounters,
    process_counters,
    run_preload_bench,
    summarize_preload_runs,
)

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-benchmark") is None,
    reason="redis-server/redis-tools not installed (workbench/lab/scripts/install-system-deps.sh installs them)",
)


def test_counters_see_this_process_fault_in_new_memory():
    before = process_counters(os.getpid())
    buffer = bytearray(64 << 20)
    for offset in range(0, len(buffer), 4096):
        buffer[offset] = 1
    spent = process_counters(os.getpid()) - before
    assert spent.minflt >= (64 << 20) // 4096 // 2  # at least one fault per two pages (THP may merge some)
    assert spent.majflt >= 0 and spent.cpu_s >= 0
    assert isinstance(spent, ProcessCounters)


def test_counters_of_a_gone_process_say_so():
    with pytest.raises(PreloadError, match="has exited"):
        process_counters(2**22 + 12345)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"program": "nginx"}, "--program"),
        ({"tests": ["set", "flushall"]}, "--tests"),
        ({"repeats": 0}, "--repeats"),
        ({"value_size": 0}, "--value-size"),
        ({"threshold": 512}, "--threshold"),
    ],
)
def test_bad_parameters_are_named(change, message):
    with pytest.raises(PreloadError, match=message):
        PreloadBench(**change).validate()


def test_summary_gives_medians_and_ratios():
    runs = pd.DataFrame(
        [
            {
                "repeat": r,
                "mode": m,
                "test": "set",
                "rps": rps,
                "p50_ms": 1.0,
                "minflt": flt,
                "majflt": 0,
                "server_cpu_s": 1.0,
            }
            for r, m, rps, flt in [
                (0, "plain", 100.0, 10),
                (0, "preload", 80.0, 30),
                (1, "preload", 90.0, 20),
                (1, "plain", 120.0, 10),
                (2, "plain", 110.0, 10),
                (2, "preload", 70.0, 40),
            ]
        ]
    )
    servers = pd.DataFrame(
        [
            {
                "repeat": r,
                "mode": m,
                "rss_bytes": 100,
                "birth_memfds": 4 if m == "preload" else 0,
                "birth_resident_bytes": 60 if m == "preload" else 0,
                "data_ok": True,
            }
            for r in range(3)
            for m in ("plain", "preload")
        ]
    )
    summary = summarize_preload_runs(runs, servers)
    rps = summary["tests"]["set"]["rps"]
    assert (rps["plain"], rps["preload"], rps["ratio"]) == (110.0, 80.0, 80.0 / 110.0)
    assert rps["paired_ratio"] == {"median": 0.75, "low": 70.0 / 110.0, "high": 0.8}
    assert summary["tests"]["set"]["minflt"]["ratio"] == 3.0
    assert summary["tests"]["set"]["majflt"]["ratio"] is None
    assert summary["birth_share"] == 0.6 and summary["repeats"] == 3 and summary["data_ok"] is True
    servers.loc[servers["mode"] == "preload", "birth_memfds"] = 0
    assert summarize_preload_runs(runs, servers)["data_ok"] is False  # the library did nothing: not a result


@needs_redis
def test_redis_runs_with_and_without_the_library_side_by_side():
    bench = PreloadBench(tests=["set", "get"], requests=20_000, keyspace=20_000, repeats=2)
    summary = run_preload_bench(bench)
    runs, servers = summary["tables"]["runs"], summary["tables"]["servers"]
    assert list(servers["mode"]) == ["plain", "preload", "preload", "plain"]  # interleaved
    assert len(runs) == 8 and (runs["rps"] > 0).all()
    assert servers["data_ok"].all() and (servers["keys"] > 1).all()
    assert (servers.loc[servers["mode"] == "plain", "birth_memfds"] == 0).all()
    assert (servers.loc[servers["mode"] == "preload", "birth_memfds"] > 0).all()
    assert summary["data_ok"] and 0 < summary["birth_share"] <= 1
    assert summary["tests"]["set"]["minflt"]["plain"] > 0
    assert "jemalloc" in summary["program_version"]


@needs_redis
def test_the_command_records_the_run(tmp_path):
    args = ["preload", "--program", "redis-server", "--repeats", "1", "--requests", "5000"]
    result = CliRunner().invoke(bench_group, [*args, "--json", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["record_id"] and summary["data_ok"] is True
    from workbench.records import open_store

    store = open_store(tmp_path)
    assert store.get(summary["record_id"]).kind == "bench.preload"
    assert len(store.table(summary["record_id"], "runs")) == 4


def test_the_command_names_a_bad_program(tmp_path):
    result = CliRunner().invoke(bench_group, ["preload", "--program", "nginx", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "--program 'nginx' is not one of redis-server" in result.output
