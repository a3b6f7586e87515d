"""``workbench cycle``: the sessions workload's options, refused where they do not apply (nothing boots here)."""

from click.testing import CliRunner

from workbench.cli.cycle import _echo_any, cycle


def _run(tmp_path, *args):
    return CliRunner().invoke(cycle, [*args, "--data", str(tmp_path)])


def test_sessions_options_are_refused_for_other_workloads(tmp_path):
    out = _run(tmp_path, "--workload", "memfd", "--sizes", "1M,4K")
    assert out.exit_code == 2 and "--sizes does not apply to the memfd workload" in out.output
    out = _run(tmp_path, "--small-files", "3")
    assert out.exit_code == 2 and "--small-files does not apply to the memfd workload" in out.output
    out = _run(tmp_path, "--workload", "sessions", "--memfds", "2")
    assert out.exit_code == 2 and "--memfds does not apply to the sessions workload" in out.output


def test_sizes_and_the_session_name_are_checked_before_anything_starts(tmp_path):
    out = _run(tmp_path, "--workload", "sessions", "--sizes", "1M,lots")
    assert out.exit_code == 2 and "'lots' is not a size" in out.output
    out = _run(tmp_path, "--workload", "sessions", "--sizes", "1M,1000")
    assert out.exit_code == 2 and "sizes[1] 1000 is not a positive multiple" in out.output
    out = _run(tmp_path, "--workload", "sessions", "--session", "s" * 58)
    assert out.exit_code == 2 and "at most 57 bytes, or no small files" in out.output


def test_a_crashed_cycle_prints_how_to_inspect_its_kdump_with_a_vmlinux_only_when_there_is_one(capsys):
    crashed = {
        "outcome": "crashed",
        "crashed_after": "preserve",
        "kdump": {"dump_bytes": 40 << 20, "dump_level": 23},
        "vmcore": "/runs/r1/vmcore-crash.kdump",
        "vmlinux": "/k/vmlinux",
        "record_id": "r1",
        "kho_kdump": {"finding": "KHO and kdump coexist before the kexec"},
    }
    _echo_any(crashed)
    out = capsys.readouterr().out
    assert "CRASHED on purpose after preserve: kdump (40 MiB, makedumpfile -d 23)" in out
    assert "inspect it: workbench inspect --vmcore /runs/r1/vmcore-crash.kdump --vmlinux /k/vmlinux\n" in out
    _echo_any({**crashed, "vmlinux": None})  # the crashed kernel was a bare bzImage
    out = capsys.readouterr().out
    assert "inspect it: workbench inspect --vmcore /runs/r1/vmcore-crash.kdump\n" in out and "None" not in out
