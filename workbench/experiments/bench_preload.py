"""``bench.preload``: the price of memory that is a memfd from birth on a real program, with and without the
LD_PRELOAD library (:mod:`workbench.lab.preload_bench`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.experiments.recording import record_summary
from workbench.experiments.registry import Experiment, register
from workbench.records import RecordStore

__all__ = ["record_bench_preload", "EXPERIMENT"]


def record_bench_preload(
    store: RecordStore,
    params: dict[str, Any],
    *,
    output: str | os.PathLike[str] | None = None,
    on_server: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Runs the benchmark ``params`` describe (:meth:`~workbench.lab.preload_bench.PreloadBench.as_dict`) into a
    ``bench.preload`` record; returns its summary and JSON file. ``on_server(row)`` is called as each server ends.

    :raises PreloadError: bad parameters (before anything is recorded), or the benchmark failed (recorded)"""
    from workbench.lab.preload_bench import PreloadBench, run_preload_bench

    bench = PreloadBench(**params)
    bench.validate()
    return record_summary(
        store,
        "bench.preload",
        bench.as_dict(),
        lambda run: run_preload_bench(bench, on_server=on_server),
        output=output,
    )


EXPERIMENT = register(
    Experiment(
        "bench.preload",
        lambda store, params: record_bench_preload(store, params)[0]["record_id"],
        exact=("program", "repeats", "data_ok"),
        measured=("tests.*.rps.plain", "tests.*.rps.preload", "birth_share"),
        tolerance=1.0,  # redis-benchmark on a shared 2-core machine: one run's throughput varies up to two-fold
        accepts=lambda params: {"program", "tests", "requests", "repeats"} <= set(params),
        describe="a real program's throughput and page faults with and without memfds from birth",
    )
)
