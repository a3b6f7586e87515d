"""Re-running recorded experiments for real (the metadata benchmark: fast, with exact and measured fields)."""

import pytest

from workbench.experiments.errors import InvalidOverride, NotRerunnable
from workbench.experiments.recording import record_summary
from workbench.experiments.registry import Experiment, register
from workbench.experiments.rerun import apply_overrides, parse_override, rerun
from workbench.records import RecordStore

# large enough that every timing is tens of milliseconds: shorter single-shot timings vary two-fold here
PARAMS = {
    "memory_bytes": 4 << 30,
    "memory": 4 << 30,
    "folio_mix": {"4096": 1.0},
    "sparsity": 0.25,
    "fragmentation": 1.0,
    "memfds": 4,
    "seed": 7,
}


@pytest.fixture
def recorded(tmp_path):
    from workbench.experiments.bench_metadata import record_bench_metadata

    store = RecordStore(tmp_path / "data")
    summary, _ = record_bench_metadata(store, dict(PARAMS))
    return store, summary["record_id"]


def test_a_recorded_benchmark_reruns_and_agrees(recorded):
    store, original = recorded
    report = rerun(store, original[-6:], repeats=2)  # a unique part of the id is enough
    assert report.original_id == original and len(report.rerun_ids) == 2
    table = report.comparison.table()
    assert report.verdict == "agree", table[~table["agrees"]].to_string()
    classes = {f.path: f.klass for f in report.comparison.fields}
    assert classes["preserved_pages"] == "exact" and classes["structures.radix.decode_s"] == "measured"
    again = store.get(report.rerun_ids[0])
    assert again.kind == "bench.metadata" and again.params == store.get(original).params
    record = store.get(report.record_id)
    assert record.kind == "rerun" and record.status == "ok"
    assert record.result["verdict"] == "agree" and record.result["original"] == original
    assert record.params == {"original": original, "kind": "bench.metadata", "overrides": {}, "repeats": 2}
    measured = [f for f in report.comparison.fields if f.klass == "measured"]
    assert measured and all("2 repeats" in f.noise_source and f.noise is not None for f in measured)
    assert len(store.table(record.id, "fields")) == len(report.comparison.fields)


def test_a_changed_parameter_reports_disagreement(recorded):
    store, original = recorded
    report = rerun(store, original, overrides={"memory_bytes": "2G"})
    assert report.verdict == "disagree"
    differing = {f.path for f in report.comparison.differences}
    assert {"preserved_pages", "workload.memory_bytes"} <= differing
    assert store.get(report.rerun_ids[0]).params["memory_bytes"] == 2 << 30
    assert store.get(report.record_id).result["differences"]


def test_a_bad_override_is_refused_before_anything_runs(recorded):
    store, original = recorded
    before = [r.id for r in store.runs()]
    with pytest.raises(InvalidOverride, match="no parameter 'memroy'.*memory_bytes"):
        rerun(store, original, overrides={"memroy": "1G"})
    with pytest.raises(InvalidOverride, match="neither a number nor a size"):
        rerun(store, original, overrides={"memfds": "many"})
    assert [r.id for r in store.runs()] == before


def test_a_kind_that_cannot_be_rerun_is_refused_and_nothing_recorded(tmp_path):
    store = RecordStore(tmp_path / "data")
    with store.run("inspect", {"target": "live"}) as run:
        run.update_result(sessions=1)
    with pytest.raises(NotRerunnable, match="'inspect' cannot be re-run"):
        rerun(store, run.id)
    assert len(store.runs()) == 1


def test_a_failing_rerun_is_recorded_and_disagrees(tmp_path):
    calls = []

    def run_once(store, params):
        calls.append(params)

        def body(run):
            if len(calls) > 1:
                raise RuntimeError("the machine changed")
            return {"pages": params["pages"]}

        return record_summary(store, "test.flaky", params, body)[0]["record_id"]

    register(Experiment("test.flaky", run_once, exact=("pages",)))
    store = RecordStore(tmp_path / "data")
    original = run_once(store, {"pages": 3})
    report = rerun(store, original)
    assert report.verdict == "disagree"
    assert report.errors == ["RuntimeError: the machine changed"]
    assert store.get(report.rerun_ids[0]).status == "failed"
    assert {f.path for f in report.comparison.differences} == {"status", "pages"}


def test_overrides_are_read_like_the_command_line():
    assert parse_override(1, "16M") == 16 << 20
    assert parse_override(None, "[1, 2]") == [1, 2]
    assert parse_override("x", "true") is True
    assert apply_overrides({"a": 1, "b": "x"}, {"a": 5}) == {"a": 5, "b": "x"}


def test_an_exported_record_imports_into_a_fresh_store_and_reruns_there(recorded, tmp_path):
    from workbench.record_archive import export_records, import_records

    store, original = recorded
    archive = tmp_path / "shared.zip"
    export_records(store, [original], archive)
    elsewhere = RecordStore(tmp_path / "elsewhere")
    import_records(elsewhere, archive)
    report = rerun(elsewhere, original, repeats=2)
    assert report.original_id == original and report.verdict == "agree", report.comparison.table().to_string()
    assert {r.kind for r in elsewhere.runs()} == {"bench.metadata", "rerun"}
