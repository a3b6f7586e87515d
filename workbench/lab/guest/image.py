"""Debian guest root file systems: a minimal Debian tree (by default from ``sid``) with systemd as init, CRIU and
Python, built by ``mmdebstrap`` from the mirror this machine's apt sources already name (only the suite changes)
and cached in ``$XDG_CACHE_HOME/live-update-workbench/guests/<name>-<key>/``.

The key is a hash of the suite, the package list, the resolved version of every installed package (read from the
built tree's dpkg database) and the workbench's own additions (:data:`GUEST_FILES`, :data:`GUEST_LINKS`,
:data:`GUEST_COMMANDS`), so that two builds that installed the same versions share one entry. A build runs in a
staging folder under a lock and is renamed into place only once its manifest is written: a failed or interrupted
build leaves no cache entry.

``mmdebstrap`` runs in ``root`` mode when this process is root (a container or CI machine: no user namespace
set-up needed), else in ``unshare`` mode (it needs ``uidmap`` and subordinate ids for the user)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from workbench.lab.errors import KernelBuildError, LabError
from workbench.lab.kernel_build import size_on_disk
from workbench.lab.kernel_source import SCRIPTS, cache_lock, cache_root, run_logged

__all__ = [
    "DEFAULT_SUITE",
    "GUEST_PACKAGES",
    "GUEST_FILES",
    "GUEST_LINKS",
    "GUEST_COMMANDS",
    "GuestImageError",
    "GuestSpec",
    "GuestImage",
    "guest_spec",
    "content_key",
    "debian_mirror",
    "mmdebstrap_mode",
    "failure_reason",
    "installed_versions",
    "write_guest_files",
    "guests_root",
    "list_guests",
    "cached_guest",
    "build_guest",
    "resolve_guest",
]

DEFAULT_SUITE = "sid"

#: what the guest installs on top of Debian's ``minbase`` variant: systemd as PID 1 (and udev, which its device
#: units need), D-Bus, CRIU, Python for the workloads (numpy for the workbench's agent), kexec-tools for an
#: operator's ``systemctl kexec``
GUEST_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "criu",
    "python3",
    "python3-numpy",
    "kexec-tools",
    "procps",
    "iproute2",
)

#: the marker the guest prints once ``multi-user.target`` is active, with systemd's own monotonic timestamps
#: (microseconds since the kernel started) and who PID 1 is
_READY_SCRIPT = """#!/bin/sh
# Prints a WB-MARK line on the console once multi-user.target is active (the workbench waits for it).
reached=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)
userspace=$(systemctl show -P UserspaceTimestampMonotonic)
version=$(systemctl --version | sed -n '1s/^systemd [0-9]* (\\(.*\\))$/\\1/p')
pid1=$(cat /proc/1/comm)
printf 'WB-MARK multi-user {"multi_user_us":%s,"userspace_us":%s,"systemd":"%s","pid1":"%s"}\\n' \\
  "$reached" "$userspace" "$version" "$pid1" >/dev/console
systemd-analyze critical-chain --no-pager multi-user.target >/dev/console 2>&1 || true
"""

_READY_UNIT = """[Unit]
Description=Workbench: report that multi-user.target is active
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/workbench-ready

[Install]
WantedBy=multi-user.target
"""

#: the files the workbench adds to every guest tree (path in the tree: (mode, contents)); part of the key
GUEST_FILES: dict[str, tuple[int, str]] = {
    "usr/local/sbin/workbench-ready": (0o755, _READY_SCRIPT),
    "etc/systemd/system/workbench-ready.service": (0o644, _READY_UNIT),
    "etc/hostname": (0o644, "wb-guest\n"),
}
#: the symbolic links the workbench adds (path in the tree: target): its unit enabled, and no login prompts (the
#: serial console carries the workbench's marks)
GUEST_LINKS: dict[str, str] = {
    "etc/systemd/system/multi-user.target.wants/workbench-ready.service": "../workbench-ready.service",
    "etc/systemd/system/serial-getty@ttyS0.service": "/dev/null",
    "etc/systemd/system/getty@tty1.service": "/dev/null",
}
#: run in the tree once it is built: every boot starts from a fresh copy of /etc and /var, which must not look
#: as if /usr had been updated since (else ldconfig, the journal catalog and more run on every boot)
GUEST_COMMANDS: tuple[str, ...] = ("/usr/lib/systemd/systemd-update-done",)

_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: the host's apt settings that a build through the same mirror must share (a proxy, a mirror snapshot whose
#: Release files are past their Valid-Until date)
_HOST_APT_OPTIONS = (
    "Acquire::Check-Valid-Until",
    "Acquire::Check-Date",
    "Acquire::http::Proxy",
    "Acquire::https::Proxy",
)
_STAGING = ".staging-"


class GuestImageError(LabError):
    """A guest root file system could not be built: no mirror, an unreachable mirror, a package the suite lacks,
    a missing tool. The message names which, and the build log; nothing was cached."""


@dataclass(frozen=True)
class GuestSpec:
    """What a guest is built from: ``suite`` (a Debian suite, e.g. ``sid``) and ``packages`` (installed on top of
    the ``minbase`` variant; kept sorted and unique, so the order they are given in does not matter)."""

    suite: str = DEFAULT_SUITE
    packages: tuple[str, ...] = GUEST_PACKAGES

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", self.suite):
            raise GuestImageError(f"{self.suite!r} is not a Debian suite name (sid, unstable, trixie, ...)")
        bad = [p for p in self.packages if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p)]
        if bad:
            raise GuestImageError(f"not Debian package names: {', '.join(map(repr, bad))}")
        object.__setattr__(self, "packages", tuple(sorted(set(self.packages))))

    @property
    def name(self) -> str:
        """The guest's name, as ``--guest`` takes it: ``debian-<suite>``."""
        return f"debian-{self.suite}"

    def request_key(self) -> str:
        """A hash of what was asked for (suite and packages), before any version is known: one build at a time
        per request, and the cache entries that answer it."""
        text = json.dumps({"suite": self.suite, "packages": list(self.packages)})
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def guest_spec(name: str, packages: Iterable[str] = GUEST_PACKAGES) -> GuestSpec:
    """The spec a guest name gives: ``debian-sid`` (or a bare suite, ``sid``) with ``packages``."""
    suite = name.removeprefix("debian-")
    return GuestSpec(suite, tuple(packages))


def content_key(spec: GuestSpec, versions: dict[str, str]) -> str:
    """The cache key of a built tree: ``spec``'s suite and package list, ``versions`` (every installed package's
    version, by name) and what the workbench adds to the tree (files, links, commands)."""
    text = json.dumps(
        {
            "suite": spec.suite,
            "packages": list(spec.packages),
            "versions": dict(sorted(versions.items())),
            "files": {path: [mode, body] for path, (mode, body) in sorted(GUEST_FILES.items())},
            "links": GUEST_LINKS,
            "commands": list(GUEST_COMMANDS),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class GuestImage:
    """A built guest in the cache: its folder holds ``root/`` (the tree), ``build.log`` and ``manifest.json``."""

    path: Path
    name: str
    suite: str
    packages: tuple[str, ...]
    versions: dict[str, str]
    key: str
    request_key: str
    build_seconds: float
    size_bytes: int
    built_at: str
    mode: str

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def build_log(self) -> Path:
        return self.path / "build.log"

    def version_of(self, package: str) -> str | None:
        return self.versions.get(package)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "suite": self.suite,
            "key": self.key,
            "path": str(self.path),
            "root": str(self.root),
            "packages": list(self.packages),
            "package_count": len(self.versions),
            "systemd": self.version_of("systemd"),
            "criu": self.version_of("criu"),
            "python3": self.version_of("python3"),
            "build_seconds": self.build_seconds,
            "size_bytes": self.size_bytes,
            "built_at": self.built_at,
            "mmdebstrap_mode": self.mode,
            "build_log": str(self.build_log),
        }

    @classmethod
    def load(cls, path: Path) -> GuestImage:
        """The guest whose folder is ``path`` (it has a ``manifest.json``)."""
        m = json.loads((path / "manifest.json").read_text())
        return cls(
            path=path,
            name=m["name"],
            suite=m["suite"],
            packages=tuple(m["packages"]),
            versions=dict(m["versions"]),
            key=m["key"],
            request_key=m["request_key"],
            build_seconds=m["build_seconds"],
            size_bytes=m["size_bytes"],
            built_at=m["built_at"],
            mode=m["mode"],
        )


def guests_root() -> Path:
    """Where the guests are cached: ``<cache>/guests``."""
    return cache_root() / "guests"


def list_guests() -> list[GuestImage]:
    """Every complete guest in the cache (a folder with a readable manifest), oldest build first."""
    found = []
    for manifest in guests_root().glob("*/manifest.json"):
        if manifest.parent.name.startswith("."):
            continue
        try:
            found.append(GuestImage.load(manifest.parent))
        except (OSError, ValueError, KeyError):
            continue
    return sorted(found, key=lambda g: (g.built_at, g.name))


def cached_guest(spec: GuestSpec) -> GuestImage | None:
    """The newest cached build of ``spec``, or None."""
    found = [g for g in list_guests() if g.request_key == spec.request_key()]
    return found[-1] if found else None


def debian_mirror() -> str:
    """The Debian mirror this machine's apt sources name (or ``$WORKBENCH_DEBIAN_MIRROR``)."""
    out = subprocess.run(["bash", str(SCRIPTS / "debian-mirror.sh")], capture_output=True, text=True)
    if out.returncode or not out.stdout.strip():
        raise GuestImageError(
            "no Debian mirror found in /etc/apt/sources.list{,.d}: add one, or set WORKBENCH_DEBIAN_MIRROR"
        )
    return out.stdout.strip()


def mmdebstrap_mode() -> str:
    """``root`` when this process is root, else ``unshare``."""
    return "root" if os.geteuid() == 0 else "unshare"


def _host_apt_options() -> list[str]:
    try:
        dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    wanted = {o.lower() for o in _HOST_APT_OPTIONS}
    return [line.rstrip(";") for line in dump.splitlines() if line.split(" ", 1)[0].lower() in wanted]


_MISSING = (
    re.compile(r"Unable to locate package (\S+)"),
    re.compile(r"Package '?([^' ]+)'? has no installation candidate"),
    re.compile(r"Couldn't find any package by (?:glob|regex) '([^']+)'"),
)
_UNREACHABLE = re.compile(
    r"Could not resolve|Temporary failure resolving|Could not connect|Failed to fetch|Connection refused|"
    r"Unable to connect|Network is unreachable|No route to host|Connection timed out"
)


def failure_reason(log_text: str, suite: str, mirror: str) -> str | None:
    """What a failed build's log says went wrong, for the error message: a package ``suite`` lacks, or the
    ``mirror`` not reachable; None when the log says neither."""
    for pattern in _MISSING:
        if m := pattern.search(log_text):
            return f"the package {m[1]} is not in Debian {suite} (mirror {mirror}): fix the guest's package list"
    if _UNREACHABLE.search(log_text):
        return f"the Debian mirror {mirror} is not reachable: check the network, or set WORKBENCH_DEBIAN_MIRROR"
    return None


def installed_versions(root: Path) -> dict[str, str]:
    """Every installed package's version in the tree at ``root``, read from its dpkg database.

    :raises GuestImageError: dpkg-query is missing or cannot read the tree's database"""
    command = ["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W", "-f"]
    command.append("${db:Status-Abbrev}\t${Package}\t${Version}\n")
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise GuestImageError(f"cannot list the packages installed in {root}: {detail.strip()}") from None
    versions = {}
    for line in out.splitlines():
        status, package, version = line.split("\t")
        if status.startswith("ii"):
            versions[package] = version
    return versions


def write_guest_files(folder: Path) -> None:
    """Writes :data:`GUEST_FILES` and :data:`GUEST_LINKS` under ``folder`` (copied into the tree by mmdebstrap)."""
    for relative, (mode, body) in GUEST_FILES.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        path.chmod(mode)
    for relative, target in GUEST_LINKS.items():
        link = folder / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)


def _mmdebstrap(spec: GuestSpec, root: Path, log: Path) -> str:
    if shutil.which("mmdebstrap") is None:
        raise GuestImageError("mmdebstrap is not installed: run workbench/lab/scripts/install-system-deps.sh")
    mirror = debian_mirror()
    mode = mmdebstrap_mode()
    cmd = ["mmdebstrap", f"--mode={mode}", "--variant=minbase", f"--include={','.join(spec.packages)}"]
    cmd += [f"--aptopt={option}" for option in _host_apt_options()]
    additions = root.parent / "additions"
    write_guest_files(additions)
    cmd += [f"--customize-hook=sync-in {additions} /"]
    cmd += [f'--customize-hook=chroot "$1" {command}' for command in GUEST_COMMANDS]
    cmd += [spec.suite, str(root), f"deb [signed-by={_KEYRING}] {mirror} {spec.suite} main"]
    try:
        run_logged(cmd, log, what=f"mmdebstrap of Debian {spec.suite}")
    except KernelBuildError as exc:
        reason = failure_reason(log.read_text(errors="replace"), spec.suite, mirror)
        raise GuestImageError(f"{reason}; see {log}" if reason else str(exc)) from None
    return mode


def build_guest(spec: GuestSpec = GuestSpec(), *, rebuild: bool = False) -> GuestImage:
    """Returns the cached guest of ``spec``, building it first if there is none (about a minute and 250 MB
    here). ``rebuild``: build again even when one is cached (a new entry when versions changed since). A failure
    raises :class:`GuestImageError` and leaves no cache entry behind, only the build's log
    (``<cache>/guests/build-<name>-<request key>.log``), which the message names."""
    if not rebuild and (found := cached_guest(spec)) is not None:
        return found
    guests = guests_root()
    with cache_lock(guests / f".lock-{spec.request_key()}"):
        if not rebuild and (found := cached_guest(spec)) is not None:
            return found
        staging = guests / f"{_STAGING}{spec.request_key()}"
        shutil.rmtree(staging, ignore_errors=True)  # what an interrupted build left, under the lock
        staging.mkdir(parents=True)
        try:
            return _build_into(spec, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _build_into(spec: GuestSpec, staging: Path) -> GuestImage:
    started = time.monotonic()
    log = guests_root() / f"build-{spec.name}-{spec.request_key()}.log"  # outside staging: kept when a build fails
    log.write_text(f"workbench guest build of {spec.name} ({', '.join(spec.packages)}), {time.ctime()}\n")
    mode = _mmdebstrap(spec, staging / "root", log)
    shutil.rmtree(staging / "additions", ignore_errors=True)
    versions = installed_versions(staging / "root")
    if missing := [p for p in spec.packages if p not in versions]:
        raise GuestImageError(f"mmdebstrap succeeded but did not install {', '.join(missing)}; see {log}")
    key = content_key(spec, versions)
    final = guests_root() / f"{spec.name}-{key}"
    if (final / "manifest.json").exists():
        log.unlink()
        return GuestImage.load(final)  # the same versions were built before
    log.replace(staging / "build.log")
    manifest = {
        "name": spec.name,
        "suite": spec.suite,
        "packages": list(spec.packages),
        "versions": versions,
        "key": key,
        "request_key": spec.request_key(),
        "build_seconds": time.monotonic() - started,
        "size_bytes": size_on_disk(staging / "root"),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": mode,
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(final, ignore_errors=True)  # a folder without a manifest is not a guest
    staging.rename(final)
    return GuestImage.load(final)


def resolve_guest(guest: GuestImage | GuestSpec | str, *, build: bool = True) -> GuestImage:
    """The :class:`GuestImage` that ``guest`` (an image, a spec, or a name such as ``debian-sid``) names: the
    cached build, else (with ``build``) a new build; without ``build`` an uncached guest raises
    :class:`GuestImageError`."""
    if isinstance(guest, GuestImage):
        return guest
    spec = guest if isinstance(guest, GuestSpec) else guest_spec(guest)
    if (found := cached_guest(spec)) is not None:
        return found
    if not build:
        raise GuestImageError(f"the guest {spec.name} is not built: `workbench guest build --suite {spec.suite}`")
    return build_guest(spec)
