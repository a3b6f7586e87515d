"""The kernel's own liveupdate selftests (``tools/testing/selftests/liveupdate``), built from a lab kernel's own
source tree with the system C compiler and cached beside the kernel.

Upstream's kexec-spanning selftests (``luo_kexec_simple``, ``luo_multi_session``, the stress tests: every program
the directory's Makefile lists in ``TEST_GEN_PROGS_EXTENDED``) run twice: ``-s 1`` before a kexec, which
preserves sessions and forks a child that keeps them open, and ``-s 2`` after it, which retrieves and checks
them. :func:`build_selftests` builds them in two steps, both with the kernel's own build files:

1. ``make headers_install`` of the kernel's tree into a private folder (``O=`` a scratch folder, so the shared,
   hard-linked source tree is never written): the sanitized uapi headers, ``<linux/liveupdate.h>`` among them,
   exactly as that kernel exports them. About 14 s on 2 cores, once per kernel and source;
2. the selftest directory's own Makefile, run out of tree (``-f`` its Makefile, ``VPATH`` its folder, ``OUTPUT`` a
   scratch folder) with ``KHDR_INCLUDES`` pointing at those headers: under a second.

The binaries go to ``<kernel folder>/selftests/liveupdate-<key>/`` with a ``manifest.json`` (the programs, the
compiler's and make's versions, the kernel's release, how long each step took) and the build log. ``key`` hashes
everything the binaries come from: the selftest directory, the selftest framework's headers, the uapi headers,
the header-install script, the compiler's version, so a changed source or compiler builds again. A build happens
in a scratch folder under a lock and becomes the cache entry by one rename once it is complete: a failed or
interrupted build leaves nothing that looks cached."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workbench.lab.errors import SelftestBuildError
from workbench.lab.kernel import LabKernel
from workbench.lab.kernel_source import cache_lock
from workbench.lab.toolchain import tool_version

__all__ = [
    "SELFTEST_DIR",
    "KEXEC_SELFTESTS",
    "SelftestBuild",
    "selftest_source",
    "kexec_programs",
    "compiler_version",
    "selftests_key",
    "cached_selftests",
    "build_selftests",
]

#: where a kernel tree keeps the liveupdate selftests
SELFTEST_DIR = Path("tools/testing/selftests/liveupdate")
#: the kexec-spanning selftests of Linux 7.2 and 7.3 (a kernel's own Makefile says which it has)
KEXEC_SELFTESTS = ("luo_kexec_simple", "luo_multi_session", "luo_stress_sessions", "luo_stress_files")
#: what the binaries are built from, relative to the kernel tree: hashed into the cache key
KEY_INPUTS = (
    SELFTEST_DIR,
    Path("tools/testing/selftests/lib.mk"),
    Path("tools/testing/selftests/kselftest.h"),
    Path("tools/testing/selftests/kselftest_harness.h"),
    Path("include/uapi"),
    Path("arch/x86/include/uapi"),
    Path("scripts/headers_install.sh"),
)
#: changes when the build steps change, so that older cache entries are not taken for this recipe's
RECIPE = 1
#: what a parent ``make`` or the user's shell might set that would change how the kernel's Makefiles build
_MAKE_ENVIRONMENT = (
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "MAKEOVERRIDES",
    "O",
    "KBUILD_OUTPUT",
    "OUTPUT",
    "ARCH",
    "CROSS_COMPILE",
    "LLVM",
    "CFLAGS",
    "CPPFLAGS",
    "LDFLAGS",
)
_PROGRAMS_LINE = re.compile(r"^\s*TEST_GEN_PROGS_EXTENDED\s*[:+]?=\s*(.*)$", re.MULTILINE)
_ERROR_LINES = 20
MANIFEST = "manifest.json"
LOG = "build.log"
FAILED_LOG = "build-failed.log"


@dataclass(frozen=True)
class SelftestBuild:
    """The liveupdate selftests built from one kernel's tree: ``folder`` (the cache entry), ``programs`` (name →
    binary), the ``kernel`` they were built for (its name) and its ``release``, the ``compiler`` and ``make``
    versions, the cache ``key``, and the seconds the header install and the compile took (None when not known)."""

    folder: Path
    programs: dict[str, Path]
    kernel: str
    release: str
    compiler: str
    make: str
    key: str
    headers_s: float | None = None
    compile_s: float | None = None
    built_at: str | None = field(default=None, compare=False)

    def binary(self, test: str) -> Path:
        """The binary of the selftest ``test``; :class:`SelftestBuildError` when this kernel's tree has none."""
        try:
            return self.programs[test]
        except KeyError:
            raise SelftestBuildError(
                f"the kernel {self.kernel} ({self.release}) has no selftest {test!r}: its tree has "
                f"{', '.join(sorted(self.programs)) or 'none'}; choose one of those or another kernel"
            ) from None

    def as_dict(self) -> dict[str, object]:
        return {
            "folder": str(self.folder),
            "programs": {name: str(path) for name, path in self.programs.items()},
            "kernel": self.kernel,
            "release": self.release,
            "compiler": self.compiler,
            "make": self.make,
            "key": self.key,
            "headers_s": self.headers_s,
            "compile_s": self.compile_s,
            "built_at": self.built_at,
        }

    @classmethod
    def load(cls, folder: Path) -> SelftestBuild:
        """The build cached in ``folder`` (it has a manifest); ``ValueError`` when the manifest or a binary is
        missing or unreadable."""
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            programs = {name: folder / name for name in manifest["programs"]}
            build = cls(
                folder=folder,
                programs=programs,
                kernel=manifest["kernel"],
                release=manifest["release"],
                compiler=manifest["compiler"],
                make=manifest["make"],
                key=manifest["key"],
                headers_s=manifest.get("headers_s"),
                compile_s=manifest.get("compile_s"),
                built_at=manifest.get("built_at"),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{folder / MANIFEST} cannot be read: {exc}") from None
        missing = [name for name, path in programs.items() if not path.is_file()]
        if missing:
            raise ValueError(f"{folder} lacks the binaries {', '.join(missing)}")
        return build


def selftest_source(kernel: LabKernel) -> Path:
    """The source tree of ``kernel`` that holds the liveupdate selftests: a cached kernel keeps its tree in
    ``source/``; a prebuilt kernel's folder may be the tree itself.

    :param kernel: a kernel from :func:`workbench.lab.kernel.resolve_kernel`
    :raises SelftestBuildError: neither has ``tools/testing/selftests/liveupdate``"""
    found = kernel.source_with(SELFTEST_DIR / "Makefile", folder=False)
    if found is None:
        raise SelftestBuildError(
            f"the kernel {kernel.name} has no source tree with {SELFTEST_DIR}/Makefile (looked in "
            f"{', '.join(map(str, kernel.source_candidates))}): the liveupdate selftests are built from each kernel's "
            "own sources; use a lab kernel built by the workbench (Linux 7.2 or later), or put its tree in "
            f"{kernel.path / 'source'}"
        )
    return found


def kexec_programs(source: Path) -> tuple[str, ...]:
    """The programs the selftest Makefile of the tree ``source`` lists in ``TEST_GEN_PROGS_EXTENDED``: the ones
    that span a kexec (``TEST_GEN_PROGS`` holds those that run without one)."""
    text = (source / SELFTEST_DIR / "Makefile").read_text(errors="replace")
    names: list[str] = []
    for line in _PROGRAMS_LINE.findall(text):
        names += [word for word in line.split() if word not in names]
    return tuple(names)


def compiler_version(cc: str = "gcc") -> str:
    """The first line of ``cc --version`` (e.g. ``gcc (Debian 12.2.0-14+deb12u1) 12.2.0``).

    :param cc: the C compiler's name on ``PATH``, or its path
    :raises SelftestBuildError: the compiler is missing or does not run"""
    return _tool_version(cc, "C compiler")


def _tool_version(tool: str, what: str) -> str:
    return tool_version(tool, what=what, purpose="the liveupdate selftests", error=SelftestBuildError)


def selftests_key(source: Path, compiler: str) -> str:
    """The cache key of binaries built from the tree ``source`` with ``compiler`` (its version line): 12 hex digits
    of a hash over every file of :data:`KEY_INPUTS` (path and bytes), the compiler's version and :data:`RECIPE`."""
    digest = hashlib.sha256(f"recipe {RECIPE}\ncompiler {compiler}\n".encode())
    for entry in KEY_INPUTS:
        top = source / entry
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for path in files:
            data = path.read_bytes()
            digest.update(f"{path.relative_to(source)}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()[:12]


def _selftests_root(kernel: LabKernel) -> Path:
    return kernel.path / "selftests"


def cached_selftests(kernel: LabKernel, *, cc: str = "gcc") -> SelftestBuild | None:
    """The selftests of ``kernel`` already built from its current tree with ``cc``, or None.

    :param kernel: a kernel from :func:`workbench.lab.kernel.resolve_kernel`
    :param cc: the C compiler (its version is part of the key)
    :raises SelftestBuildError: no source tree with the selftests, or no compiler"""
    source = selftest_source(kernel)
    return _load_if_complete(_selftests_root(kernel) / f"liveupdate-{selftests_key(source, compiler_version(cc))}")


def build_selftests(
    kernel: LabKernel,
    *,
    cc: str = "gcc",
    jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> SelftestBuild:
    """The kexec-spanning liveupdate selftests of ``kernel``, built from its own tree and cached beside it (see the
    module's description); cached already, they are returned at once.

    :param kernel: a kernel from :func:`workbench.lab.kernel.resolve_kernel` (with its source tree)
    :param cc: the C compiler, on ``PATH`` or a path (the default: the system's ``gcc``)
    :param jobs: parallel jobs of the header install (default: the CPUs)
    :param progress: called with a line saying what the build starts doing, before each step
    :raises SelftestBuildError: no source tree with the selftests, no compiler or ``make``, or a step failed (the
        message quotes its last lines and names the log)"""
    source = selftest_source(kernel)
    compiler = compiler_version(cc)
    key = selftests_key(source, compiler)
    root = _selftests_root(kernel)
    folder = root / f"liveupdate-{key}"
    if (found := _load_if_complete(folder)) is not None:
        return found
    make = _tool_version("make", "make")
    programs = kexec_programs(source)
    if not programs:
        raise SelftestBuildError(
            f"the selftest Makefile of {kernel.name} ({source / SELFTEST_DIR / 'Makefile'}) lists no kexec-spanning "
            "program (TEST_GEN_PROGS_EXTENDED); this kernel's tree has no selftest to run across a kexec"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SelftestBuildError(f"cannot create {root} for the selftests of {kernel.name}: {exc}") from None
    with cache_lock(root / ".lock"):
        if (found := _load_if_complete(folder)) is not None:
            return found
        for leftover in root.glob(".build-*"):  # what a killed build left; no one else builds while we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            entry = _build(kernel, source, scratch, root / FAILED_LOG, programs, cc, jobs, progress)
            manifest = {
                "kernel": kernel.name,
                "release": kernel.release,
                "source": str(source),
                "programs": list(programs),
                "compiler": compiler,
                "make": make,
                "key": key,
                **entry,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            result = scratch / "result"
            (result / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            shutil.rmtree(folder, ignore_errors=True)  # a folder without a manifest: not a cache entry
            os.rename(result, folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return SelftestBuild.load(folder)


def _load_if_complete(folder: Path) -> SelftestBuild | None:
    if not (folder / MANIFEST).is_file():
        return None
    try:
        return SelftestBuild.load(folder)
    except ValueError:
        return None


def _build(
    kernel: LabKernel,
    source: Path,
    scratch: Path,
    failed_log: Path,
    programs: tuple[str, ...],
    cc: str,
    jobs: int | None,
    progress: Callable[[str], None] | None,
) -> dict[str, float]:
    """Installs the headers and compiles ``programs`` in ``scratch``; leaves the binaries and the log in
    ``scratch/result`` (a failed step's log goes to ``failed_log``). Returns the seconds of each step."""
    result = scratch / "result"
    result.mkdir()
    log = result / LOG
    headers, objects, build = scratch / "headers", scratch / "headers-build", scratch / "build"
    build.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _MAKE_ENVIRONMENT} | {
        "LC_ALL": "C"
    }  # plain quotes in errors
    selftests = source / SELFTEST_DIR
    if progress:
        progress(f"installing the uapi headers of {kernel.name} ({kernel.release})")
    t0 = time.monotonic()
    _run(
        [
            "make",
            "-C",
            str(source),
            f"O={objects}",
            f"HOSTCC={cc}",
            f"-j{jobs or os.cpu_count() or 1}",
            "headers_install",
            f"INSTALL_HDR_PATH={headers}",
        ],
        log,
        failed_log,
        env,
        f"installing the uapi headers of {kernel.name} (make headers_install)",
    )
    headers_s = time.monotonic() - t0
    if progress:
        progress(f"compiling {', '.join(programs)} of {kernel.name} with {cc}")
    t0 = time.monotonic()
    _run(
        [
            "make",
            "-C",
            str(build),
            "-f",
            str(selftests / "Makefile"),
            "-I",
            str(selftests),
            f"VPATH={selftests}",
            f"OUTPUT={build}",
            f"KHDR_INCLUDES=-isystem {headers / 'include'}",
            f"CC={cc}",
            *(str(build / name) for name in programs),
        ],
        log,
        failed_log,
        env,
        f"compiling the liveupdate selftests of {kernel.name}",
    )
    compile_s = time.monotonic() - t0
    for name in programs:
        shutil.copy2(build / name, result / name)
    return {"headers_s": headers_s, "compile_s": compile_s}


def _run(cmd: list[str], log: Path, failed_log: Path, env: dict[str, str], what: str) -> None:
    """Runs ``cmd`` with its output appended to ``log``; a failure raises :class:`SelftestBuildError` quoting the
    last lines it printed, with the log copied to ``failed_log`` (outside the scratch folder, which goes)."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        start = out.tell()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    if proc.returncode == 0:
        return
    with open(log, "rb") as f:
        f.seek(start)
        printed = f.read().decode(errors="replace").rstrip().splitlines()
    shutil.copyfile(log, failed_log)
    tail = "\n".join(printed[-_ERROR_LINES:]) or "(no output)"
    raise SelftestBuildError(
        f"{what} failed (exit {proc.returncode}); its last lines:\n{tail}\nwhole log: {failed_log}. Fix the tree or "
        "the toolchain (a compile error in a variant's or your patch's selftest files, a compiler too old for the "
        "kernel), then run again: nothing was cached"
    )
