"""Hostile-input tests of every decoder of bytes a previous kernel or a dump wrote (issue #16): structure-aware
generation and mutation with hypothesis, each call checked against the contract of :mod:`tests.fuzz.contract`."""
