"""The ``bench.metadata`` experiment: the command's record, run again from its parameters alone."""

from workbench.abi.design_space import Workload
from workbench.experiments.bench_metadata import EXPERIMENT, metadata_params, record_bench_metadata
from workbench.records import RecordStore


def test_parameters_round_trip_through_the_record(tmp_path):
    workload = Workload(256 << 20, {4096: 0.75, 2 << 20: 0.25}, 0.5, 0.0, 3, 11)
    store = RecordStore(tmp_path / "data")
    summary, path = record_bench_metadata(store, metadata_params(workload))
    record = store.get(summary["record_id"])
    assert path.is_file() and record.status == "ok" and set(record.table_names) >= {"structures"}
    assert record.result["workload"] == workload.params()
    assert EXPERIMENT.accepts(record.params)
    rerun_id = EXPERIMENT.run(store, record.params)
    assert store.get(rerun_id).result["preserved_pages"] == summary["preserved_pages"]
