"""``workbench cycle``: the sessions workload's options, refused where they do not apply (nothing boots here)."""

from click.testing import CliRunner

from workbench.cli.cycle import cycle


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
