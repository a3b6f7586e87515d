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
from pathlib import Path

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
GUEST_SIZES = [8 << 20, 1 << 20, 4 << 10]
DUMP_AT = ["serialized", "next_kernel_pending", "deserialized", "finished"]


def _cycle(data, *args: str) -> subprocess.CompletedProcess:
    command = ["cycle", "--target", "guest", "--kernel", "7.2", "--workload", "systemd", "--sizes", "8M,1M,4K", *args]
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli", *command, "--json", "--data", str(data)], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def guest_cycle(tmp_path_factory) -> dict:
    """One systemd cycle in the Debian guest, dumped at the moments no pause reaches."""
    data = tmp_path_factory.mktemp("systemd") / "data"
    proc = _cycle(data, *(a for m in DUMP_AT for a in ("--dump-at", m)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    result["data"] = data
    yield result
    for path in result.get("vmcores", {}).values():
        Path(path).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def seen(guest_cycle) -> dict[str, dict]:
    """At each moment: ``workbench inspect --vmcore --json`` (drgn) and ``workbench abi decode --vmcore --json``."""
    out = {}
    for moment, path in guest_cycle["vmcores"].items():
        inspect = subprocess.run(
            [sys.executable, "-m", "workbench.cli", "inspect", "--vmcore", path, "--vmlinux", guest_cycle["vmlinux"]]
            + ["--no-memory-map", "--json", "--data", str(guest_cycle["data"])],
            capture_output=True,
            text=True,
        )
        decode = subprocess.run(
            [sys.executable, "-m", "workbench.cli", "abi", "decode", "--vmcore", path, "--json"],
            capture_output=True,
            text=True,
        )
        assert inspect.returncode == 0, inspect.stderr[-2000:]
        assert decode.returncode == 0, decode.stderr[-2000:]
        out[moment] = {"inspect": json.loads(inspect.stdout), "decode": json.loads(decode.stdout)}
    return out


@pytest.mark.lab
def test_a_services_memfds_survive_systemctl_kexec_through_systemds_fd_store(guest_cycle):
    result = guest_cycle
    assert result["verified"], result.get("error")
    assert result["fdstore"]["returned"] == ["wb-0", "wb-1", "wb-2"]
    assert result["pages_checked"] == (9 << 20) // 4096 + 1
    timing = result["systemd_timing"]
    assert timing["kexec_count"] == 1  # PID 1 counts the kexec it came through
    assert timing["kernel_to_service_ready_s"] > timing["kernel_to_userspace_s"] > 0
    assert result["service_blackout_s"] > 0 and result["blackout_s"] > 0
    assert list(result["phases"]) == ["prepare", "store", "load", "kexec", "restore", "verify"]
    record = RecordStore(result["data"]).get(result["record_id"])
    assert record.status == "ok" and record.params["workload"] == "systemd" and record.params["guest"] == "debian-sid"
    assert record.params["dump_at"] == DUMP_AT


@pytest.mark.lab
def test_the_guest_was_dumped_at_every_moment_asked(guest_cycle):
    assert guest_cycle.get("dump_errors", []) == []
    assert list(guest_cycle["vmcores"]) == DUMP_AT and guest_cycle["dumps_missing"] == []
    held = guest_cycle["dumps_held_s"]
    assert list(held) == DUMP_AT and all(s > 0 for s in held.values())
    # every moment falls inside the blackout: the figure without the dumps leaves out their time
    assert guest_cycle["blackout_without_dumps_s"] == pytest.approx(guest_cycle["blackout_s"] - sum(held.values()))


def _files_of_systemds_session(rows: list[dict], key: str = "session") -> dict[int, int]:
    """token -> size of the rows of the session ``systemd``."""
    return {int(r["token"]): int(r["size"]) for r in rows if r[key] == "systemd"}


@pytest.mark.lab
def test_at_the_kexec_systemds_session_is_in_the_kernel_and_the_bytes_and_they_agree(seen):
    inspected, decoded = seen["serialized"]["inspect"], seen["serialized"]["decode"]
    assert inspected["moment"] == "serialized" and decoded["summary"]["moment"] == "serialized"
    (session,) = [s for s in inspected["luo"]["sessions"] if s["direction"] == "outgoing"]
    # systemd-shutdown preserves the store's fds at tokens 1, 2, 3, then its JSON mapping memfd at token 0
    assert session["name"] == "systemd" and session["tokens"] == [1, 2, 3, 0]
    assert inspected["agreement"]["agree"] is True and inspected["agreement"]["one_sided"] == 0
    assert decoded["summary"]["sessions"] == ["systemd"]
    assert sorted(f["token"] for f in decoded["files"]) == [0, 1, 2, 3]


@pytest.mark.lab
def test_in_the_next_kernel_systemds_session_is_pending_then_deserialized_then_finished(seen):
    pending = seen["next_kernel_pending"]["inspect"]
    assert pending["moment"] == "next_kernel_pending"
    files = _files_of_systemds_session(pending["pending_incoming"])
    assert sorted(files) == [0, 1, 2, 3]
    assert sorted(size for token, size in files.items() if token) == sorted(GUEST_SIZES)
    assert 0 < files[0] <= 1 << 20  # the mapping: a small JSON document
    assert seen["next_kernel_pending"]["decode"]["summary"]["memory_map_consumed"] is True
    assert seen["next_kernel_pending"]["decode"]["unpreserved_references"] == []

    deserialized = seen["deserialized"]["inspect"]
    (session,) = [s for s in deserialized["luo"]["sessions"] if s["direction"] == "incoming"]
    assert deserialized["moment"] == "deserialized" and session["name"] == "systemd" and not session["retrieved"]
    assert session["tokens"] == [1, 2, 3, 0] and deserialized["pending_incoming"] == []

    finished = seen["finished"]["inspect"]
    (session,) = [s for s in finished["luo"]["sessions"] if s["direction"] == "incoming"]
    assert finished["moment"] == "finished" and session["finished"]


@pytest.mark.lab
def test_systemd_refuses_a_kexec_with_no_kernel_loaded_and_the_cycle_says_so(tmp_path):
    proc = _cycle(tmp_path / "data", "--no-kexec-load")
    assert proc.returncode != 0
    result = json.loads(proc.stdout)
    assert result["verified"] is False and result["failed_phase"] == "kexec"
    assert "systemctl kexec refused" in result["error"]
    record = RecordStore(tmp_path / "data").get(result["record_id"])
    assert record.status == "failed" and "systemctl kexec refused" in record.error
