"""CRIU's version, ``criu check`` and log parsing, with fake CRIU binaries (no VM)."""

from pathlib import Path

import pytest

from workbench.lab.errors import CriuUnavailable
from workbench.lab.workloads.criu.tool import check_criu, parse_version, seize_offset


def _fake_criu(tmp_path: Path, version: str, check_output: str = "Looks good.", check_rc: int = 0) -> str:
    script = tmp_path / "criu"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then echo "Version: {version}"; exit 0; fi\n'
        f"cat <<'EOF' >&2\n{check_output}\nEOF\n"
        f"exit {check_rc}\n"
    )
    script.chmod(0o755)
    return str(script)


def test_versions_parse():
    assert parse_version("Version: 3.17.1\n") == (3, 17, 1)
    assert parse_version("Version: 4.1\nGitID: v4.1") == (4, 1)
    with pytest.raises(ValueError):
        parse_version("criu: command not found")


def test_missing_criu_is_a_clear_error(tmp_path):
    with pytest.raises(CriuUnavailable, match="CRIU not found at .*install-system-deps"):
        check_criu(str(tmp_path / "nowhere" / "criu"))


def test_old_criu_is_refused(tmp_path):
    with pytest.raises(CriuUnavailable, match=r"CRIU 3\.10 at .* is too old: the workbench needs CRIU 3\.17"):
        check_criu(_fake_criu(tmp_path, "3.10"))


def test_criu_check_failure_names_the_cause_and_the_way_out(tmp_path):
    vdso = (
        "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n"
        "Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.\n"
        "Error (criu/crtools.c:260): Could not initialize kernel features detection."
    )
    with pytest.raises(CriuUnavailable, match=r"Unexpected rt vDSO area bounds.*vvar_vclock.*vdso=0"):
        check_criu(_fake_criu(tmp_path, "3.17.1", vdso, 1))
    # a check that fails without stopping CRIU's kernel probe is recorded, not fatal
    info = check_criu(_fake_criu(tmp_path, "3.17.1", "Error (criu/tun.c:85): tun: Unable to create tun", 1))
    assert info["version"] == "3.17.1" and info["check_rc"] == 1 and "tun" in info["check_errors"][0]


def test_seize_offset_comes_from_criu_log():
    log = '(00.088840) cg-prop: Parsing controller "freezer"\n(00.098664) Seized task 30001, state 1\n'
    assert seize_offset(log) == pytest.approx(0.098664)
    assert seize_offset("(00.1) nothing here\n") is None
