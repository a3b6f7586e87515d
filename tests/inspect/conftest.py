"""The lab tests of this folder share one inspected cycle: the ``inspection`` session fixture, which lives in
tests/conftest.py so that tests/widgets can reuse the same VM run. Its constants are re-exported here."""

from tests.conftest import MEMFD_SIZE, TOKENS, Inspection

__all__ = ["MEMFD_SIZE", "TOKENS", "Inspection"]
