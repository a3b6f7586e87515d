"""The moment of a live update from a kernel's LUO objects: every moment from the facts that decide it, then (``lab``)
the real lab kernel dumped at each of the seven moments of one cycle, its summary checked against what the agent
did: the inspector's (drgn on the dump) and the decoder's (``workbench abi decode`` of the same dump)."""

from __future__ import annotations

import json
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workbench.abi.moment import MOMENTS
from workbench.inspect.moment import IncomingSession, MomentFacts, moment_of


def first_kernel(**kwargs) -> MomentFacts:
    return MomentFacts(
        kexec_boot=False, incoming_active=False, incoming_pending_pa=0, incoming_pending_blocks=0, **kwargs
    )


def next_kernel(incoming=(), pending_pa: int = 0, **kwargs) -> MomentFacts:
    return MomentFacts(
        kexec_boot=True,
        incoming_active=True,
        incoming_pending_pa=pending_pa,
        incoming_pending_blocks=1 if pending_pa else 0,
        incoming=list(incoming),
        **kwargs,
    )


CASES = {
    "before_preserve": first_kernel(),
    "preserved": first_kernel(outgoing_sessions=1, outgoing_files=2),
    "serialized": first_kernel(outgoing_sessions=1, outgoing_files=2, outgoing_serialized_pa=0x5000),
    "next_kernel_pending": next_kernel(pending_pa=0x7000, device_open=False),
    "deserialized": next_kernel([IncomingSession("s", False, False, 2, 0)], device_open=True),
    "retrieved": next_kernel([IncomingSession("s", True, False, 2, 2)]),
    "finished": next_kernel([IncomingSession("s", True, True, 0, 0)]),
}


@pytest.mark.parametrize("moment", MOMENTS)
def test_each_moment_from_the_facts_that_decide_it(moment):
    reading = moment_of(CASES[moment])
    assert reading.moment == moment and reading.certain and reading.evidence


def test_the_evidence_names_the_kernel_objects():
    pending = moment_of(CASES["next_kernel_pending"])
    assert "incoming.block_set.head_pa is 0x7000" in pending.evidence[0]
    assert "first open of /dev/liveupdate (now not open)" in pending.evidence[0]
    assert "sessions_pa is 0x5000" in moment_of(CASES["serialized"]).evidence[-1]
    assert "only at reboot" in moment_of(CASES["preserved"]).evidence[-1]
    assert "['s']" in moment_of(CASES["deserialized"]).evidence[-1]


def test_a_session_without_files_is_not_a_preserved_moment():
    assert moment_of(first_kernel(outgoing_sessions=1)).moment == "before_preserve"


def test_finished_sessions_that_were_closed_are_finished_too():
    assert moment_of(next_kernel()).moment == "finished"


def test_after_the_incoming_update_the_next_one_counts():
    reading = moment_of(next_kernel(outgoing_sessions=1, outgoing_files=1))
    assert reading.moment == "preserved" and any("next live update" in e for e in reading.evidence)
    reading = moment_of(next_kernel([IncomingSession("s", True, False, 1, 1)], outgoing_sessions=1, outgoing_files=1))
    assert reading.moment == "retrieved"


def test_a_kexec_that_handed_over_no_session_is_read_on_the_outgoing_side():
    facts = MomentFacts(kexec_boot=True, incoming_active=False, incoming_pending_pa=0, incoming_pending_blocks=0)
    reading = moment_of(facts)
    assert reading.moment == "before_preserve" and "handed over no session" in reading.evidence[0]


# -- the real lab kernel at every moment -------------------------------------------------------------------------
LAB_SESSION = "moments"
LAB_TOKENS = [7, 1 << 63]
LAB_MEMFD_SIZE = 1 << 20
PAUSES = {"prepare": "before_preserve", "preserve": "preserved", "restore": "retrieved"}


@dataclass
class Moments:
    """An ELF vmcore of the guest at each moment, the kernel's slide, and what went wrong on the way."""

    result: dict = field(default_factory=dict)
    dumps: dict[str, Path] = field(default_factory=dict)
    slide: int | None = None
    errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def moments(lab_kernel, tmp_path_factory) -> Moments:
    """One cycle of two small memfds, dumped at each of the seven moments: at the pauses after prepare, preserve
    and restore, and at the entry of the kernel functions that begin the others
    (:data:`~workbench.lab.moment_dumps.MOMENT_STOPS`, armed at the pause after preserve)."""
    from workbench.lab.capture import gdbstub_qemu_args, short_socket_dir
    from workbench.lab.cycle import run_cycle
    from workbench.lab.moment_dumps import MOMENT_STOPS, MomentDumps
    from workbench.lab.params import CycleParams
    from workbench.lab.qemu_target import QemuTarget
    from workbench.lab.workloads.memfd import MemfdWorkload
    from workbench.records import RecordStore

    out = Moments()
    sockets = short_socket_dir()
    socket = sockets / "gdb"
    dumpers: list[MomentDumps] = []

    def on_pause(phase, vm):
        try:
            path = vm.workdir / f"moment-{PAUSES[phase]}.elf"
            vm.dump_guest_memory(path)
            out.dumps[PAUSES[phase]] = path
            if phase == "preserve":
                dumper = MomentDumps(vm, Path(lab_kernel.vmlinux), socket, vm.workdir, list(MOMENT_STOPS))
                dumper.arm()
                dumpers.append(dumper)
        except Exception:  # noqa: BLE001 - collected and asserted on by the tests
            out.errors.append(f"{phase}: {traceback.format_exc()}")

    workload = MemfdWorkload(memfds=len(LAB_TOKENS), memfd_size=LAB_MEMFD_SIZE, tokens=LAB_TOKENS)
    target = QemuTarget(lab_kernel, qemu_args=gdbstub_qemu_args(socket), kernel_args="nokaslr no_timer_check")
    params = CycleParams(session=LAB_SESSION, pause_after=list(PAUSES))
    store = RecordStore(tmp_path_factory.mktemp("moments") / "data")
    try:
        out.result = run_cycle(workload, params, target=target, store=store, on_pause=on_pause)
    finally:
        for dumper in dumpers:
            dumper.finish()
            out.dumps.update(dumper.dumps)
            out.errors += dumper.errors + [f"never reached {m}" for m in dumper.missing()]
            out.slide = dumper.slide
        shutil.rmtree(sockets, ignore_errors=True)
    yield out
    for path in out.dumps.values():
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def seen(moments, lab_kernel) -> dict[str, dict]:
    """At each moment: the inspector's summary (drgn on the dump) and ``workbench abi decode --json`` of it."""
    from click.testing import CliRunner

    from workbench.cli.abi import abi
    from workbench.inspect import open_vmcore, snapshot

    out = {}
    for moment, path in moments.dumps.items():
        prog = open_vmcore(path, lab_kernel.vmlinux)
        snap = snapshot(prog, memory=False)
        del prog
        decoded = CliRunner().invoke(abi, ["decode", "--vmcore", str(path), "--json"])
        out[moment] = {
            "snapshot": snap,
            "summary": json.loads(json.dumps(snap.summary(), default=str)),
            "decode": json.loads(decoded.stdout) if decoded.exit_code == 0 else decoded.output,
        }
    return out


@pytest.mark.lab
def test_the_cycle_was_stopped_at_every_moment(moments):
    assert moments.errors == []
    assert moments.result["verified"] is True and moments.slide == 0  # nokaslr: the addresses hold after the kexec
    assert sorted(moments.dumps, key=MOMENTS.index) == list(MOMENTS)


@pytest.mark.lab
@pytest.mark.parametrize("moment", MOMENTS)
def test_the_inspector_names_each_moment(seen, moment):
    summary = seen[moment]["summary"]
    assert summary["moment"] == moment, summary["moment_evidence"]
    assert summary["moment_certain"] is True and summary["moment_evidence"]
    assert summary["errors"] == {}


def _sessions(summary: dict, direction: str) -> list[dict]:
    return [s for s in summary["luo"]["sessions"] if s["direction"] == direction]


@pytest.mark.lab
def test_before_and_after_preserve_the_kernel_and_the_bytes_say_the_same(seen):
    before, preserved = seen["before_preserve"], seen["preserved"]
    assert _sessions(before["summary"], "outgoing") == []
    assert before["decode"]["summary"]["moment"] == "before_preserve"
    (session,) = _sessions(preserved["summary"], "outgoing")
    assert session["name"] == LAB_SESSION and session["tokens"] == LAB_TOKENS
    decoded = preserved["decode"]["summary"]
    assert decoded["moment"] == "preserved" and decoded["sessions"] == []
    assert "only at reboot" in decoded["sessions_note"]  # says why it finds no sessions
    table = preserved["snapshot"].tables["agreement"]
    assert set(table["what"]) == {"size", "folios", "pfns", "pfns preserved"}
    assert set(table["token"]) == set(LAB_TOKENS) and table["agree"].all()
    assert table.loc[table["what"] == "size", "kernel"].tolist() == [str(LAB_MEMFD_SIZE)] * len(LAB_TOKENS)


@pytest.mark.lab
def test_at_the_kexec_sessions_and_tokens_are_in_both_and_agree(seen):
    serialized = seen["serialized"]
    agreement = serialized["summary"]["agreement"]
    assert agreement["agree"] is True and agreement["one_sided"] == 0
    table = serialized["snapshot"].tables["agreement"]
    tokens = table[table["what"] == "tokens"].iloc[0]
    assert tokens["session"] == LAB_SESSION and tokens["kernel"] == tokens["bytes"] == ", ".join(map(str, LAB_TOKENS))
    decoded = serialized["decode"]
    assert decoded["summary"]["moment"] == "serialized" and decoded["summary"]["sessions"] == [LAB_SESSION]
    assert [f["token"] for f in decoded["files"]] == LAB_TOKENS


@pytest.mark.lab
def test_before_deserialization_the_pending_sessions_come_from_the_bytes(seen):
    pending = seen["next_kernel_pending"]
    summary = pending["summary"]
    assert _sessions(summary, "incoming") == []  # no struct luo_session yet
    rows = summary["pending_incoming"]
    assert [(r["session"], r["token"]) for r in rows] == [(LAB_SESSION, t) for t in LAB_TOKENS]
    pages = LAB_MEMFD_SIZE // 4096
    assert {(r["size"], r["folios"], r["pages"]) for r in rows} == {(LAB_MEMFD_SIZE, pages, pages)}
    assert "first open of /dev/liveupdate" in summary["pending_incoming_note"]
    decoded = pending["decode"]
    assert decoded["summary"]["role"] == "incoming" and decoded["summary"]["memory_map_consumed"] is True
    assert decoded["unpreserved_references"] == []  # no false alarms from the consumed map
    assert decoded["summary"]["moment"] == "next_kernel_pending" and decoded["summary"]["moment_certain"] is False
    assert {h["role"] for h in decoded["handovers"]} == {"incoming", "outgoing"}


@pytest.mark.lab
def test_after_deserialization_the_kernel_holds_the_sessions_and_the_bytes_the_memfds(seen):
    deserialized = seen["deserialized"]
    summary = deserialized["summary"]
    (session,) = _sessions(summary, "incoming")
    assert session["name"] == LAB_SESSION and session["tokens"] == LAB_TOKENS and not session["retrieved"]
    assert summary["pending_incoming"] == []
    table = deserialized["snapshot"].tables["agreement"]
    sizes = table[table["what"] == "size"]
    assert sizes["bytes"].tolist() == [str(LAB_MEMFD_SIZE)] * len(LAB_TOKENS) and sizes["agree"].isna().all()


@pytest.mark.lab
def test_retrieved_then_finished(seen):
    (retrieved,) = _sessions(seen["retrieved"]["summary"], "incoming")
    assert retrieved["retrieved"] and not retrieved["finished"] and retrieved["tokens"] == LAB_TOKENS
    (finished,) = _sessions(seen["finished"]["summary"], "incoming")
    assert finished["retrieved"] and finished["finished"] and finished["tokens"] == []
    for moment in ("retrieved", "finished"):
        decoded = seen[moment]["decode"]["summary"]
        assert decoded["memory_map_consumed"] is True and decoded["moment"] == "next_kernel_pending"
        assert "deserialized" in decoded["moment_possible"] and "finished" in decoded["moment_possible"]


@pytest.mark.lab
def test_the_command_line_shows_the_pending_sessions(moments, lab_kernel, tmp_path):
    from click.testing import CliRunner

    from workbench.cli import main

    dump = moments.dumps["next_kernel_pending"]
    args = ["inspect", "--vmcore", str(dump), "--vmlinux", str(lab_kernel.vmlinux), "--no-memory-map"]
    args += ["--data", str(tmp_path)]
    out = CliRunner().invoke(main, [*args, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["moment"] == "next_kernel_pending" and [r["token"] for r in data["pending_incoming"]] == LAB_TOKENS
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0, text.output
    assert "moment: next_kernel_pending" in text.output and "Pending incoming sessions" in text.output


@pytest.mark.lab
def test_a_running_vm_read_live_names_its_moment(inspection):
    """The shared inspected cycle (tests/conftest.py), read live over QMP and through the guest RAM file at its
    pauses after prepare, preserve and restore."""
    assert not inspection.errors, "\n".join(inspection.errors)
    for phase, moment in PAUSES.items():
        for snapshots in (inspection.snapshots, inspection.ram_snapshots):
            snap = snapshots[phase]
            assert snap.moment["moment"] == moment and snap.errors == {}, (phase, snap.moment, snap.errors)
    agreement = inspection.snapshots["preserve"].summary()["agreement"]
    assert agreement["agree"] is True and agreement["checked"] > 0
