"""The QMP client against a QMP monitor served on a real unix socket: the greeting, capabilities negotiation,
commands and their errors, events in between, a connection that closes, a monitor that never greets."""

from __future__ import annotations

import threading

import pytest

from tests.lab.fake_qemu import FakeQmp, QmpFailure, short_socket_path
from workbench.lab.errors import LabError, QMPError
from workbench.lab.qmp import QMPClient


@pytest.fixture
def socket_path():
    path = short_socket_path("qmp")
    yield path
    if path.parent.exists():
        path.parent.rmdir()


def test_greeting_capabilities_and_a_command(socket_path):
    status = {"status": "running", "running": True}
    with FakeQmp(socket_path, {"query-status": status}) as qemu, QMPClient(socket_path, timeout=5) as qmp:
        assert qmp.greeting["QMP"]["version"]["qemu"]["major"] == 9
        assert qmp.execute("query-status") == status
    assert qemu.received == [{"execute": "qmp_capabilities"}, {"execute": "query-status"}]


def test_arguments_are_sent_and_events_skipped(socket_path):
    replies = {"qom-get": lambda args: f"{args['path']}.{args['property']}", "stop": {}}
    with FakeQmp(socket_path, replies, events=("stop",)) as qemu, QMPClient(socket_path, timeout=5) as qmp:
        assert qmp.execute("stop") == {}
        assert qmp.execute("qom-get", path="/objects/ram0", property="mem-path") == "/objects/ram0.mem-path"
    assert qemu.received[-1] == {"execute": "qom-get", "arguments": {"path": "/objects/ram0", "property": "mem-path"}}


def test_human_monitor_commands(socket_path):
    replies = {"human-monitor-command": lambda args: f"ran {args['command-line']}\r\n"}
    with FakeQmp(socket_path, replies), QMPClient(socket_path, timeout=5) as qmp:
        assert qmp.human_monitor("info registers") == "ran info registers\r\n"


def test_an_error_reply_names_the_command_and_keeps_the_session(socket_path):
    replies = {"dump-guest-memory": QmpFailure("Could not open 'x': Permission denied"), "cont": {}}
    with FakeQmp(socket_path, replies), QMPClient(socket_path, timeout=5) as qmp:
        with pytest.raises(QMPError, match="QMP dump-guest-memory: Could not open 'x': Permission denied") as info:
            qmp.execute("dump-guest-memory", paging=False, protocol="file:x")
        assert isinstance(info.value, LabError)
        with pytest.raises(QMPError, match="The command no-such-command has not been found"):
            qmp.execute("no-such-command")
        assert qmp.execute("cont") == {}


def test_a_connection_closed_by_qemu(socket_path):
    with (
        FakeQmp(socket_path, close_on="quit"),
        QMPClient(socket_path, timeout=5) as qmp,
        pytest.raises(QMPError, match="QEMU closed the QMP connection"),
    ):
        qmp.execute("quit")


def test_closed_while_negotiating_capabilities(socket_path):
    with (
        FakeQmp(socket_path, close_on="qmp_capabilities"),
        pytest.raises(QMPError, match="QEMU closed the QMP connection"),
    ):
        QMPClient(socket_path, timeout=5)


def test_closed_before_the_greeting(socket_path):
    with (
        FakeQmp(socket_path, hang_up=True),
        pytest.raises(QMPError, match=f"QEMU closed QMP socket {socket_path} without a greeting"),
    ):
        QMPClient(socket_path, timeout=5)


def test_no_greeting_is_a_timeout(socket_path):
    with FakeQmp(socket_path, greet=False), pytest.raises(TimeoutError):
        QMPClient(socket_path, timeout=0.3)


def test_no_socket_is_an_os_error(socket_path):
    with pytest.raises(FileNotFoundError):
        QMPClient(socket_path, timeout=1)


def test_commands_from_several_threads_get_their_own_replies(socket_path):
    replies = {"echo": lambda args: args["n"]}
    results: dict[int, object] = {}
    with FakeQmp(socket_path, replies), QMPClient(socket_path, timeout=5) as qmp:

        def ask(n: int) -> None:
            results[n] = qmp.execute("echo", n=n)

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert results == {n: n for n in range(16)}
