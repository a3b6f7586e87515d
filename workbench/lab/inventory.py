"""The lab's inventory of real hosts: where each is, how to log in, where the agent and the next kernel are.

The inventory is a TOML file, ``data/lab-hosts.toml`` by default (``$WORKBENCH_LAB_HOSTS`` or ``--inventory``
point elsewhere; ``data/lab-hosts.example.toml`` is a commented example). A ``[defaults]`` table applies to every
host, ``[hosts.NAME]`` tables describe one host each::

    [defaults]
    user = "root"
    key = "~/.ssh/lab_ed25519"

    [hosts.box1]
    host = "192.0.2.10"
    next_kernel = "/boot/vmlinuz-7.2.13-lab"

A target may also be given without an inventory entry as ``[user@]host[:port]`` (``[v6addr]:port`` for IPv6);
the ``[defaults]`` table still applies to it."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.lab.errors import InventoryError

__all__ = [
    "LabHost",
    "Inventory",
    "InventoryError",
    "default_inventory_path",
    "load_inventory",
    "parse_host_spec",
    "resolve_hosts",
    "DEFAULT_RESULTS_DIR",
]

DEFAULT_RESULTS_DIR = "/var/tmp/workbench/{record_id}"
HOST_KEY_POLICIES = ("reject", "accept-new")


@dataclass(frozen=True)
class LabHost:
    """One host a cycle can run on over SSH. Paths of ``key`` and ``known_hosts`` are on this machine, every
    other path is on the host."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    #: private key file; None: the keys in ~/.ssh and the ssh-agent (key authentication only, never a password)
    key: str | None = None
    #: known_hosts file with the host's key; None: ~/.ssh/known_hosts
    known_hosts: str | None = None
    #: "reject" (the default: an unknown host key refuses the connection) or "accept-new" (an unknown key is
    #: trusted and added to known_hosts; a changed key is always refused)
    host_key_policy: str = "reject"
    #: the Python interpreter on the host (needs numpy; numba is optional)
    python: str = "python3"
    #: a checkout or install of the workbench on the host, put on PYTHONPATH; None: copy the agent over SFTP
    workbench: str | None = None
    #: where the agent is copied to when ``workbench`` is None
    agent_dir: str = "/var/tmp/workbench/agent"
    #: the results folder on the host; must survive the kexec (on disk, not tmpfs). {record_id} is replaced.
    results_dir: str = DEFAULT_RESULTS_DIR
    #: the kernel to kexec into and its initrd; None: /boot/vmlinuz-$(uname -r) and /boot/initrd.img-$(uname -r)
    next_kernel: str | None = None
    next_initrd: str | None = None
    #: extra environment for the agent, e.g. {"NUMBA_CACHE_DIR" = "/var/tmp/workbench/numba"}
    env: dict[str, str] = field(default_factory=dict)
    #: seconds to wait for one SSH connection (TCP, banner, authentication)
    connect_timeout_s: float = 30.0
    #: seconds to wait for the host to come back after the kexec (None: the cycle's return timeout, or 600)
    return_timeout_s: float | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts or "~/.ssh/known_hosts").expanduser()

    def replace(self, **changes: Any) -> LabHost:
        """A copy with ``changes``; a None value leaves the field as it is (a command line option not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(LabHost)}
_SETTABLE = set(_FIELDS) - {"name"}


def _check_entry(where: str, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise InventoryError(f"{where} must be a table")
    unknown = sorted(set(table) - _SETTABLE)
    if unknown:
        raise InventoryError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_SETTABLE))}")
    out = dict(table)
    for key in ("port",):
        if key in out and (not isinstance(out[key], int) or isinstance(out[key], bool) or not 0 < out[key] < 65536):
            raise InventoryError(f"{where}: {key} must be a port number, not {out[key]!r}")
    for key in ("connect_timeout_s", "return_timeout_s"):
        if key in out and (not isinstance(out[key], int | float) or isinstance(out[key], bool)):
            raise InventoryError(f"{where}: {key} must be a number of seconds, not {out[key]!r}")
    if "env" in out and not (isinstance(out["env"], dict) and all(isinstance(v, str) for v in out["env"].values())):
        raise InventoryError(f"{where}: env must be a table of strings")
    if out.get("host_key_policy", "reject") not in HOST_KEY_POLICIES:
        raise InventoryError(f"{where}: host_key_policy is one of {', '.join(HOST_KEY_POLICIES)}")
    for key in ("host", "user", "key", "known_hosts", "python", "workbench", "agent_dir", "results_dir"):
        if key in out and not isinstance(out[key], str):
            raise InventoryError(f"{where}: {key} must be a string, not {out[key]!r}")
    for key in ("key", "known_hosts"):
        if key in out:
            out[key] = str(Path(out[key]).expanduser())
    return out


@dataclass
class Inventory:
    """The hosts of an inventory file (by name) and its defaults."""

    hosts: dict[str, LabHost] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def resolve(self, spec: str) -> LabHost:
        """An inventory name, or ``[user@]host[:port]`` with the inventory's defaults."""
        if spec in self.hosts:
            return self.hosts[spec]
        parsed = parse_host_spec(spec)
        merged = {**self.defaults, **{k: v for k, v in parsed.items() if v is not None}}
        return LabHost(name=spec, **merged)


def default_inventory_path(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``$WORKBENCH_LAB_HOSTS``, else ``lab-hosts.toml`` in the record folder (``data/`` of the checkout)."""
    env = os.environ.get("WORKBENCH_LAB_HOSTS")
    if env:
        return Path(env).expanduser()
    if data_dir is not None:
        return Path(data_dir) / "lab-hosts.toml"
    from workbench.records import default_data_dir

    return default_data_dir() / "lab-hosts.toml"


def load_inventory(path: str | os.PathLike[str] | None = None, *, missing_ok: bool = True) -> Inventory:
    """Reads an inventory file; a missing file is an empty inventory unless ``missing_ok`` is false."""
    path = Path(path) if path is not None else default_inventory_path()
    if not path.exists():
        if missing_ok:
            return Inventory(path=path)
        raise InventoryError(f"no inventory at {path} (copy data/lab-hosts.example.toml there and edit it)")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"defaults", "hosts"})
    if unknown:
        raise InventoryError(
            f"{path}: unknown table(s) {', '.join(unknown)}; an inventory has [defaults] and [hosts.NAME]"
        )
    defaults = _check_entry(f"{path} [defaults]", doc.get("defaults", {}))
    defaults.pop("host", None)
    hosts = {}
    for name, table in doc.get("hosts", {}).items():
        entry = {**defaults, **_check_entry(f"{path} [hosts.{name}]", table)}
        if "host" not in entry:
            raise InventoryError(f"{path} [hosts.{name}]: host is missing (a name or an address)")
        hosts[name] = LabHost(name=name, **entry)
    return Inventory(hosts=hosts, defaults=defaults, path=path)


_SPEC = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:@\s\[\]]+))(?::(?P<port>\d+))?$")


def parse_host_spec(spec: str) -> dict[str, Any]:
    """``[user@]host[:port]`` (``[addr]`` for an IPv6 address) as {host, user, port} (absent parts None)."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise InventoryError(f"{spec!r} is neither an inventory name nor user@host[:port]")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise InventoryError(f"{spec!r}: {port} is not a port number")
    return {"host": m["v6"] or m["host"], "user": m["user"], "port": port}


def resolve_hosts(specs: str | list[str], inventory: Inventory | None = None) -> list[LabHost]:
    """``HOST1,HOST2`` (or a list) to hosts: inventory names first, then ``[user@]host[:port]``."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    if not specs:
        raise InventoryError("no host given: ssh:HOST[,HOST...] with inventory names or user@host[:port]")
    inventory = inventory or Inventory()
    hosts = [inventory.resolve(s.strip()) for s in specs]
    names = [h.name for h in hosts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InventoryError(f"host(s) given twice: {', '.join(dupes)}")
    return hosts
