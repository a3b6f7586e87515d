"""The ``notebook`` experiment: a recorded notebook run, run again, its headline numbers compared."""

import pytest

from workbench.experiments.notebook import EXPERIMENT, headline_field_class
from workbench.experiments.rerun import rerun

ORIGINAL = {
    "headlines": [
        {
            "key": "cycle",
            "numbers": [
                {"name": "pages_verified", "value": 2048, "exact": True},
                {"name": "blackout_s", "value": 5.1, "exact": False},
            ],
        }
    ]
}


def test_headline_numbers_say_whether_they_are_exact():
    assert headline_field_class("headlines.cycle.numbers.pages_verified.value", ORIGINAL) == "exact"
    assert headline_field_class("headlines.cycle.numbers.blackout_s.value", ORIGINAL) == "measured"
    assert headline_field_class("headlines.cycle.numbers.blackout_s.unit", ORIGINAL) is None
    assert headline_field_class("headlines.other.numbers.x.value", ORIGINAL) is None
    assert headline_field_class("executed", ORIGINAL) is None
    assert EXPERIMENT.classify("status", ORIGINAL) is None  # status is compared for every kind, not by this


@pytest.mark.notebook
def test_a_recorded_notebook_reruns_and_its_headlines_are_compared(store):
    from workbench.notebooks import find_notebook, record_notebook

    original = record_notebook(store, find_notebook("tour"), {"SMOKE": True})
    report = rerun(store, original["record_id"])
    compared = {f.path for f in report.comparison.fields}
    assert "status" in compared and any(p.startswith("headlines.tour.numbers.") for p in compared)
    assert all(f.agrees for f in report.comparison.fields if f.klass == "exact")
    assert store.get(report.rerun_ids[0]).params == {"notebook": "00-tour.ipynb", "SMOKE": True}
