"""The probe that runs on a lab host, run here: imported, as a script, and the way the SSH target ships it (on a
Python's standard input); its facts are those of this machine, and they are what the preconditions read."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy

from workbench.environment import REPO_ROOT, boot_id
from workbench.lab.inventory import LabHost
from workbench.lab.ssh import probe
from workbench.lab.ssh.agent_files import AGENT_FILES, AGENT_SHA, local_agent_sha256
from workbench.lab.ssh.preconditions import (
    AGENT_PROTOCOL,
    PROBE_SCRIPT,
    REQUIRED_CONFIG,
    missing_preconditions,
    this_machine,
)

#: every fact the host side reads (preconditions, this_machine, the runner's record and result)
FACTS_READ = {
    "uid",
    "python",
    "executable",
    "boot_id",
    "machine_id",
    "hostname",
    "release",
    "cmdline",
    "liveupdate_device",
    "kexec_load_disabled",
    "next_kernel",
    "next_kernel_state",
    "next_initrd",
    "next_initrd_state",
    "results_fs",
    "results_mount",
    "results_writable",
    "numpy",
    "numba",
    "agent",
    "agent_protocol",
    "agent_sha256",
}


def _config(results_dir: Path, **changes) -> dict:
    config = {
        "next_kernel": None,
        "next_initrd": None,
        "results_dir": str(results_dir),
        "pythonpath": None,
        "required_config": list(REQUIRED_CONFIG),
        "agent_files": list(AGENT_SHA),
    }
    return {**config, **changes}


def _run_script(config: dict, *, stdin: bool = False) -> dict:
    """The probe as a script in a new Python (``python - CONFIG`` with the file on stdin, as the SSH target runs
    it, if ``stdin``), from /; returns its facts."""
    args = (
        [sys.executable, "-", json.dumps(config)] if stdin else [sys.executable, str(PROBE_SCRIPT), json.dumps(config)]
    )
    proc = subprocess.run(
        args,
        input=PROBE_SCRIPT.read_text() if stdin else None,
        capture_output=True,
        text=True,
        cwd="/",
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # one JSON object, nothing else
    return json.loads(lines[0])


def test_the_probe_is_the_module_file():
    assert Path(probe.__file__).resolve() == PROBE_SCRIPT.resolve()


def test_facts_are_this_machines_and_what_the_preconditions_read(tmp_path):
    facts = probe.collect(_config(tmp_path / "results" / "run1"))
    assert set(facts) >= FACTS_READ
    uname = os.uname()
    assert facts["uid"] == os.geteuid() and facts["executable"] == sys.executable
    assert facts["boot_id"] == boot_id() and facts["release"] == uname.release and facts["arch"] == uname.machine
    assert facts["cmdline"] == Path("/proc/cmdline").read_text().strip()
    assert facts["liveupdate_device"] == os.path.exists("/dev/liveupdate")
    assert facts["numpy"] == numpy.__version__
    assert facts["agent"] == str(REPO_ROOT / "workbench" / "lab" / "agent.py")
    assert facts["agent_protocol"] == AGENT_PROTOCOL
    assert facts["agent_sha256"] == local_agent_sha256()
    assert facts["next_kernel"] == f"/boot/vmlinuz-{uname.release}"
    assert facts["results_writable"] is True
    assert str(tmp_path.resolve()).startswith(facts["results_mount"].rstrip("/") + "/")
    assert this_machine(LabHost(name="here", host="127.0.0.1"), facts)["same_boot_id"] is True
    names = [name for name, _ in missing_preconditions(facts, False)]
    assert ("/dev/liveupdate" in names) == (not facts["liveupdate_device"])
    assert not {"numpy", "workbench", "agent protocol", "persistent results folder"} & set(names)


def test_as_a_script_and_on_stdin_it_prints_the_same_facts(tmp_path):
    config = _config(tmp_path / "results")
    here = probe.collect(config)
    stable = ("uid", "boot_id", "release", "cmdline", "next_kernel", "results_mount", "agent", "agent_sha256")
    for facts in (_run_script(config), _run_script(config, stdin=True)):
        assert set(facts) >= FACTS_READ
        assert {k: facts[k] for k in stable} == {k: here[k] for k in stable}


def test_the_agent_is_found_on_pythonpath(tmp_path):
    agent_dir = tmp_path / "agent"
    for rel in AGENT_FILES:
        (agent_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, agent_dir / rel)
    facts = _run_script(_config(tmp_path / "results", pythonpath=str(agent_dir)))
    assert facts["agent"] == str(agent_dir / "workbench" / "lab" / "agent.py")
    assert facts["agent_protocol"] == AGENT_PROTOCOL and facts["agent_sha256"] == local_agent_sha256()
    broken = tmp_path / "broken"
    (broken / "workbench" / "lab").mkdir(parents=True)
    (broken / "workbench" / "__init__.py").write_text("")
    (broken / "workbench" / "lab" / "__init__.py").write_text("")
    (broken / "workbench" / "lab" / "agent.py").write_text("raise ImportError('no agent here')\n")
    facts = _run_script(_config(tmp_path / "results", pythonpath=str(broken)))
    assert facts["agent"] is None and facts["agent_error"] == "ImportError: no agent here"
    assert dict(missing_preconditions(facts, True))["workbench"].startswith("the copied agent cannot be imported")


def test_a_results_folder_on_a_volatile_file_system_is_refused(tmp_path):
    folder = probe.results_folder("/proc/workbench/results")
    assert (folder["results_fs"], folder["results_mount"]) == ("proc", "/proc")
    facts = probe.collect(_config(Path("/proc/workbench/results")))
    assert "persistent results folder" in [name for name, _ in missing_preconditions(facts, False)]


def test_file_state_and_next_boot_files(tmp_path):
    kernel = tmp_path / "vmlinuz-7.2.13"
    kernel.write_bytes(b"\0")
    assert probe.file_state(str(kernel)) == "ok"
    assert probe.file_state(str(tmp_path)) == "not a file"
    assert probe.file_state(str(tmp_path / "absent")) == "missing"
    assert probe.file_state(None) is None
    template = str(tmp_path / "vmlinuz-{release}")
    assert probe.next_boot_files(template, None, "7.2.13") == (str(kernel), None)
    assert probe.next_boot_files(template, "/boot/initrd-{release}", "7.2.13") == (str(kernel), "/boot/initrd-7.2.13")
    assert probe.next_boot_files(None, None, "no-such-release")[0] == "/boot/vmlinuz-no-such-release"


def test_missing_config_wants_y_or_m():
    config = "# comment\nCONFIG_KEXEC_FILE=y\nCONFIG_LIVEUPDATE=m\nCONFIG_KEXEC_HANDOVER=n\n"
    required = ["CONFIG_KEXEC_FILE", "CONFIG_LIVEUPDATE", "CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE_MEMFD"]
    assert probe.missing_config(config, required) == ["CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE_MEMFD"]


def test_kernel_config_is_read_when_the_kernel_has_one():
    config = probe.kernel_config(os.uname().release)
    has_one = Path("/proc/config.gz").exists() or Path(f"/boot/config-{os.uname().release}").exists()
    assert (config is not None) == has_one
    if config is not None:
        assert "CONFIG_" in config


def test_main_wants_one_config(capsys, tmp_path):
    assert probe.main([]) == 2
    assert "usage" in capsys.readouterr().err
    assert probe.main([json.dumps(_config(tmp_path))]) == 0
    assert json.loads(capsys.readouterr().out)["boot_id"] == boot_id()


def test_the_probe_needs_only_the_standard_library(tmp_path):
    config = json.dumps(_config(tmp_path / "results"))
    # -I -S: no site-packages, so no numpy and no workbench; the probe still runs and says what is missing
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(PROBE_SCRIPT), config], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["numpy"] is None and facts["numpy_error"].startswith("ModuleNotFoundError")
    assert "agent" not in facts and facts["boot_id"] == boot_id()
    missing = dict(missing_preconditions(facts, False))
    assert "cannot import numpy" in missing["numpy"] and "workbench" not in missing
