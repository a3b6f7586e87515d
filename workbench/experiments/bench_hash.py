"""``bench.hash``: page fingerprint throughput against a plain read of the same memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench.experiments.recording import record_summary
from workbench.experiments.registry import Experiment, register
from workbench.records import RecordStore

__all__ = ["record_bench_hash", "EXPERIMENT"]


def record_bench_hash(
    store: RecordStore, params: dict[str, Any], *, output: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], Path]:
    """Runs the hash benchmark with ``params`` (``size``: bytes, ``repeats``) into a ``bench.hash`` record;
    returns its summary and JSON file."""
    from workbench.kernels.pagehash import benchmark

    return record_summary(
        store, "bench.hash", params, lambda run: benchmark(params["size"], params["repeats"]), output=output
    )


EXPERIMENT = register(
    Experiment(
        "bench.hash",
        lambda store, params: record_bench_hash(store, params)[0]["record_id"],
        exact=("algorithm", "size", "pages", "repeats"),
        measured=("*_s", "*_per_s", "ratio_*"),
        tolerance=0.5,
        accepts=lambda params: {"size", "repeats"} <= set(params),
        describe="XXH3 page fingerprints against a plain read",
    )
)
