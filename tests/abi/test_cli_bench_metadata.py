"""``workbench bench metadata --json``: the figures, the recorded run and its tables, and option errors."""

import json

from click.testing import CliRunner

from workbench.cli import main
from workbench.records import RecordStore


def test_json_report_and_record(tmp_path):
    data = tmp_path / "data"
    out = tmp_path / "result.json"
    args = ["bench", "metadata", "--memory", "128M", "--folio-mix", "4K:0.7,2M:0.3", "--sparsity", "0.25"]
    args += ["--memfds", "4", "--json", "--data", str(data), "--output", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["decode_pages_per_s"] > 0 and report["encode_folios_per_s"] > 0
    assert report["workload"]["memory_bytes"] == 128 << 20 and report["workload"]["memfds"] == 4
    assert {row["structure"] for row in report["structures"]} == {
        "radix",
        "sparse_bitmaps",
        "flat_array",
        "memfd_arrays",
    }
    assert json.loads(out.read_text())["record_id"] == report["record_id"]
    store = RecordStore(data)
    record = store.get(report["record_id"])
    assert record.kind == "bench.metadata" and record.status == "ok"
    assert sorted(record.table_names) == ["orders", "structures"]
    assert len(store.table(record.id, "structures")) == 4
    assert record.params["sparsity"] == 0.25


def test_bad_options_are_usage_errors(tmp_path):
    runner = CliRunner()
    bad_mix = runner.invoke(main, ["bench", "metadata", "--folio-mix", "3K:1", "--data", str(tmp_path)])
    assert bad_mix.exit_code == 2 and "power of two" in bad_mix.output
    bad_size = runner.invoke(main, ["bench", "metadata", "--memory", "3M", "--data", str(tmp_path)])
    assert bad_size.exit_code == 2 and "multiple" in bad_size.output
