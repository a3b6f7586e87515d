"""The ``bench.conversion`` experiment on this machine (the VM one is exercised by the lab tests)."""

from workbench.experiments.bench_conversion import HOST, record_bench_conversion
from workbench.experiments.rerun import rerun
from workbench.records import RecordStore


def test_a_host_conversion_reruns_with_the_same_exact_fields(tmp_path):
    store = RecordStore(tmp_path / "data")
    params = {"sizes": [4 << 20], "threads": [1], "strategies": ["copy-fresh"], "repeats": 1, "pipe_sizes": [65536]}
    summary, _ = record_bench_conversion(store, params)
    assert summary["all_verified"] and HOST.accepts(store.get(summary["record_id"]).params)
    report = rerun(store, summary["record_id"])
    exact = [f for f in report.comparison.fields if f.klass == "exact"]
    assert {"all_verified", "strategies.copy-fresh.verified", "status"} <= {f.path for f in exact}
    assert all(f.agrees for f in exact), report.comparison.table()
