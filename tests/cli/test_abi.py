"""``workbench abi diff``: on kernels written by the tests (by folder path), and on the lab kernels (``lab``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.abi.fake_abi_tree import fake_abi_kernel

WB = [sys.executable, "-m", "workbench.cli", "abi", "diff"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WB, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("kernels")
    return fake_abi_kernel(root / "old"), fake_abi_kernel(root / "neg", release="7.2.13-neg", luo="luo-neg")


def test_json_names_both_kernels_and_every_finding(folders):
    done = _run(str(folders[0]), str(folders[1]), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["a"]["release"] == "7.2.13-fake" and out["b"]["release"] == "7.2.13-neg"
    assert [s["name"] for s in out["structs"]] == [
        "kho_vmalloc",
        "kho_radix_consts",
        "kho_radix_spare",
        "luo_ser",
        "memfd_luo_folio_ser",
        "memfd_luo_ser",
    ]
    luo = next(c for c in out["compatible_strings"] if c["macro"] == "LUO_ABI_COMPATIBLE")
    assert (luo["a"], luo["b"], luo["status"]) == ("luo-v5", "luo-neg", "differs")
    assert out["radix_keys"]["status"] == "same"
    assert out["verdict"] == "incompatible" and out["reasons"][0].startswith("LUO: ")


def test_text_shows_the_tables_the_keys_and_the_verdict(folders):
    done = _run(str(folders[0]), str(folders[0]))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    lines = text.splitlines()
    header = next(line.split() for line in lines if "size" in line and "status" in line)
    assert header == ["subsystem", "type", "header", "size", "A", "size", "B", "status"]
    assert any(line.split()[-5:] == ["memfd_luo_ser", "memfd.h", "48", "48", "same"] for line in lines)
    assert any(line.split()[-6:] == ["kexec_handover.h", "-", "-", "not", "in", "DWARF"] for line in lines)
    assert any(line.split()[1:4] == ["LUO_ABI_COMPATIBLE", "luo-v5", "luo-v5"] for line in lines)
    assert "radix-tree keys: same on 270 (pfn, order) pairs, orders 0..18; keys agree" in text
    assert "verdict: compatible" in text


def test_what_cannot_be_diffed_is_said_plainly(folders, tmp_path):
    done = _run("9.9", str(folders[0]))
    assert done.returncode != 0
    assert "not a kernel" in done.stderr or "no lab kernel version" in done.stderr
    bare = fake_abi_kernel(tmp_path / "bare")
    (bare / "source").rename(tmp_path / "moved-away")
    done = _run(str(folders[0]), str(bare))
    assert done.returncode == 1
    assert "abi diff" in done.stderr and "no source tree with include/linux/kho/abi" in done.stderr
    assert "Traceback" not in done.stderr


def _cached(name: str):
    """Builds the lab kernel ``name`` on first use (here, not inside the command, so a build is not timed as the
    diff): the negative control is a patch-only variant, about a minute through ccache after the lab kernel."""
    from workbench.lab.kernel import resolve_kernel

    resolve_kernel(name, progress=False)


@pytest.mark.lab
def test_72_to_73_compares_every_abi_struct_and_finds_them_compatible():
    _cached("7.2")
    _cached("7.3")
    done = _run("7.2", "7.3", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["a"]["name"], out["b"]["name"]) == ("7.2", "7.3")
    assert out["a"]["release"].startswith("7.2.") and out["b"]["release"].startswith("7.3.")
    structs = {s["name"]: s for s in out["structs"]}
    for name in ("luo_ser", "luo_session_ser", "luo_file_ser", "memfd_luo_ser", "memfd_luo_folio_ser", "kho_vmalloc"):
        assert structs[name]["status"] == "same" and structs[name]["in_dwarf_a"] and structs[name]["in_dwarf_b"]
    assert not [s for s in out["structs"] if s["breaking"]]
    radix_enum = structs["kho_radix_consts"]
    assert radix_enum["status"] == "differs" and not radix_enum["breaking"]
    assert "KHO_RADIX_KEY_WIDTH = 53" in " ".join(radix_enum["changes"])
    strings = {c["subsystem"]: c for c in out["compatible_strings"]}
    for subsystem, value in (("KHO", "kho-v4"), ("LUO", "luo-v5"), ("memfd", "memfd-v2"), ("memblock", "memblock-v1")):
        assert (strings[subsystem]["a"], strings[subsystem]["b"], strings[subsystem]["status"]) == (
            value,
            value,
            "same",
        )
        assert strings[subsystem]["in_vmlinux_a"] and strings[subsystem]["in_vmlinux_b"]
    keys = out["radix_keys"]
    assert keys["status"] == "same" and keys["keys_agree"] and keys["paths_agree"] and keys["cross_decode_agrees"]
    assert (keys["functions_a"]["encoder"], keys["functions_b"]["encoder"]) == (
        "kho_radix_encode_key",
        "kho_encode_radix_key",
    )
    assert keys["orders"] == list(range(19))
    assert out["verdict"] == "compatible" and out["reasons"] == []


@pytest.mark.lab
def test_the_luo_negative_control_is_incompatible_naming_luo():
    _cached("7.2")
    _cached("7.2+luo-compat-mismatch")
    done = _run("7.2", "7.2+luo-compat-mismatch", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    luo = next(c for c in out["compatible_strings"] if c["subsystem"] == "LUO")
    assert (luo["a"], luo["b"], luo["status"]) == ("luo-v5", "luo-neg", "differs")
    assert luo["in_vmlinux_a"] and luo["in_vmlinux_b"]
    assert out["verdict"] == "incompatible"
    assert len(out["reasons"]) == 1 and out["reasons"][0].startswith("LUO: LUO_ABI_COMPATIBLE is 'luo-v5' in 7.2")
    assert all(s["status"] == "same" for s in out["structs"])
    assert out["radix_keys"]["status"] == "same"
