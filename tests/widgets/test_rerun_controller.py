"""The re-run controller: refuses at once what cannot be re-run, runs the rest in a worker thread."""

import pytest

from workbench.experiments import ExperimentError
from workbench.experiments.recording import record_summary
from workbench.experiments.registry import Experiment, register
from workbench.widgets.rerun_controller import RerunController


def test_a_record_that_cannot_be_rerun_is_refused_at_once(store):
    with store.run("inspect", {}) as run:
        pass
    controller = RerunController(store)
    assert "cannot be re-run" in controller.can_rerun(run.id)
    assert "no run with id" in controller.can_rerun("20990101-000000-000000")
    with pytest.raises(ExperimentError, match="cannot be re-run"):
        controller.start(run.id)
    assert controller.state == "idle"


def test_the_worker_reports_the_verdict_and_observers_hear_each_state(store):
    def run_again(store, params):
        return record_summary(store, "test.widget", params, lambda run: {"pages": params["pages"]})[0]["record_id"]

    register(Experiment("test.widget", run_again, exact=("pages",)))
    original = run_again(store, {"pages": 4})
    controller = RerunController(store)
    states = []
    controller.observe(lambda c, what: states.append(c.state))
    controller.start(original, overrides={"pages": 5})
    assert controller.wait(60) == "done"
    assert states == ["running", "done"]
    assert controller.report.verdict == "disagree" and controller.error is None


def test_a_rerun_that_breaks_is_shown_as_failed(store):
    def broken(store, params):
        raise RuntimeError("cannot even start")

    register(Experiment("test.broken", broken))
    with store.run("test.broken", {}) as run:
        pass
    controller = RerunController(store)
    controller.start(run.id)
    assert controller.wait(60) == "failed" and "could not start" in controller.error
