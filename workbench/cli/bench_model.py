"""``workbench bench model``: the blackout model, fitted, checked against held-out points and swept."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import click

from workbench.cli.common import SIZE, data_option, json_option, output_option, run_recorded

__all__ = ["model_cmd", "plain"]

_DEFAULT_SIZES = (32 << 20, 64 << 20, 128 << 20)


def plain(value: Any) -> Any:
    """``value`` as plain JSON, recursively: numpy scalars as Python ones, NaN and infinities as ``None``."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(frame) -> list[dict[str, Any]]:
    return plain(frame.to_dict("records"))


def _gather_points(run, from_records: bool, sizes, threads, repeats):
    """The fit points: stored ones only, or fresh measurements of this machine plus the stored lab cycles
    (which cannot be measured here without booting the lab VM)."""
    import pandas as pd

    from workbench.kernels.blackout import POINT_COLUMNS, measure_points, points_from_records

    stored = points_from_records(run.store)
    if from_records:
        if stored.empty:
            raise click.UsageError(
                "no stored points to fit: run `workbench bench model` (fresh measurements), "
                "`workbench bench conversion` or `workbench cycle` first"
            )
        return stored
    measured = measure_points(sizes, threads, repeats)[list(POINT_COLUMNS)].assign(source="measured")
    labs = stored[stored["source"].str.startswith("lab.cycle:")]
    return pd.concat([measured, labs], ignore_index=True)


def _distributed(scheduler: str, configs, params, single) -> dict[str, Any]:
    from workbench.kernels.sweep import bitwise_equal, sweep

    start = time.perf_counter()
    result = sweep(configs, params, scheduler)
    return {
        "scheduler": scheduler,
        "seconds": time.perf_counter() - start,
        "identical": bitwise_equal(result, single),
    }


@click.command("model")
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Also run the sweep on Dask: a scheduler address (tcp://host:8786), or 'local' for a local cluster.",
)
@click.option(
    "--configs", "n_configs", type=click.IntRange(1), default=10_000, show_default=True, help="Configurations to sweep."
)
@click.option("--from-records", is_flag=True, help="Fit on stored points only (no new measurement).")
@click.option(
    "--size",
    "sizes",
    type=SIZE,
    multiple=True,
    help="Size to measure (a multiple of 2M); repeat (default 32M 64M 128M).",
)
@click.option("--threads", "thread_counts", type=click.IntRange(1), multiple=True, help="Threads to measure; repeat.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True, help="Best of this many runs.")
@click.option("--predict-threads", type=click.IntRange(1), default=1, show_default=True, help="Threads of the host.")
@click.option("--fraction", type=click.FloatRange(0, 1), default=1.0, show_default=True, help="Memory preserved.")
@json_option
@data_option
@output_option
def model_cmd(
    scheduler,
    n_configs,
    from_records,
    sizes,
    thread_counts,
    repeats,
    predict_threads,
    fraction,
    as_json,
    data_dir,
    output,
) -> None:
    """Fits the blackout model (conversion, preserve, kexec, boot with KHO, restore) to measured points, reports
    its error on held-out sizes, the speed-up of the numba sweep over the plain-Python reference, and predicted
    blackouts for 1, 2 and 4 TiB hosts with 4 KiB, 2 MiB and 1 GiB folios."""
    from workbench.kernels.blackout import (
        blackout_phases,
        compare_speed,
        evaluate,
        fit,
        holdout_error,
        prediction_table,
        random_configs,
    )

    params_in = {
        "configs": n_configs,
        "from_records": from_records,
        "sizes": list(sizes or _DEFAULT_SIZES),
        "threads": list(thread_counts or dict.fromkeys((1, len(os.sched_getaffinity(0))))),
        "repeats": repeats,
        "predict_threads": predict_threads,
        "fraction": fraction,
        "scheduler": scheduler,
    }

    def body(run) -> dict[str, Any]:
        try:
            points = _gather_points(run, from_records, params_in["sizes"], params_in["threads"], repeats)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        params = fit(points)
        holdout = holdout_error(points)
        speed = compare_speed(params, n_configs)
        predictions = prediction_table(params, threads=predict_threads, preserved_fraction=fraction)
        summary: dict[str, Any] = {
            "points": len(points),
            "points_by_phase": plain(points["phase"].value_counts().to_dict()),
            "sources": sorted(set(points["source"])),
            **plain(speed),
            "distributed": None,
            "holdout": _records(holdout.per_phase),
            "params": params.to_dict(),
            "unfitted": params.unfitted(),
            "blackout_phases": blackout_phases(),
            "predictions": _records(predictions),
        }
        if scheduler:
            configs = random_configs(n_configs)
            summary["distributed"] = plain(_distributed(scheduler, configs, params, evaluate(configs, params)))
        summary["tables"] = {"points": points, "holdout": holdout.points, "predictions": predictions}
        return summary

    summary = run_recorded("bench.model", params_in, body, data_dir=data_dir, output=output, as_json=as_json)
    if not as_json:
        import pandas as pd

        from workbench.cli.output import emit_frame

        columns = ["mem", "folio", "strategy", "threads", "convert_s", "blackout_s", "blackout_lower_bound_s"]
        columns += ["dominant_phase", "dominant_share"]
        emit_frame(pd.DataFrame(summary["predictions"])[columns])
