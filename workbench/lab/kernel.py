"""The lab kernel: Linux from Debian's ``linux-source-<series>`` package with the KHO/LUO fragment, built once and
cached in ``$XDG_CACHE_HOME/live-update-workbench/kernels/<version>-<config hash>/``."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from workbench.lab.errors import KernelBuildError, KernelConfigError, KernelWithoutLiveUpdate

__all__ = [
    "LabKernel",
    "KernelBuildError",
    "KernelConfigError",
    "KernelWithoutLiveUpdate",
    "FRAGMENT",
    "REQUIRED_FOR_CYCLE",
    "cache_root",
    "config_hash",
    "parse_config",
    "missing_options",
    "require_live_update",
    "cached_kernel",
    "build_kernel",
    "ensure_system_packages",
]

LAB_DIR = Path(__file__).resolve().parent
FRAGMENT = LAB_DIR / "kconfig" / "lab.config"
SCRIPTS = LAB_DIR / "scripts"
BASE_CONFIGS = ("x86_64_defconfig", "kernel/configs/kvm_guest.config")
DEFAULT_SERIES = "7.2"
# Object files a build of the default configuration compiles; only used to scale the progress bar.
_EXPECTED_OBJECTS = 2900
REQUIRED_FOR_CYCLE = ("CONFIG_KEXEC_FILE", "CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "live-update-workbench"


def config_hash(fragment: Path = FRAGMENT) -> str:
    """Identifies a configuration: the base configs named in order, then the fragment's bytes."""
    h = hashlib.sha256("".join(f"{c}\n" for c in BASE_CONFIGS).encode())
    h.update(fragment.read_bytes())
    return h.hexdigest()[:12]


def parse_config(text: str) -> dict[str, str]:
    """A kernel ``.config`` (or fragment) as {option: value}; ``# CONFIG_X is not set`` gives ``"n"``."""
    options = {}
    for line in text.splitlines():
        if m := re.match(r"(CONFIG_\w+)=(.*)", line):
            options[m[1]] = m[2]
        elif m := re.match(r"# (CONFIG_\w+) is not set", line):
            options[m[1]] = "n"
    return options


def missing_options(fragment_text: str, config_text: str) -> list[str]:
    """The fragment's settings that the final config does not have, as ``CONFIG_X=wanted (got value)``."""
    have = parse_config(config_text)
    out = []
    for option, wanted in parse_config(fragment_text).items():
        got = have.get(option, "n")
        if got != wanted:
            out.append(f"{option}={wanted} (got {got})")
    return out


def require_live_update(config_text: str, what: str) -> None:
    """Raises :class:`KernelWithoutLiveUpdate` unless the config enables everything a cycle needs."""
    have = parse_config(config_text)
    lacking = [o for o in REQUIRED_FOR_CYCLE if have.get(o) != "y"]
    if lacking:
        raise KernelWithoutLiveUpdate(
            f"{what} is built without {', '.join(lacking)}: it cannot preserve memfds across kexec. "
            "Use the lab kernel (`workbench kernel build`) or rebuild with those options."
        )


@dataclass(frozen=True)
class LabKernel:
    """A built kernel in the cache."""

    path: Path
    version: str
    config_hash: str
    release: str
    build_seconds: float | None = None

    @property
    def bzimage(self) -> Path:
        return self.path / "bzImage"

    @property
    def vmlinux(self) -> Path:
        return self.path / "vmlinux"

    @property
    def config_file(self) -> Path:
        return self.path / "config"

    @property
    def build_log(self) -> Path:
        return self.path / "build.log"

    @property
    def config(self) -> dict[str, str]:
        return parse_config(self.config_file.read_text())

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "version": self.version,
            "release": self.release,
            "config_hash": self.config_hash,
            "bzimage": str(self.bzimage),
            "vmlinux": str(self.vmlinux),
            "config": str(self.config_file),
            "build_log": str(self.build_log),
            "build_seconds": self.build_seconds,
        }

    @classmethod
    def load(cls, path: Path) -> LabKernel:
        manifest = json.loads((path / "manifest.json").read_text())
        return cls(
            path=path,
            version=manifest["version"],
            config_hash=manifest["config_hash"],
            release=manifest["release"],
            build_seconds=manifest.get("build_seconds"),
        )


def cached_kernel(series: str = DEFAULT_SERIES, fragment: Path = FRAGMENT) -> LabKernel | None:
    """The newest cached build of ``series`` with this fragment, or None."""
    key = config_hash(fragment)
    found = []
    for manifest in (cache_root() / "kernels").glob(f"{series}.*-{key}/manifest.json"):
        try:
            found.append(LabKernel.load(manifest.parent))
        except (OSError, ValueError, KeyError):
            continue
    found.sort(key=lambda k: tuple(int(x) for x in re.findall(r"\d+", k.version)))
    return found[-1] if found else None


def ensure_system_packages() -> None:
    """Installs the Debian packages the lab needs (the project's script; a no-op when all are present)."""
    result = subprocess.run(["bash", str(SCRIPTS / "install-system-deps.sh")], capture_output=True, text=True)
    if result.returncode:
        raise KernelBuildError(result.stderr.strip() or "installing system packages failed")


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None, what: str = "") -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        raise KernelBuildError(f"{what or cmd[0]} failed (exit {result.returncode}); see {log}")


def _source_tree(series: str, log: Path) -> Path:
    src_root = cache_root() / "src"
    tree = src_root / f"linux-source-{series}"
    if (tree / ".workbench-extracted").exists():
        return tree
    debs = sorted(src_root.glob(f"linux-source-{series}_*.deb"))
    if not debs:
        _run(
            ["bash", str(SCRIPTS / "fetch-linux-source.sh"), series, str(src_root), str(cache_root() / "apt")],
            log,
            what=f"downloading Debian's linux-source-{series}",
        )
        debs = sorted(src_root.glob(f"linux-source-{series}_*.deb"))
    if not debs:
        raise KernelBuildError(f"linux-source-{series} was not downloaded; see {log}")
    shutil.rmtree(tree, ignore_errors=True)
    _run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"dpkg-deb --fsys-tarfile '{debs[-1]}' | tar -xO ./usr/src/linux-source-{series}.tar.xz "
            f"| xz -d -T0 | tar -x -C '{src_root}'",
        ],
        log,
        what="unpacking the kernel source",
    )
    (tree / ".workbench-extracted").write_text(debs[-1].name)
    return tree


def _source_version(tree: Path) -> str:
    make = (tree / "Makefile").read_text()
    parts = [re.search(rf"^{k}\s*=\s*(\S*)", make, re.M) for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")]
    return ".".join(p[1] for p in parts if p and p[1])


def build_kernel(
    series: str = DEFAULT_SERIES,
    fragment: Path = FRAGMENT,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | bool = True,
) -> LabKernel:
    """Returns the cached lab kernel, building it first if needed (15-25 minutes on 2 cores).

    ``progress`` is a callback ``(objects_done, objects_expected)``, or True for a tqdm bar on stderr."""
    if (kernel := cached_kernel(series, fragment)) is not None:
        return kernel
    key = config_hash(fragment)
    with _locked(cache_root() / "kernels" / f".lock-{series}-{key}"):
        if (kernel := cached_kernel(series, fragment)) is not None:
            return kernel
        started = time.monotonic()
        ensure_system_packages()
        staging_log = cache_root() / "kernels" / f"build-{series}-{key}.log"
        staging_log.write_text(f"workbench lab kernel build, {time.ctime()}\n")
        tree = _source_tree(series, staging_log)
        version = _source_version(tree)
        out = cache_root() / "kernels" / f"{version}-{key}"
        build = out / "build"
        build.mkdir(parents=True, exist_ok=True)
        log = out / "build.log"
        with open(log, "a") as f:
            f.write(staging_log.read_text())
        staging_log.unlink(missing_ok=True)
        _configure(tree, build, fragment, log)
        _make(tree, build, log, jobs or (os.cpu_count() or 1) + 1, progress)
        release = (build / "include" / "config" / "kernel.release").read_text().strip()
        for name, src in (("bzImage", build / "arch/x86/boot/bzImage"), ("vmlinux", build / "vmlinux")):
            (out / name).unlink(missing_ok=True)
            os.link(src, out / name)
        shutil.copyfile(build / ".config", out / "config")
        manifest = {
            "version": version,
            "series": series,
            "config_hash": key,
            "release": release,
            "fragment": fragment.read_text(),
            "base_configs": list(BASE_CONFIGS),
            "build_seconds": time.monotonic() - started,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = out / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(out / "manifest.json")
        return LabKernel.load(out)


def _configure(tree: Path, build: Path, fragment: Path, log: Path) -> None:
    _run(["make", "-C", str(tree), f"O={build}", BASE_CONFIGS[0]], log, what="make defconfig")
    _run(
        [str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(build), str(build / ".config")]
        + [str(tree / c) for c in BASE_CONFIGS[1:]]
        + [str(fragment)],
        log,
        cwd=tree,
        env={**os.environ, "KCONFIG_CONFIG": str(build / ".config")},
        what="merging the config fragment",
    )
    _run(["make", "-C", str(tree), f"O={build}", "olddefconfig"], log, what="make olddefconfig")
    missing = missing_options(fragment.read_text(), (build / ".config").read_text())
    if missing:
        raise KernelConfigError(
            f"these options of {fragment} did not survive olddefconfig (a dependency is missing): {'; '.join(missing)}"
        )


def _make(tree: Path, build: Path, log: Path, jobs: int, progress) -> None:
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=_EXPECTED_OBJECTS, desc="building the lab kernel", unit="obj", leave=False)
    done = 0
    with open(log, "a") as out:
        out.write(f"\n$ make -j{jobs} bzImage\n")
        proc = subprocess.Popen(
            ["make", "-C", str(tree), f"O={build}", f"-j{jobs}", "bzImage"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.lstrip().startswith(("CC ", "AS ", "LD ")):
                done += 1
                if bar is not None:
                    bar.total = max(bar.total, done)
                    bar.update(1)
                elif callable(progress):
                    progress(done, _EXPECTED_OBJECTS)
        code = proc.wait()
    if bar is not None:
        bar.close()
    if code:
        raise KernelBuildError(f"the kernel build failed (exit {code}); see {log}")


def running_kernel_config() -> str | None:
    """The running kernel's config, from /proc/config.gz or /boot/config-<release>."""
    proc = Path("/proc/config.gz")
    if proc.exists():
        return gzip.decompress(proc.read_bytes()).decode()
    boot = Path("/boot") / f"config-{os.uname().release}"
    return boot.read_text() if boot.exists() else None
