"""The CRIU workload's process as the agent sees it (:mod:`workbench.lab.workloads.criu.process`), on this machine:
the workload program built with the host's gcc and started the way the agent starts it, its status page and its
memory read through ``/proc/PID/mem`` and checked against the agent's fill pattern, and the file helpers the agent
uses around ``criu dump`` and ``criu restore``.

Starting the workload as root also sets this machine's ``ns_last_pid`` (the agent wants a high pid), which moves
where the next pids are handed out and nothing else."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from workbench.lab.agent_core import fill_pattern, fingerprint
from workbench.lab.workloads.criu import process
from workbench.lab.workloads.criu.process import (
    WorkloadProcess,
    mount_devpts,
    read_rates,
    region_external_id,
    sendfile_all,
)
from workbench.lab.workloads.criu.program import build_workload

MiB = 1 << 20


@pytest.fixture(scope="module")
def workload_binary() -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is missing: the CRIU workload program is built with the host's gcc")
    return build_workload()


@pytest.fixture
def work_dir(tmp_path, monkeypatch) -> Path:
    """The agent's working folder (``/run/wb-criu`` in the target), here a fresh folder."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.setattr(process, "WORK", folder)
    return folder


@contextlib.contextmanager
def _running(binary: Path, info_path: Path, **request):
    """The workload started by :meth:`WorkloadProcess.start`; killed on the way out, and nothing left running."""
    work = WorkloadProcess.start({"workload_binary": str(binary), **request}, info_path)
    try:
        try:
            work.status()
        except PermissionError as exc:
            pytest.skip(f"/proc/{work.pid}/mem cannot be read here: {exc}")
        yield work
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(work.pid, signal.SIGKILL)
        assert work.holder is not None
        try:
            work.holder.wait(10)  # the holder shell reaps the workload, then exits
        except subprocess.TimeoutExpired:
            work.holder.kill()
            work.holder.wait()
    assert not work.alive() and not Path(f"/proc/{work.pid}").exists()
    assert work.holder.returncode is not None


def _pattern(size: int, region: int, seed: int) -> np.ndarray:
    buf = np.zeros(size, dtype=np.uint8)
    fill_pattern(buf, region, seed)
    return buf


def test_the_workload_runs_with_the_agents_pattern_and_its_counter_advances(workload_binary, work_dir, tmp_path):
    info_path = tmp_path / "workload.json"
    seed = 7
    request = {"seed": seed, "anon_size": MiB, "memfd_region": MiB, "region_kind": "tmpfile"}
    with _running(workload_binary, info_path, **request) as work:
        assert work.alive()
        assert work.info["pid"] == work.pid != work.holder.pid
        assert work.info["ppid"] == work.holder.pid  # the holder shell stays its parent
        assert (work.info["anon_size"], work.info["region_size"], work.info["region_kind"]) == (MiB, MiB, "tmpfile")
        assert [(kind, size) for kind, _, size in work.regions()] == [("anon", MiB), ("tmpfile", MiB)]
        assert not list(tmp_path.glob("workload.json.tmp"))  # the info file was renamed into place whole

        status = work.status()
        assert status["magic"] == "WBCRIU01"
        assert status["counter"] > 0 and status["resumes"] == 0 and status["resume_reason"] == 0
        assert status["ppid"] == work.holder.pid and status["last_s"] > 0
        later = work.wait_counter_beyond(status["counter"] + 5, timeout=10)
        assert later["counter"] > status["counter"] + 5 and later["last_s"] >= status["last_s"]

        anon, region = work.fingerprints()
        assert anon.shape == region.shape == (MiB // 4096,)
        assert np.array_equal(anon, fingerprint(_pattern(MiB, 0, seed))[0])
        assert np.array_equal(region, fingerprint(_pattern(MiB, 1, seed))[0])
        assert not np.array_equal(anon, fingerprint(_pattern(MiB, 0, seed + 1))[0])

        # the region is an unlinked file in the agent's folder, shared with the workload
        fd = os.open(f"/proc/{work.pid}/fd/{work.info['region_fd']}", os.O_RDONLY)
        try:
            st = os.fstat(fd)
            assert st.st_size == MiB and st.st_nlink == 0
            assert os.pread(fd, 4096, 4096) == _pattern(MiB, 1, seed)[4096:8192].tobytes()
            external = region_external_id(work.pid, work.info["region_fd"], "tmpfile")
            assert external == f"file[{_mount_id(work_dir):x}:{st.st_ino:x}]"
        finally:
            os.close(fd)
        with pytest.raises(RuntimeError, match="did not run within 0 s"):
            work.wait_resumed(0, timeout=0.05)  # nothing restored it


def test_a_memfd_region_has_the_name_criu_gives_it(workload_binary, work_dir, tmp_path):
    request = {"seed": 3, "anon_size": 0, "memfd_region": MiB, "region_kind": "memfd"}
    with _running(workload_binary, tmp_path / "workload.json", **request) as work:
        assert [kind for kind, _, _ in work.regions()] == ["memfd"]
        link = os.readlink(f"/proc/{work.pid}/fd/{work.info['region_fd']}")
        assert link == "/memfd:wb-region (deleted)"
        assert region_external_id(work.pid, work.info["region_fd"], "memfd") == link.removesuffix(" (deleted)")
        (region,) = work.fingerprints()
        assert np.array_equal(region, fingerprint(_pattern(MiB, 1, 3))[0])


def test_a_workload_that_cannot_start_says_so(workload_binary, work_dir, tmp_path):
    info_path = tmp_path / "workload.json"
    request = {"workload_binary": str(workload_binary), "anon_size": 1000}  # not whole pages: it exits with 2
    with pytest.raises(RuntimeError, match=r"the workload exited \(2\) before it was ready"):
        WorkloadProcess.start(request, info_path)
    assert not info_path.exists()


def _mount_id(path: Path) -> int:
    """The id of the mount ``path`` is on, from /proc/self/mountinfo (the last of the longest mount points)."""
    best, best_len = None, -1
    target = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best_len:
            best, best_len = int(fields[0]), len(point)
    assert best is not None
    return best


def _memfd_with(data: bytes) -> int:
    fd = os.memfd_create("wb-test", 0)
    os.write(fd, data)
    return fd


def test_sendfile_all_copies_everything_and_fails_on_a_short_source(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3 * MiB + 123, dtype=np.uint8).tobytes()
    src = _memfd_with(data)
    try:
        with open(tmp_path / "copy", "wb") as dst:
            sendfile_all(dst.fileno(), src, len(data))
        assert (tmp_path / "copy").read_bytes() == data
        with open(tmp_path / "short", "wb") as dst, pytest.raises(OSError, match=f"stopped at {len(data)} of"):
            sendfile_all(dst.fileno(), src, len(data) + 4096)
        assert (tmp_path / "short").read_bytes() == data
    finally:
        os.close(src)


def test_read_rates_measures_each_way_of_reading_and_removes_its_copy(work_dir):
    data = _pattern(2 * MiB, 0, 1).tobytes()
    fd = _memfd_with(data)
    try:
        rates = read_rates(fd)
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)
    assert set(rates) == {
        "retrieved_pread",
        "retrieved_mmap_hash",
        "tmpfs_pread",
        "tmpfs_mmap_hash",
        "retrieved_pread_again",
    }
    assert all(np.isfinite(v) and v > 0 for v in rates.values())
    assert list(work_dir.iterdir()) == []


def test_mount_devpts_does_nothing_where_devpts_is_mounted():
    if not os.path.ismount("/dev/pts"):
        pytest.skip("this machine has no devpts on /dev/pts (mounting one here is not the test's to do)")
    assert mount_devpts() is None
