"""The ``sessions`` workload: its files, parameters, faults, sizing, request and summary on the host, its agent's
memory on this machine (no LUO needed), and real cycles in the lab VM."""

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.lab.cycle import check, run_cycle
from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults, PageRef
from workbench.lab.params import CycleParams
from workbench.lab.protocol import FINGERPRINTS_AFTER, FINGERPRINTS_BEFORE, FRAMES_BEFORE, Request
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workload import make_workload, workload_class
from workbench.lab.workloads.sessions import (
    SessionsAgent,
    SessionsWorkload,
    session_names,
    session_table,
    split_pages,
)

PAGE = 4096


def test_the_default_cycle_has_a_256_mib_memfd_and_64_small_files_in_a_second_session():
    workload = make_workload("sessions")
    assert workload_class("sessions") is SessionsWorkload
    workload.validate()
    files = workload.files()
    assert [f.size for f in files[:4]] == [256 << 20, 16 << 20, (1 << 20) + PAGE, PAGE]
    assert [f.small for f in files] == [False] * 4 + [True] * 64
    assert [f.index for f in files] == list(range(68))
    assert [f.token for f in files] == list(range(1000, 1068))
    assert {f.session("wb") for f in files[:4]} == {"wb"} and {f.session("wb") for f in files[4:]} == {"wb-small"}
    assert workload.data_bytes() == (256 << 20) + (16 << 20) + (1 << 20) + 2 * PAGE + 64 * PAGE
    # 640 MiB + two copies of 273 MiB, in 256 MiB steps: a guest the lab VM boots
    assert workload.memory_mb() == 1280
    assert workload.timeout_bytes() > workload.data_bytes()
    assert workload.request() == {
        "sizes": [256 << 20, 16 << 20, (1 << 20) + PAGE, PAGE],
        "small_files": 64,
        "small_file_size": PAGE,
        "seed": 0,
    }
    assert workload.record_params()["workload"] == "sessions"


def test_the_cycles_checks_take_it_and_a_parameter_it_lacks_is_named():
    check(make_workload("sessions", sizes=[8 << 20, PAGE], small_files=2), CycleParams(session="s"), QemuTarget())
    with pytest.raises(InvalidCycle, match="the sessions workload has no parameter 'memfds'"):
        make_workload("sessions", memfds=2)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sizes": []}, "sizes must be a list of one or more memfd sizes"),
        ({"sizes": 4096}, "sizes must be a list"),
        ({"sizes": [PAGE, 1000]}, r"sizes\[1\] 1000 is not a positive multiple of the 4096-byte page size"),
        ({"sizes": [PAGE, 0]}, r"sizes\[1\] 0 is not a positive multiple"),
        ({"sizes": [PAGE, "4K"]}, r"sizes\[1\] is '4K', not a number of bytes"),
        ({"small_files": -1}, "the number of small files cannot be negative"),
        ({"small_file_size": 0}, "small file size 0 is not a positive multiple"),
        ({"small_files": 10_000}, "more than the 10000 files a cycle may preserve"),
    ],
)
def test_bad_parameters_are_refused_by_name(params, message):
    with pytest.raises(InvalidCycle, match=message):
        SessionsWorkload(**params).validate()


def test_the_small_files_session_name_must_fit_luos_limit():
    assert session_names("wb", 64) == ["wb", "wb-small"]
    assert session_names("wb", 0) == ["wb"]
    SessionsWorkload().validate_session("s" * 57)  # 57 + len("-small") = 63 bytes
    SessionsWorkload(small_files=0).validate_session("s" * 63)
    with pytest.raises(InvalidCycle, match="is 64 bytes; LUO allows at most 63.*at most 57 bytes, or no small files"):
        SessionsWorkload().validate_session("s" * 58)
    with pytest.raises(InvalidCycle, match="is 64 bytes; LUO allows at most 63"):
        SessionsWorkload(small_files=0).validate_session("s" * 64)
    with pytest.raises(InvalidCycle, match="empty"):
        SessionsWorkload().validate_session("")


def test_faults_name_a_file_by_its_index_among_all_of_them():
    workload = SessionsWorkload(sizes=[8 << 20, PAGE], small_files=3, small_file_size=2 * PAGE)
    workload.validate_faults(Faults(corrupt_page=PageRef(0, 2047)))
    workload.validate_faults(Faults(corrupt_page=PageRef(4, 1), modify_after_preserve=PageRef(1, 0)))
    with pytest.raises(InvalidCycle, match="corrupt_page names page 1 of memfd 1, which has 1 pages"):
        workload.validate_faults(Faults(corrupt_page=PageRef(1, 1)))
    with pytest.raises(InvalidCycle, match="names memfd 5, but the cycle has 5 memfds: 2 of the sizes .* 3 small"):
        workload.validate_faults(Faults(modify_after_preserve=PageRef(5, 0)))
    with pytest.raises(InvalidCycle, match="memfd -1"):
        workload.validate_faults(Faults(corrupt_page=PageRef(-1, 0)))


@given(st.lists(st.integers(0, 50), max_size=8))
def test_split_pages_gives_back_each_file(pages):
    files = [np.arange(n, dtype=np.uint64) + 1000 * i for i, n in enumerate(pages)]
    flat = np.concatenate(files) if files else np.zeros(0, dtype=np.uint64)
    parts = split_pages(flat, pages)
    assert len(parts) == len(pages)
    assert all(np.array_equal(a, b) for a, b in zip(parts, files, strict=True))


def test_split_pages_refuses_an_array_of_another_length():
    with pytest.raises(ValueError, match=r"shape \(5,\) does not hold files of 6 pages"):
        split_pages(np.zeros(5, dtype=np.uint64), [3, 3])
    with pytest.raises(ValueError, match="does not hold files"):
        split_pages(np.zeros((2, 3), dtype=np.uint64), [3, 3])


def test_summary_adds_sessions_and_each_files_preserve_time():
    rows = [
        {"memfd": 0, "session": "wb", "expected_size": 8 << 20},
        {"memfd": 1, "session": "wb", "expected_size": PAGE},
        {"memfd": 2, "session": "wb-small", "expected_size": PAGE},
    ]
    outcome = {"pwrite": "refused: Operation not permitted", "mmap_store": "written"}
    prepare = {"preserve_s": [0.5, 0.01, 0.02], "modify_after_preserve": outcome}
    out = SessionsWorkload().summarize({"verified": True, "memfds": rows}, prepare, {}, [])
    assert out["sessions"] == [
        {"name": "wb", "files": 2, "bytes": (8 << 20) + PAGE},
        {"name": "wb-small", "files": 1, "bytes": PAGE},
    ]
    assert [r["preserve_s"] for r in out["memfds"]] == [0.5, 0.01, 0.02]
    assert out["workload"] == "sessions" and out["modify_after_preserve"] == outcome
    assert session_table([]) == []
    short = SessionsWorkload().summarize({"memfds": [dict(rows[0])]}, {}, {}, [])
    assert short["memfds"][0]["preserve_s"] is None and "modify_after_preserve" not in short


def test_the_agent_fills_every_page_of_every_file_with_a_pattern_of_its_own(tmp_path):
    workload = SessionsWorkload(sizes=[3 * PAGE, 5 * PAGE, PAGE], small_files=4, small_file_size=2 * PAGE, seed=3)
    Request(workload="sessions", session="s", workload_fields=workload.request()).write(tmp_path)
    agent = SessionsAgent(tmp_path, "prepare")
    agent.setup()
    memfds, maps, hashes, impl = agent.make_memory()
    try:
        assert [len(h) for h in hashes] == [3, 5, 1, 2, 2, 2, 2]
        assert [m.size() for m in maps] == [f.size for f in workload.files()]
        everything = np.concatenate(hashes)
        assert len(set(everything.tolist())) == everything.size == 17
        assert impl == agent.state["setup"]["hasher"]
        names = {os.readlink(f"/proc/self/fd/{fd}") for fd in memfds}
        assert "/memfd:wb-s-1000 (deleted)" in names and "/memfd:wb-s-small-1006 (deleted)" in names
    finally:
        for m in maps:
            m.close()
        for fd in memfds:
            os.close(fd)


# -- in the lab VM ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernel_7_3():
    """Linux 7.3, built on first use."""
    from workbench.lab.kernel import resolve_kernel

    return resolve_kernel("7.3", progress=False)


def _check_files(result, sizes, small_files, session="workbench"):
    pages = [s // PAGE for s in sizes] + [1] * small_files
    assert result["verified"] is True, result.get("differing_pages")
    assert result["pages_checked"] == sum(pages)
    assert result["workload"] == "sessions"
    assert result["sessions"] == [
        {"name": session, "files": len(sizes), "bytes": sum(sizes)},
        {"name": f"{session}-small", "files": small_files, "bytes": small_files * PAGE},
    ]
    rows = result["memfds"]
    assert [r["pages"] for r in rows] == pages
    assert [r["session"] for r in rows] == [session] * len(sizes) + [f"{session}-small"] * small_files
    assert all(r["differing_count"] == 0 and r["size"] == r["expected_size"] for r in rows)
    assert all(r[k] >= 0 for r in rows for k in ("preserve_s", "retrieve_s", "verify_s"))
    guest = result["run_dir"] + "/guest/"
    before, after = np.load(guest + FINGERPRINTS_BEFORE), np.load(guest + FINGERPRINTS_AFTER)
    assert np.array_equal(before, after) and len(split_pages(before, pages)) == len(rows)
    assert len(np.load(guest + FRAMES_BEFORE)) == sum(pages)


@pytest.mark.lab
def test_memfds_of_several_sizes_and_small_files_survive_the_kexec(lab_kernel, store):
    sizes = [32 << 20, 1 << 20, PAGE]
    workload = make_workload("sessions", sizes=sizes, small_files=16)
    result = run_cycle(workload, target=QemuTarget(lab_kernel), store=store)
    _check_files(result, sizes, 16)
    assert store.get(result["record_id"]).params["sizes"] == sizes


@pytest.mark.lab
def test_the_default_256_mib_cycle_from_7_2_into_7_3(lab_kernel, kernel_7_3, store):
    workload = make_workload("sessions")
    params = CycleParams(next_kernel="7.3")
    result = run_cycle(workload, params, target=QemuTarget(lab_kernel), store=store)
    _check_files(result, workload.sizes, 64)
    assert result["kernel_release_before"] == lab_kernel.release
    assert result["kernel_release_after"] == kernel_7_3.release


@pytest.mark.lab
def test_a_corrupted_page_of_a_small_file_is_found(lab_kernel, store):
    workload = make_workload("sessions", sizes=[8 << 20, PAGE], small_files=4)
    params = CycleParams(faults=Faults(corrupt_page=PageRef(memfd=4, page=0)))
    result = run_cycle(workload, params, target=QemuTarget(lab_kernel), store=store)
    assert result["verified"] is False
    assert result["differing_pages"] == {"4": [0]}
    assert [r["differing_count"] for r in result["memfds"]] == [0, 0, 0, 0, 1, 0]
    assert result["memfds"][4]["session"] == "workbench-small"
    assert "fault injection: flipped one bit of page 0 of memfd 4" in result["events"]
