"""The ``selftest`` workload: parameters, faults, the request (binaries built from small kernel-shaped trees), the
summary, the selftest output it quotes, its agent running stages on this machine (stand-in programs: never the
real selftests, which would create LUO sessions here), and one real cycle of ``luo_kexec_simple`` in the lab VM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.lab.test_selftests import kernel_with_tree
from workbench.lab.cycle import check, run_cycle
from workbench.lab.errors import InvalidCycle, SelftestBuildError, SelftestFailed, UnknownName
from workbench.lab.faults import Faults, PageRef
from workbench.lab.kernel_name import parse_kernel_name
from workbench.lab.params import CycleParams
from workbench.lab.protocol import Request, state_file
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.results import cycles_table
from workbench.lab.selftests import KEXEC_SELFTESTS
from workbench.lab.target import parse_targets
from workbench.lab.workload import make_workload, workload_class
from workbench.lab.workloads.selftest import (
    OUTPUT_LINES,
    SelftestAgent,
    SelftestWorkload,
    failure_line,
    output_tail,
    stage_failure,
    stage_log,
)

# What upstream's luo_kexec_simple prints when stage 2 finds no state session (kselftest.h's ksft_exit_fail_msg).
MISMATCH = (
    b"Bail out! Stage mismatch Requested --stage 2, but system is in stage 1.\n"
    b"(State session kexec_simple_state: MISSING)\n"
    b"# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:0 error:0\n"
)


# -- parameters --------------------------------------------------------------------------------------------------
def test_it_is_found_by_name_with_its_phases_and_parameters():
    workload = make_workload("selftest", test="luo_multi_session", stage2_kernel="7.3")
    assert workload_class("selftest") is SelftestWorkload
    assert (workload.phases_before_kexec, workload.phases_after_kexec) == (("stage1", "load"), ("stage2",))
    workload.validate()
    assert workload.stage_kernels() == ("7.2", "7.3")
    assert workload.record_params() == {
        "workload": "selftest",
        "test": "luo_multi_session",
        "stage1_kernel": None,
        "stage2_kernel": "7.3",
    }
    check(workload, CycleParams(), QemuTarget())


def test_an_unknown_selftest_is_refused_listing_the_choices():
    with pytest.raises(
        InvalidCycle, match=f"unknown selftest 'luo_kexec_simpel': choose from {', '.join(KEXEC_SELFTESTS)}"
    ):
        SelftestWorkload(test="luo_kexec_simpel").validate()


@pytest.mark.parametrize("value", ["", "  ", 7.2])
def test_a_stage_kernel_must_be_a_name(value):
    with pytest.raises(InvalidCycle, match="stage1_kernel is a kernel name"):
        SelftestWorkload(stage1_kernel=value).validate()


def test_an_unknown_kernel_name_says_what_is_accepted():
    with pytest.raises(UnknownName, match="no lab kernel version '6.9'; the versions are: 7.2, 7.3"):
        SelftestWorkload(stage2_kernel="6.9").validate()
    with pytest.raises(UnknownName, match="'seven' is not a kernel: give a version"):
        SelftestWorkload(stage1_kernel="seven").validate()


def test_it_runs_in_the_lab_vm_only(tmp_path):
    [ssh] = parse_targets("ssh:root@192.0.2.1", data_dir=str(tmp_path))
    with pytest.raises(InvalidCycle, match="the selftest workload runs on the qemu target only, not ssh"):
        ssh.validate(SelftestWorkload(), CycleParams())


def test_only_the_fault_that_needs_no_memfd_of_the_cycle_applies():
    workload = SelftestWorkload()
    workload.validate_faults(Faults(next_boot_hangs=True))
    for fault in ("corrupt_page", "modify_after_preserve"):
        with pytest.raises(InvalidCycle, match=f"fault {fault} names a page of the cycle's memfds"):
            workload.validate_faults(Faults(**{fault: PageRef(0, 0)}))


def test_the_stress_tests_get_longer_timeouts():
    assert SelftestWorkload().timeout_bytes() == 0
    assert SelftestWorkload(test="luo_stress_files").timeout_bytes() >= 1 << 30


# -- the request: each stage's binary from its own kernel's tree --------------------------------------------------
def fake_lab_kernel(cache: Path, series: str, status: int):
    """A cached kernel that ``resolve_kernel(series)`` finds, with a small selftest tree (binaries exit ``status``)."""
    manifest = {"series": series, "version": f"{series}.0", "release": f"{series}.0-fake"}
    manifest["config_hash"] = parse_kernel_name(series).config().hash()
    return kernel_with_tree(cache, status, folder=f"{series}.0-fake", manifest=manifest)


def test_the_request_names_each_stages_binary_built_from_its_own_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    old, new = fake_lab_kernel(tmp_path, "7.2", 2), fake_lab_kernel(tmp_path, "7.3", 3)
    request = SelftestWorkload(stage2_kernel="7.3").request()
    assert request["selftest"] == "luo_kexec_simple"
    first, second = Path(request["stage1_binary"]), Path(request["stage2_binary"])
    assert first.is_relative_to(old.path / "selftests") and second.is_relative_to(new.path / "selftests")
    assert first.name == second.name == "luo_kexec_simple"
    assert [subprocess.run([b]).returncode for b in (first, second)] == [2, 3]  # each tree's own header
    assert request["stage1_build"]["release"] == "7.2.0-fake" and request["stage2_build"]["release"] == "7.3.0-fake"
    assert request["stage1_build"]["compiler"].startswith("gcc")
    assert Request(workload="selftest", session="s", workload_fields=request).to_json()["stage2_binary"] == str(second)


def test_a_selftest_a_kernel_lacks_fails_the_request_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fake_lab_kernel(tmp_path, "7.2", 0)
    with pytest.raises(SelftestBuildError, match=r"the kernel 7.2 \(7.2.0-fake\) has no selftest 'luo_stress_files'"):
        SelftestWorkload(test="luo_stress_files").request()


# -- the summary -------------------------------------------------------------------------------------------------
def test_the_summary_carries_both_stages_and_the_binaries_kernels():
    prepare = {
        "selftest": "luo_kexec_simple",
        "stage1_exit": 0,
        "stage1_output": "# [STAGE 1] ...",
        "stage1_build": {"kernel": "7.2", "release": "7.2.13-lab"},
    }
    restore = {
        "stage2_exit": 0,
        "stage2_output": "--- SIMPLE KEXEC TEST PASSED ---",
        "verified": True,
        "finished": True,
        "stage2_build": {"kernel": "7.3", "release": "7.3.0-rc7-lab"},
    }
    common = {"verified": True, "pages_checked": 0, "memfds": [], "blackout_s": 1.5}
    out = SelftestWorkload().summarize(common, prepare, restore, [])
    assert out["verified"] is True and out["workload"] == "selftest" and out["selftest"] == "luo_kexec_simple"
    assert (out["stage1_exit"], out["stage2_exit"]) == (0, 0)
    assert out["stage2_output"].endswith("PASSED ---") and out["blackout_s"] == 1.5 and out["pages_checked"] == 0
    assert (out["stage1_source_release"], out["stage2_source_release"]) == ("7.2.13-lab", "7.3.0-rc7-lab")
    row = cycles_table([out]).iloc[0]  # a results table takes it: no memfds, nothing missing that it needs
    assert (row["workload"], row["memfds"], row["pages_checked"], row["blackout_s"]) == ("selftest", 0, 0, 1.5)
    assert SelftestWorkload().summarize(common, prepare, {**restore, "stage2_exit": 1}, [])["verified"] is False
    assert SelftestWorkload().summarize(common, prepare, {**restore, "finished": False}, [])["verified"] is False


# -- the selftest's output ---------------------------------------------------------------------------------------
def test_the_failure_line_is_the_bail_out_message_with_its_continuation():
    assert failure_line(MISMATCH) == (
        "Bail out! Stage mismatch Requested --stage 2, but system is in stage 1. "
        "(State session kexec_simple_state: MISSING)"
    )
    skipped = b"1..0 # SKIP Failed to open /dev/liveupdate. Is the luo module loaded?\n"
    assert failure_line(skipped) == skipped.decode().strip()
    assert failure_line(b"# [STAGE 2] Retrieving...\nSegmentation fault\n") == "Segmentation fault"
    assert failure_line(b"") == "(no output)"


def test_a_stage_failure_names_the_test_the_stage_the_status_and_the_line():
    message = stage_failure("luo_kexec_simple", 2, 1, MISMATCH)
    assert message.startswith("luo_kexec_simple stage 2 did not pass (exit 1, kselftest FAIL): Bail out! Stage")
    assert "selftest-stage2.log" in message
    assert "(exit 4, kselftest SKIP)" in stage_failure("t", 1, 4, b"1..0 # SKIP no device\n")
    assert "(killed by SIGSEGV)" in stage_failure("t", 1, -signal.SIGSEGV, b"")


@given(st.binary(max_size=4000))
def test_any_output_gives_one_short_failure_line_and_a_bounded_tail(output):
    line = failure_line(output)
    assert line and len(line) <= 500 and line.splitlines() == [line]
    tail = output_tail(output)
    assert len(tail.splitlines()) <= OUTPUT_LINES and len(tail) <= 16_000


@given(
    st.lists(
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Zl", "Zp"]), max_size=80), max_size=100
    )
)
def test_the_tail_is_the_last_lines(lines):
    output = "\n".join(lines).encode()
    expected = output.decode().splitlines()[-OUTPUT_LINES:]
    assert output_tail(output) == "\n".join(line[:500] for line in expected)


@given(st.binary(max_size=300), st.text(alphabet="abc xyz:[]", min_size=1, max_size=60))
def test_a_bail_out_anywhere_is_found(noise, reason):
    while b"Bail out!" in noise:
        noise = noise.replace(b"Bail out!", b"")
    output = noise + b"\nBail out! " + reason.encode() + b"\n# Totals: pass:0\n"
    assert failure_line(output) == " ".join(f"Bail out! {reason}".split())


# -- the command line ---------------------------------------------------------------------------------------------
def cycle_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli", "cycle", *args, "--data", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_checks_the_selftest_and_refuses_it_for_other_workloads(tmp_path):
    proc = cycle_cli(tmp_path, "--workload", "selftest", "--selftest", "luo_nothing")
    assert proc.returncode == 2 and "unknown selftest 'luo_nothing': choose from luo_kexec_simple" in proc.stderr
    proc = cycle_cli(tmp_path, "--selftest", "luo_multi_session")
    assert proc.returncode == 2 and "--selftest does not apply to the memfd workload" in proc.stderr
    proc = cycle_cli(tmp_path, "--workload", "selftest", "--memfds", "3")
    assert proc.returncode == 2 and "--memfds does not apply to the selftest workload" in proc.stderr
    proc = cycle_cli(tmp_path, "--workload", "selftest", "--next-kernel", "6.1")
    assert proc.returncode == 2 and "no lab kernel version '6.1'" in proc.stderr


# -- the agent, with stand-in programs ---------------------------------------------------------------------------
def agent_with(tmp_path: Path, phase: str, script: str) -> SelftestAgent:
    program = tmp_path / "stand-in"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(0o755)
    request = {"selftest": "luo_kexec_simple", "stage1_binary": str(program), "stage2_binary": str(program)}
    Request(workload="selftest", session="s", workload_fields=request).write(tmp_path)
    return SelftestAgent(tmp_path, phase)


def test_a_stage_that_passes_keeps_its_status_and_output(tmp_path):
    agent = agent_with(tmp_path, "prepare", 'echo "# [STAGE $2] ok ($*)"; echo to stderr >&2\n')
    agent.run_stage(1, agent.request["stage1_binary"])
    assert agent.state["stage1_exit"] == 0
    assert agent.state["stage1_output"] == "# [STAGE 1] ok (-s 1)\nto stderr"
    assert (tmp_path / stage_log(1)).read_text() == agent.state["stage1_output"] + "\n"


def test_a_stage_that_fails_raises_with_the_selftests_line_and_is_recorded(tmp_path, capsys):
    agent = agent_with(
        tmp_path,
        "restore",
        "printf '# [STAGE 2] Retrieving session\\n'; "
        "printf 'Bail out! [run_stage_2:59] luo_retrieve_session (errno: No such file)\\n'; exit 1\n",
    )
    code = agent.run("restore")  # restore() fails in stage2, before kho_snapshot matters
    assert code == 1
    state = agent.state
    assert state["stage2_exit"] == 1 and state["error"]["phase"] == "stage2"
    assert state["error"]["type"] == SelftestFailed.__name__
    assert (
        "luo_kexec_simple stage 2 did not pass (exit 1, kselftest FAIL): Bail out! [run_stage_2:59]"
        in (state["error"]["message"])
    )
    assert '"phase":"stage2"' in capsys.readouterr().out
    assert (tmp_path / state_file("restore")).is_file()


def test_stage_one_returns_while_the_child_that_holds_the_sessions_lives_on(tmp_path):
    # upstream's daemonize_and_wait(): fork, the parent exits 0, the child closes its output and sleeps
    agent = agent_with(
        tmp_path,
        "prepare",
        f"(exec >&- 2>&- </dev/null; sleep 60) & echo $! > {tmp_path}/child\n"
        'echo "# [STAGE 1] Child PID: $!"; exit 0\n',
    )
    agent.run_stage(1, agent.request["stage1_binary"])
    child = int((tmp_path / "child").read_text())
    try:
        os.kill(child, 0)  # still there: the stage did not wait for it
        assert agent.state["stage1_exit"] == 0 and "Child PID" in agent.state["stage1_output"]
    finally:
        os.kill(child, signal.SIGKILL)


# -- a real cycle ------------------------------------------------------------------------------------------------
@pytest.mark.lab
def test_luo_kexec_simple_passes_both_stages_across_a_kexec(lab_kernel, store):
    result = run_cycle(make_workload("selftest", test="luo_kexec_simple"), target=QemuTarget(lab_kernel), store=store)
    assert result["verified"] is True, result.get("stage2_output")
    assert (result["stage1_exit"], result["stage2_exit"]) == (0, 0)
    assert "[STAGE 1] Child PID" in result["stage1_output"]
    assert "SIMPLE KEXEC TEST PASSED" in result["stage2_output"]
    assert result["kernel_release_before"] == result["kernel_release_after"] == lab_kernel.release
    assert result["stage1_source_release"] == result["stage2_source_release"] == lab_kernel.release
    assert list(result["phases"]) == ["stage1", "load", "kexec", "stage2"] and result["blackout_s"] > 0
    record = store.get(result["record_id"])
    assert (
        record.status == "ok"
        and record.params["workload"] == "selftest"
        and record.params["test"] == ("luo_kexec_simple")
    )
    assert Path(result["run_dir"], "guest", stage_log(2)).read_text().rstrip().endswith("PASSED ---")
