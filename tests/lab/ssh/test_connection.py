"""Connecting to a host (host keys, known_hosts, key authentication) and running commands over SSH: against an
SSH server in this process, and (``lab``) against a lab VM's sshd."""

import subprocess

import paramiko
import pytest

from tests.lab.sshd_vm import free_port
from workbench.lab.errors import SshTargetError
from workbench.lab.inventory import LabHost
from workbench.lab.ssh.connection import (
    SshChannelSource,
    TransientConnectError,
    _fingerprint,
    _known_hosts_name,
    connect,
    run_command,
)
from workbench.lab.ssh.target import run_ssh_cycle
from workbench.lab.workloads.memfd import MemfdWorkload

SMALL = 8 << 20
lab = pytest.mark.lab


# -- without a VM ----------------------------------------------------------------------------------------------
def test_fingerprint_is_the_one_ssh_keygen_shows(tmp_path):
    key = paramiko.ECDSAKey.generate()
    pub = tmp_path / "key.pub"
    pub.write_text(f"{key.get_name()} {key.get_base64()} test\n")
    shown = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert _fingerprint(key) == f"{key.get_name()} {shown.stdout.split()[1]}"


def test_known_hosts_names_a_port_only_when_it_is_not_22():
    assert _known_hosts_name(LabHost(name="a", host="192.0.2.10")) == "192.0.2.10"
    assert _known_hosts_name(LabHost(name="a", host="192.0.2.10", port=2222)) == "[192.0.2.10]:2222"


def test_run_command_returns_status_output_and_errors(local_sshd):
    client = connect(local_sshd.host())
    try:
        assert run_command(client, "echo out; echo err >&2; exit 3") == (3, "out\n", "err\n")
        assert run_command(client, "tr a-z A-Z", stdin=b"abc") == (0, "ABC", "")
        # a command that exits without reading its input still reports its status (more than SSH's window)
        assert run_command(client, "echo gone; exit 5", stdin=b"x" * (8 << 20)) == (5, "gone\n", "")
    finally:
        client.close()


def test_channel_source_follows_a_command_line_by_line(local_sshd, tmp_path):
    client = connect(local_sshd.host())
    log = tmp_path / "agent.log"
    try:
        source = SshChannelSource(client, "read x; echo got-$x; echo oops >&2; echo WB-MARK done", log)
        source.send("hello\n")
        hit = source.wait_for(lambda ln: "WB-MARK done" in ln.text, 20)
        assert hit is not None
        assert source.wait_exit(20) == 0 and not source.running
        texts = [ln.text for ln in source.lines]
        assert sorted(texts) == ["WB-MARK done", "got-hello", "oops"]  # stderr merged into stdout
        assert texts.index("got-hello") < texts.index("WB-MARK done")
        assert all(ln.host_time > 0 for ln in source.lines)
        source.close()
    finally:
        client.close()
    text = log.read_text()
    assert "$ read x; echo got-$x" in text and "got-hello" in text


def test_unknown_host_key_is_refused_unless_accept_new(local_sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SshTargetError) as info:
        connect(local_sshd.host(known_hosts=str(empty)))
    msg = str(info.value)
    assert info.value.phase == "connect"
    assert "is not in" in msg and "refused (known-hosts checking is on)" in msg and "SHA256:" in msg
    fresh = tmp_path / "sub" / "fresh_known_hosts"
    connect(local_sshd.host(known_hosts=str(fresh), host_key_policy="accept-new")).close()
    assert f"[127.0.0.1]:{local_sshd.port}" in fresh.read_text()
    connect(local_sshd.host(known_hosts=str(fresh))).close()  # now known: the default policy accepts it


def test_changed_host_key_is_refused_even_with_accept_new(local_sshd, tmp_path):
    other = paramiko.ECDSAKey.generate()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{local_sshd.port} {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(SshTargetError, match="CHANGED") as info:
        connect(local_sshd.host(known_hosts=str(known), host_key_policy="accept-new"))
    assert _fingerprint(other) in str(info.value)


def test_wrong_key_and_missing_key_are_clear_errors(local_sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(SshTargetError) as info:
        connect(local_sshd.host(key=str(other)))
    msg = str(info.value)
    assert "authentication failed for" in msg and str(other) in msg and "authorized_keys" in msg
    with pytest.raises(SshTargetError, match="does not exist"):
        connect(local_sshd.host(key=str(tmp_path / "absent_key")))


def test_unreadable_known_hosts_is_an_error(local_sshd, tmp_path):
    with pytest.raises(SshTargetError, match="cannot read known_hosts file"):
        connect(local_sshd.host(known_hosts=str(tmp_path)))  # a folder


def test_nothing_listening_is_transient():
    host = LabHost(name="closed", host="127.0.0.1", port=free_port(), key=None)
    with pytest.raises(TransientConnectError, match="cannot reach root@127.0.0.1"):
        connect(host, timeout=5)


# -- lab VMs with sshd -----------------------------------------------------------------------------------------
@lab
def test_wrong_key_is_a_clear_authentication_error(shared_vm, store, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(SshTargetError) as info:
        run_ssh_cycle(shared_vm.host(key=str(other)), MemfdWorkload(memfds=1, memfd_size=SMALL), store=store)
    msg = str(info.value)
    assert info.value.phase == "connect"
    assert "authentication failed for root@127.0.0.1" in msg and str(other) in msg and "authorized_keys" in msg
    assert store.get(info.value.record_id).status == "failed"


@lab
def test_unknown_host_key_is_refused_by_default(shared_vm, store, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SshTargetError) as info:
        run_ssh_cycle(shared_vm.host(known_hosts=str(empty)), MemfdWorkload(memfds=1, memfd_size=SMALL), store=store)
    msg = str(info.value)
    assert "is not in" in msg and "refused (known-hosts checking is on)" in msg and "SHA256:" in msg
    assert store.get(info.value.record_id).status == "failed"
    # a changed key is refused even with accept-new; an unknown one is then trusted and remembered
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    empty.write_text(f"[127.0.0.1]:{shared_vm.port} {kind} {b64}\n")
    with pytest.raises(SshTargetError, match="CHANGED"):
        connect(shared_vm.host(known_hosts=str(empty), host_key_policy="accept-new"))
    fresh = tmp_path / "fresh_known_hosts"
    connect(shared_vm.host(known_hosts=str(fresh), host_key_policy="accept-new")).close()
    assert f"[127.0.0.1]:{shared_vm.port}" in fresh.read_text()
    connect(shared_vm.host(known_hosts=str(fresh))).close()  # now known: the default policy accepts it
