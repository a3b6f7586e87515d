"""The ``bench.hash`` experiment."""

from workbench.experiments.bench_hash import EXPERIMENT, record_bench_hash
from workbench.records import RecordStore


def test_records_and_runs_again_from_its_parameters(tmp_path):
    store = RecordStore(tmp_path / "data")
    summary, _ = record_bench_hash(store, {"size": 1 << 20, "repeats": 1})
    assert summary["pages"] == 256 and store.get(summary["record_id"]).status == "ok"
    again = store.get(EXPERIMENT.run(store, {"size": 1 << 20, "repeats": 1}))
    assert again.result["algorithm"] == summary["algorithm"] and again.result["pages"] == 256
    assert EXPERIMENT.classify("hash_bytes_per_s", {}) == "measured"
    assert EXPERIMENT.classify("pages", {}) == "exact"
