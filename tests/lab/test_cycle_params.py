"""Cycle parameters are checked on the host, before anything boots."""

import pytest

from workbench.lab.agent import fill_pattern, page_frames
from workbench.lab.cycle import CycleParams, _parse_mark
from workbench.lab.qemu import SerialLine


def test_session_name_too_long_is_refused_before_boot():
    with pytest.raises(ValueError, match="at most 63"):
        CycleParams(session="s" * 80).validate()


def test_sizes_and_tokens_checked():
    with pytest.raises(ValueError, match="multiple of the 4096-byte page size"):
        CycleParams(memfd_size=1000).validate()
    with pytest.raises(ValueError, match="3 tokens given for 2 memfds"):
        CycleParams(memfds=2, tokens=[1, 2, 3]).validate()
    with pytest.raises(ValueError, match="preserve or restore"):
        CycleParams(dump_after=["kexec"]).validate()
    CycleParams().validate()


def test_guest_memory_grows_with_the_memfds():
    assert CycleParams(memfds=2, memfd_size=64 << 20).resolved_memory_mb() == 1024
    assert CycleParams(memfds=1, memfd_size=1 << 30).resolved_memory_mb() >= 2 * 1024 + 768


def test_marks_parse_with_console_noise():
    assert _parse_mark(SerialLine(0, '[  1.0] x WB-MARK phase-end {"phase":"prepare","s":1.5}')) == (
        "phase-end",
        {"phase": "prepare", "s": 1.5},
    )
    assert _parse_mark(SerialLine(0, "WB-MARK init restore")) == ("init", {"text": "restore"})
    assert _parse_mark(SerialLine(0, "ordinary kernel line")) is None


def test_fill_pattern_differs_per_page_memfd_and_seed():
    import numpy as np

    from workbench.kernels.pagehash import page_hashes

    a, b, c = (np.zeros(4096 * 8, dtype=np.uint8) for _ in range(3))
    fill_pattern(a, 0, 0)
    fill_pattern(b, 1, 0)
    fill_pattern(c, 0, 1)
    ha = page_hashes(a)
    assert len(set(ha.tolist())) == 8
    assert not set(ha.tolist()) & set(page_hashes(b).tolist())
    assert not set(ha.tolist()) & set(page_hashes(c).tolist())


def test_page_frames_of_a_populated_mapping():
    import mmap
    import os

    m = mmap.mmap(-1, 4096 * 4)
    m[:] = b"x" * len(m)
    frames = page_frames(m)
    assert frames.shape == (4,)
    if os.geteuid() == 0:
        assert (frames > 0).all()


def test_tcg_runs_all_vcpus_on_one_host_thread_unless_asked():
    from pathlib import Path

    from workbench.lab.qemu import VMConfig

    base = {"kernel": Path("bzImage"), "initrd": Path("initrd"), "cmdline": ""}
    argv = VMConfig(**base).argv(Path("serial"), Path("qmp"))
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"
    multi = VMConfig(**base, tcg_threads="multi").argv(Path("serial"), Path("qmp"))
    assert multi[multi.index("-accel") + 1] == "tcg,thread=multi"
    kvm = VMConfig(**base, accel="kvm").argv(Path("serial"), Path("qmp"))
    assert kvm[kvm.index("-accel") + 1] == "kvm"
    with pytest.raises(ValueError, match="single or multi"):
        CycleParams(tcg_threads="many").validate()
