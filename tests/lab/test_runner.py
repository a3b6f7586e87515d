"""What every target's cycle runner shares (:class:`workbench.lab.runner.MarkRunner`), against a real line source:
the agent's ``WB-MARK`` lines travel through ``cat`` over an SSH channel to the in-process SSH server of
:mod:`tests.lab.ssh.conftest`, so they arrive as the output of a real remote command does, when the test sends
them. Then the runner's reading of the agent's state files and the result it builds from them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.lab.ssh.conftest import LocalSshd
from tests.lab.test_share_files import state_like
from workbench.jsonfile import write_json_atomic
from workbench.lab.errors import (
    CycleCancelled,
    CycleFailed,
    CycleTimedOut,
    ShareFileError,
    ShareFileMalformed,
    TargetLost,
    Unverified,
)
from workbench.lab.params import CycleParams
from workbench.lab.protocol import Event, format_mark
from workbench.lab.qemu import SerialLine
from workbench.lab.runner import CycleEvent, MarkRunner
from workbench.lab.ssh.connection import SshChannelSource, connect
from workbench.lab.workloads.memfd import MemfdWorkload
from workbench.records import RecordStore


class _Runner(MarkRunner):
    """A runner whose pauses are noted, with the agent's output logged as an SSH target's is."""

    log_name = "agent log"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pauses: list[str] = []

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def paused(self, phase: str, timeout: float) -> None:
        self.pauses.append(phase)


class _LateLineSource(SshChannelSource):
    """Sends ``late`` when a poll of :meth:`wait_for` has just given up, and returns once the line has arrived (and,
    with ``then_stop``, once the remote command has ended too): a line that comes in at the moment a wait times
    out, as the agent's last line does when it exits."""

    late: str | None = None
    then_stop = False

    def wait_for(self, predicate, timeout, start=0, cancel=None):
        hit = super().wait_for(predicate, timeout, start, cancel)
        if hit is None and self.late is not None:
            count = len(self.lines)
            self.send(self.late + "\n")
            self.late = None
            deadline = time.monotonic() + 10
            while len(self.lines) == count and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.then_stop:
                _finish(self)
        return hit


@pytest.fixture(scope="module")
def ssh_client(tmp_path_factory):
    with LocalSshd(tmp_path_factory.mktemp("sshd")) as server:
        client = connect(server.host())
        yield client
        client.close()


@pytest.fixture
def run(tmp_path):
    with RecordStore(tmp_path / "data").run("lab.cycle", {}) as active:
        yield active


@pytest.fixture
def events() -> list[CycleEvent]:
    return []


@pytest.fixture
def runner(run, events) -> _Runner:
    workload = MemfdWorkload(memfds=2, memfd_size=8192)
    return _Runner(workload, CycleParams(session="wb-test"), run, events.append, threading.Event())


def _follow(runner: MarkRunner, client, source_class: type[SshChannelSource] = SshChannelSource) -> SshChannelSource:
    """``cat`` on the SSH host, its output the runner's source: what the test sends comes back line by line."""
    source = source_class(client, "cat", runner.workdir / "agent.log", on_line=runner.on_line)
    runner.source = source
    return source


def _send(source: SshChannelSource, *lines: str) -> None:
    source.send("".join(line + "\n" for line in lines))


def _finish(source: SshChannelSource) -> None:
    """Ends the remote ``cat`` and waits until every line has reached the runner."""
    source.chan.shutdown_write()
    assert source.wait_exit(20) == 0 and not source.running


# -- waiting for marks -----------------------------------------------------------------------------------------
def test_wait_mark_finds_each_mark_once_among_kernel_noise(runner, ssh_client, events):
    source = _follow(runner, ssh_client)
    _send(
        source,
        "[    0.000000] Linux version 6.18.0-wb (gcc 14.2)",
        format_mark(Event.AGENT_START, {"phase": "prepare"}),
        "[    1.204311] random: crng init done",
        "[    1.310007] virtio_blk virtio1: [vda] 2097152 512-byte blocks"
        + format_mark(Event.PHASE_BEGIN, {"phase": "x"}),
        format_mark(Event.PHASE_END, {"phase": "prepare", "s": 0.25}),
        "[    2.000001] audit: type=1400 WB-MARKER is not a mark",
        format_mark(Event.PHASE_END, {"phase": "preserve", "s": 0.5}),
    )
    t0 = time.monotonic()
    event, data, t = runner.wait_mark((Event.PHASE_END,), 20, "preparing")
    assert (event, data) == (Event.PHASE_END, {"phase": "prepare", "s": 0.25})
    assert t0 - 20 < t <= time.monotonic()  # the host's arrival time of the line
    assert runner.wait_mark((Event.PHASE_END,), 20, "preserving")[1] == {"phase": "preserve", "s": 0.5}
    _finish(source)
    assert [(e, d) for e, d, _ in runner.marks] == [
        (Event.AGENT_START, {"phase": "prepare"}),
        (Event.PHASE_BEGIN, {"phase": "x"}),
        (Event.PHASE_END, {"phase": "prepare", "s": 0.25}),
        (Event.PHASE_END, {"phase": "preserve", "s": 0.5}),
    ]
    assert [e.text for e in events if e.kind == "line"] == [ln.text for ln in source.lines]
    assert len(source.lines) == 7
    phases = [(e.name, e.status, e.seconds) for e in events if e.kind == "phase"]
    assert phases == [("x", "begin", None), ("prepare", "end", 0.25), ("preserve", "end", 0.5)]
    assert "random: crng init done" in runner.log_path.read_text()


def test_wait_mark_waits_for_a_mark_that_comes_later_and_passes_over_other_marks(runner, ssh_client):
    source = _follow(runner, ssh_client)
    _send(source, format_mark(Event.PHASE_END, {"phase": "load", "s": 1.0}))
    timer = threading.Timer(0.4, _send, (source, "kexec_core: starting new kernel", format_mark(Event.KEXEC_READY)))
    t0 = time.monotonic()
    timer.start()
    try:
        event, data, t = runner.wait_mark((Event.KEXEC_READY,), 20, "loading the next kernel")
    finally:
        timer.join()
    assert (event, data) == (Event.KEXEC_READY, {"text": ""})
    assert t - t0 >= 0.4
    # the phase-end before the kexec-ready was passed over: the next wait only sees what comes after
    _send(source, format_mark(Event.PHASE_END, {"phase": "restore", "s": 2.0}))
    assert runner.wait_mark((Event.PHASE_END,), 20, "restoring")[1]["phase"] == "restore"
    _finish(source)


def test_a_mark_arriving_as_a_poll_times_out_is_not_lost(runner, ssh_client):
    source = _follow(runner, ssh_client, _LateLineSource)
    source.late = format_mark(Event.DONE, {"verified": True, "pages_checked": 4})
    event, data, _ = runner.wait_mark((Event.DONE,), 5, "verifying")
    assert (event, data) == (Event.DONE, {"verified": True, "pages_checked": 4})
    _finish(source)


def test_the_last_mark_of_a_source_that_stops_as_a_poll_times_out_is_not_lost(runner, ssh_client):
    source = _follow(runner, ssh_client, _LateLineSource)
    source.late, source.then_stop = format_mark(Event.DONE, {"verified": True, "pages_checked": 4}), True
    assert runner.wait_mark((Event.DONE,), 5, "verifying")[0] == Event.DONE
    assert not source.running


def test_an_error_mark_fails_with_the_message_from_the_agents_state_file(runner, ssh_client):
    error = {"type": "OSError", "message": "[Errno 22] preserving memfd 1 failed"}
    write_json_atomic(runner.results / "prepare.json", {"phases": {"prepare": 0.2}, "error": error})
    source = _follow(runner, ssh_client)
    _send(source, "noise", format_mark(Event.ERROR, {"phase": "preserve", "message": "the short version"}))
    with pytest.raises(CycleFailed) as caught:
        runner.wait_mark((Event.PHASE_END,), 20, "preserving")
    exc = caught.value
    assert type(exc) is CycleFailed and exc.phase == "preserve"
    assert exc.args[0] == "the agent reported: OSError: [Errno 22] preserving memfd 1 failed"
    assert (exc.serial_log, exc.log_name) == (runner.log_path, "agent log")
    assert str(exc).endswith(f"; agent log: {runner.log_path}")
    # after the kexec, restore.json's error is the one that counts
    write_json_atomic(runner.results / "restore.json", {"error": {"type": "LookupError", "message": "no token 1001"}})
    _send(source, format_mark(Event.ERROR, {"phase": "restore"}))
    with pytest.raises(CycleFailed, match="the agent reported: LookupError: no token 1001"):
        runner.wait_mark((Event.DONE,), 20, "verifying")
    _finish(source)


def test_an_error_mark_without_a_state_file_carries_its_own_message(runner, ssh_client):
    source = _follow(runner, ssh_client)
    _send(source, "Run /init as init process", format_mark(Event.INIT_ERROR) + " mounting /proc failed")
    with pytest.raises(CycleFailed) as caught:
        runner.wait_mark((Event.AGENT_START,), 20, "booting")
    assert caught.value.phase == "boot"  # the mark names no phase: the runner's current one
    assert caught.value.args[0] == "the agent reported: mounting /proc failed"
    _send(source, format_mark(Event.ERROR, {"phase": "prepare", "message": "no /dev/liveupdate"}))
    with pytest.raises(CycleFailed, match="phase prepare: the agent reported: no /dev/liveupdate"):
        runner.wait_mark((Event.AGENT_START,), 20, "booting")
    _finish(source)


def test_a_source_that_stops_is_a_lost_target(runner, ssh_client):
    source = _follow(runner, ssh_client)
    runner.phase = "restore"
    _send(source, "reboot: Restarting system", format_mark(Event.PHASE_BEGIN, {"phase": "restore"}))
    threading.Timer(0.3, source.chan.shutdown_write).start()
    t0 = time.monotonic()
    with pytest.raises(TargetLost) as caught:
        runner.wait_mark((Event.PHASE_END,), 30, "retrieving the session")
    assert time.monotonic() - t0 < 10
    assert caught.value.phase == "restore"
    assert caught.value.args[0] == "the target stopped while retrieving the session"


def test_a_mark_that_never_comes_times_out(runner, ssh_client):
    source = _follow(runner, ssh_client)
    runner.phase = "verify"
    _send(source, "[   12.5] still verifying, nothing to report")
    t0 = time.monotonic()
    with pytest.raises(CycleFailed) as caught:
        runner.wait_mark((Event.PHASE_END,), 1.2, "verifying")
    elapsed = time.monotonic() - t0
    assert type(caught.value) is CycleTimedOut and caught.value.phase == "verify"
    assert caught.value.args[0] == "timed out after 1 s verifying"
    assert 1.2 <= elapsed < 5
    assert source.running  # the target is still there: a timeout, not a lost target
    _finish(source)


def test_cancelling_interrupts_the_wait(runner, ssh_client):
    source = _follow(runner, ssh_client)
    threading.Timer(0.3, runner.cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(CycleCancelled):
        runner.wait_mark((Event.PHASE_END,), 60, "preparing")
    assert time.monotonic() - t0 < 5
    _send(source, format_mark(Event.PHASE_END, {"phase": "prepare"}))  # even with the mark there, cancelled first
    with pytest.raises(CycleCancelled):
        runner.wait_mark((Event.PHASE_END,), 60, "preparing")
    _finish(source)


def test_wait_phases_follows_the_phase_ends_and_pauses_where_asked(runner, ssh_client):
    source = _follow(runner, ssh_client)
    _send(
        source,
        format_mark(Event.PHASE_END, {"phase": "prepare", "s": 0.1}),
        format_mark(Event.PAUSED, {"phase": "prepare"}),
        format_mark(Event.PHASE_END, {"phase": "preserve", "s": 0.2}),
    )
    threading.Timer(0.3, _send, (source, format_mark(Event.PHASE_END, {"phase": "load", "s": 0.3}))).start()
    runner.wait_phases(("prepare", "preserve", "load"), ["prepare"], 20)
    assert runner.pauses == ["prepare"] and runner.phase == "load"
    with pytest.raises(CycleFailed) as caught:
        runner.wait_phases(("restore",), [], 1)
    assert caught.value.phase == "restore"
    assert caught.value.args[0] == "timed out after 1 s retrieving the session"
    with pytest.raises(CycleFailed, match="timed out after 1 s in phase convert"):
        runner.wait_phases(("convert",), [], 1)
    _finish(source)


def test_on_line_turns_the_kexec_marks_into_phase_events(runner, events):
    for i, text in enumerate(
        [
            format_mark(Event.KEXEC),
            "[    0.000000] Linux version 6.18.0-wb",
            format_mark(Event.AGENT_START, {"phase": "restore"}),
        ]
    ):
        runner.on_line(SerialLine(100.0 + i, text))
    phases = [(e.name, e.status, e.host_time) for e in events if e.kind == "phase"]
    assert phases == [("kexec", "begin", 100.0), ("kexec", "end", 102.0)]
    events.clear()
    runner.kexec_ends_at_agent = False  # over SSH the kexec ends elsewhere
    runner.on_line(SerialLine(200.0, format_mark(Event.AGENT_START, {"phase": "restore"})))
    assert [e.kind for e in events] == ["line"]
    assert [m[0] for m in runner.marks] == [Event.KEXEC, Event.AGENT_START, Event.AGENT_START]


# -- the agent's state files and the result ---------------------------------------------------------------------
def test_read_state_checks_the_agents_file(runner):
    write_json_atomic(runner.results / "prepare.json", {"session": "wb-test", "phases": {"prepare": 0.5}})
    assert runner.read_state("prepare") == {"session": "wb-test", "phases": {"prepare": 0.5}}
    runner.phase = "verify"
    with pytest.raises(CycleFailed, match=r"the agent's restore\.json cannot be used: .* is missing") as caught:
        runner.read_state("restore")
    assert caught.value.phase == "verify" and isinstance(caught.value.__cause__, ShareFileError)
    (runner.results / "restore.json").write_text('["not", "an", "object"]')
    with pytest.raises(CycleFailed, match=r"restore\.json cannot be used: .* holds a JSON array, not an object"):
        runner.read_state("restore")
    (runner.results / "restore.json").write_text('{"verified": tru')
    with pytest.raises(CycleFailed, match=r"restore\.json cannot be used: .* is not JSON"):
        runner.read_state("restore")


def test_a_state_file_of_the_wrong_shape_fails_the_cycle_naming_the_file_and_the_field(runner):
    restore = {"verified": True, "finished": True, "memfds": [_memfd(0, []), {**_memfd(1, []), "size": "8192"}]}
    write_json_atomic(runner.results / "restore.json", restore)
    with pytest.raises(CycleFailed) as caught:
        runner.read_state("restore")
    cause = caught.value.__cause__
    assert isinstance(cause, ShareFileMalformed) and cause.field == "memfds[1].size"
    assert cause.path == runner.results / "restore.json"
    assert "restore.json: the field memfds[1].size is a JSON string, not an integer" in str(caught.value)


def test_a_state_file_that_links_out_of_the_share_is_not_followed(runner, tmp_path):
    outside = tmp_path / "host-secret.json"
    write_json_atomic(outside, {"session": "the host's own file"})
    (runner.results / "prepare.json").symlink_to(outside)
    with pytest.raises(CycleFailed, match=r"prepare\.json is a symlink"):
        runner.read_state("prepare")
    assert runner.agent_error() is None and runner.failure_details() == {}


def test_on_line_passes_over_phase_marks_that_are_not_whole(runner, events):
    for i, text in enumerate(
        [
            'WB-MARK phase-begin {"phase": 7}',
            "WB-MARK phase-end {}",
            "WB-MARK phase-end not json",
            'WB-MARK phase-end {"phase": "verify", "s": "fast"}',
            'WB-MARK phase-end {"phase": "verify", "s": 0.5}',
        ]
    ):
        runner.on_line(SerialLine(100.0 + i, text))
    phases = [(e.name, e.status, e.seconds) for e in events if e.kind == "phase"]
    assert phases == [("verify", "end", None), ("verify", "end", 0.5)]
    assert len(runner.marks) == 5  # every mark is kept as the agent printed it


def test_agent_error_prefers_restore_and_skips_what_cannot_be_read(runner):
    assert runner.agent_error() is None
    write_json_atomic(runner.results / "prepare.json", {"phases": {}})
    assert runner.agent_error() is None
    write_json_atomic(runner.results / "prepare.json", {"error": {"type": "ValueError", "message": "bad size"}})
    assert runner.agent_error() == "ValueError: bad size"
    (runner.results / "restore.json").write_text("{half a file")
    assert runner.agent_error() == "ValueError: bad size"
    write_json_atomic(runner.results / "restore.json", {"error": "a string, not the agent's error object"})
    assert runner.agent_error() == "ValueError: bad size"
    write_json_atomic(runner.results / "restore.json", {"error": {"type": "OSError", "message": "EIO"}})
    assert runner.agent_error() == "OSError: EIO"


def test_phases_of_orders_the_guest_phases_around_the_hosts_kexec(runner):
    prepare = {"phases": {"load": 0.3, "prepare": 0.1, "preserve": 0.2, "boot": 9.0}}
    restore = {"phases": {"finish": 0.05, "verify": 0.5, "restore": 0.4}}
    phases = runner.phases_of(prepare, restore, 1.5)
    assert list(phases.items()) == [
        ("prepare", 0.1),
        ("preserve", 0.2),
        ("load", 0.3),
        ("kexec", 1.5),
        ("restore", 0.4),
        ("verify", 0.5),
        ("finish", 0.05),
    ]
    assert runner.phases_of({}, {}, 2.0) == {"kexec": 2.0}  # a cycle that stopped early


def _memfd(index: int, differing: list[int]) -> dict:
    return {
        "memfd": index,
        "token": 1000 + index,
        "size": 8192,
        "expected_size": 8192,
        "pages": 2,
        "differing_pages": differing,
        "differing_count": len(differing),
    }


def test_agent_result_reports_what_every_cycle_reports(runner):
    prepare = {
        "session": "wb-test-kernel-name",
        "kernel_release_before": "6.18.0-wb",
        "hash_impl": "xxh3-64-numba",
        "phases": {"prepare": 0.1, "preserve": 0.2, "load": 0.3},
        "events": ["fault injection: page 0 of memfd 1 modified"],
        "modify_after_preserve": {"pwrite": "refused: Operation not permitted", "mmap_store": "written"},
    }
    restore = {
        "kernel_release_after": "6.18.0-wb+",
        "phases": {"restore": 0.4, "verify": 0.5, "finish": 0.05},
        "memfds": [_memfd(0, []), _memfd(1, [0])],
        "verified": False,
        "finished": True,
        "pages_checked": 4,
        "events": ["restored"],
    }
    result = runner.agent_result(prepare, restore, t_kexec=10.0, t_back=12.5)
    assert result["verified"] is False and result["pages_checked"] == 4
    assert result["session"] == "wb-test-kernel-name" and result["hash"] == "xxh3-64-numba"
    assert result["blackout_s"] == 2.5 and result["phases"]["kexec"] == 2.5
    assert list(result["phases"]) == ["prepare", "preserve", "load", "kexec", "restore", "verify", "finish"]
    assert result["kernel_release"] == {"before": "6.18.0-wb", "after": "6.18.0-wb+"}
    assert (result["kernel_release_before"], result["kernel_release_after"]) == ("6.18.0-wb", "6.18.0-wb+")
    assert result["memfds"] == restore["memfds"] and result["differing_pages"] == {"1": [0]}
    assert result["events"] == ["fault injection: page 0 of memfd 1 modified", "restored"]
    assert result["modify_after_preserve"] == prepare["modify_after_preserve"]  # the memfd workload's own field

    clean = {**restore, "memfds": [_memfd(0, []), _memfd(1, [])], "verified": True, "events": []}
    ok = runner.agent_result({}, clean, 10.0, 11.0)
    assert ok["verified"] is True and ok["differing_pages"] == {} and "events" not in ok
    assert ok["session"] == "wb-test" and ok["hash"] is None  # the requested session when the agent named none
    unfinished = runner.agent_result({}, {**clean, "finished": False}, 10.0, 11.0)
    assert unfinished["verified"] is False  # verified data but a session not finished is no success


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(prepare=state_like, restore=state_like)
def test_state_files_the_runner_accepts_always_make_a_result(runner, prepare, restore):
    # whatever the agent wrote: the cycle fails naming the file, or the result (and its verdict) can be built
    write_json_atomic(runner.results / "prepare.json", prepare)
    write_json_atomic(runner.results / "restore.json", restore)
    try:
        states = runner.read_state("prepare"), runner.read_state("restore")
    except CycleFailed as exc:
        assert isinstance(exc.__cause__, ShareFileMalformed) and exc.__cause__.field
        return
    result = runner.agent_result(*states, t_kexec=1.0, t_back=2.0)
    assert isinstance(result["verified"], bool) and isinstance(result["phases"], dict)
    if not result["verified"]:
        assert str(Unverified(result)).startswith("verification failed")
