"""Comparing results field by field: flattening, exact fields, measured fields against the noise."""

import statistics

import pytest

from workbench.experiments.compare import RELATIVE_FLOOR, TIMER_FLOOR_S, compare_results, flatten, t_quantile
from workbench.experiments.registry import EXACT, MEASURED, Experiment


def _experiment(**kwargs):
    defaults = {"exact": ("pages", "items.*.count"), "measured": ("rate", "items.*.seconds_s"), "tolerance": 0.25}
    return Experiment("test.kind", lambda store, params: "", **{**defaults, **kwargs})


def test_flatten_keys_lists_of_named_objects_by_their_name():
    value = {"a": {"b": 1}, "items": [{"name": "x", "v": 2}, {"name": "y", "v": 3}], "plain": [5, 6]}
    assert flatten(value) == {
        "a.b": 1,
        "items.x.name": "x",
        "items.x.v": 2,
        "items.y.name": "y",
        "items.y.v": 3,
        "plain.0": 5,
        "plain.1": 6,
    }


def test_flatten_lines_up_reordered_lists():
    one = flatten({"items": [{"name": "x", "v": 1}, {"name": "y", "v": 2}]})
    two = flatten({"items": [{"name": "y", "v": 2}, {"name": "x", "v": 1}]})
    assert one == two


def test_flatten_falls_back_to_positions_when_names_repeat():
    assert flatten({"l": [{"name": "x"}, {"name": "x"}]}) == {"l.0.name": "x", "l.1.name": "x"}


def test_identical_results_agree_and_status_is_compared():
    result = {"status": "ok", "pages": 10, "rate": 100.0, "other": "not compared"}
    comparison = compare_results(_experiment(), result, [dict(result)])
    assert comparison.verdict == "agree"
    assert {f.path for f in comparison.fields} == {"status", "pages", "rate"}


def test_an_exact_field_that_differs_disagrees():
    comparison = compare_results(_experiment(), {"status": "ok", "pages": 10}, [{"status": "ok", "pages": 11}])
    assert comparison.verdict == "disagree"
    (diff,) = comparison.differences
    assert (diff.path, diff.klass, diff.original, diff.rerun) == ("pages", EXACT, 10, 11)


def test_a_failed_rerun_disagrees_on_status():
    comparison = compare_results(_experiment(), {"status": "ok"}, [{"status": "failed"}])
    assert [f.path for f in comparison.differences] == ["status"]


def test_a_field_missing_in_the_rerun_disagrees():
    comparison = compare_results(_experiment(), {"status": "ok", "pages": 3}, [{"status": "ok"}])
    assert comparison.differences[0].note == "missing in the re-run's result"


def test_without_noise_the_assumed_tolerance_is_used_and_said():
    for rerun, verdict in ((124.0, "agree"), (126.0, "disagree"), (81.0, "agree"), (79.0, "disagree")):
        comparison = compare_results(_experiment(), {"rate": 100.0}, [{"rate": rerun}])
        assert comparison.verdict == verdict, rerun  # a factor of 1.25 either way
    field = comparison.fields[0]
    assert field.klass == MEASURED and field.noise is None and "assumed factor 1.25" in field.noise_source


def test_the_noise_of_earlier_runs_and_repeats_decides():
    earlier = [{"rate": 100.0 + d} for d in (0, 1, -1, 0.5, -0.5, 1, -1, 0, 0.5, -0.5)]
    # the spread is under 1: a change of 10 is far outside it even though it is inside the assumed 25 %
    comparison = compare_results(_experiment(), {"rate": 100.0}, [{"rate": 110.0}], earlier)
    field = comparison.fields[0]
    assert comparison.verdict == "disagree"
    assert field.noise == pytest.approx(statistics.stdev(e["rate"] for e in earlier))  # not the re-run's value
    assert field.allowed == pytest.approx(t_quantile(9) * field.noise * 2**0.5)  # one original, one re-run
    assert "10 earlier runs" in field.noise_source
    repeats = compare_results(_experiment(), {"rate": 100.0}, [{"rate": 100.5}, {"rate": 99.5}, {"rate": 100.2}])
    assert repeats.verdict == "agree" and "3 repeats" in repeats.fields[0].noise_source
    far = compare_results(_experiment(), {"rate": 100.0}, [{"rate": 120.0 + d / 10} for d in range(8)])
    assert far.verdict == "disagree"  # eight tight repeats around 120.35: 100 is outside their interval


def test_few_samples_are_trusted_little():
    assert t_quantile(1) > 60 and t_quantile(2) > 9 and t_quantile(29) > t_quantile(30) > t_quantile(100) == 2.576
    two = compare_results(_experiment(), {"rate": 100.0}, [{"rate": 120.0}, {"rate": 120.01}])
    assert two.verdict == "agree"  # two close repeats say little: the assumed factor stays the floor
    assert "fewer than 5 samples" in two.fields[0].noise_source
    with pytest.raises(ValueError):
        t_quantile(0)


def test_a_tiny_noise_cannot_flag_a_difference_below_the_floors():
    earlier = [{"rate": 100.0}, {"rate": 100.0}]
    small = compare_results(_experiment(), {"rate": 100.0}, [{"rate": 100.0 * (1 + RELATIVE_FLOOR / 2)}], earlier)
    assert small.verdict == "agree"
    timing = {"items": [{"name": "a", "seconds_s": 0.001}]}
    jitter = {"items": [{"name": "a", "seconds_s": 0.001 + TIMER_FLOOR_S / 2}]}
    assert compare_results(_experiment(), timing, [jitter], [timing, timing]).verdict == "agree"


def test_a_measured_value_that_becomes_none_disagrees():
    comparison = compare_results(_experiment(), {"rate": 5.0}, [{"rate": None}])
    assert comparison.verdict == "disagree" and "missing" in comparison.differences[0].note


def test_the_table_lists_differences_first():
    comparison = compare_results(_experiment(), {"pages": 1, "rate": 1.0}, [{"pages": 2, "rate": 1.0}])
    table = comparison.table()
    assert list(table["field"]) == ["pages", "rate"] and not table["agrees"].iloc[0]


def test_a_classifier_decides_before_the_patterns():
    experiment = _experiment(classifier=lambda path, original: EXACT if path == "rate" else None)
    assert experiment.classify("rate", {}) == EXACT
    assert experiment.classify("pages", {}) == EXACT
    assert experiment.classify("unknown", {}) is None


def test_a_phase_timing_within_the_experiments_timer_floor_agrees_and_beyond_it_disagrees():
    lab = _experiment(measured=("phases.*",), tolerance=2.0, timer_floor_s=0.25)
    original = {"phases": {"finish": 0.0126}}
    assert compare_results(lab, original, [{"phases": {"finish": 0.0855}}]).verdict == "agree"
    assert compare_results(lab, original, [{"phases": {"finish": 0.5}}]).verdict == "disagree"
    strict = _experiment(measured=("phases.*",), tolerance=2.0)
    assert strict.timer_floor_s == TIMER_FLOOR_S
    assert compare_results(strict, original, [{"phases": {"finish": 0.0855}}]).verdict == "disagree"
