"""The blackout of a live update: a model calibrated on measurements of this workbench, predicting hosts far larger
than the machines it was measured on. One module per capability:

* :mod:`~workbench.kernels.blackout.model` — the phases, their parameters (:class:`ModelParams`), the numba
  evaluation of many host configurations (:class:`Configs`), which phases count as blackout, predictions
* :mod:`~workbench.kernels.blackout.fitting` — the fit points' format, fitting the parameters, the hold-out error
* :mod:`~workbench.kernels.blackout.points` — fit points measured on this machine (with
  :mod:`workbench.kernels.conversion`), from the record store's conversions and lab cycles, or synthetic

The sweep of many configurations on Dask is :mod:`workbench.kernels.sweep`.
"""

from workbench.kernels.blackout.fitting import (
    ANATOMY_PHASES,
    BOOT_PHASES,
    OBSERVED_PHASES,
    POINT_COLUMNS,
    HoldoutReport,
    fit,
    holdout_error,
    predict_points,
    validate_points,
)
from workbench.kernels.blackout.model import (
    BASE_PAGE,
    FROM_BIRTH,
    HUGE_PAGE,
    PHASES,
    STRATEGIES,
    Configs,
    Evaluation,
    ModelParams,
    blackout_mask,
    blackout_phases,
    compare_speed,
    evaluate,
    evaluate_packed,
    evaluate_reference,
    prediction_table,
    random_configs,
)
from workbench.kernels.blackout.points import (
    conversion_points,
    cycle_points,
    lab_points,
    measure_points,
    points_from_records,
    synthetic_points,
)

__all__ = [
    "BASE_PAGE",
    "HUGE_PAGE",
    "STRATEGIES",
    "FROM_BIRTH",
    "PHASES",
    "Configs",
    "ModelParams",
    "Evaluation",
    "blackout_mask",
    "blackout_phases",
    "evaluate",
    "evaluate_packed",
    "evaluate_reference",
    "random_configs",
    "compare_speed",
    "prediction_table",
    "OBSERVED_PHASES",
    "BOOT_PHASES",
    "ANATOMY_PHASES",
    "POINT_COLUMNS",
    "HoldoutReport",
    "validate_points",
    "predict_points",
    "fit",
    "holdout_error",
    "synthetic_points",
    "conversion_points",
    "lab_points",
    "cycle_points",
    "points_from_records",
    "measure_points",
]
