"""Recording one experiment whole."""

import pandas as pd
import pytest

from workbench.experiments.recording import record_summary
from workbench.records import RecordStore


def test_summary_tables_and_json_file_are_kept(tmp_path):
    store = RecordStore(tmp_path / "data")
    summary, path = record_summary(
        store, "test.kind", {"n": 2}, lambda run: {"value": 3, "tables": {"rows": pd.DataFrame({"x": [1, 2]})}}
    )
    record = store.get(summary["record_id"])
    assert record.result == {"value": 3} and record.table_names == ["rows"]
    assert path == record.artifacts_dir / "test.kind.json" and '"value": 3' in path.read_text()


def test_a_failing_body_leaves_a_failed_record(tmp_path):
    store = RecordStore(tmp_path / "data")

    def body(run):
        raise ValueError("no such size")

    with pytest.raises(ValueError):
        record_summary(store, "test.kind", {}, body)
    (record,) = store.runs()
    assert record.status == "failed" and "no such size" in record.error
