"""Fuzz-test set-up: the hypothesis profiles ``fuzz-suite`` (the default, a bounded run that keeps the fast suite
fast) and ``fuzz`` (``make fuzz``: many more examples) are registered by :mod:`tests.fuzz.contract`, imported here
so that they exist before any test is collected; ``HYPOTHESIS_PROFILE`` chooses one, for the tests of this folder
only (:func:`tests.fuzz.contract.fuzz_settings`), never for the rest of the suite."""

from __future__ import annotations

import pytest

import tests.fuzz.contract  # noqa: F401 (registers the profiles)


@pytest.fixture(autouse=True, scope="session")
def _compiled_numba_kernels():
    """Runs every numba kernel of the decoders once, so that no checked call pays for compiling or loading one
    (work that has nothing to do with the input)."""
    import numpy as np

    from tests.abi.helpers import area
    from workbench.abi.handover import MemfdSpec, decode_handover, encode_handover

    _memory, allocator = area(64)
    spec = MemfdSpec(
        1,
        np.array([40], np.uint64) + allocator.memory.base // 4096,
        np.zeros(1, np.uint8),
        np.zeros(1, np.uint64),
        4096,
    )
    encoded = encode_handover(allocator, {"warm-up": [spec]})
    decode_handover(allocator.memory, encoded.fdt_phys).memory_map.iter_folios().__next__()
