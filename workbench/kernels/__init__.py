"""Numba kernels: page fingerprints, anonymous-memory to memfd conversion, handover formats, the blackout model."""
