"""Building a lab kernel: the private source tree (a hard-linked copy of the shared one, with patches applied),
``make`` configured from a :class:`~workbench.lab.kernel_config.KernelConfig`, and the compile through ccache.

Every build compiles ``<kernel folder>/source`` into ``<kernel folder>/build``, so with ``CCACHE_BASEDIR`` set to
the cache root all builds see the same relative paths and share ccache hits, whatever their version, variants or
patches: a kernel that differs from a cached one by a patch or an option recompiles only what that changes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from workbench.lab.errors import KernelBuildError, KernelConfigError
from workbench.lab.kernel_config import KernelConfig
from workbench.lab.kernel_source import SCRIPTS, run_logged

__all__ = [
    "CCACHE_MAX_SIZE",
    "BuildOutcome",
    "ensure_system_packages",
    "patch_hash",
    "patched_files",
    "private_source_tree",
    "ccache_env",
    "ccache_counters",
    "ccache_stats",
    "configure",
    "make_bzimage",
    "size_on_disk",
]

CCACHE_MAX_SIZE = "20G"
_COMPILE_STEP = ("CC ", "AS ", "LD ")
_PATCHED_MARKER = ".workbench-patched"
# Never interactive, never an already applied patch reversed, no .orig or .rej files: the tree goes if one fails.
_PATCH_COMMAND = ("patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "--reject-file=-", "-i")


@dataclass(frozen=True)
class BuildOutcome:
    """What one ``make bzImage`` did: ``objects`` compile and link steps run, ``ccache`` the hits and misses of
    this build (None without ccache)."""

    objects: int
    ccache: dict[str, float] | None


def ensure_system_packages() -> None:
    """Installs the Debian packages the lab needs (the project's script; a no-op when all are present)."""
    result = subprocess.run(["bash", str(SCRIPTS / "install-system-deps.sh")], capture_output=True, text=True)
    if result.returncode:
        raise KernelBuildError(result.stderr.strip() or "installing system packages failed")


def patch_hash(patches: Sequence[Path]) -> str | None:
    """12 hex digits identifying a patch set (the patches' bytes, in order); None for no patches."""
    if not patches:
        return None
    h = hashlib.sha256()
    for patch in patches:
        data = patch.read_bytes()
        h.update(f"{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()[:12]


def patched_files(patch_text: str, strip: int = 1) -> list[str]:
    """The paths a unified diff touches, relative to the tree it applies to (``strip``: ``patch -p``)."""
    paths = []
    for line in patch_text.splitlines():
        if not line.startswith(("--- ", "+++ ")):
            continue
        name = line[4:].split("\t")[0].strip()
        parts = name.split("/")[strip:]
        if name == "/dev/null" or not parts or name.startswith("/") or ".." in parts:
            continue
        if (path := "/".join(parts)) not in paths:
            paths.append(path)
    return paths


def _unshare(path: Path) -> None:
    """Gives ``path`` its own inode, so that changing it cannot change the tree it was hard-linked from."""
    if path.is_file() and not path.is_symlink() and path.stat().st_nlink > 1:
        copy = path.with_name(path.name + ".workbench-unshare")
        shutil.copy2(path, copy)
        os.replace(copy, path)


def private_source_tree(shared: Path, dest: Path, patches: Sequence[Path]) -> Path:
    """``dest``: a copy of the source tree ``shared`` made of hard links, with ``patches`` applied in order
    (``patch -p1``) to files first unlinked from ``shared``, which is never written. Made once: an existing
    complete ``dest`` is returned as is. A patch that does not apply raises :class:`KernelBuildError` naming it
    with ``patch``'s output, and leaves no partial tree."""
    if (dest / _PATCHED_MARKER).exists():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["cp", "-al", str(shared), str(partial)], check=True, capture_output=True, text=True)
        for patch in patches:
            for name in patched_files(patch.read_text(errors="replace")):
                _unshare(partial / name)
            result = subprocess.run(
                [*_PATCH_COMMAND, str(patch.resolve())],
                cwd=partial,
                capture_output=True,
                text=True,
            )
            if result.returncode:
                output = (result.stdout + result.stderr).strip()
                raise KernelBuildError(f"the patch {patch} does not apply to {shared.name}:\n{output}")
        (partial / _PATCHED_MARKER).write_text("".join(f"{p}\n" for p in patches))
        partial.rename(dest)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise KernelBuildError(f"copying {shared} failed: {exc.stderr.strip()}") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dest


def ccache_env(cache_root: Path) -> dict[str, str] | None:
    """The environment that sends compiles through ccache, its cache in ``cache_root``/ccache; None when ccache
    is not installed."""
    if shutil.which("ccache") is None:
        return None
    return {
        "CCACHE_DIR": str(cache_root / "ccache"),
        "CCACHE_MAXSIZE": CCACHE_MAX_SIZE,
        "CCACHE_BASEDIR": str(cache_root),
        "CCACHE_NOHASHDIR": "1",
        # depend mode: a miss compiles at once (the kernel's -MMD files give the hash) instead of running the
        # preprocessor first, which made a cold build through ccache markedly slower than one without it
        "CCACHE_DEPEND": "1",
    }


def ccache_counters(env: dict[str, str]) -> dict[str, int] | None:
    """ccache's counters (``ccache --print-stats``) for the cache ``env`` names; None when they cannot be read."""
    result = subprocess.run(
        ["ccache", "--print-stats"], capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    if result.returncode:
        return None
    counters = {}
    for line in result.stdout.splitlines():
        if m := re.fullmatch(r"(\w+)\t(\d+)", line.strip()):
            counters[m[1]] = int(m[2])
    return counters


def ccache_stats(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float] | None:
    """Hits, misses and hit rate between two readings of :func:`ccache_counters` (builds running at the same
    time count too)."""
    if before is None or after is None:
        return None

    def grew(*keys: str) -> int:
        return sum(after.get(k, 0) - before.get(k, 0) for k in keys)

    hits, misses = grew("direct_cache_hit", "preprocessed_cache_hit"), grew("cache_miss")
    return {"hits": hits, "misses": misses, "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0}


def _make_command(tree: Path, build: Path, ccache: dict[str, str] | None, local_version: str = "") -> list[str]:
    make = ["make", "-C", str(tree), f"O={build}", *([f"LOCALVERSION={local_version}"] if local_version else [])]
    if not ccache:
        return make
    # ccache hands the compiler paths relative to the build folder, which the kernel's own
    # -fmacro-prefix-map=<absolute tree>/= no longer matches: map them too, so __FILE__ stays "kernel/fork.c".
    relative = os.path.relpath(tree, build)
    compiler = ["CC=ccache gcc", "HOSTCC=ccache gcc", f"KCPPFLAGS=-fmacro-prefix-map={relative}/="]
    return [*make, *compiler]


def configure(tree: Path, build: Path, config: KernelConfig, log: Path, ccache: dict[str, str] | None) -> None:
    """Writes ``build``/.config for the source ``tree``: the base's target, every fragment merged in order,
    ``olddefconfig``; raises :class:`KernelConfigError` listing the expected options that did not survive."""
    env = {**os.environ, **(ccache or {})}
    make = _make_command(tree, build, ccache, config.local_version_suffix)
    build.mkdir(parents=True, exist_ok=True)
    run_logged([*make, config.base.target], log, env=env, what=f"make {config.base.target}")
    fragments = [str(tree / c) for c in config.base.tree_fragments] + [str(p) for p in config.project_fragments()]
    run_logged(
        [str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(build), str(build / ".config"), *fragments],
        log,
        cwd=tree,
        env={**env, "KCONFIG_CONFIG": str(build / ".config")},
        what="merging the config fragments",
    )
    run_logged([*make, "olddefconfig"], log, env=env, what="make olddefconfig")
    missing = config.missing((build / ".config").read_text())
    if missing:
        sources = ", ".join(p.name if p.parent.name == "kconfig" else str(p) for p in config.project_fragments())
        raise KernelConfigError(
            f"these options of {sources} did not survive olddefconfig (a dependency is missing): {'; '.join(missing)}"
        )


def make_bzimage(
    tree: Path,
    build: Path,
    log: Path,
    *,
    jobs: int,
    ccache: dict[str, str] | None,
    progress: Callable[[int, int], None] | bool,
    expected_objects: int,
    local_version: str = "",
) -> BuildOutcome:
    """Runs ``make bzImage`` (``jobs`` in parallel), its output appended to ``log``. ``progress`` is a callback
    ``(steps_done, expected_objects)``, or True for a tqdm bar on stderr."""
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=expected_objects, desc="building the lab kernel", unit="obj", leave=False)
    before = ccache_counters(ccache) if ccache else None
    done = 0
    command = [*_make_command(tree, build, ccache, local_version), f"-j{jobs}", "bzImage"]
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(ccache or {})}
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.lstrip().startswith(_COMPILE_STEP):
                done += 1
                if bar is not None:
                    bar.total = max(bar.total, done)
                    bar.update(1)
                elif callable(progress):
                    progress(done, expected_objects)
        code = proc.wait()
    if bar is not None:
        bar.close()
    if code:
        raise KernelBuildError(f"the kernel build failed (exit {code}); see {log}")
    after = ccache_counters(ccache) if ccache else None
    return BuildOutcome(objects=done, ccache=ccache_stats(before, after))


def size_on_disk(folder: Path) -> int:
    """The bytes that deleting ``folder`` would free: files hard-linked from elsewhere (the shared source tree)
    do not count, files linked twice inside it count once."""
    total = 0
    links_inside: dict[int, int] = {}
    files: dict[int, os.stat_result] = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
        for name in names:
            st = os.lstat(os.path.join(root, name))
            links_inside[st.st_ino] = links_inside.get(st.st_ino, 0) + 1
            files[st.st_ino] = st
    return total + sum(st.st_blocks * 512 for ino, st in files.items() if links_inside[ino] >= st.st_nlink)
