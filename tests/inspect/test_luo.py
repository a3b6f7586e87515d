"""LUO helpers against the lab kernel at each pause of the shared cycle (tests/inspect/conftest.py)."""

from __future__ import annotations

import pytest

from tests.inspect.conftest import TOKENS

pytestmark = pytest.mark.lab


def test_after_prepare_there_is_no_session_yet(inspection):
    assert not inspection.errors, "\n".join(inspection.errors)
    luo = inspection.snapshots["prepare"].luo
    assert luo["enabled"] is True
    assert luo["sessions"] == []
    assert luo["outgoing_sessions"] == luo["incoming_sessions"] == 0
    assert luo["liveupdate_num"] == 0 and luo["next_liveupdate_num"] == 1
    assert luo["device_open"] is True  # the agent holds /dev/liveupdate from prepare on
    assert luo["file_handlers"] == ["memfd-v2"]
    assert luo["flbs"] == []  # memfd needs no FLB; no test module registers one
    assert inspection.snapshots["prepare"].tables["luo_summary"].empty


def test_after_preserve_the_agents_session_holds_its_memfds(inspection):
    snap = inspection.snapshots["preserve"]
    (session,) = snap.luo["sessions"]
    assert session["direction"] == "outgoing" and session["name"] == "workbench"
    assert session["tokens"] == TOKENS and session["files"] == len(TOKENS)
    assert session["retrieved"] is False and session["finished"] is False
    files = snap.tables["files"]
    assert list(files["token"]) == TOKENS
    assert set(files["compatible"]) == {"memfd-v2"}
    assert (files["retrieve_status"] == 0).all() and (files["file"] != 0).all()
    assert (files["serialized_data"] % 8 == 0).all() and (files["serialized_data"] > 0).all()
    summary = snap.tables["luo_summary"]
    assert list(summary.columns[:4]) == ["direction", "session", "retrieved", "finished"]
    assert list(summary["token"]) == TOKENS


def test_sessions_are_not_serialized_before_the_kexec(inspection):
    # luo_ser.sessions_pa is written by liveupdate_reboot(); the ABI view therefore shows no session yet
    snap = inspection.snapshots["preserve"]
    assert snap.luo["outgoing_sessions"] == 1
    assert snap.tables["sessions"]["blocks"].tolist() == [1]  # the file block exists, allocated at preserve


def test_after_restore_the_incoming_session_is_retrieved_not_finished(inspection, lab_kernel):
    snap = inspection.snapshots["restore"]
    luo = snap.luo
    assert luo["liveupdate_num"] == 1 and luo["next_liveupdate_num"] == 2
    assert luo["incoming_active"] is True
    assert luo["outgoing_sessions"] == 0 and luo["incoming_sessions"] == 1
    (session,) = luo["sessions"]
    assert session["direction"] == "incoming" and session["name"] == "workbench"
    assert session["retrieved"] is True and session["finished"] is False
    assert session["tokens"] == TOKENS
    files = snap.tables["files"]
    assert (files["retrieve_status"] == 1).all() and files["retrieved"].all()
    # the cycle went on to finish: the agent reported it
    assert inspection.result["verified"] is True


def test_the_cli_over_qmp_printed_the_same_sessions(inspection):
    assert inspection.cli_error is None, inspection.cli_error
    out = inspection.cli_json
    assert out["source"]["target"] == "qmp"
    assert out["luo"]["sessions"] == inspection.snapshots["preserve"].luo["sessions"]
    assert out["kho"]["preserved_pages"] == inspection.snapshots["preserve"].kho["preserved_pages"]
    from workbench.records import RecordStore

    record = RecordStore(inspection.cli_data).get(out["record_id"])
    assert record.kind == "inspect" and record.status == "ok"
    assert {"kho_summary", "luo_summary", "memfds", "memfd_folios", "preserved", "scratch"} <= set(record.table_names)
