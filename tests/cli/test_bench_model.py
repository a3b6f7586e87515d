"""``workbench bench model``: its JSON fields, the record it writes, and refitting from records."""

import json

import pytest
from click.testing import CliRunner

from workbench.kernels.blackout.model import FROM_BIRTH


def test_cli_json_has_the_fields_and_refits_from_records(tmp_path):
    from workbench.cli.bench import bench

    data = tmp_path / "data"
    args = ["model", "--json", "--data", str(data), "--configs", "1000", "--repeats", "1", "--threads", "1"]
    sizes = ["--size", "4M", "--size", "8M", "--size", "16M"]
    result = CliRunner().invoke(bench, args + sizes, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    for key in ("sweep_s", "reference_s", "speedup", "holdout", "predictions", "params", "unfitted", "record_id"):
        assert key in summary, key
    assert summary["configs"] == 1000 and summary["matches_reference"] is True
    assert summary["sources"] == ["measured"]
    assert {row["phase"] for row in summary["holdout"]} >= {"fault", "memcpy", "convert"}
    grid = {(row["mem"], row["folio"]) for row in summary["predictions"]}
    assert grid == {(m, f) for m in ("1 TiB", "2 TiB", "4 TiB") for f in ("4 KiB", "2 MiB", "1 GiB")}
    assert summary["blackout_phases"][FROM_BIRTH][0] == "preserve"
    assert (data / "runs" / summary["record_id"] / "bench.model.json").exists()

    again = CliRunner().invoke(bench, args + ["--from-records"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    refit = json.loads(again.output)
    assert refit["points"] == summary["points"]
    assert refit["sources"] == [f"bench.model:{summary['record_id']}"]
    assert refit["params"]["fault_per_byte_s"] == pytest.approx(summary["params"]["fault_per_byte_s"])


def test_cli_from_empty_records_says_what_to_run(tmp_path):
    from workbench.cli.bench import bench

    result = CliRunner().invoke(bench, ["model", "--json", "--from-records", "--data", str(tmp_path / "data")])
    assert result.exit_code != 0
    assert "no stored points" in result.output
