"""The ``preload`` workload: an unmodified redis-server's birth memfds kept across a real kexec (lab VM), its data
set found again in raw memory, and on the host its parameters, request, summary and agent steps (a real
redis-server under the library, no VM). The helper modules ``preload_data``, ``preload_agent`` and
``preload_compare`` are tested here with the workload they serve."""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults, PageRef
from workbench.lab.preload import birth_memfds, take_memfd
from workbench.lab.workload import make_workload, workload_class
from workbench.lab.workloads.preload import PreloadWorkload
from workbench.lab.workloads.preload_agent import PreloadAgent, address_space, read_whole
from workbench.lab.workloads.preload_compare import blackout_ratios
from workbench.lab.workloads.preload_data import find_values, key_count, value_of
from workbench.records import RecordStore

VALUE = 256


# -- the data set ------------------------------------------------------------------------------------------------
def test_values_differ_by_key_and_seed_and_keep_their_size():
    assert len(value_of(3, 7, VALUE)) == VALUE and value_of(3, 7, VALUE).startswith(b"wb-preload seed=3 key=7|")
    assert value_of(3, 7, VALUE) != value_of(3, 8, VALUE) != value_of(4, 7, VALUE)
    assert value_of(3, 7, VALUE) == value_of(3, 7, VALUE)
    assert key_count(1 << 20, 4000) == 263 and key_count(1, 4000) == 1
    with pytest.raises(ValueError, match="at least 64 bytes"):
        value_of(0, 0, 10)


@settings(max_examples=80, deadline=None)
@given(
    keys=st.integers(1, 20),
    seed=st.integers(0, 10**6),
    noise=st.binary(max_size=4096),
    damaged_key=st.integers(0, 19),
    data=st.data(),
)
def test_every_value_placed_in_noise_is_found_and_a_changed_one_is_not(keys, seed, noise, damaged_key, data):
    values = [value_of(seed, k, VALUE) for k in range(keys)]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(noise)), min_size=keys, max_size=keys)))
    memory, last = b"", 0
    for cut, value in zip(cuts, values, strict=True):
        memory += noise[last:cut] + value
        last = cut
    memory += noise[last:]
    found = find_values([memory], seed, keys, VALUE)
    assert found.complete and found.intact == keys and found.missing == ()
    if damaged_key < keys:
        at = memory.index(values[damaged_key]) + VALUE - 1
        broken = memory[:at] + bytes([memory[at] ^ 1]) + memory[at + 1 :]
        after = find_values([broken], seed, keys, VALUE)
        assert not after.complete and after.missing == (damaged_key,) and after.damaged >= 1


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=2048), st.integers(0, 100), st.integers(0, 50))
def test_arbitrary_memory_never_makes_the_search_fail(memory, seed, keys):
    found = find_values([memory, b"wb-preload seed=1 key=99999999999|" + memory], seed, keys, VALUE)
    assert found.intact == 0 and found.keys == keys and not found.complete


def test_address_space_joins_adjacent_mappings_across_memfds_in_address_order():
    first = np.frombuffer(b"A" * 4096 + b"B" * 4096, dtype=np.uint8)
    second = np.frombuffer(b"C" * 4096, dtype=np.uint8)
    birth = [
        {"mappings": [[0x10000, 0x11000, 4096], [0x20000, 0x21000, 0]]},
        {"mappings": [[0x11000, 0x12000, 0]]},
    ]
    assert address_space([first, second], birth) == [b"B" * 4096 + b"C" * 4096, b"A" * 4096]


# -- the workload on the host ------------------------------------------------------------------------------------
def test_preload_is_registered_by_name_and_checks_its_parameters():
    assert workload_class("preload") is PreloadWorkload
    workload = make_workload("preload", size=16 << 20)
    workload.validate()
    assert workload.keys() == key_count(16 << 20, 4000) and workload.memory_mb() >= 1024
    request = workload.request()
    assert os.path.isabs(request["program"]) and request["library"].endswith(".so")
    assert workload.record_params() == {
        "workload": "preload",
        "program": "redis-server",
        "size": 16 << 20,
        "value_size": 4000,
        "seed": 0,
        "threshold": 1 << 20,
    }
    for bad, message in (
        ({"program": "memcached"}, "program 'memcached' is not one of redis-server"),
        ({"size": 0}, "size 0 must be positive"),
        ({"value_size": 8}, "value size 8 must be between"),
        ({"threshold": 100}, "threshold 100 must be at least a page"),
    ):
        with pytest.raises(InvalidCycle, match=message):
            PreloadWorkload(**bad).validate()
    with pytest.raises(InvalidCycle, match="takes no fault corrupt_page"):
        workload.validate_faults(Faults(corrupt_page=PageRef(0, 0)))


def test_summary_counts_birth_memfds_preserved_bytes_and_needs_the_data_back():
    prepare = {
        "birth": [{"size": 8 << 20, "resident": 6 << 20}, {"size": 2 << 20, "resident": 1 << 20}],
        "preserve_s": [0.25, 0.5],
        "keys_written": 10,
        "data_before": {"complete": True},
    }
    memfds = [{"pages": 2048, "differing_count": 0}, {"pages": 512, "differing_count": 1}]
    restore = {"retrieve_s": [0.125, 0.125], "memfds": memfds, "data_after": {"complete": True, "intact": 10}}
    result = PreloadWorkload().summarize({"verified": True, "blackout_s": 2.0}, prepare, restore, [])
    assert result["birth_memfds"] == 2 and result["birth_bytes"] == 10 << 20 and result["bytes_preserved"] == 7 << 20
    assert result["pages_verified"] == 2048 and result["preserve_s"] == 0.75 and result["retrieve_s"] == 0.25
    assert result["verified"] is True and result["keys"] == 10
    restore["data_after"] = {"complete": False, "intact": 9}
    assert PreloadWorkload().summarize({"verified": True}, prepare, restore, [])["verified"] is False


def test_agent_finds_the_data_set_in_the_birth_memfds_of_a_stopped_redis(tmp_path):
    workload = PreloadWorkload(size=4 << 20, seed=5)
    workload.validate()
    (tmp_path / "request.json").write_text(json.dumps({**workload.request(), "session": "t", "workload": "preload"}))
    agent = PreloadAgent(tmp_path, "prepare")
    agent.start_program()
    try:
        agent.fill()
        assert agent.state["keys_written"] == workload.keys()
        os.kill(agent.process.pid, signal.SIGSTOP)
        agent.wait_stopped()
        found = birth_memfds(agent.process.pid)
        assert found, "redis-server's jemalloc extents should be birth memfds"
        fds = [take_memfd(agent.process.pid, m.fd) for m in found]
        contents = [read_whole(fd, m.size) for fd, m in zip(fds, found, strict=True)]
        birth = [{"mappings": [[b.start, b.end, b.offset] for b in m.mappings]} for m in found]
        data = find_values(address_space(contents, birth), 5, workload.keys(), workload.value_size)
        assert data.complete, data
        # a page of the data changed in one memfd is a key the search no longer finds intact
        victim = random.Random(0).choice(range(workload.keys()))
        for fd, content in zip(fds, contents, strict=True):
            at = content.tobytes().find(value_of(5, victim, workload.value_size))
            if at >= 0:
                os.pwrite(fd, b"\xff", at + 100)
                content[at + 100] = 0xFF
        after = find_values(address_space(contents, birth), 5, workload.keys(), workload.value_size)
        assert victim in after.missing
        for fd in fds:
            os.close(fd)
    finally:
        agent.process.kill()
        agent.process.wait()


# -- in the lab VM -----------------------------------------------------------------------------------------------
def test_blackout_ratios_lead_with_the_preload_cycle_and_skip_what_did_not_verify():
    preload = {"verified": True, "blackout_s": 10.0}
    converted = {"verified": True, "blackout_s": 20.0}
    criu = {"verified": True, "blackout_s": 8.0, "downtime_s": 30.0}
    assert blackout_ratios(preload, converted, criu) == {
        "preload_to_converted": 0.5,
        "preload_to_criu": 1.25,
        "criu_downtime_to_preload_blackout": 3.0,
    }
    failed = blackout_ratios(preload, {"verified": False, "blackout_s": 20.0}, {"verified": False, "downtime_s": 3})
    assert failed == {"preload_to_converted": None, "preload_to_criu": None, "criu_downtime_to_preload_blackout": None}


@pytest.mark.lab
def test_redis_memory_survives_kexec_through_birth_memfds(lab_kernel, tmp_path):
    data = tmp_path / "data"
    command = ["cycle", "--workload", "preload", "--program", "redis-server", "--size", "16M", "--kernel", "7.2"]
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", *command, "--json", "--data", str(data)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["verified"] is True and result["workload"] == "preload"
    assert result["birth_memfds"] >= 1 and result["bytes_preserved"] >= 16 << 20
    assert result["pages_verified"] == result["birth_bytes"] // 4096 == result["pages_checked"]
    assert result["data_after"]["complete"] and result["data_after"]["intact"] == result["keys"]
    assert result["data_before"]["complete"]
    assert result["kernel_release_after"] and result["preserve_s"] > 0 and result["retrieve_s"] > 0
    assert {"checkpoint", "preserve", "kexec", "restore", "verify", "data"} <= set(result["phases"])
    record = RecordStore(data).get(result["record_id"])
    assert record.status == "ok" and record.params["program"] == "redis-server" and record.params["size"] == 16 << 20
