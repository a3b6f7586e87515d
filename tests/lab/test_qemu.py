"""The QEMU target's host side (:mod:`workbench.lab.qemu`) without booting a guest: the command line a
:class:`VMConfig` gives, the serial line pump and the waiting on it over real pipes and sockets, the registry of
running VMs, and a whole start → serial lines → QMP → stop lifecycle against a fake ``qemu-system-x86_64`` (a
Python script that serves the serial and QMP sockets the way QEMU does)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from workbench.lab.qemu import (
    QemuVM,
    SerialLine,
    VMConfig,
    pump_lines,
    qemu_binary,
    qemu_version,
    running_vms,
    wait_for_line,
)

SERIAL, QMP = Path("/run/wb/serial"), Path("/run/wb/qmp")


def _config(**changes) -> VMConfig:
    return VMConfig(
        kernel=Path("/k/bzImage"), initrd=Path("/k/initrd"), cmdline="console=ttyS0 wb.phase=prepare", **changes
    )


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


# -- the command line ------------------------------------------------------------------------------------------
def test_argv_boots_the_kernel_with_the_console_and_qmp_on_the_given_sockets(monkeypatch):
    monkeypatch.delenv("WORKBENCH_QEMU", raising=False)
    argv = _config(memory_mb=2048, cpus=4).argv(SERIAL, QMP)
    assert argv[0] == qemu_binary() == "qemu-system-x86_64"
    assert _values(argv, "-kernel") == ["/k/bzImage"] and _values(argv, "-initrd") == ["/k/initrd"]
    assert _values(argv, "-append") == ["console=ttyS0 wb.phase=prepare"]
    assert _values(argv, "-m") == ["2048M"] and _values(argv, "-smp") == ["4"]
    assert _values(argv, "-chardev") == [f"socket,id=ser0,path={SERIAL},server=on,wait=on"]
    assert _values(argv, "-serial") == ["chardev:ser0"]
    assert _values(argv, "-qmp") == [f"unix:{QMP},server=on,wait=off"]
    assert {"-nodefaults", "-no-reboot"} <= set(argv) and _values(argv, "-display") == ["none"]
    assert _values(argv, "-device") == ["vmcoreinfo", "virtio-rng-pci"]
    assert not {"-virtfs", "-object", "-netdev"} & set(argv)


def test_argv_picks_the_accelerator_and_the_cpu(monkeypatch):
    monkeypatch.setenv("WORKBENCH_QEMU", "/opt/qemu/bin/qemu-system-x86_64")
    single = _config().argv(SERIAL, QMP)
    assert single[0] == "/opt/qemu/bin/qemu-system-x86_64"
    assert (_values(single, "-accel"), _values(single, "-cpu")) == (["tcg,thread=single"], ["max"])
    multi = _config(tcg_threads="multi").argv(SERIAL, QMP)
    assert _values(multi, "-accel") == ["tcg,thread=multi"]
    kvm = _config(accel="kvm", tcg_threads="multi").argv(SERIAL, QMP)
    assert (_values(kvm, "-accel"), _values(kvm, "-cpu")) == (["kvm"], ["host,-arch-capabilities"])


def test_argv_shares_folders_over_9p_read_only_or_writable():
    argv = _config(shares={"hostroot": (Path("/"), True), "wbresults": (Path("/data/run/guest"), False)}).argv(
        SERIAL, QMP
    )
    assert _values(argv, "-virtfs") == [
        "local,path=/,mount_tag=hostroot,security_model=none,multidevs=remap,readonly=on",
        "local,path=/data/run/guest,mount_tag=wbresults,security_model=none,multidevs=remap",
    ]


def test_argv_backs_ram_with_a_file_forwards_ssh_and_ends_with_the_extra_args():
    argv = _config(memory_mb=1536, ram_file=Path("/data/run/guest-ram"), ssh_port=2222, extra_args=["-s", "-S"]).argv(
        SERIAL, QMP
    )
    assert _values(argv, "-object") == ["memory-backend-file,id=ram0,size=1536M,mem-path=/data/run/guest-ram,share=on"]
    assert _values(argv, "-machine") == ["q35", "memory-backend=ram0"]
    assert _values(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"]
    assert "virtio-net-pci,netdev=net0" in _values(argv, "-device")
    assert argv[-2:] == ["-s", "-S"]


# -- a fake QEMU -----------------------------------------------------------------------------------------------
FAKE_QEMU = """
import json, os, socket, sys

argv = sys.argv[1:]
if argv == ["--version"]:
    print("QEMU emulator version 9.9.9 (fake)\\nCopyright (c) nobody")
    sys.exit(0)
if os.environ.get("FAKE_QEMU_FAIL"):
    print("qemu-system-x86_64: could not load kernel '/k/bzImage'", file=sys.stderr)
    sys.exit(1)
value = lambda flag: argv[argv.index(flag) + 1]
serial_path = value("-chardev").split("path=")[1].split(",")[0]
qmp_path = value("-qmp").removeprefix("unix:").split(",")[0]
qmp = socket.socket(socket.AF_UNIX)
qmp.bind(qmp_path)
qmp.listen(1)
serial = socket.socket(socket.AF_UNIX)
serial.bind(serial_path)
serial.listen(1)
console, _ = serial.accept()
for chunk in json.loads(os.environ["FAKE_QEMU_SERIAL"]):
    console.sendall(chunk.encode())
client, _ = qmp.accept()
client.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\\n')
for line in client.makefile("rb"):
    command = json.loads(line)["execute"]
    if command == "query-status":
        reply = {"return": {"status": "running", "running": True}}
    elif command in ("qmp_capabilities", "quit"):
        reply = {"return": {}}
    else:
        reply = {"error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"}}
    client.sendall(json.dumps(reply).encode() + b"\\n")
    if command == "quit":
        sys.exit(0)
"""


@pytest.fixture
def short_tmp(monkeypatch):
    """A private temporary folder with a short path (unix socket paths are limited to 107 bytes), made the
    process's temporary folder: where :class:`QemuVM` puts its sockets and :func:`running_vms` looks for VMs."""
    folder = Path(tempfile.mkdtemp(prefix="wbq-"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch):
    script = tmp_path / "fake-qemu-system-x86_64"
    script.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    script.chmod(0o755)
    monkeypatch.setenv("WORKBENCH_QEMU", str(script))
    return script


def test_qemu_version_is_the_first_line_or_says_why_not(fake_qemu, tmp_path, monkeypatch):
    assert qemu_version() == "QEMU emulator version 9.9.9 (fake)"
    monkeypatch.setenv("WORKBENCH_QEMU", str(tmp_path / "absent"))
    assert qemu_version() == "unavailable"
    silent = tmp_path / "silent-qemu"
    silent.write_text("#!/bin/sh\nexit 0\n")
    silent.chmod(0o755)
    monkeypatch.setenv("WORKBENCH_QEMU", str(silent))
    assert qemu_version() == "unknown"


def test_vm_starts_reads_the_console_answers_qmp_and_stops(fake_qemu, short_tmp, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU_SERIAL", json.dumps(["Linux version 7.2\r\nWB-MARK agent", "-start\nready\n"]))
    seen: list[SerialLine] = []
    vm = QemuVM(_config(), tmp_path / "run", on_line=seen.append)
    with vm:
        assert vm.running
        hit = vm.wait_for(lambda line: line.text.startswith("ready"), timeout=10)
        assert hit is not None and hit[0] == 2
        assert [line.text for line in vm.lines] == ["Linux version 7.2", "WB-MARK agent-start", "ready"]
        assert vm.serial_text() == "Linux version 7.2\nWB-MARK agent-start\nready"
        assert seen == vm.lines
        about = running_vms()
        assert [(a["pid"], a["workdir"], a["cmdline"]) for a in about] == [
            (vm.proc.pid, str(tmp_path / "run"), "console=ttyS0 wb.phase=prepare")
        ]
        assert vm.qmp().execute("query-status") == {"status": "running", "running": True}
    assert not vm.running and vm.proc.returncode == 0  # it quit when asked over QMP, no signal needed
    assert running_vms() == [] and list(short_tmp.iterdir()) == []  # sockets and vm.json are gone
    log = (tmp_path / "run" / "serial.log").read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in log] == ["Linux version 7.2", "WB-MARK agent-start", "ready"]
    assert (tmp_path / "run" / "qemu.cmdline").read_text().split()[0] == str(fake_qemu)
    vm.stop()  # a second stop does nothing


def test_vm_that_does_not_start_says_what_qemu_said(fake_qemu, short_tmp, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU_FAIL", "1")
    vm = QemuVM(_config(), tmp_path / "run")
    with pytest.raises(RuntimeError, match=r"QEMU did not start \(exit 1\): .*could not load kernel"):
        vm.start(connect_timeout=10)
    assert not vm.running and running_vms() == []


# -- the serial pump -------------------------------------------------------------------------------------------
def test_pump_lines_splits_chunks_into_timestamped_lines_and_returns_the_rest():
    read_end, write_end = os.pipe()
    for chunk in (b"first\r\nsec", b"ond\n\nthird\nrest without newline"):
        os.write(write_end, chunk)
    os.close(write_end)
    lines: list[SerialLine] = []
    called: list[SerialLine] = []
    log = io.StringIO()
    t0 = time.monotonic()
    with os.fdopen(read_end, "rb", buffering=0) as f:
        rest = pump_lines(lambda: f.read(7), (OSError,), log, t0, lines, threading.Condition(), called.append)
    assert rest == b"rest without newline"
    assert [line.text for line in lines] == ["first", "second", "", "third"]
    assert called == lines
    times = [line.host_time for line in lines]
    assert times == sorted(times) and t0 <= times[0] <= time.monotonic()
    assert log.getvalue().splitlines()[0].endswith("] first") and log.getvalue().startswith("[")


def test_pump_lines_stops_on_the_given_errors():
    here, there = socket.socketpair()
    with here, there:
        there.sendall(b"one\ntwo\n")
        here.settimeout(0.2)  # nothing more comes: recv raises TimeoutError
        lines: list[SerialLine] = []
        rest = pump_lines(
            lambda: here.recv(4096), (TimeoutError,), io.StringIO(), 0.0, lines, threading.Condition(), None
        )
    assert rest == b"" and [line.text for line in lines] == ["one", "two"]


def _pump_in_background(
    chunks: list[bytes], delay: float
) -> tuple[list[SerialLine], threading.Condition, threading.Thread]:
    lines: list[SerialLine] = []
    cond = threading.Condition()
    here, there = socket.socketpair()

    def write():
        with there:
            for chunk in chunks:
                time.sleep(delay)
                there.sendall(chunk)

    def read():
        with here:
            pump_lines(lambda: here.recv(4096), (OSError,), io.StringIO(), 0.0, lines, cond, None)

    writer, reader = threading.Thread(target=write), threading.Thread(target=read)
    writer.start()
    reader.start()
    return lines, cond, reader


def test_wait_for_line_waits_for_a_line_that_arrives_later():
    lines, cond, reader = _pump_in_background([b"boot\n", b"WB-MARK x\n", b"WB-MARK done\n"], 0.05)
    hit = wait_for_line(lines, cond, lambda ln: ln.text.endswith("done"), 10, 0, None, alive=reader.is_alive)
    assert hit is not None and hit[0] == 2 and hit[1].text == "WB-MARK done"
    reader.join(10)
    # from index 2 on, the first mark is the third line; a line already there matches even once the source is gone
    mark = wait_for_line(lines, cond, lambda ln: "WB-MARK" in ln.text, 10, 2, None, alive=lambda: False)
    assert mark == (2, lines[2])


def test_wait_for_line_gives_up_on_timeout_cancel_or_a_dead_source():
    lines = [SerialLine(0.0, "nothing useful")]
    cond = threading.Condition()
    never = lambda ln: False  # noqa: E731
    t = time.monotonic()
    assert wait_for_line(lines, cond, never, 0.3, 0, None, alive=lambda: True) is None
    assert 0.3 <= time.monotonic() - t < 5
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    t = time.monotonic()
    assert wait_for_line(lines, cond, never, 30, 0, cancel, alive=lambda: True) is None
    assert time.monotonic() - t < 5
    t = time.monotonic()
    assert wait_for_line(lines, cond, never, 30, 0, None, alive=lambda: False) is None
    assert time.monotonic() - t < 1


# -- running VMs -----------------------------------------------------------------------------------------------
def _sleeper(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])


def test_running_vms_lists_live_qemu_processes_newest_first(short_tmp):
    old, new, other = _sleeper("qemu-system-x86_64"), _sleeper("qemu-system-x86_64"), _sleeper("not-a-vm")
    gone = subprocess.Popen([sys.executable, "-c", "pass", "qemu"])
    gone.wait()
    try:
        entries = {
            "wbvm-old": {"pid": old.pid, "qmp": "/q1", "started": 100.0},
            "wbvm-new": {"pid": new.pid, "qmp": "/q2", "started": 200.0},
            "wbvm-other": {"pid": other.pid, "started": 300.0},
            "wbvm-gone": {"pid": gone.pid, "started": 400.0},
            "wbvm-nopid": {"started": 500.0},
            "elsewhere": {"pid": new.pid, "started": 600.0},
        }
        for folder, about in entries.items():
            (short_tmp / folder).mkdir()
            (short_tmp / folder / "vm.json").write_text(json.dumps(about))
        (short_tmp / "wbvm-broken").mkdir()
        (short_tmp / "wbvm-broken" / "vm.json").write_text("{not json")
        assert running_vms() == [entries["wbvm-new"], entries["wbvm-old"]]
    finally:
        for proc in (old, new, other):
            proc.kill()
            proc.wait()
