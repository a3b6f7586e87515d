"""``workbench inspect``: argument checks and errors without a VM; a real dump with the lab kernel."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from workbench.cli import main


def test_exactly_one_target_is_required(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "exactly one of --qmp" in result.output
    result = runner.invoke(main, ["inspect", "--live", "--qmp", "x", "--data", str(tmp_path)])
    assert result.exit_code == 2


def test_unreachable_vm_fails_with_the_reason_and_is_recorded(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", "--qmp", str(tmp_path / "nope"), "--data", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert "VmUnreachable" in result.output and "does not exist" in result.output
    from workbench.records import RecordStore

    (record,) = RecordStore(tmp_path / "data").runs(kind="inspect")
    assert record.status == "failed"


def test_not_a_dump(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"junk" * 100)
    result = CliRunner().invoke(main, ["inspect", "--vmcore", str(junk), "--data", str(tmp_path / "data")])
    assert result.exit_code == 1 and "UnreadableDump" in result.output


@pytest.mark.lab
def test_inspect_a_real_dump_as_json_and_as_text(inspection, lab_kernel, tmp_path):
    vmcore = inspection.result["vmcores"]["preserve"]
    runner = CliRunner()
    args = ["inspect", "--vmcore", vmcore, "--vmlinux", str(lab_kernel.vmlinux), "--data", str(tmp_path)]
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["source"]["target"] == "vmcore"
    assert out["luo"]["sessions"][0]["tokens"] == [1000]
    assert out["memfds"][0]["size"] == 8 << 20
    text = runner.invoke(main, args)
    assert text.exit_code == 0, text.output
    for heading in ("KHO:", "LUO sessions and files:", "Preserved memfds:", "recorded as"):
        assert heading in text.output
    from workbench.records import RecordStore

    runs = RecordStore(tmp_path).runs(kind="inspect")
    assert len(runs) == 2 and all(r.status == "ok" for r in runs)
