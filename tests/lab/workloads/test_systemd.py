"""The ``systemd`` workload: its parameters and units, the guest program's fd store hand-over and verification on
this machine (a real notification socket and real memfds, no systemd), and one real cycle in the Debian guest."""

from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import subprocess
import sys

import pytest

from workbench.lab.cycle import check
from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults, PageRef
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workload import make_workload, workload_class
from workbench.lab.workloads.systemd import DEFAULT_SIZES, SystemdWorkload
from workbench.lab.workloads.systemd_guest import service
from workbench.records import RecordStore

SIZES = [1 << 20, 64 << 10, 4 << 10]


def test_registered_by_name_with_one_memfd_of_64_mib_by_default():
    assert workload_class("systemd") is SystemdWorkload
    workload = make_workload("systemd")
    assert workload.sizes == list(DEFAULT_SIZES) and max(workload.sizes) >= 64 << 20
    assert workload.data_bytes() == sum(DEFAULT_SIZES)


def test_bad_parameters_and_targets_are_refused_by_name():
    with pytest.raises(InvalidCycle, match="at least one memfd size"):
        SystemdWorkload(sizes=[]).validate()
    with pytest.raises(InvalidCycle, match="memfd size 1000 is not a positive multiple"):
        SystemdWorkload(sizes=[1000]).validate()
    with pytest.raises(InvalidCycle, match="runs on the guest target only, not qemu"):
        check(SystemdWorkload(), CycleParams(), QemuTarget())
    with pytest.raises(InvalidCycle, match="takes no fault corrupt_page"):
        SystemdWorkload().validate_faults(Faults(corrupt_page=PageRef(0, 0)))


def test_the_unit_keeps_its_store_only_when_asked():
    kept = SystemdWorkload().unit_files()["systemd/system/wb-fdstore.service"]
    dropped = SystemdWorkload(preserve=False).unit_files()["systemd/system/wb-fdstore.service"]
    assert "FileDescriptorStorePreserve=yes" in kept and "FileDescriptorStoreMax=64" in kept
    assert "FileDescriptorStorePreserve" not in dropped and "Type=notify" in dropped
    operator = SystemdWorkload().unit_files()["systemd/system/wb-operator.service"]
    assert "ConditionKernelCommandLine=!wb.phase=restore" in operator and "operate /mnt" in operator


def _receive_store(sock: socket.socket, count: int) -> tuple[dict[str, int], list[str]]:
    """What systemd's notification socket would get: each FDSTORE message with its fd, then the others."""
    store, others = {}, []
    while len(store) < count or not others:
        data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if fields.get("FDSTORE") == "1":
            assert len(fds) == 1
            store[fields["FDNAME"]] = fds[0]
        else:
            others.append(data.decode())
    return store, others


@pytest.fixture
def console(tmp_path, monkeypatch):
    path = tmp_path / "console"
    monkeypatch.setenv(service.CONSOLE_ENV, str(path))
    return path


def _marks(console) -> list[tuple[str, dict]]:
    from workbench.lab.protocol import parse_mark

    return [m for m in map(parse_mark, console.read_text().splitlines()) if m is not None]


def _store_then_listen(tmp_path, console, *, drop: str | None = None, flip: tuple[str, int] | None = None):
    share = tmp_path / "share"
    share.mkdir()
    request = {"sizes": SIZES, "seed": 3}
    (share / "request.json").write_text(json.dumps(request))
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        prepare = service.serve_before(share, request, address)
        store, others = _receive_store(sock, len(SIZES))
    assert sorted(store) == ["wb-0", "wb-1", "wb-2"] and others[-1].startswith("READY=1")
    assert prepare["phases"].keys() == {"prepare", "store"}
    if flip:
        os.pwrite(store[flip[0]], b"\xff", flip[1] * 4096 + 5)
    return share, request, {name: fd for name, fd in sorted(store.items()) if name != drop}


def test_memfds_pushed_into_the_store_come_back_whole(tmp_path, console):
    share, request, fds = _store_then_listen(tmp_path, console)
    restore = _verify(share, request, fds, tmp_path)
    assert restore["verified"] and restore["pages_checked"] == sum(SIZES) // 4096
    assert [m["size"] for m in restore["memfds"]] == SIZES
    events = [e for e, _ in _marks(console)]
    assert events.count("phase-end") == 4 and events[-1] == "done"


def test_a_changed_page_is_named(tmp_path, console):
    share, request, fds = _store_then_listen(tmp_path, console, flip=("wb-1", 7))
    restore = _verify(share, request, fds, tmp_path)
    assert not restore["verified"]
    assert [m["differing_pages"] for m in restore["memfds"]] == [[], [7], []]


def test_a_store_that_was_not_preserved_gives_no_fds_and_says_so(tmp_path, console):
    share, request, _ = _store_then_listen(tmp_path, console)
    restore = _verify(share, request, {}, tmp_path)
    assert not restore["verified"] and restore["fdstore"]["returned"] == []
    assert "gave back 0 of 3 fds" in restore["events"][0]
    result = SystemdWorkload(sizes=SIZES, preserve=False).summarize({}, {}, restore, [])
    assert result["outcome"] == "not_preserved"
    assert "no FileDescriptorStorePreserve=" in result["error"]


def test_one_fd_missing_from_the_store_fails_the_cycle_and_names_it(tmp_path, console):
    share, request, fds = _store_then_listen(tmp_path, console, drop="wb-1")
    restore = _verify(share, request, fds, tmp_path)
    assert not restore["verified"] and restore["fdstore"]["returned"] == ["wb-0", "wb-2"]
    assert "gave back 2 of 3 fds" in restore["events"][0] and "missing wb-1" in restore["events"][0]
    assert [m["returned"] for m in restore["memfds"]] == [True, False, True]


def _verify(share, request, fds: dict[str, int], tmp_path) -> dict:
    """serve_after with ``fds`` as LISTEN_FDS (renumbered from 3 as systemd does, in a child process so that this
    process's fds 3, 4, ... stay as they are)."""
    pid = os.fork()
    if pid == 0:  # the child: fds at 3, 4, ... like a service systemd started
        code = 1
        try:
            names = list(fds)
            high = [fcntl.fcntl(fds[name], fcntl.F_DUPFD, 1000) for name in names]  # out of the way of 3, 4, ...
            for i, fd in enumerate(high):
                os.dup2(fd, service.SD_LISTEN_FDS_START + i)
            environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": str(len(names)), "LISTEN_FDNAMES": ":".join(names)}
            service.serve_after(share, request, environ)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads((share / "restore.json").read_text())


# -- in the Debian guest ---------------------------------------------------------------------------------------
@pytest.mark.lab
def test_a_services_memfds_survive_systemctl_kexec_through_systemds_fd_store(tmp_path):
    data = tmp_path / "data"
    command = ["cycle", "--target", "guest", "--kernel", "7.2", "--workload", "systemd", "--sizes", "8M,1M,4K"]
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", *command, "--json", "--data", str(data)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["verified"], result.get("error")
    assert result["fdstore"]["returned"] == ["wb-0", "wb-1", "wb-2"]
    assert result["pages_checked"] == (9 << 20) // 4096 + 1
    timing = result["systemd_timing"]
    assert timing["kexec_count"] == 1  # PID 1 counts the kexec it came through
    assert timing["kernel_to_service_ready_s"] > timing["kernel_to_userspace_s"] > 0
    assert result["service_blackout_s"] > 0 and result["blackout_s"] > 0
    assert list(result["phases"]) == ["prepare", "store", "load", "kexec", "restore", "verify"]
    record = RecordStore(data).get(result["record_id"])
    assert record.status == "ok" and record.params["workload"] == "systemd" and record.params["guest"] == "debian-sid"
