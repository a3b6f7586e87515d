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


def test_the_text_names_the_moment_the_pending_sessions_and_the_agreement(capsys):
    """What ``workbench inspect`` prints beyond the tables, for a next kernel that has not deserialized yet."""
    import numpy as np

    from tests.abi.helpers import area
    from tests.inspect.test_agreement import KERNEL, view
    from workbench.abi.luo import LuoFile, encode_luo
    from workbench.abi.memfd import MEMFD_LUO_FH_COMPATIBLE, encode_memfd
    from workbench.cli.inspect import _print_human
    from workbench.inspect.agreement import compare_views
    from workbench.inspect.moment import MomentFacts, moment_of
    from workbench.inspect.pending import incoming_sessions_from_bytes
    from workbench.inspect.snapshot import Snapshot

    mem, alloc = area(64)
    memfd = encode_memfd(np.array([alloc.alloc() // 4096]), np.array([0]), 4096, alloc)
    luo = encode_luo([("vm", [LuoFile(MEMFD_LUO_FH_COMPATIBLE, memfd.phys, 9)])], alloc)
    facts = MomentFacts(
        kexec_boot=True, incoming_active=True, incoming_pending_pa=luo.sessions_pa, incoming_pending_blocks=1
    )
    snap = Snapshot(source={"target": "vmcore"}, kho={}, luo={}, moment=moment_of(facts).as_dict())
    snap.tables["pending_incoming"] = incoming_sessions_from_bytes(mem, luo.sessions_pa)
    snap.tables["agreement"] = compare_views(KERNEL, view([("outgoing", "vm", 1, 8192, 2, (10, 11))]), listed=False)
    _print_human(snap)
    text = capsys.readouterr().out
    assert "moment: next_kernel_pending\n  - luo_session_global.incoming.block_set.head_pa is" in text
    assert (
        "Pending incoming sessions, from the handover bytes (LUO deserializes these sessions at the first open" in text
    )
    assert f"{memfd.phys:#x}" in text  # ser_phys in hex
    assert "Kernel objects against handover bytes (3 fact(s) in both: they agree):" in text
    summary = snap.summary()
    assert summary["moment"] == "next_kernel_pending" and summary["pending_incoming"][0]["token"] == 9
    assert summary["pending_incoming_note"].startswith("LUO deserializes") and summary["agreement"]["agree"] is True
    json.dumps(summary)
