"""Choosing QEMU's accelerator (:mod:`workbench.lab.accel`) without booting a kernel: the KVM probe runs the fake
``qemu-system-x86_64`` of :mod:`tests.lab.test_qemu`, which prints a chosen console and serves QMP the way QEMU
does, so the probe really starts a VM, waits for its marker, times out or is refused, and stops it. What the choice
records as its reason must say what happened."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from tests.lab.test_qemu import FAKE_QEMU
from workbench.lab import accel
from workbench.lab.accel import AccelChoice, choose_accelerator, probe_failure_detail, probe_kvm

# before the fake proper: note the arguments of each run, and print what QEMU would print on its stderr
RECORDING = """
import json, os, sys
with open(os.environ["FAKE_QEMU_ARGV"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_QEMU_STDERR") and sys.argv[1:] != ["--version"]:
    print(os.environ["FAKE_QEMU_STDERR"], file=sys.stderr, flush=True)
"""

needs_kvm = pytest.mark.skipif(
    not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="the probe starts QEMU only where /dev/kvm is usable"
)


@pytest.fixture
def qemu(tmp_path, monkeypatch):
    """The fake QEMU as ``WORKBENCH_QEMU``, with a short private temporary folder (the VM's sockets and the probe's
    work folder go there, and must be gone afterwards); returns the file of its recorded argument lists."""
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(f"#!{sys.executable}\n{RECORDING}\n{FAKE_QEMU}")
    script.chmod(0o755)
    argv_file = tmp_path / "argv.jsonl"
    monkeypatch.setenv("WORKBENCH_QEMU", str(script))
    monkeypatch.setenv("FAKE_QEMU_ARGV", str(argv_file))
    monkeypatch.setenv("FAKE_QEMU_SERIAL", json.dumps([]))
    monkeypatch.delenv("WORKBENCH_ACCEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = Path(tempfile.mkdtemp(prefix="wbacc-"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield argv_file
    leftovers = list(folder.iterdir())
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()
    assert leftovers == [], "the probe left files behind"


def _console(monkeypatch, *chunks: str) -> None:
    monkeypatch.setenv("FAKE_QEMU_SERIAL", json.dumps(list(chunks)))


def _runs(argv_file: Path) -> list[list[str]]:
    if not argv_file.exists():
        return []
    return [json.loads(line) for line in argv_file.read_text().splitlines()]


def _kernel(tmp_path: Path, name: str = "bzImage", size: int = 4096) -> tuple[Path, Path]:
    kernel, initrd = tmp_path / name, tmp_path / "initrd.cpio"
    kernel.write_bytes(b"\0" * size)
    initrd.write_bytes(b"\0")
    return kernel, initrd


@pytest.mark.parametrize("forced", ["tcg", "kvm"])
def test_the_environment_forces_the_accelerator_without_a_probe(qemu, tmp_path, monkeypatch, forced):
    monkeypatch.setenv("WORKBENCH_ACCEL", forced)
    assert probe_kvm(*_kernel(tmp_path)) == AccelChoice(forced, f"forced by WORKBENCH_ACCEL={forced}")
    assert _runs(qemu) == []


@needs_kvm
def test_kvm_is_chosen_when_the_probe_reaches_user_space(qemu, tmp_path, monkeypatch):
    _console(monkeypatch, "Linux version 6.18.0-wb\r\n", "Run /init as init process\nWB-MARK probe-ok\n")
    kernel, initrd = _kernel(tmp_path)
    choice = probe_kvm(kernel, initrd, timeout_s=20)
    assert choice.accel == "kvm" and choice.probe_s is not None and 0 < choice.probe_s < 20
    assert choice.reason == f"a KVM guest reached user space in {choice.probe_s:.1f} s"
    (argv,) = _runs(qemu)
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-kernel") + 1] == str(kernel)
    assert argv[argv.index("-initrd") + 1] == str(initrd)
    assert "wb.phase=probe" in argv[argv.index("-append") + 1].split()


@needs_kvm
def test_a_probe_that_times_out_falls_back_to_tcg_with_the_last_console_output(qemu, tmp_path, monkeypatch):
    _console(monkeypatch, "Linux version 6.18.0-wb\n", "Decompressing Linux... Parsing ELF... \n")
    choice = probe_kvm(*_kernel(tmp_path), timeout_s=1)
    assert choice.accel == "tcg" and choice.probe_s is not None and choice.probe_s >= 1
    assert choice.reason == (
        "/dev/kvm exists but Linux did not boot under KVM within 1 s (last console output: Linux version 6.18.0-wb "
        "| Decompressing Linux... Parsing ELF...)"
    )


@needs_kvm
def test_a_silent_probe_says_there_was_no_output_or_what_qemu_printed(qemu, tmp_path, monkeypatch):
    kernel, initrd = _kernel(tmp_path)
    silent = probe_kvm(kernel, initrd, timeout_s=1)
    assert silent.accel == "tcg" and silent.reason.endswith("within 1 s (no console output at all)")
    monkeypatch.setenv("FAKE_QEMU_STDERR", "KVM internal error. Suberror: 1\nemulation failure")
    failed = probe_kvm(kernel, initrd, timeout_s=1)
    assert failed.accel == "tcg"
    assert failed.reason.endswith(
        "within 1 s (QEMU printed: KVM internal error. Suberror: 1 | emulation failure; no console output at all)"
    )


# what QEMU prints for every server socket it waits on: informational, never the reason a guest failed
CHATTER = (
    "qemu-system-x86_64: -chardev socket,id=ser0,path=/tmp/wbvm-x/serial,server=on,wait=on: info: QEMU waiting "
    "for connection on: disconnected:unix:/tmp/wbvm-x/serial,server=on"
)


@needs_kvm
def test_the_reason_of_a_failed_probe_is_what_failed_not_qemus_chatter(qemu, tmp_path, monkeypatch):
    kernel, initrd = _kernel(tmp_path)
    _console(monkeypatch, "Linux version 7.2.13-lab\r\n", "Decompressing Linux... Parsing ELF... \r\n")
    monkeypatch.setenv("FAKE_QEMU_STDERR", CHATTER)
    stalled = probe_kvm(kernel, initrd, timeout_s=1)
    assert stalled.accel == "tcg" and "waiting for connection" not in stalled.reason
    assert stalled.reason == (
        "/dev/kvm exists but Linux did not boot under KVM within 1 s (last console output: Linux version 7.2.13-lab "
        "| Decompressing Linux... Parsing ELF...)"
    )
    monkeypatch.setenv("FAKE_QEMU_STDERR", f"{CHATTER}\nKVM internal error. Suberror: 1\n{CHATTER}")
    crashed = probe_kvm(kernel, initrd, timeout_s=1)
    assert "waiting for connection" not in crashed.reason
    assert crashed.reason.endswith(
        "(QEMU printed: KVM internal error. Suberror: 1; last console output: Linux version 7.2.13-lab | "
        "Decompressing Linux... Parsing ELF...)"
    )


def test_the_failure_detail_keeps_qemus_errors_and_the_console_tail():
    assert probe_failure_detail("", "") == "no console output at all"
    assert probe_failure_detail("", f"{CHATTER}\ninfo: something routine\n") == "no console output at all"
    long_console = "x" * 500 + "\nearly panic\n"
    assert probe_failure_detail(long_console, "") == f"last console output: {'x' * 187} | early panic"
    detail = probe_failure_detail("booting\n", "qemu-system-x86_64: failed to initialize kvm: Permission denied\n")
    assert detail == (
        "QEMU printed: qemu-system-x86_64: failed to initialize kvm: Permission denied; last console output: booting"
    )


@needs_kvm
def test_qemu_refusing_kvm_falls_back_to_tcg_with_its_message(qemu, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU_FAIL", "1")
    choice = probe_kvm(*_kernel(tmp_path), timeout_s=20)
    assert choice.accel == "tcg" and choice.probe_s is None
    assert choice.reason.startswith("QEMU refused KVM: QEMU did not start (exit 1): ")
    assert "qemu-system-x86_64: could not load kernel '/k/bzImage'" in choice.reason


def test_without_a_usable_dev_kvm_the_reason_says_so(qemu, tmp_path, monkeypatch):
    # this machine's /dev/kvm cannot be taken away: the two checks are answered as on a host without it
    exists, access = os.path.exists, os.access
    monkeypatch.setattr(accel.os.path, "exists", lambda p: p != "/dev/kvm" and exists(p))
    assert probe_kvm(*_kernel(tmp_path)) == AccelChoice("tcg", "/dev/kvm does not exist")
    monkeypatch.setattr(accel.os.path, "exists", exists)
    monkeypatch.setattr(accel.os, "access", lambda p, mode: p != "/dev/kvm" and access(p, mode))
    assert probe_kvm(*_kernel(tmp_path)) == AccelChoice("tcg", "/dev/kvm is not accessible to this user")
    assert _runs(qemu) == []


@needs_kvm
def test_the_choice_is_cached_per_kernel_and_a_forced_one_is_not(qemu, tmp_path, monkeypatch):
    _console(monkeypatch, "WB-MARK probe-ok\n")
    kernel, initrd = _kernel(tmp_path)
    first = choose_accelerator(kernel, initrd)
    assert first.accel == "kvm"
    probes = len(_runs(qemu))
    (cached,) = (tmp_path / "cache" / "live-update-workbench" / "accel").glob("*.json")
    assert AccelChoice(**json.loads(cached.read_text())) == first

    monkeypatch.setenv("FAKE_QEMU_FAIL", "1")  # a probe now would choose tcg: the cache answers instead
    assert choose_accelerator(kernel, initrd) == first
    assert len(_runs(qemu)) == probes + 1  # only `qemu --version`, for the cache key

    other_kernel, _ = _kernel(tmp_path, "bzImage-next", size=8192)
    assert choose_accelerator(other_kernel, initrd).reason.startswith("QEMU refused KVM")

    monkeypatch.setenv("WORKBENCH_ACCEL", "tcg")
    assert choose_accelerator(kernel, initrd) == AccelChoice("tcg", "forced by WORKBENCH_ACCEL=tcg")
    monkeypatch.delenv("WORKBENCH_ACCEL")
    assert choose_accelerator(kernel, initrd) == first  # forcing once does not stick
