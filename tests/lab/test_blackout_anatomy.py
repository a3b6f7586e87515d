"""The blackout's anatomy, read from real serial logs of 2 × 64 MiB cycles under TCG (``serial-7.2-*.log``, from
the kexec mark to the end of the restore phase, as the lab VM wrote them), from garbled and arbitrary console
text, and from one real cycle in the lab VM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.lab.blackout_anatomy import (
    CONSOLE_ARGS,
    PHASES,
    NoBlackoutInLog,
    anatomy_console_args,
    anatomy_of_serial_log,
    blackout_anatomy,
    read_serial_log,
)

HERE = Path(__file__).parent
LOG = HERE / "serial-7.2-cycle.log"
#: the marks' host times and the boundary lines' arrival times, read off serial-7.2-cycle.log by hand
EXPECTED = json.loads((HERE / "serial-7.2-cycle.json").read_text())
LOG_LOGLEVEL6 = HERE / "serial-7.2-cycle-loglevel6.log"  # booted before the anatomy's console arguments
#: booted with loglevel=8 initcall_debug; the other initcalls' "calling"/"initcall" lines taken out (738 of them)
LOG_INITCALL_DEBUG = HERE / "serial-7.2-cycle-initcall-debug.log"


def _after_kexec(path: Path) -> list[tuple[float, str]]:
    kexec = EXPECTED["marks"]["kexec"] if path == LOG else None
    lines = read_serial_log(path)
    if kexec is None:
        kexec = next(t for t, text in lines if text == "WB-MARK kexec")
    return [line for line in lines if line[0] >= kexec]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, abs_tol=1e-9)


def test_a_real_cycle_is_named_phase_by_phase_on_the_host_clock():
    marks, at = EXPECTED["marks"], EXPECTED["boundaries"]
    anatomy = anatomy_of_serial_log(LOG)
    expected = {
        "kexec_to_console": at["first console line"] - marks["kexec"],
        "early_boot": (at["Zone ranges"] - at["first console line"]) + (at["mem auto-init"] - at["setup_percpu"]),
        "memmap_init": at["setup_percpu"] - at["Zone ranges"],
        "kho_restore": at["SLUB"] - at["mem auto-init"],
        "initcalls": at["Freeing unused kernel image (initmem)"] - at["SLUB"],
        "kernel_to_init": at["Run /init"] - at["Freeing unused kernel image (initmem)"],
        "agent_start": marks["agent_start"] - at["Run /init"],
        "retrieve": marks["retrieved"] - marks["agent_start"],
    }
    assert list(anatomy.phases) == list(PHASES)
    for name, seconds in expected.items():
        assert _close(anatomy.phases[name], seconds), name
    assert _close(anatomy.blackout_s, marks["agent_start"] - marks["kexec"])
    assert _close(anatomy.kernel_blackout_s, at["Run /init"] - marks["kexec"])
    assert anatomy.unexplained_s == 0.0 and anatomy.missing == []
    # KHO's restore, not struct page init, is what this 1 GiB guest's early boot spends most on
    assert anatomy.phases["kho_restore"] > 10 * anatomy.phases["memmap_init"]

    result = anatomy.as_result()
    assert result["kernel_blackout_s"] + result["agent_start_s"] == pytest.approx(anatomy.blackout_s)
    assert result["blackout_phases"] == anatomy.phases and result["unexplained_s"] == 0.0
    timeline = result["blackout_timeline"]
    assert timeline[0]["start_s"] == 0.0 and [s["phase"] for s in timeline].count("early_boot") == 2
    assert all(_close(a["end_s"], b["start_s"]) for a, b in zip(timeline, timeline[1:], strict=False))
    assert json.loads(json.dumps(result)) == result


def test_the_runners_call_gives_what_the_log_gives():
    marks = EXPECTED["marks"]
    direct = blackout_anatomy(_after_kexec(LOG), marks["kexec"], marks["agent_start"], marks["retrieved"])
    assert direct == anatomy_of_serial_log(LOG)
    without_retrieve = blackout_anatomy(_after_kexec(LOG), marks["kexec"], marks["agent_start"])
    assert "retrieve" not in without_retrieve.phases
    assert without_retrieve.segments == direct.segments[:-1]


def test_a_console_that_hides_kern_info_leaves_the_kernel_unexplained():
    anatomy = anatomy_of_serial_log(LOG_LOGLEVEL6)
    lines = read_serial_log(LOG_LOGLEVEL6)
    kexec = next(t for t, text in lines if text == "WB-MARK kexec")
    banner = next(t for t, text in lines if "Linux version" in text)
    assert list(anatomy.phases) == ["kexec_to_console", "retrieve"]
    assert _close(anatomy.phases["kexec_to_console"], banner - kexec)
    assert _close(anatomy.unexplained_s, anatomy.blackout_s - (banner - kexec))
    assert anatomy.kernel_blackout_s is None and anatomy.as_result()["agent_start_s"] is None
    assert "Run /init as init process" in anatomy.missing


def test_a_dropped_boundary_line_is_unexplained_not_guessed():
    at = EXPECTED["boundaries"]
    lines = [
        (t, text.replace("mem auto-init", "mem auto-nit")) if "mem auto-init" in text else (t, text)
        for t, text in _after_kexec(LOG)
    ]
    marks = EXPECTED["marks"]
    anatomy = blackout_anatomy(lines, marks["kexec"], marks["agent_start"], marks["retrieved"])
    assert "kho_restore" not in anatomy.phases
    assert _close(anatomy.unexplained_s, at["SLUB"] - at["setup_percpu"])
    assert anatomy.missing == ["mem auto-init (the last line before KHO's restore)"]
    assert _close(anatomy.kernel_blackout_s, at["Run /init"] - marks["kexec"])


def test_lines_that_arrived_in_one_read_are_placed_back_by_their_printk_deltas():
    lines = [
        (10.0, "[    0.000000] Linux version 7.2.13-lab"),
        (11.0, "[    1.000000] Freeing unused kernel image (initmem) memory: 1028K"),
        (12.0, "[    1.100000] Run /init as init process"),
        (12.0, "[    1.300000] input: ImExPS/2 Generic Explorer Mouse"),
        (12.0, "[    1.500000] 9pnet: Limiting 'msize'"),
    ]
    anatomy = blackout_anatomy(lines, 9.0, 20.0)
    assert _close(anatomy.kernel_blackout_s, 12.0 - 0.4 - 9.0)
    # a printk clock running far too fast cannot place a line before the previous read arrived
    fast = [*lines[:3], (12.0, "[   61.100000] 9pnet: Limiting 'msize'")]
    assert _close(blackout_anatomy(fast, 9.0, 20.0).kernel_blackout_s, 11.0 - 9.0)


def test_initcall_debug_names_luo_and_kho_initcalls():
    anatomy = anatomy_of_serial_log(LOG_INITCALL_DEBUG)
    assert {"liveupdate_early_init", "kho_init", "luo_late_startup"} <= set(anatomy.liveupdate_initcalls)
    assert all(0 <= s < anatomy.phases["initcalls"] for s in anatomy.liveupdate_initcalls.values())
    assert anatomy.unexplained_s == 0.0 and "kho_restore" in anatomy.phases


def test_the_console_arguments_replace_the_loglevel():
    args = anatomy_console_args(["console=ttyS0", "loglevel=6", "kho=on"])
    assert args == ["console=ttyS0", "kho=on", *CONSOLE_ARGS]
    assert "loglevel=7" in CONSOLE_ARGS and any(a.startswith("earlycon=uart8250") for a in CONSOLE_ARGS)


def test_a_log_without_a_blackout_is_a_clear_error(tmp_path):
    log = tmp_path / "serial.log"
    log.write_text("[     1.000] WB-MARK init prepare\n[     2.000] WB-MARK kexec\n")
    with pytest.raises(NoBlackoutInLog, match="no agent start after the kexec mark"):
        anatomy_of_serial_log(log)
    log.write_text("[     1.000] WB-MARK init prepare\n")
    with pytest.raises(NoBlackoutInLog, match="has no kexec mark"):
        anatomy_of_serial_log(log)
    with pytest.raises(ValueError, match="must not come before the kexec mark"):
        blackout_anatomy([], 5.0, 4.0)


# -- any console text ----------------------------------------------------------------------------------------
REAL_TEXTS = [text for _, text in _after_kexec(LOG)]


@st.composite
def garbled(draw) -> str:
    """A line of the real log with characters dropped, as QEMU's serial port drops them under load."""
    text = draw(st.sampled_from(REAL_TEXTS))
    for _ in range(draw(st.integers(0, 3))):
        if text:
            cut = draw(st.integers(0, len(text) - 1))
            text = text[:cut] + text[cut + draw(st.integers(1, 8)) :]
    return text


texts = st.one_of(
    st.text(max_size=80),
    st.sampled_from(REAL_TEXTS),
    garbled(),
    st.builds(lambda t, s: f"[{t:12.6f}] {s}", st.floats(0, 1e6), st.sampled_from(REAL_TEXTS)),
)


def _check_invariants(anatomy, blackout_s: float) -> None:
    assert anatomy.blackout_s == pytest.approx(blackout_s)
    segments = [s for s in anatomy.segments if s.phase != "retrieve"]
    assert segments[0].start_s == 0.0 and segments[-1].end_s == pytest.approx(blackout_s)
    assert all(s.seconds >= 0 for s in anatomy.segments)
    assert all(a.end_s == b.start_s for a, b in zip(anatomy.segments, anatomy.segments[1:], strict=False))
    named = sum(v for k, v in anatomy.phases.items() if k != "retrieve")
    assert 0 <= anatomy.unexplained_s <= blackout_s + 1e-9
    assert named <= blackout_s + 1e-9
    assert named + anatomy.unexplained_s == pytest.approx(blackout_s, abs=1e-9)
    assert anatomy.kernel_blackout_s is None or 0 <= anatomy.kernel_blackout_s <= blackout_s + 1e-9
    json.dumps(anatomy.as_result())


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(st.floats(-10, 60, allow_nan=False), texts), max_size=60),
    t_kexec=st.floats(0, 20, allow_nan=False),
    blackout_s=st.floats(0, 30, allow_nan=False),
    retrieve_s=st.one_of(st.none(), st.floats(-1, 5, allow_nan=False)),
)
def test_arbitrary_console_text_never_breaks_the_anatomy(lines, t_kexec, blackout_s, retrieve_s):
    t_agent = t_kexec + blackout_s
    t_retrieved = None if retrieve_s is None else t_agent + retrieve_s
    _check_invariants(blackout_anatomy(lines, t_kexec, t_agent, t_retrieved), t_agent - t_kexec)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_real_log_garbled_or_reordered_never_breaks_the_anatomy(data):
    lines = _after_kexec(LOG)
    indices = data.draw(st.lists(st.integers(0, len(lines) - 1), max_size=30))
    for i in indices:
        t, _ = lines[i]
        lines[i] = (data.draw(st.one_of(st.just(t), st.floats(t - 5, t + 5, allow_nan=False))), data.draw(texts))
    marks = EXPECTED["marks"]
    anatomy = blackout_anatomy(lines, marks["kexec"], marks["agent_start"], marks["retrieved"])
    _check_invariants(anatomy, marks["agent_start"] - marks["kexec"])


# -- one real cycle --------------------------------------------------------------------------------------------
@pytest.mark.lab
def test_a_2x64m_cycle_reports_its_blackout_as_named_phases(lab_kernel, store):
    from workbench.lab.cycle import run_cycle
    from workbench.lab.qemu_target import QemuTarget
    from workbench.lab.workloads.memfd import MemfdWorkload

    result = run_cycle(MemfdWorkload(memfds=2, memfd_size=64 << 20), target=QemuTarget(lab_kernel), store=store)
    assert result["verified"]
    blackout = result["blackout_s"]
    assert result["phases"]["kexec"] == blackout  # the existing fields are as they were
    assert list(result["blackout_phases"]) == list(PHASES), result.get("blackout_missing")
    assert 0 < result["kernel_blackout_s"] < blackout
    assert result["kernel_blackout_s"] + result["agent_start_s"] == pytest.approx(blackout)
    assert 0 <= result["unexplained_s"] <= 0.10 * blackout
    named = sum(v for k, v in result["blackout_phases"].items() if k != "retrieve")
    assert named + result["unexplained_s"] == pytest.approx(blackout)
    assert result["blackout_phases"]["kho_restore"] > 0 and result["blackout_phases"]["retrieve"] > 0

    record = store.get(result["record_id"])
    assert record.result["blackout_phases"] == result["blackout_phases"]
    table = store.table(result["record_id"], "blackout_phases")
    assert list(table.columns) == ["phase", "start_s", "end_s", "seconds"]
    assert table["seconds"].sum() == pytest.approx(blackout + result["blackout_phases"]["retrieve"])
    anatomy = anatomy_of_serial_log(result["serial_log"])  # the log alone tells the same story, to the ms
    assert anatomy.phases.keys() == result["blackout_phases"].keys()
    assert all(abs(anatomy.phases[k] - v) < 0.005 for k, v in result["blackout_phases"].items())
