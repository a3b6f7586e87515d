"""The ``converted`` workload on the host: its strategies, request, sizing and per-memfd summary (the cycles in the lab
VM are in test_conversion_bench.py)."""

import os

import pytest

from workbench.lab.errors import InvalidCycle
from workbench.lab.liveupdate import LiveUpdateError
from workbench.lab.workloads.converted import (
    ConvertedMemfdWorkload,
    GuestConversion,
    probe_preservation,
    resolve_specs,
    summarize,
)
from workbench.lab.workloads.memfd import MemfdWorkload


def test_one_strategy_applies_to_every_memfd_and_copiers_default_to_numba():
    specs = resolve_specs(["copy-fresh"], 3)
    assert [s.strategy for s in specs] == ["copy-fresh"] * 3
    assert {s.copier for s in specs} == {"numba"}
    kernel_side = resolve_specs(["pwrite", "vmsplice-gift"], 2, threads=2)
    assert [s.copier for s in kernel_side] == ["kernel", "kernel"]
    assert kernel_side[1].pipe_size > 0 and kernel_side[0].pipe_size == 0
    request = ConvertedMemfdWorkload(memfds=2, convert=["pwrite", "vmsplice-gift"], convert_limits=True).request()
    assert request["convert"][1]["strategy"] == "vmsplice-gift" and request["convert_limits"] is True
    assert request["memfds"] == 2 and request["tokens"] == [1000, 1001]


@pytest.mark.parametrize(
    ("strategies", "memfds", "copier", "message"),
    [
        (["teleport"], 1, "", "unknown conversion strategy 'teleport'"),
        (["write", "pwrite"], 3, "", "2 conversion strategies given for 3 memfds"),
        (["write"], 1, "numba", "strategy write copies with kernel, not 'numba'"),
    ],
)
def test_bad_conversion_requests_are_refused_before_boot(strategies, memfds, copier, message):
    with pytest.raises(InvalidCycle, match=message):
        ConvertedMemfdWorkload(memfds=memfds, convert=strategies, convert_copier=copier).validate()


def test_converting_needs_a_strategy_and_room_for_the_sources():
    with pytest.raises(InvalidCycle, match="at least one conversion strategy"):
        ConvertedMemfdWorkload(convert=[]).validate()
    plain = MemfdWorkload(memfds=4, memfd_size=512 << 20)
    converting = ConvertedMemfdWorkload(memfds=4, memfd_size=512 << 20, convert=["write"])
    assert converting.memory_mb() >= plain.memory_mb() + 2048
    assert converting.phases_before_kexec == ("prepare", "convert", "preserve", "load")
    assert converting.record_params()["workload"] == "converted" and converting.record_params()["convert"] == ["write"]


def test_summary_adds_each_memfds_own_times_to_the_shared_blackout():
    prepare = {
        "setup": {"limits": {"memcpy_bytes_per_s": 4e9}},
        "conversions": [
            {"strategy": "write", "copier": "kernel", "threads": 1, "pipe_size": 0, "size": 1 << 30, "convert_s": 0.5}
            | {"alloc_s": None, "copy_s": 0.5},
        ],
        "preserve_s": [0.25],
    }
    restore = {
        "retrieve_s": [0.125],
        "verify_s": [1.0],
        "memfds": [{"memfd": 0, "differing_count": 0, "size": 1 << 30, "expected_size": 1 << 30}],
    }
    phases = {"prepare": 9.0, "convert": 0.5, "preserve": 0.25, "load": 1.0, "kexec": 3.0, "restore": 0.125}
    out = summarize(prepare, restore, phases | {"verify": 1.0}, blackout_s=3.0)
    row = out["conversions"][0]
    assert row["end_to_end_s"] == 0.5 + 0.25 + 3.0 + 0.125 + 1.0
    assert row["bytes_per_s"] == (1 << 30) / 0.5 and row["ratio_to_memcpy"] == (1 << 30) / 0.5 / 4e9
    assert row["verified"] is True
    assert out["anon_to_survived_s"] == 0.5 + 0.25 + 1.0 + 3.0 + 0.125 + 1.0  # prepare is not part of the path


def test_a_memfd_luo_refused_keeps_its_conversion_and_the_refusal_while_the_others_shift_places():
    conversion = {"copier": "numba", "threads": 1, "pipe_size": 0, "size": 4 << 20, "alloc_s": None, "copy_s": 0.1}
    identity = {"pages_converted": 1024, "moved_pages": 0, "copied_pages": 1024, "huge_pages": 0}
    refusal = {"errno": "ENOENT", "message": "preserving fd 5: No such file", "code_path": "memfd_luo_can_preserve"}
    prepare = {
        "conversions": [
            {"strategy": "hugetlb", "convert_s": 0.1, **conversion, **identity, "huge_pages": 1024},
            {"strategy": "copy-fresh", "convert_s": 0.2, **conversion, **identity},
        ],
        "preserved_memfds": [1],
        "preserve_refused": {"0": {**refusal, "converted_verified": True}},
        "preserve_s": [0.25],
    }
    restore = {
        "retrieve_s": [0.125],
        "verify_s": [1.0],
        "memfds": [{"memfd": 0, "differing_count": 0, "size": 4 << 20, "expected_size": 4 << 20}],
    }
    hugetlb, fresh = summarize(prepare, restore, {}, blackout_s=3.0)["conversions"]
    assert hugetlb["verified"] is False and hugetlb["preserve_s"] is None and hugetlb["end_to_end_s"] is None
    assert "ENOENT" in hugetlb["preserve_refused"] and "memfd_luo_can_preserve" in hugetlb["preserve_refused"]
    assert hugetlb["converted_verified"] is True and hugetlb["huge_pages"] == 1024
    assert fresh["verified"] is True and fresh["preserve_s"] == 0.25 and fresh["end_to_end_s"] == 0.2 + 0.25 + 4.125
    assert fresh["preserve_refused"] == "" and fresh["moved_pages"] + fresh["copied_pages"] == 1024


def test_hugetlb_memfds_get_guest_ram_for_their_pool():
    base = ConvertedMemfdWorkload(memfds=2, memfd_size=256 << 20, convert=["copy-fresh", "copy-fresh"])
    huge = ConvertedMemfdWorkload(memfds=2, memfd_size=256 << 20, convert=["copy-fresh", "hugetlb"])
    assert huge.memory_mb() >= base.memory_mb() + 256 + 2


def test_page_identity_is_read_after_the_conversion_not_inside_it():
    guest = GuestConversion([resolve_specs(["copy-fresh"], 1)[0].as_request()], 4 << 20)
    guest.make_sources()
    fds = guest.convert()
    try:
        assert not any(key in guest.results[0] for key in ("moved_pages", "copied_pages", "huge_pages"))
        assert guest.results[0]["convert_s"] > 0
        guest.release_sources()
        guest.record_identity(fds)
        identity = guest.results[0]
        assert identity["pages_converted"] == (4 << 20) // 4096
        assert {"moved_pages", "copied_pages", "huge_pages", "page_identity_explanation"} <= set(identity)
        if identity["moved_pages"] is None:  # not root: the reason is kept
            assert identity["page_identity_explanation"].startswith("page identity unknown: ")
        else:
            assert identity["moved_pages"] + identity["copied_pages"] <= identity["pages_converted"]
    finally:
        for fd in fds:
            os.close(fd)


def test_the_preservation_probe_closes_its_memfd_when_liveupdate_cannot_be_opened():
    if os.path.exists("/dev/liveupdate"):
        pytest.skip("this machine has a Live Update Orchestrator: the probe would preserve for real")
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(LiveUpdateError, match="/dev/liveupdate"):
        probe_preservation("copy-fresh", "wb-probe-test")
    assert set(os.listdir("/proc/self/fd")) == before
