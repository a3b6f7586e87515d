"""The memfd-from-birth library on the host: built and cached, and the semantics its module promises, checked on a
small C program (``preload_probe.c``) run with and without it."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.lab.errors import LabError
from workbench.lab.preload import (
    MEMFD_NAME,
    PreloadError,
    announcements,
    birth_memfds,
    build_preload,
    library_key,
    preload_environment,
    take_memfd,
)

PROBE_SOURCE = Path(__file__).with_name("preload_probe.c")
MIB = 1 << 20


@pytest.fixture(scope="session")
def library(tmp_path_factory):
    return build_preload(cache=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def probe(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("probe") / "preload_probe"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(binary), str(PROBE_SOURCE)], check=True)
    return binary


def run_probe(probe: Path, scenario: str, env: dict[str, str] | None, stdin: str = "") -> list[dict]:
    out = subprocess.run(
        [str(probe), scenario], input=stdin, capture_output=True, text=True, env=env, timeout=60, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def read_step(proc: subprocess.Popen) -> dict:
    """The probe's next JSON line; fails (rather than hangs) when it prints none within 30 s."""
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, f"the probe printed nothing for 30 s after {line!r}"
        byte = os.read(proc.stdout.fileno(), 1)
        assert byte, f"the probe exited after {line!r}"
        line += byte
    return json.loads(line)


def resume(proc: subprocess.Popen) -> None:
    """Lets the probe go on past a pause."""
    proc.stdin.write(b"\n")
    proc.stdin.flush()


def step(lines: list[dict], name: str) -> dict:
    return next(line for line in lines if line["step"] == name)


def test_build_is_cached_and_keyed_by_compiler(library, tmp_path):
    again = build_preload(cache=library.path.parent.parent)
    assert again == library
    assert library.path.name == f"memfd_birth-{library.key}.so"
    assert library_key("gcc (other) 1.0") != library.key


def test_a_failed_build_leaves_nothing(tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'broken-cc 1.0'; exit 0; }\necho 'no way' >&2\nexit 1\n")
    cc.chmod(0o755)
    with pytest.raises(PreloadError, match="no way") as caught:
        build_preload(str(cc), cache=tmp_path / "cache")
    assert isinstance(caught.value, LabError)
    assert [p.name for p in (tmp_path / "cache" / "preload").iterdir()] == [".lock"]


def test_a_missing_compiler_says_what_to_install(tmp_path):
    with pytest.raises(PreloadError, match="build-essential"):
        build_preload(str(tmp_path / "no-such-cc"), cache=tmp_path)


def test_bad_settings_are_refused(library):
    with pytest.raises(PreloadError, match="fork policy"):
        preload_environment(library, fork="cow")
    with pytest.raises(PreloadError, match="at least a page"):
        preload_environment(library, threshold=100)
    with pytest.raises(PreloadError, match="malloc mode"):
        preload_environment(library, malloc="sometimes")


def test_environment_puts_the_library_first(library):
    env = preload_environment(library, base={"LD_PRELOAD": "/x/other.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"].split() == [str(library.path), "/x/other.so"]
    assert env["PATH"] == "/bin"


def test_large_mappings_are_birth_memfds_that_an_agent_can_take(library, probe, tmp_path):
    env = preload_environment(library, registry_dir=tmp_path)
    proc = subprocess.Popen([str(probe), "mmap", str(8 * MIB)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        mapped = read_step(proc)
        assert mapped["inode"] and mapped["data"] == 1
        memfds = birth_memfds(proc.pid)
        [memfd] = [m for m in memfds if m.inode == mapped["inode"]]
        [mapping] = memfd.mappings
        assert (mapping.start, mapping.length, mapping.offset, mapping.perms) == (mapped["addr"], 8 * MIB, 0, "rw-s")
        assert memfd.size == 8 * MIB and memfd.resident >= 8 * MIB
        assert os.readlink(f"/proc/{proc.pid}/fd/{memfd.fd}").startswith(f"/memfd:{MEMFD_NAME}")
        taken = take_memfd(proc.pid, memfd.fd)
        try:
            assert os.fstat(taken).st_ino == memfd.inode
            assert os.pread(taken, 16, 4096) == bytes((4096 + i) * 7 + 1 & 0xFF for i in range(16))
        finally:
            os.close(taken)
        assert announcements(tmp_path)[proc.pid] == {
            "pid": proc.pid,
            "threshold": MIB,
            "fork": "copy",
            "malloc": "glibc-large-blocks",
            "memfd_name": MEMFD_NAME,
        }
        resume(proc)
        assert read_step(proc) == {"step": "small", "inode": 0}  # below the threshold
        assert read_step(proc)["step"] == "unmapped"
        assert all(m.inode != mapped["inode"] for m in birth_memfds(proc.pid))  # unmapped: the memfd is closed
        resume(proc)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_without_the_library_or_below_the_threshold_memory_stays_anonymous(library, probe):
    assert step(run_probe(probe, "mmap", None, "\n\n"), "mapped")["inode"] == 0
    env = preload_environment(library, threshold=16 * MIB)
    assert step(run_probe(probe, "mmap", env, "\n\n"), "mapped")["inode"] == 0


def test_fork_copies_so_parent_and_child_keep_their_own_writes(library, probe):
    lines = run_probe(probe, "fork", preload_environment(library))
    child, parent = step(lines, "child"), step(lines, "parent")
    assert child["saw_parent_data"] == 1 and child["keeps_own"] == 1
    assert parent["keeps_own"] == 1 and parent["child_status"] == 0
    assert child["parent_inode"] == parent["inode"] != 0
    assert child["inode"] not in (0, parent["inode"])  # the child's copy is a birth memfd of its own


def test_fork_can_be_refused_with_a_reason(library, probe):
    env = preload_environment(library, fork="refuse")
    out = subprocess.run([str(probe), "fork"], capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(out.stdout) == {"step": "fork", "errno": 12}
    assert "fork refused" in out.stderr and "WORKBENCH_MEMFD_BIRTH_FORK" in out.stderr


def test_fork_share_shares_what_a_private_mapping_would_not(library, probe):
    lines = run_probe(probe, "fork", preload_environment(library, fork="share"))
    assert step(lines, "parent")["keeps_own"] == 0  # the child's write shows through: why copy is the default
    assert step(lines, "child")["inode"] == step(lines, "parent")["inode"]


def test_partial_munmap_frees_the_range_and_growth_moves_past_a_split(library, probe):
    env = preload_environment(library)
    proc = subprocess.Popen([str(probe), "munmap"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        read_step(proc)
        [before] = birth_memfds(proc.pid)
        resume(proc)
        middle = read_step(proc)
        assert middle["head"] == middle["tail"] == 1
        assert middle["head_inode"] == middle["tail_inode"] == before.inode
        [after] = birth_memfds(proc.pid)
        assert len(after.mappings) == 2
        assert after.resident <= before.resident - 4 * MIB  # the middle was punched out of the memfd
        resume(proc)
        grown = read_step(proc)
        assert grown["ok"] == grown["head"] == grown["new_zero"] == grown["tail"] == 1
        assert grown["inode"] not in (0, before.inode)
        assert read_step(proc)["step"] == "tail unmapped"
        assert [m.inode for m in birth_memfds(proc.pid)] == [grown["inode"]]  # the first memfd is closed
        resume(proc)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_mremap_grows_in_the_same_memfd_and_shrinks(library, probe):
    [result] = run_probe(probe, "mremap", preload_environment(library))
    assert result == {
        "step": "mremap",
        "grown": 1,
        "kept": 1,
        "fresh_zero": 1,
        "same_memfd": 1,
        "shrunk": 1,
        "second_view_errno": 22,  # EINVAL, as for private anonymous memory
    }


def test_dontneed_and_free_read_zeros_as_anonymous_memory_does(library, probe):
    [result] = run_probe(probe, "madvise", preload_environment(library))
    assert result["inode"] != 0
    assert (result["dontneed"], result["free"], result["first_zero"], result["second_zero"], result["rest"]) == (
        0,
        0,
        1,
        1,
        1,
    )


def test_glibc_malloc_large_blocks_are_birth_memfds(library, probe):
    malloc, freed = run_probe(probe, "malloc", preload_environment(library))
    assert malloc["inode"] != 0 and malloc["usable"] >= 8 * MIB and malloc["aligned16"] == 1
    assert malloc["realloc_kept"] == 1 and malloc["realloc_inode"] == malloc["inode"]
    assert malloc["calloc_zero"] == 1 and malloc["calloc_inode"] not in (0, malloc["inode"])
    assert malloc["small_kept"] == 1 and malloc["small_grown_inode"] != 0
    assert freed["small_inode"] == 0
    off, _ = run_probe(probe, "malloc", preload_environment(library, malloc="off"))
    assert off["inode"] == 0


def test_an_unmodified_python_keeps_its_large_buffers_in_birth_memfds(library):
    code = (
        "import os\nb = bytearray(range(256)) * (32 << 12)\n"
        "maps = open('/proc/self/maps').read()\n"
        f"print('/memfd:{MEMFD_NAME}' in maps, b[12345] == 12345 % 256)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=preload_environment(library), timeout=60
    )
    assert out.stdout.split() == ["True", "True"], out.stderr


_SLOT = st.integers(0, 2)
_PAGE = st.integers(0, 15)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("map"), _SLOT, st.integers(1, 16)),
        st.tuples(st.just("write"), _SLOT, _PAGE, st.integers(0, 255)),
        st.tuples(st.just("unmap"), _SLOT, _PAGE, st.integers(1, 4)),
        st.tuples(st.just("resize"), _SLOT, st.integers(1, 24)),
        st.tuples(st.just("dontneed"), _SLOT, _PAGE, st.integers(1, 4)),
        st.tuples(st.just("fork"), _SLOT, _PAGE, st.integers(0, 255)),
        st.tuples(st.just("sum"), _SLOT),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_a_program_sees_the_same_memory_with_and_without_the_library(library, probe, ops):
    script = "".join(" ".join(map(str, op)) + "\n" for op in ops) + "sum 0\nsum 1\nsum 2\n"
    plain = subprocess.run([str(probe), "script"], input=script, capture_output=True, text=True, timeout=60)
    env = preload_environment(library, threshold=4096)
    birth = subprocess.run([str(probe), "script"], input=script, capture_output=True, text=True, env=env, timeout=60)
    assert birth.returncode == plain.returncode == 0, birth.stderr
    assert birth.stdout == plain.stdout
