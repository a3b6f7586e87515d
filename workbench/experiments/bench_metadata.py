"""``bench.metadata``: the preserved-memory metadata of a synthetic host, in every structure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench.experiments.recording import record_summary
from workbench.experiments.registry import Experiment, register
from workbench.records import RecordStore

__all__ = ["record_bench_metadata", "metadata_params", "EXPERIMENT"]

_WORKLOAD_FIELDS = ("memory_bytes", "folio_mix", "sparsity", "fragmentation", "memfds", "seed")


def metadata_params(workload) -> dict[str, Any]:
    """The record parameters of a :class:`~workbench.abi.design_space.Workload`."""
    return workload.params() | {"memory": workload.memory_bytes}


def record_bench_metadata(
    store: RecordStore, params: dict[str, Any], *, output: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], Path]:
    """Runs the metadata benchmark for the synthetic host ``params`` describes (:func:`metadata_params`) into a
    ``bench.metadata`` record; returns its summary and JSON file."""
    from workbench.abi.design_space import Workload, benchmark

    values = {key: params[key] for key in _WORKLOAD_FIELDS}
    values["folio_mix"] = {int(size): share for size, share in values["folio_mix"].items()}
    workload = Workload(**values)
    return record_summary(store, "bench.metadata", params, lambda run: benchmark(workload), output=output)


EXPERIMENT = register(
    Experiment(
        "bench.metadata",
        lambda store, params: record_bench_metadata(store, params)[0]["record_id"],
        exact=(
            "workload.*",
            "preserved_*",
            "radix_metadata_bytes",
            "radix_nodes_per_level.*",
            "structures.*.metadata_bytes",
            "structures.*.metadata_pages",
            "structures.*.bytes_per_preserved_page",
            "structures.*.pages_touched",
        ),
        measured=("decode_s", "encode_s", "structures.*.encode_s", "structures.*.decode_s"),  # rates follow from these
        tolerance=1.0,  # single-shot timings of milliseconds; on a shared 2-core machine they vary two-fold
        accepts=lambda params: set(_WORKLOAD_FIELDS) <= set(params),
        describe="KHO radix tree against other preserved-memory maps, synthetic host",
    )
)
