"""How a cell's cycle ended: pass, refused, fail, hang, panic (and error)."""

from pathlib import Path

from workbench.lab.diagnosis import diagnose
from workbench.lab.errors import CycleFailed, CycleTimedOut, KernelBuildError, PreflightRefused, TargetLost
from workbench.qualify.outcome import (
    OUTCOMES,
    outcome_of_error,
    outcome_of_failure,
    outcome_of_result,
    worst,
)

PANIC_LOG = [
    "[    0.245004] luo: LUO state is incompatible with 'luo-neg'",
    "[    0.246151] Kernel panic - not syncing: The incoming tree failed to initialize properly [-22]",
    "[    0.246726] Call Trace:",
    "[    0.246726]  panic+0x4f/0x50",
    "[    0.246726]  liveupdate_early_init+0xeb/0x150",
]


def failed(kind=CycleFailed, phase="restore", log=None):
    exc = kind("the VM stopped", phase, Path("serial.log"), "RID")
    exc.diagnosis = diagnose(log).as_dict() if log else None
    return exc


def test_a_verified_cycle_passes_and_an_unverified_one_fails_at_verify():
    assert outcome_of_result({"verified": True}).outcome == "pass"
    bad = outcome_of_result({"verified": False, "memfds": [{"differing_count": 3}, {"differing_count": 0}]})
    assert (bad.outcome, bad.stage) == ("fail", "verify")
    assert "1 file(s) came back different" in bad.message


def test_a_panic_in_the_log_is_a_panic_with_its_diagnosis_whatever_the_error():
    for kind in (CycleFailed, TargetLost, CycleTimedOut):
        outcome = outcome_of_failure(failed(kind, "kexec", PANIC_LOG))
        assert (outcome.outcome, outcome.stage) == ("panic", "kexec")
        assert "LUO refused the handover" in outcome.diagnosis and "liveupdate_early_init" in outcome.diagnosis


def test_a_refusal_without_a_panic_and_a_preflight_refusal_are_refused():
    log = ["[    0.1] KHO: setup: handover FDT (0x1000) is incompatible with 'kho-v4': -22"]
    outcome = outcome_of_failure(failed(CycleFailed, "restore", log))
    assert outcome.outcome == "refused" and "KHO refused" in outcome.diagnosis
    preflight = outcome_of_failure(failed(PreflightRefused, "preflight"))
    assert (preflight.outcome, preflight.stage) == ("refused", "preflight")


def test_silence_is_a_hang_and_anything_else_a_failure():
    assert outcome_of_failure(failed(CycleTimedOut, "restore")).outcome == "hang"
    lost = outcome_of_failure(failed(TargetLost, "stage2"))
    assert (lost.outcome, lost.stage, lost.message) == ("fail", "stage2", "the VM stopped")


def test_the_workbench_failing_is_an_error_not_a_verdict_on_the_kernels():
    outcome = outcome_of_error(KernelBuildError("make failed"))
    assert (outcome.outcome, outcome.stage) == ("error", "setup") and "make failed" in outcome.message


def test_worst_follows_the_order_of_outcomes():
    assert worst(["pass", "refused", "pass"]) == "refused"
    assert worst(["hang", "panic", "fail"]) == "panic"
    assert worst([]) is None and worst(["nonsense"]) is None
    assert OUTCOMES[0] == "pass"
