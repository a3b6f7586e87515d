"""What changed since last time: headline numbers against earlier demo records in a real record store."""

import time

import pytest

from workbench.report.changes import COLUMNS, changes_since, chosen_reports, compare_headlines
from workbench.report.errors import ChangesError
from workbench.report.headline import Headline, Number


def _headlines(blackout, *, verified=True, pages=2048, noise=None, rate=None):
    numbers = [
        Number("blackout_s", "blackout", blackout, "s", noise=noise, better="lower"),
        Number("verified", "verified", verified, exact=True),
        Number("pages_checked", "pages checked", pages, "pages", exact=True),
    ]
    if rate is not None:
        numbers.append(Number("rate", "rate", rate, "B/s", better="higher"))
    headline = Headline("cycle", "A cycle", "text", tuple(numbers)).to_json()
    return [{**headline, "notebook": "10-live-update-cycle.ipynb", "page": "10-live-update-cycle.html"}]


def _demo(store, headlines, *, smoke=True, full=False, hostname=None, status_ok=True):
    with store.run("demo", {"smoke": smoke, "full": full, "notebooks": ["10-live-update-cycle.ipynb"]}) as run:
        if headlines is not None:
            run.update_result(headlines=headlines)
        if hostname:
            run.update_environment(hostname=hostname)
    time.sleep(0.002)  # distinct start times
    return store.get(run.id)


def _now(store):
    """A report being made now: its own demo record, started after every earlier one."""
    with store.run("demo", {"smoke": True, "full": False}) as run:
        pass
    return store.get(run.id)


def _compare(store, current, now_headlines, **kwargs):
    return changes_since(
        store,
        now_headlines,
        hostname=current.environment["hostname"],
        smoke=True,
        full=False,
        before=current.started,
        exclude=[current.id],
        **kwargs,
    )


def _row(changes, name):
    rows = changes.table[changes.table["name"] == name].to_dict("records")
    assert len(rows) == 1
    return rows[0]


def test_within_the_run_to_run_noise_is_not_flagged(store):
    for blackout in (1.00, 1.10, 0.90):
        _demo(store, _headlines(blackout))
    current = _now(store)
    changes = _compare(store, current, _headlines(1.15))
    row = _row(changes, "blackout_s")
    assert row["previous"] == pytest.approx(0.90) and row["now"] == 1.15
    assert row["noise"] == pytest.approx(0.1) and row["earlier_values"] == 3
    assert row["verdict"] == "within noise" and not row["flagged"]
    assert row["change"] == pytest.approx(0.25) and row["relative_change"] == pytest.approx(0.25 / 0.9)
    assert changes.reference[0]["id"] == changes.history[-1] and len(changes.history) == 3
    assert not changes.table["flagged"].any()
    assert list(changes.table.columns) == list(COLUMNS)


def test_beyond_the_noise_of_earlier_reports_is_flagged_first(store):
    for blackout in (1.00, 1.05, 0.95, 1.02, 0.98, 1.03, 0.97, 1.00):
        _demo(store, _headlines(blackout))
    current = _now(store)
    changes = _compare(store, current, _headlines(1.35))
    row = _row(changes, "blackout_s")
    assert row["verdict"] == "beyond noise" and row["flagged"] and row["direction"] == "worse"
    assert changes.table.iloc[0]["name"] == "blackout_s"
    assert changes.as_json()["flagged"] == 1


def test_the_runs_own_noise_counts_when_there_is_no_history(store):
    _demo(store, _headlines(1.0))
    current = _now(store)
    within = _row(_compare(store, current, _headlines(1.25, noise=0.1)), "blackout_s")
    assert within["noise"] == pytest.approx(0.1) and within["verdict"] == "within noise"
    beyond = _row(_compare(store, current, _headlines(1.35, noise=0.1)), "blackout_s")
    assert beyond["verdict"] == "beyond noise" and beyond["flagged"]
    both = _demo(store, _headlines(1.2))
    later = _now(store)
    combined = _row(_compare(store, later, _headlines(1.2, noise=0.1)), "blackout_s")
    assert combined["noise"] == pytest.approx((0.1**2 + 0.2**2 / 2) ** 0.5)  # own noise ⊕ stdev(1.0, 1.2)
    assert both.id in _compare(store, later, _headlines(1.2)).history


def test_unknown_noise_is_said_not_flagged(store):
    _demo(store, _headlines(1.0))
    current = _now(store)
    row = _row(_compare(store, current, _headlines(10.0)), "blackout_s")
    assert row["noise"] is None and row["verdict"] == "noise unknown" and not row["flagged"]


def test_an_exact_number_that_changed_is_always_flagged(store):
    _demo(store, _headlines(1.0))
    current = _now(store)
    changes = _compare(store, current, _headlines(1.0, verified=False, pages=2047))
    verified, pages = _row(changes, "verified"), _row(changes, "pages_checked")
    assert verified["verdict"] == "changed" and verified["flagged"] and verified["previous"] is True
    assert pages["verdict"] == "changed" and pages["change"] == -1
    same = _row(_compare(store, current, _headlines(1.0)), "pages_checked")
    assert same["verdict"] == "same" and not same["flagged"] and same["noise"] is None


def test_new_and_missing_numbers(store):
    _demo(store, _headlines(1.0, rate=1e9))
    current = _now(store)
    changes = _compare(store, current, [{**_headlines(1.0)[0], "key": "other"}])
    assert set(changes.table["verdict"]) == {"new", "missing now"}
    assert changes.table["flagged"].tolist() == [True] * 4 + [False] * 3  # missing rows first
    elsewhere = _compare(store, current, [{**_headlines(1.0)[0], "key": "other"}], notebooks=["00-tour.ipynb"])
    assert set(elsewhere.table["verdict"]) == {"new"}  # the notebook that had them did not run this time


def test_only_earlier_reports_of_this_machine_with_the_same_parameters(store):
    _demo(store, _headlines(5.0), smoke=False)
    _demo(store, _headlines(6.0), hostname="another-machine")
    _demo(store, None)  # made before demos kept headlines
    mine = _demo(store, _headlines(1.0))
    current = _now(store)
    _demo(store, _headlines(7.0))  # after the report started
    changes = _compare(store, current, _headlines(1.0))
    assert changes.history == [mine.id] and changes.reference[0]["id"] == mine.id
    assert changes.since().startswith(mine.id)


def test_the_first_report_has_nothing_to_compare_with(store):
    current = _now(store)
    changes = _compare(store, current, _headlines(1.0))
    assert changes.reference == [] and set(changes.table["verdict"]) == {"new"}
    assert changes.since() == "no earlier report"


def test_chosen_records_replace_the_previous_report(store):
    a = _demo(store, _headlines(1.0), hostname="another-machine", smoke=False)
    b = _demo(store, _headlines(3.0), hostname="another-machine", smoke=False)
    _demo(store, _headlines(9.0))
    current = _now(store)
    row = _row(_compare(store, current, _headlines(2.0), compare_with=[b.id, a.id]), "blackout_s")
    assert row["previous"] == pytest.approx(2.0)  # the mean of the chosen reports
    changes = _compare(store, current, _headlines(2.0), compare_with=[a.id])
    assert [r["id"] for r in changes.reference] == [a.id]


def test_chosen_records_must_be_demos_with_headlines(store):
    with store.run("bench.hash", {}) as bench:
        pass
    old = _demo(store, None)
    with pytest.raises(ChangesError, match="no record 'nope'"):
        chosen_reports(store, ["nope"])
    with pytest.raises(ChangesError, match=f"record {bench.id} is a bench.hash record, not a demo"):
        chosen_reports(store, [bench.id])
    with pytest.raises(ChangesError, match=f"demo record {old.id} stores no headlines"):
        chosen_reports(store, [old.id])


def test_compare_headlines_alone():
    table = compare_headlines(_headlines(2.0), [_headlines(1.0)], [_headlines(1.0), _headlines(1.0)])
    row = table[table["name"] == "blackout_s"].iloc[0]
    assert row["noise"] == 0.0 and row["verdict"] == "beyond noise"  # no spread at all: any move is beyond it
    assert compare_headlines([], []).empty


def test_two_earlier_reports_say_little_about_the_noise(store):
    for blackout in (1.00, 1.10, 0.90):
        _demo(store, _headlines(blackout))
    row = _row(_compare(store, _now(store), _headlines(1.35)), "blackout_s")
    assert row["verdict"] == "within noise" and not row["flagged"]  # t with 2 degrees of freedom is wide
