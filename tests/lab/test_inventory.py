"""The inventory of lab hosts (:mod:`workbench.lab.inventory`): the TOML file, host specifications given on the
command line, and the errors that say what is wrong and where."""

from pathlib import Path

import pytest

from workbench.environment import REPO_ROOT
from workbench.lab.inventory import (
    DEFAULT_RESULTS_DIR,
    Inventory,
    InventoryError,
    LabHost,
    default_inventory_path,
    load_inventory,
    parse_host_spec,
    resolve_hosts,
)


def _inventory(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lab-hosts.toml"
    path.write_text(text)
    return path


def test_example_inventory_parses(tmp_path):
    inv = load_inventory(REPO_ROOT / "data" / "lab-hosts.example.toml", missing_ok=False)
    box1, box2 = inv.hosts["box1"], inv.hosts["box2"]
    assert (box1.host, box1.user, box1.port, box1.host_key_policy) == ("192.0.2.10", "root", 22, "reject")
    assert box1.key.endswith("/.ssh/lab_ed25519") and not box1.key.startswith("~")
    assert box2.workbench == "/opt/live-update-workbench" and box2.env["NUMBA_CACHE_DIR"]
    adhoc = inv.resolve("admin@[fd00::7]:2222")
    assert (adhoc.host, adhoc.user, adhoc.port, adhoc.key) == ("fd00::7", "admin", 2222, box1.key)
    assert adhoc.address == "admin@[fd00::7]:2222"


def test_inventory_errors_name_the_problem(tmp_path):
    bad = tmp_path / "hosts.toml"
    bad.write_text('[hosts.a]\nhost = "x"\nprot = 22\n')
    with pytest.raises(InventoryError, match=r"\[hosts.a\]: unknown key\(s\) prot"):
        load_inventory(bad)
    bad.write_text('[hosts.a]\nuser = "root"\n')
    with pytest.raises(InventoryError, match="host is missing"):
        load_inventory(bad)
    with pytest.raises(InventoryError, match="no inventory"):
        load_inventory(tmp_path / "absent.toml", missing_ok=False)
    with pytest.raises(InventoryError, match="given twice"):
        resolve_hosts("a@h,a@h")
    with pytest.raises(InventoryError, match="neither an inventory name"):
        parse_host_spec("a@b@c")
    assert parse_host_spec("h:2022") == {"host": "h", "user": None, "port": 2022}


def test_defaults_apply_to_every_host_and_a_host_overrides_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = _inventory(
        tmp_path,
        '[defaults]\nuser = "lab"\nkey = "~/.ssh/k"\nhost = "ignored.example"\nreturn_timeout_s = 900\n\n'
        '[hosts.a]\nhost = "10.0.0.1"\n\n'
        '[hosts.b]\nhost = "10.0.0.2"\nuser = "root"\nport = 2222\nenv = { A = "1" }\nconnect_timeout_s = 5.5\n',
    )
    inv = load_inventory(path)
    a, b = inv.hosts["a"], inv.hosts["b"]
    assert (a.user, a.key, a.port, a.return_timeout_s) == ("lab", str(tmp_path / "home/.ssh/k"), 22, 900)
    assert (b.user, b.port, b.env, b.connect_timeout_s, b.key) == ("root", 2222, {"A": "1"}, 5.5, a.key)
    assert (a.results_dir, a.python, a.host_key_policy) == (DEFAULT_RESULTS_DIR, "python3", "reject")
    assert "host" not in inv.defaults and inv.path == path
    adhoc = inv.resolve("10.0.0.9")  # not in the inventory: the defaults still apply, but not the default host
    assert (adhoc.name, adhoc.host, adhoc.user, adhoc.port) == ("10.0.0.9", "10.0.0.9", "lab", 22)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("port = 0", "port must be a port number, not 0"),
        ("port = 65536", "port must be a port number"),
        ('port = "22"', "port must be a port number"),
        ("port = true", "port must be a port number, not True"),
        ("return_timeout_s = false", "return_timeout_s must be a number of seconds, not False"),
        ('connect_timeout_s = "30"', "connect_timeout_s must be a number of seconds"),
        ("env = { A = 1 }", "env must be a table of strings"),
        ('env = "A=1"', "env must be a table of strings"),
        ('host_key_policy = "yes"', "host_key_policy is one of reject, accept-new"),
        ("python = 3", "python must be a string, not 3"),
        ("user = true", "user must be a string"),
    ],
)
def test_each_bad_value_is_named(tmp_path, entry, message):
    path = _inventory(tmp_path, f'[hosts.box]\nhost = "10.0.0.1"\n{entry}\n')
    with pytest.raises(InventoryError, match=rf"\[hosts.box\]: {message}"):
        load_inventory(path)


def test_a_file_that_is_no_inventory_is_refused(tmp_path):
    with pytest.raises(InventoryError, match="is not valid TOML"):
        load_inventory(_inventory(tmp_path, "[hosts.a\n"))
    with pytest.raises(
        InventoryError, match=r"unknown table\(s\) host; an inventory has \[defaults\] and \[hosts.NAME\]"
    ):
        load_inventory(_inventory(tmp_path, '[host.a]\nhost = "x"\n'))
    with pytest.raises(InventoryError, match=r"\[hosts.a\] must be a table"):
        load_inventory(_inventory(tmp_path, 'hosts = { a = "x" }\n'))
    with pytest.raises(InventoryError, match=r"\[defaults\]: unknown key\(s\) name"):
        load_inventory(_inventory(tmp_path, '[defaults]\nname = "x"\n'))


def test_a_missing_file_is_an_empty_inventory_unless_required(tmp_path):
    inv = load_inventory(tmp_path / "none.toml")
    assert (inv.hosts, inv.defaults, inv.path) == ({}, {}, tmp_path / "none.toml")
    assert issubclass(InventoryError, ValueError)  # the command line reports it as a usage error


def test_default_inventory_path(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_LAB_HOSTS", "~/hosts.toml")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_inventory_path(tmp_path / "data") == tmp_path / "hosts.toml"
    monkeypatch.delenv("WORKBENCH_LAB_HOSTS")
    assert default_inventory_path(tmp_path / "data") == tmp_path / "data" / "lab-hosts.toml"
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "records"))
    assert default_inventory_path() == tmp_path / "records" / "lab-hosts.toml"


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("box", {"host": "box", "user": None, "port": None}),
        ("root@10.0.0.1", {"host": "10.0.0.1", "user": "root", "port": None}),
        ("admin@box.lab.example:2222", {"host": "box.lab.example", "user": "admin", "port": 2222}),
        ("[fd00::7]", {"host": "fd00::7", "user": None, "port": None}),
        (" u@[fd00::7]:22 ", {"host": "fd00::7", "user": "u", "port": 22}),
    ],
)
def test_host_specs(spec, parsed):
    assert parse_host_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["", "@box", "box:", "fd00::7", "u@[nothex]:22", "box:port", "a b"])
def test_bad_host_specs(spec):
    with pytest.raises(InventoryError, match="neither an inventory name nor user@host"):
        parse_host_spec(spec)


def test_a_port_out_of_range_is_refused():
    with pytest.raises(InventoryError, match="70000 is not a port number"):
        parse_host_spec("box:70000")


def test_resolve_hosts_takes_inventory_names_first_then_addresses():
    box = LabHost(name="box", host="10.0.0.1", user="lab")
    inv = Inventory(hosts={"box": box}, defaults={"user": "ops"})
    hosts = resolve_hosts(" box , 10.0.0.2:2200,", inv)
    assert hosts[0] is box
    assert (hosts[1].name, hosts[1].host, hosts[1].port, hosts[1].user) == ("10.0.0.2:2200", "10.0.0.2", 2200, "ops")
    assert [h.name for h in resolve_hosts(["root@a", "root@b"])] == ["root@a", "root@b"]
    with pytest.raises(InventoryError, match="no host given"):
        resolve_hosts(" , ")
    with pytest.raises(InventoryError, match="given twice: box"):
        resolve_hosts("box,box", inv)


def test_lab_host_replace_address_and_known_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    host = LabHost(name="v6", host="fd00::7", port=2222)
    assert host.address == "root@[fd00::7]:2222"
    assert LabHost(name="v4", host="10.0.0.1").address == "root@10.0.0.1:22"
    changed = host.replace(key="/keys/k", known_hosts=None, next_initrd=None)
    assert (changed.key, changed.known_hosts, changed.port) == ("/keys/k", None, 2222)
    assert host.key is None  # a copy: the original is unchanged
    assert host.known_hosts_path == tmp_path / ".ssh" / "known_hosts"
    assert host.replace(known_hosts="/etc/kh").known_hosts_path == Path("/etc/kh")
    as_dict = host.as_dict()
    assert as_dict["host"] == "fd00::7" and as_dict["env"] == {} and LabHost(**as_dict) == host
