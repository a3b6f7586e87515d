"""The ``bench.preload`` experiment: a short real redis run recorded, and run again from its parameters alone."""

from tests.lab.test_preload_bench import needs_redis
from workbench.experiments import rerun
from workbench.experiments.bench_preload import EXPERIMENT, record_bench_preload
from workbench.lab.preload_bench import PreloadBench
from workbench.records import RecordStore


@needs_redis
def test_a_recorded_run_is_run_again_from_its_parameters(tmp_path):
    store = RecordStore(tmp_path / "data")
    params = PreloadBench(tests=["set"], requests=5000, keyspace=1000, repeats=1).as_dict()
    summary, path = record_bench_preload(store, params)
    record = store.get(summary["record_id"])
    assert path.is_file() and record.status == "ok" and {"runs", "servers"} <= set(record.table_names)
    assert record.params == params and EXPERIMENT.accepts(record.params) and summary["data_ok"]
    report = rerun(store, record.id, repeats=1)
    assert not report.errors and len(report.rerun_ids) == 1
    assert store.get(report.rerun_ids[0]).result["data_ok"] is True
    exact = {f.path: f for f in report.comparison.fields if f.klass == "exact"}
    assert exact["data_ok"].agrees and exact["program"].agrees
