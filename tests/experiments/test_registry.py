"""The registry of experiments that can be re-run, by record kind."""

import pytest

from workbench.experiments.errors import NotRerunnable
from workbench.experiments.registry import Experiment, experiment_for, experiment_kinds, register


def test_built_in_kinds_are_listed_and_load_on_first_use():
    kinds = experiment_kinds()
    for kind in ("bench.hash", "bench.metadata", "bench.conversion", "lab.cycle", "notebook"):
        assert kind in kinds
    assert experiment_for("bench.hash", {"size": 4096, "repeats": 1}).kind == "bench.hash"


def test_an_unknown_kind_is_refused_naming_the_ones_that_can():
    with pytest.raises(NotRerunnable, match="'inspect' cannot be re-run.*bench.hash"):
        experiment_for("inspect", {})


def test_parameters_no_experiment_accepts_are_refused_with_their_source():
    with pytest.raises(NotRerunnable, match="made inside 20-conversion-strategies: re-run that notebook"):
        experiment_for("bench.conversion", {"sizes_mib": [16], "source": "20-conversion-strategies"})


def test_the_conversion_kind_picks_host_or_vm_by_its_parameters():
    host = experiment_for(
        "bench.conversion", {"sizes": [1], "threads": [1], "strategies": [], "repeats": 1, "pipe_sizes": []}
    )
    vm = experiment_for(
        "bench.conversion", {"target": "vm", "sizes": [1], "threads": [1], "strategies": [], "kernel": None}
    )
    assert host is not vm and "VM" in vm.describe


def test_a_new_experiment_registers_by_adding():
    experiment = register(Experiment("test.added", lambda store, params: "id", accepts=lambda p: p.get("ok")))
    assert experiment_for("test.added", {"ok": True}) is experiment
    assert "test.added" in experiment_kinds()
    with pytest.raises(NotRerunnable):
        experiment_for("test.added", {"ok": False})
