"""What every workload's agent shares, run on this machine (no LUO needed): the fill pattern, page frames, phase
marks, pauses, failures, the next kernel's command line and the go-ahead."""

import io
import json
import mmap
import os
import threading

import numpy as np
import pytest

from workbench.kernels.pagehash import page_hashes
from workbench.lab.agent_core import Agent, differing_pages, fill_pattern, map_retrieved, page_frames
from workbench.lab.protocol import Event, Request, parse_mark


def test_fill_pattern_differs_per_page_memfd_and_seed():
    a, b, c = (np.zeros(4096 * 8, dtype=np.uint8) for _ in range(3))
    fill_pattern(a, 0, 0)
    fill_pattern(b, 1, 0)
    fill_pattern(c, 0, 1)
    ha = page_hashes(a)
    assert len(set(ha.tolist())) == 8
    assert not set(ha.tolist()) & set(page_hashes(b).tolist())
    assert not set(ha.tolist()) & set(page_hashes(c).tolist())


def test_page_frames_of_a_populated_mapping():
    m = mmap.mmap(-1, 4096 * 4)
    m[:] = b"x" * len(m)
    frames = page_frames(m)
    assert frames.shape == (4,)
    if os.geteuid() == 0:
        assert (frames > 0).all()


def test_differing_pages_lists_changed_pages_then_those_only_one_side_has():
    expected = np.arange(6, dtype=np.uint64)
    found = expected.copy()
    assert differing_pages(expected, found) == []
    found[[1, 4]] += 1
    assert differing_pages(expected, found) == [1, 4]
    assert differing_pages(expected, found[:3]) == [1, 3, 4, 5]  # came back shorter
    assert differing_pages(expected[:2], found) == [1, 2, 3, 4, 5]  # came back longer
    assert differing_pages(expected, np.zeros(0, dtype=np.uint64)) == list(range(6))


def test_map_retrieved_maps_each_file_whole_at_its_size():
    fds = [os.memfd_create(f"wb-test-{i}", 0) for i in range(2)]
    try:
        os.ftruncate(fds[0], 3 * 4096)
        os.ftruncate(fds[1], 4096)
        os.pwrite(fds[0], b"abc", 2 * 4096)
        sizes, maps = map_retrieved(fds)
        assert sizes == [3 * 4096, 4096] and [len(m) for m in maps] == sizes
        assert maps[0][2 * 4096 : 2 * 4096 + 3] == b"abc"
        if os.geteuid() == 0:
            assert (page_frames(maps[0]) > 0).all()  # faulted in: every page has a frame
        for m in maps:
            m.close()
    finally:
        for fd in fds:
            os.close(fd)


class _Failing(Agent):
    def prepare_and_kexec(self) -> None:
        with self.phase("prepare"):
            raise RuntimeError("no LUO here")


def _marks(text: str) -> list[tuple[str, dict]]:
    return [m for line in text.splitlines() if (m := parse_mark(line)) is not None]


def _results(tmp_path, **request) -> object:
    Request(workload="memfd", session="s", **request).write(tmp_path)
    return tmp_path


def test_a_failure_is_recorded_with_its_phase_and_told_to_the_host(tmp_path, capsys):
    agent = _Failing(_results(tmp_path), "prepare")
    assert agent.run("prepare") == 1
    events = _marks(capsys.readouterr().out)
    assert [e for e, _ in events] == [Event.PHASE_BEGIN, Event.ERROR]
    assert events[-1][1] == {"phase": "prepare", "message": "no LUO here", "type": "RuntimeError"}
    state = json.loads((tmp_path / "prepare.json").read_text())
    assert state["error"]["type"] == "RuntimeError" and state["error"]["phase"] == "prepare"
    assert "Traceback" in state["error"]["traceback"]


def test_pause_waits_for_the_hosts_continue_file(tmp_path, capsys):
    agent = Agent(_results(tmp_path, pause_after=["preserve"]), "prepare")
    agent.pause("prepare")  # not asked for: returns at once
    timer = threading.Timer(0.3, lambda: (tmp_path / "continue-preserve").write_text("go\n"))
    timer.start()
    agent.pause("preserve")
    timer.join()
    assert [e for e, _ in _marks(capsys.readouterr().out)] == [Event.PAUSED, Event.RESUMED]


def test_next_command_line_names_the_next_phase_and_the_hang_fault(tmp_path):
    agent = Agent(_results(tmp_path, next_phase="shell", faults={"next_boot_hangs": True}), "prepare")
    agent.state["cmdline_before"] = "console=ttyS0 wb.phase=prepare kho=on"
    assert agent.next_cmdline() == "console=ttyS0 kho=on wb.phase=shell wb.hang=1"


def test_go_ahead(tmp_path, monkeypatch, capsys):
    assert Agent(_results(tmp_path, dry_run=True), "prepare").go_ahead() == "dry run"
    assert Agent(_results(tmp_path), "prepare").go_ahead() is None
    confirming = Agent(_results(tmp_path, confirm_kexec=True), "prepare")
    monkeypatch.setattr("sys.stdin", io.StringIO("kexec\n"))
    assert confirming.go_ahead() is None
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert confirming.go_ahead() == "the host did not confirm the kexec (got 'end of file')"
    assert [e for e, _ in _marks(capsys.readouterr().out)] == [Event.KEXEC_READY, Event.KEXEC_READY]


def test_an_unreadable_request_is_a_clear_error(tmp_path):
    (tmp_path / "request.json").write_text("[]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        Agent(tmp_path, "prepare")
