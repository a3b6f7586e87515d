"""Linux sources for the lab kernels: Debian's ``linux-source-<version>`` packages, downloaded with a private apt
state (unstable first, then experimental) and each extracted once into its own tree,
``$XDG_CACHE_HOME/live-update-workbench/src/linux-source-<version>/``, which builds only read."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from workbench.lab.errors import KernelBuildError

__all__ = [
    "SCRIPTS",
    "cache_root",
    "cache_lock",
    "run_logged",
    "fetch_linux_source",
    "source_tree",
    "source_version",
]

SCRIPTS = Path(__file__).resolve().parent / "scripts"
_EXTRACTED = ".workbench-extracted"


def cache_root() -> Path:
    """The workbench's cache folder: ``$XDG_CACHE_HOME/live-update-workbench`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "live-update-workbench"


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on the file ``path`` (created if needed) while the block runs: one process at a
    time builds a kernel or extracts a tree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_logged(
    cmd: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    what: str = "",
) -> None:
    """Runs ``cmd`` with its output appended to ``log``; raises :class:`KernelBuildError` naming ``what`` (the
    step, for the message) and the log when it fails."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        raise KernelBuildError(f"{what or cmd[0]} failed (exit {result.returncode}); see {log}")


def _debs(src_root: Path, version: str) -> list[Path]:
    return sorted(src_root.glob(f"linux-source-{version}_*.deb"), key=lambda p: p.stat().st_mtime)


def fetch_linux_source(version: str, log: Path) -> Path:
    """The ``linux-source-<version>`` package in the cache, downloaded first if it is not there (``version``: the
    series, e.g. ``"7.3"``; ``log``: the file the download's output goes to). Returns the newest ``.deb``."""
    src_root = cache_root() / "src"
    src_root.mkdir(parents=True, exist_ok=True)
    if not _debs(src_root, version):
        run_logged(
            ["bash", str(SCRIPTS / "fetch-linux-source.sh"), version, str(src_root), str(cache_root() / "apt")],
            log,
            what=f"downloading Debian's linux-source-{version}",
        )
    debs = _debs(src_root, version)
    if not debs:
        raise KernelBuildError(f"linux-source-{version} was not downloaded; see {log}")
    return debs[-1]


def source_tree(version: str, log: Path) -> Path:
    """The extracted source tree of ``version`` (the series, e.g. ``"7.2"``), fetched and extracted on first use;
    ``log`` gets the output of both steps. A tree is complete once its marker file names the package it came
    from; an interrupted extraction is redone."""
    src_root = cache_root() / "src"
    tree = src_root / f"linux-source-{version}"
    if (tree / _EXTRACTED).exists():
        return tree
    with cache_lock(src_root / f".lock-{version}"):
        if not (tree / _EXTRACTED).exists():
            _extract(fetch_linux_source(version, log), version, log)
    return tree


def _extract(deb: Path, version: str, log: Path) -> None:
    src_root = deb.parent
    tree = src_root / f"linux-source-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    run_logged(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO ./usr/src/linux-source-{version}.tar.xz "
            f"| xz -d -T0 | tar -x -C '{src_root}'",
        ],
        log,
        what="unpacking the kernel source",
    )
    (tree / _EXTRACTED).write_text(deb.name)


def source_version(tree: Path) -> str:
    """The version a source tree's Makefile declares, e.g. ``"7.2.13"`` or ``"7.3.0-rc7"``."""
    make = (tree / "Makefile").read_text()
    fields = {k: re.search(rf"^{k}\s*=[ \t]*(\S*)", make, re.M) for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")}
    version = ".".join(m[1] for m in fields.values() if m and m[1])
    extra = re.search(r"^EXTRAVERSION\s*=[ \t]*(\S*)", make, re.M)
    return version + (extra[1] if extra else "")
