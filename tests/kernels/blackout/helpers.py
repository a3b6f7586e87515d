"""Parameters and points shared by the blackout model's tests: a known model (:data:`TRUE`), random ones, and the
points they would measure."""

import numpy as np
import pandas as pd

from workbench.kernels.blackout.model import FROM_BIRTH, STRATEGIES, ModelParams
from workbench.kernels.blackout.points import synthetic_points

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
FITTED_STRATEGIES = ("copy-fresh", "pwrite", "vmsplice-splice")

TRUE = ModelParams(
    parallel_efficiency=0.7,
    fault_per_byte_s=4e-10,
    fault_per_folio_s=1.5e-6,
    memcpy_per_byte_s=1.5e-10,
    preserve_fixed_s=5e-3,
    preserve_per_folio_s=3e-7,
    load_s=0.6,
    kexec_s=1.2,
    memmap_per_page_s=2e-8,
    kho_decode_per_folio_s=4e-7,
    restore_fixed_s=1e-2,
    restore_per_folio_s=5e-7,
    convert_fixed_s={"copy-fresh": 2e-3, "pwrite": 1e-3, "vmsplice-splice": 4e-3},
    convert_per_byte_s={"copy-fresh": 1.8e-9, "pwrite": 8e-10, "vmsplice-splice": 9e-10},
)
SCALARS = [name for name in TRUE.to_dict() if name.endswith("_s") or name == "parallel_efficiency"]
SCALARS = [name for name in SCALARS if name not in ("convert_fixed_s", "convert_per_byte_s")]


def random_params(seed: int) -> ModelParams:
    """Every parameter finite, each strategy with its own conversion costs."""
    rng = np.random.default_rng(seed)
    scalars = {name: float(10.0 ** rng.uniform(-9, 0)) for name in SCALARS}
    scalars["parallel_efficiency"] = float(rng.uniform(0, 1))
    return ModelParams(
        **scalars,
        convert_fixed_s={s: float(rng.uniform(0, 1e-2)) for s in STRATEGIES if s != FROM_BIRTH},
        convert_per_byte_s={s: float(10.0 ** rng.uniform(-10, -8)) for s in STRATEGIES if s != FROM_BIRTH},
    )


def rich_points(params: ModelParams, noise: float, seed: int = 0, anatomy: bool = False) -> pd.DataFrame:
    return synthetic_points(
        params,
        sizes=(16 * MiB, 64 * MiB, 256 * MiB, GiB, 4 * GiB),
        strategies=FITTED_STRATEGIES,
        mem_sizes=(4 * GiB, 16 * GiB, 64 * GiB),
        noise=noise,
        seed=seed,
        anatomy=anatomy,
    )
