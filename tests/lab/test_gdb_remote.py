"""The GDB remote protocol client against a gdbstub served on a real unix socket: framing and checksums, acks
both ways (and resends), memory reads in packets, registers, breakpoints, stops, errors."""

from __future__ import annotations

import struct

import pytest

from tests.lab.fake_qemu import FakeGdbStub, frame, short_socket_path
from workbench.lab.errors import LabError
from workbench.lab.gdb_remote import GdbRemote, GdbRemoteError

MEMORY_BASE = 0xFFFFFFFF81000000
MEMORY = bytes((i * 7 + 3) % 256 for i in range(6000))
RIP = 0xFFFFFFFF81234567


def answer(payload: str) -> str | None:
    """A stopped x86_64 guest with :data:`MEMORY` at :data:`MEMORY_BASE`."""
    if payload == "?":
        return "T05thread:01;"
    if payload.startswith("m"):
        addr, size = (int(x, 16) for x in payload[1:].split(","))
        start = addr - MEMORY_BASE
        if start < 0 or start + size > len(MEMORY):
            return "E14"
        return MEMORY[start : start + size].hex()
    if payload == "g":
        return (bytes(16 * 8) + struct.pack("<Q", RIP) + bytes(8)).hex()
    if payload.startswith("Z1"):
        return ""  # no hardware breakpoints
    if payload.startswith(("Z0", "z0", "D")):
        return "OK"
    if payload == "c":
        return None
    if payload == "\x03":
        return "T02thread:01;"
    return ""


@pytest.fixture
def socket_path():
    path = short_socket_path("gdb")
    yield path
    if path.parent.exists():
        path.parent.rmdir()


def test_frames_carry_the_checksum():
    assert frame(b"m0,4") == b"$m0,4#fd"
    assert GdbRemote._frame("m0,4") == b"$m0,4#fd"


def test_memory_reads_in_packets_with_checksums_and_acks(socket_path):
    with FakeGdbStub(socket_path, answer, on_connect="T05thread:01;") as stub, GdbRemote(socket_path, 5) as gdb:
        assert gdb.stop_reason() == "T05thread:01;"
        assert gdb.read_memory(MEMORY_BASE + 10, 5000) == MEMORY[10:5010]
    reads = [p for p in stub.received if p.startswith("m")]
    assert reads == [f"m{MEMORY_BASE + 10 + off:x},{n:x}" for off, n in ((0, 2048), (2048, 2048), (4096, 904))]
    assert stub.bad_checksums == 0
    assert stub.acks.count(b"+") == len(stub.received) + 1  # every answer and the stop reply on connect


def test_an_unasked_stop_reply_is_not_taken_for_the_answer(socket_path):
    with FakeGdbStub(socket_path, answer, on_connect="T05thread:01;"), GdbRemote(socket_path, 5) as gdb:
        assert gdb.read_memory(MEMORY_BASE, 4) == MEMORY[:4]


def test_a_rejected_packet_is_sent_again(socket_path):
    with FakeGdbStub(socket_path, answer, reject_first=True) as stub, GdbRemote(socket_path, 5) as gdb:
        assert gdb.read_memory(MEMORY_BASE, 8) == MEMORY[:8]
    assert stub.received == [f"m{MEMORY_BASE:x},8"]


def test_an_answer_with_a_bad_checksum_is_refused_and_read_again(socket_path):
    with FakeGdbStub(socket_path, answer, corrupt_first=True) as stub, GdbRemote(socket_path, 5) as gdb:
        assert gdb.read_memory(MEMORY_BASE, 8) == MEMORY[:8]
    assert stub.acks == [b"-", b"+"]


def test_run_length_encoded_and_escaped_answers(socket_path):
    def rle(payload: str) -> str | None:
        return 'fff*"' if payload.startswith("m") else "a}]b"  # 8 x 'f'; '}' + ('}' ^ 0x20)

    with FakeGdbStub(socket_path, rle), GdbRemote(socket_path, 5) as gdb:
        assert gdb.read_memory(0x1000, 4) == b"\xff" * 4
        assert gdb.request("qSupported") == "a}b"


def test_memory_errors(socket_path):
    with FakeGdbStub(socket_path, answer), GdbRemote(socket_path, 5) as gdb:
        with pytest.raises(GdbRemoteError, match="cannot read 16 bytes at 0x1000: E14") as info:
            gdb.read_memory(0x1000, 16)
        assert isinstance(info.value, LabError)


def test_nonsense_in_a_memory_answer(socket_path):
    with (
        FakeGdbStub(socket_path, lambda p: "zz" if p.startswith("m") else ""),
        GdbRemote(socket_path, 5) as gdb,
        pytest.raises(GdbRemoteError, match="unexpected answer"),
    ):
        gdb.read_memory(0x1000, 1)


def test_registers_and_rip(socket_path):
    with FakeGdbStub(socket_path, answer), GdbRemote(socket_path, 5) as gdb:
        assert gdb.rip() == RIP
        assert len(gdb.registers()) == 18 * 8


def test_breakpoints_fall_back_to_software_ones(socket_path):
    with FakeGdbStub(socket_path, answer) as stub, GdbRemote(socket_path, 5) as gdb:
        assert gdb.insert_breakpoint(RIP) == "0"
        gdb.remove_breakpoint(RIP, "0")
    assert stub.received == [f"Z1,{RIP:x},1", f"Z0,{RIP:x},1", f"z0,{RIP:x},1"]


def test_a_refused_breakpoint(socket_path):
    with (
        FakeGdbStub(socket_path, lambda p: "E22"),
        GdbRemote(socket_path, 5) as gdb,
        pytest.raises(GdbRemoteError, match="refused: E22"),
    ):
        gdb.insert_breakpoint(RIP)


def test_resume_then_the_stop_at_the_breakpoint(socket_path):
    with FakeGdbStub(socket_path, answer) as stub, GdbRemote(socket_path, 5) as gdb:
        gdb.resume()
        with pytest.raises(TimeoutError):
            gdb.wait_stop(0.2)
        stub.send_packet("Oabcd")  # console output is skipped
        stub.send_packet("T05thread:02;")
        assert gdb.wait_stop(5) == "T05thread:02;"
        assert gdb.interrupt() == "T02thread:01;"
        gdb.detach()
    assert stub.received == ["c", "D"]


def test_the_guest_exiting_while_waiting(socket_path):
    with FakeGdbStub(socket_path, answer) as stub, GdbRemote(socket_path, 5) as gdb:
        gdb.resume()
        stub.send_packet("W00")
        with pytest.raises(GdbRemoteError, match="exited"):
            gdb.wait_stop(5)


def test_a_closed_connection(socket_path):
    def hang_up(payload: str) -> str | None:
        raise ConnectionResetError  # the stub's thread closes the connection

    with (
        FakeGdbStub(socket_path, hang_up),
        GdbRemote(socket_path, 5) as gdb,
        pytest.raises(GdbRemoteError, match="closed the connection"),
    ):
        gdb.stop_reason()


def test_a_failed_detach(socket_path):
    with (
        FakeGdbStub(socket_path, lambda p: "E01"),
        GdbRemote(socket_path, 5) as gdb,
        pytest.raises(GdbRemoteError, match="detach: E01"),
    ):
        gdb.detach()
