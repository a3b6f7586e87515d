"""The lab's exceptions (:mod:`workbench.lab.errors`): one tree under :class:`LabError` that a caller can catch at
once, the cancellation outside it, the ``ValueError`` kinds the CLI maps to exit status 2, and the messages that
say where a cycle failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.lab import errors
from workbench.lab.errors import (
    CycleCancelled,
    CycleFailed,
    InvalidCycle,
    InventoryError,
    LabError,
    PreconditionFailed,
    SshTargetError,
    TargetLost,
    ThisMachineRefused,
    UnknownName,
    Unverified,
)

EXCEPTIONS = [getattr(errors, name) for name in errors.__all__]


def test_all_lists_every_exception_class_of_the_module():
    defined = {
        name for name, value in vars(errors).items() if isinstance(value, type) and value.__module__ == errors.__name__
    }
    assert set(errors.__all__) == defined
    assert all(issubclass(cls, BaseException) for cls in EXCEPTIONS)


@pytest.mark.parametrize("cls", [c for c in EXCEPTIONS if c is not CycleCancelled], ids=lambda c: c.__name__)
def test_every_failure_is_a_lab_error(cls):
    assert issubclass(cls, LabError) and issubclass(cls, RuntimeError)


def test_cancellation_is_an_interrupt_that_except_exception_does_not_catch():
    assert issubclass(CycleCancelled, KeyboardInterrupt)
    assert not issubclass(CycleCancelled, Exception) and not issubclass(CycleCancelled, LabError)
    with pytest.raises(CycleCancelled):
        try:
            raise CycleCancelled()
        except Exception:  # what a careless caller writes: the cancellation must go through
            pytest.fail("except Exception caught the cancellation")


@pytest.mark.parametrize("cls", [InvalidCycle, UnknownName, InventoryError], ids=lambda c: c.__name__)
def test_bad_input_is_a_value_error(cls):
    with pytest.raises(ValueError):
        raise cls("bad input")


def test_an_unknown_name_is_also_a_lookup_error():
    with pytest.raises(LookupError):
        raise UnknownName("no workload 'memfs'; known: criu, memfd")


def test_cycle_failed_names_the_phase_and_the_log():
    exc = CycleFailed("the agent reported: OSError: boom", "preserve", Path("/runs/r1/serial.log"), record_id="r1")
    assert (
        str(exc) == "cycle failed in phase preserve: the agent reported: OSError: boom; serial log: /runs/r1/serial.log"
    )
    assert (exc.phase, exc.serial_log, exc.record_id) == ("preserve", Path("/runs/r1/serial.log"), "r1")
    without_log = CycleFailed("no console", "boot", None)
    assert str(without_log) == "cycle failed in phase boot: no console"
    over_ssh = SshTargetError("refused", "connect", Path("/runs/r2/agent.log"), log_name="agent log")
    assert str(over_ssh).endswith("; agent log: /runs/r2/agent.log")
    lost = TargetLost("the VM stopped", "kexec", None)
    assert isinstance(lost, CycleFailed) and "phase kexec" in str(lost)


def _memfd(index: int, differing: int, size: int = 8192, expected: int = 8192) -> dict:
    return {
        "memfd": index,
        "differing_count": differing,
        "differing_pages": list(range(differing)),
        "size": size,
        "expected_size": expected,
    }


def test_unverified_lists_the_differing_memfds_and_the_wrong_sizes():
    result = {"memfds": [_memfd(0, 0), _memfd(1, 3), _memfd(2, 0, size=4096)]}
    exc = Unverified(result)
    assert str(exc).startswith("verification failed: differing pages per memfd: {1: 3}")
    assert str(exc).endswith("memfds with the wrong size: [2]")
    assert exc.result is result
    only_size = Unverified({"memfds": [_memfd(0, 0, size=0)]})
    assert str(only_size).startswith("verification failed:") and str(only_size).endswith("wrong size: [0]")
    assert "differing pages" not in str(only_size)
    assert str(Unverified({"memfds": []})) == "verification failed: no memfd came back"


def test_precondition_failed_carries_what_is_missing_in_phase_check():
    missing = ["kexec_file_load: enable CONFIG_KEXEC_FILE", "/dev/liveupdate: boot with liveupdate=on"]
    exc = PreconditionFailed("the host lacks 2 things", missing, Path("/runs/r3/agent.log"))
    assert isinstance(exc, CycleFailed) and exc.missing == missing
    assert exc.phase == "check" and exc.log_name == "agent log"
    assert str(exc) == "cycle failed in phase check: the host lacks 2 things; agent log: /runs/r3/agent.log"
    refused = ThisMachineRefused("this is the workbench's own machine", [])
    assert isinstance(refused, PreconditionFailed) and refused.phase == "check" and refused.serial_log is None
