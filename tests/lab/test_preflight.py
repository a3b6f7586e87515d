"""The preflight: the next kernel's accepted handover formats against the running kernel's, subsystem by
subsystem (fast, on small kernels written by the tests; ``lab``, on the real 7.2, 7.3 and the negative control)."""

import json
import subprocess
import sys

import pytest

from tests.abi.fake_abi_tree import fake_abi_kernel
from workbench.lab.kernel import resolve_kernel
from workbench.lab.preflight import PASS, REFUSE, preflight


def test_same_formats_pass_and_every_subsystem_is_checked(tmp_path):
    a = resolve_kernel(str(fake_abi_kernel(tmp_path / "a")))
    b = resolve_kernel(str(fake_abi_kernel(tmp_path / "b", encoder="7.3")))
    result = preflight(a, b)
    assert result.verdict == PASS and result.reasons == []
    assert {c["subsystem"] for c in result.checks} >= {"KHO", "LUO"}
    assert all(c["ok"] for c in result.checks)
    assert "accepts every handover format" in result.message()


def test_a_changed_compatible_string_refuses_naming_the_subsystem(tmp_path):
    a = resolve_kernel(str(fake_abi_kernel(tmp_path / "a")))
    b = resolve_kernel(str(fake_abi_kernel(tmp_path / "b", luo="luo-v9")))
    result = preflight(a, b)
    assert result.verdict == REFUSE
    assert result.reasons == [f"LUO: {a.name} hands over 'luo-v5', {b.name} accepts only 'luo-v9'"]
    assert result.as_dict()["verdict"] == "refuse"


def test_a_format_only_the_running_kernel_writes_refuses_one_only_the_next_knows_passes(tmp_path):
    plain = resolve_kernel(str(fake_abi_kernel(tmp_path / "a")))
    extra = resolve_kernel(str(fake_abi_kernel(tmp_path / "b", extra_header=True)))
    down = preflight(extra, plain)
    assert down.verdict == REFUSE and any("EXTRA_COMPATIBLE" in r and "no such format" in r for r in down.reasons)
    assert preflight(plain, extra).verdict == PASS  # nothing of the new format is handed over


@pytest.mark.lab
def test_the_lab_kernels_72_to_73_pass_and_the_negative_control_is_refused(lab_kernel):
    assert preflight(lab_kernel, resolve_kernel("7.3", progress=False)).verdict == PASS
    refused = preflight(lab_kernel, resolve_kernel("7.2+luo-compat-mismatch", progress=False))
    assert refused.verdict == REFUSE and refused.reasons[0].startswith("LUO: ")
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "preflight", "--next-kernel", "7.2+luo-compat-mismatch", "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    luo = next(c for c in out["checks"] if c["subsystem"] == "LUO")
    assert (luo["running"], luo["next"], luo["ok"]) == ("luo-v5", "luo-neg", False)
