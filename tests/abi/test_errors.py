"""The exception hierarchy: one base class, each error carries the physical address it is about."""

import pytest

from workbench.abi import errors


@pytest.mark.parametrize("name", [n for n in errors.__all__ if n != "AbiError"])
def test_every_error_is_an_abi_error(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.AbiError)


def test_errors_keep_their_address_and_message():
    exc = errors.LoopDetected("block 0x2000 points back", 0x2000)
    assert exc.phys == 0x2000 and "0x2000" in str(exc)
    amb = errors.AmbiguousHandover("two", [0x1000, 0x5000])
    assert amb.candidates == [0x1000, 0x5000] and amb.phys == 0x1000
