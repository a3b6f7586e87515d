"""The bit-scan intrinsics used by the numba kernels."""

import numba
import numpy as np

from workbench.abi._bits import ctlz, cttz, popcount


@numba.njit
def _scan(values, out):
    for i in range(values.shape[0]):
        out[i, 0] = cttz(values[i]) if values[i] else 64
        out[i, 1] = ctlz(values[i])
        out[i, 2] = popcount(values[i])


def test_bit_scans_match_python():
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            np.array([0, 1, 2, 1 << 63, 0xFFFFFFFFFFFFFFFF], dtype=np.uint64),
            rng.integers(0, 2**63, 200).astype(np.uint64),
        ]
    )
    out = np.zeros((values.size, 3), dtype=np.int64)
    _scan(values, out)
    for v, (tz, lz, pc) in zip(values.tolist(), out.tolist(), strict=True):
        assert tz == ((v & -v).bit_length() - 1 if v else 64)
        assert lz == 64 - v.bit_length()
        assert pc == bin(v).count("1")
