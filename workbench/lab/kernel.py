"""The lab kernels: Linux from Debian's ``linux-source-<version>`` packages with the KHO/LUO fragment, optionally
changed by variants and patches, built once and cached in
``$XDG_CACHE_HOME/live-update-workbench/kernels/<version>[+<variant>...]-<config hash>[-<patch hash>]/``.

A kernel is named the same way everywhere (:mod:`~workbench.lab.kernel_name`): ``7.2``, ``7.3``,
``7.2+deferred-init``, ``7.2+deferred-init+kho-debug`` (variants compose in the order named), ``7.2+./my.patch``
(a researcher's patch), or the path of a prebuilt kernel. :func:`resolve_kernel` turns a name into a
:class:`LabKernel`, building it when it is not cached; :func:`list_kernels` lists the cache.

The names, the configuration, the sources and the build are in :mod:`~workbench.lab.kernel_name`,
:mod:`~workbench.lab.kernel_config`, :mod:`~workbench.lab.kernel_source` and :mod:`~workbench.lab.kernel_build`;
the names callers use are importable from here too."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workbench.lab.errors import KernelBuildError, KernelConfigError, KernelWithoutLiveUpdate
from workbench.lab.kernel_build import (
    ccache_env,
    configure,
    ensure_system_packages,
    make_bzimage,
    private_source_tree,
    size_on_disk,
)
from workbench.lab.kernel_config import (
    FRAGMENT,
    REQUIRED_FOR_CYCLE,
    config_hash,
    load_variant,
    missing_options,
    parse_config,
    require_live_update,
)
from workbench.lab.kernel_name import DEFAULT_VERSION, KERNEL_VERSIONS, KernelSpec, parse_kernel_name, prebuilt_files
from workbench.lab.kernel_source import cache_lock, cache_root, source_tree, source_version

__all__ = [
    "LabKernel",
    "KernelSpec",
    "KernelBuildError",
    "KernelConfigError",
    "KernelWithoutLiveUpdate",
    "FRAGMENT",
    "REQUIRED_FOR_CYCLE",
    "KERNEL_VERSIONS",
    "DEFAULT_VERSION",
    "cache_root",
    "config_hash",
    "parse_config",
    "missing_options",
    "require_live_update",
    "parse_kernel_name",
    "prebuilt_kernel",
    "list_kernels",
    "kernel_choices",
    "cached_kernel",
    "build_kernel",
    "resolve_kernel",
    "ensure_system_packages",
    "running_kernel_config",
]

# Object files a build of the defconfig base compiles; only scales the progress bar until a build has counted them.
_EXPECTED_OBJECTS = 2900


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


@dataclass(frozen=True)
class LabKernel:
    """A built kernel: in the cache (its folder holds ``bzImage``, ``vmlinux``, ``config``, ``build.log`` and
    ``manifest.json``), or prebuilt elsewhere (``image`` and ``config_path`` then say where its files are)."""

    path: Path
    version: str
    config_hash: str
    release: str
    build_seconds: float | None = None
    series: str | None = None
    variants: tuple[str, ...] = ()
    patches: tuple[str, ...] = ()
    patch_hash: str | None = None
    base: str | None = None
    objects: int | None = None
    ccache: dict[str, float] | None = field(default=None, compare=False)
    size_bytes: int | None = None
    built_at: str | None = None
    image: Path | None = None
    config_path: Path | None = None
    prebuilt: bool = False

    @property
    def name(self) -> str:
        """The name that gives this kernel back (:func:`parse_kernel_name`), but for a researcher's patches."""
        if self.prebuilt or self.series is None:
            return str(self.image or self.path)
        return "+".join([self.series, *self.variants])

    @property
    def bzimage(self) -> Path:
        return self.image or self.path / "bzImage"

    @property
    def vmlinux(self) -> Path:
        return self.path / "vmlinux"

    @property
    def config_file(self) -> Path:
        return self.config_path or self.path / "config"

    @property
    def build_log(self) -> Path:
        return self.path / "build.log"

    @property
    def config(self) -> dict[str, str]:
        return parse_config(self.config_file.read_text())

    @property
    def source_candidates(self) -> list[Path]:
        """Where the kernel's source tree may be: ``source/`` in a cached kernel's folder, or the folder itself (a
        prebuilt kernel's build tree)."""
        return [self.path / "source", self.path]

    def source_with(self, relative: str | Path, *, folder: bool = True) -> Path | None:
        """The first of :attr:`source_candidates` that has the folder ``relative`` (a file when ``folder`` is
        false), or None."""
        has = Path.is_dir if folder else Path.is_file
        return next((tree for tree in self.source_candidates if has(tree / relative)), None)

    def disk_usage(self) -> int:
        """Bytes that deleting the kernel's folder would free (from the manifest when the build recorded it)."""
        return self.size_bytes if self.size_bytes is not None else size_on_disk(self.path)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": str(self.path),
            "version": self.version,
            "series": self.series,
            "release": self.release,
            "variants": list(self.variants),
            "patches": list(self.patches),
            "patch_hash": self.patch_hash,
            "base": self.base,
            "config_hash": self.config_hash,
            "bzimage": str(self.bzimage),
            "vmlinux": str(self.vmlinux),
            "config": str(self.config_file),
            "build_log": str(self.build_log),
            "build_seconds": self.build_seconds,
            "objects": self.objects,
            "ccache": self.ccache,
            "size_bytes": self.size_bytes,
            "built_at": self.built_at,
            "prebuilt": self.prebuilt,
        }

    @classmethod
    def load(cls, path: Path) -> LabKernel:
        """The kernel whose folder is ``path`` (it has a ``manifest.json``)."""
        manifest = json.loads((path / "manifest.json").read_text())
        return cls(
            path=path,
            version=manifest["version"],
            config_hash=manifest["config_hash"],
            release=manifest["release"],
            build_seconds=manifest.get("build_seconds"),
            series=manifest.get("series"),
            variants=tuple(manifest.get("variants", ())),
            patches=tuple(manifest.get("patches", ())),
            patch_hash=manifest.get("patch_hash"),
            base=manifest.get("base", "defconfig"),  # builds from before bases had names
            objects=manifest.get("objects"),
            ccache=manifest.get("ccache"),
            size_bytes=manifest.get("size_bytes"),
            built_at=manifest.get("built_at"),
        )


def prebuilt_kernel(path: Path) -> LabKernel:
    """The kernel at ``path``: a cached kernel's folder, or a kernel built elsewhere (see
    :func:`~workbench.lab.kernel_name.prebuilt_files`). Raises :class:`UnknownName` when it is neither."""
    path = Path(path).expanduser().resolve()
    if path.is_dir() and (path / "manifest.json").exists():
        return LabKernel.load(path)
    files = prebuilt_files(path)
    return LabKernel(
        path=files.folder,
        version=m[0] if (m := re.match(r"\d+\.\d+(\.\d+)?", files.release)) else files.release,
        config_hash=hashlib.sha256(files.config.read_bytes()).hexdigest()[:12],
        release=files.release,
        image=files.image,
        config_path=files.config,
        prebuilt=True,
    )


def _spec(kernel: KernelSpec | str) -> KernelSpec:
    return kernel if isinstance(kernel, KernelSpec) else parse_kernel_name(kernel)


def list_kernels() -> list[LabKernel]:
    """Every kernel in the cache (a folder with a manifest), by version, then name, then build time."""
    found = []
    for manifest in (cache_root() / "kernels").glob("*/manifest.json"):
        try:
            found.append(LabKernel.load(manifest.parent))
        except (OSError, ValueError, KeyError):
            continue
    return sorted(found, key=lambda k: (_version_key(k.version), k.name, k.built_at or ""))


def kernel_choices() -> list[tuple[str, str]]:
    """(label, name) for every kernel a user can pick: the cached ones (newest build of each name), then the
    versions not built yet (built on first use)."""
    newest = {k.name: k for k in list_kernels() if not k.prebuilt}
    choices = [(f"{name} ({k.release})", name) for name, k in newest.items()]
    choices += [(f"{v} (built on first use)", v) for v in KERNEL_VERSIONS if v not in newest]
    return choices


def cached_kernel(kernel: KernelSpec | str = DEFAULT_VERSION, fragment: Path = FRAGMENT) -> LabKernel | None:
    """The newest cached build of ``kernel`` (a :class:`KernelSpec` or a name) with the lab ``fragment``, or
    None; a prebuilt kernel is returned as it is."""
    spec = _spec(kernel)
    if spec.prebuilt is not None:
        return prebuilt_kernel(spec.prebuilt)
    key, patches = spec.config(fragment).hash(), spec.patch_hash()
    found = [
        k
        for k in list_kernels()
        if k.series == spec.version and k.config_hash == key and k.patch_hash == patches and not k.prebuilt
    ]
    return found[-1] if found else None


def _expected_objects(base: str) -> int:
    counted = [k.objects for k in list_kernels() if k.base == base and k.objects]
    return counted[-1] if counted else _EXPECTED_OBJECTS


def build_kernel(
    kernel: KernelSpec | str = DEFAULT_VERSION,
    fragment: Path = FRAGMENT,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | bool = True,
) -> LabKernel:
    """Returns the cached ``kernel`` (a :class:`KernelSpec` or a name), building it first if needed (15-25
    minutes on 2 cores without ccache hits). ``fragment``: the lab fragment; ``jobs``: parallel ``make`` jobs
    (default: CPUs + 1); ``progress``: a callback ``(objects_done, objects_expected)``, or True for a tqdm bar on
    stderr. A patch that does not apply raises :class:`KernelBuildError` and leaves nothing in the cache."""
    spec = _spec(kernel)
    if (found := cached_kernel(spec, fragment)) is not None:
        return found
    key = spec.key(fragment)
    kernels = cache_root() / "kernels"
    with cache_lock(kernels / f".lock-{spec.version}-{key}"):
        if (found := cached_kernel(spec, fragment)) is not None:
            return found
        started = time.monotonic()
        ensure_system_packages()
        staging_log = kernels / f"build-{spec.version}-{key}.log"
        staging_log.write_text(f"workbench lab kernel build of {spec.name}, {time.ctime()}\n")
        tree = source_tree(spec.version, staging_log)
        version = source_version(tree)
        out = kernels / spec.folder_name(version, fragment)
        shutil.rmtree(out, ignore_errors=True)  # what a failed build left (no manifest: not a kernel), under the lock
        out.mkdir(parents=True)
        log = out / "build.log"
        with open(log, "a") as f:
            f.write(staging_log.read_text())
        staging_log.unlink(missing_ok=True)
        patches = spec.all_patches()
        try:
            source = private_source_tree(tree, out / "source", patches)
        except KernelBuildError:
            shutil.rmtree(out, ignore_errors=True)
            raise
        config = spec.config(fragment)
        ccache = ccache_env(cache_root())
        build = out / "build"
        configure(source, build, config, log, ccache)
        outcome = make_bzimage(
            source,
            build,
            log,
            jobs=jobs or (os.cpu_count() or 1) + 1,
            ccache=ccache,
            progress=progress,
            expected_objects=_expected_objects(spec.base),
            local_version=config.local_version_suffix,
        )
        release = (build / "include" / "config" / "kernel.release").read_text().strip()
        for name, src in (("bzImage", build / "arch/x86/boot/bzImage"), ("vmlinux", build / "vmlinux")):
            (out / name).unlink(missing_ok=True)
            os.link(src, out / name)
        shutil.copyfile(build / ".config", out / "config")
        variant_patches = {p: f"{p.parent.name}/{p.name}" for v in spec.variants for p in load_variant(v).patches}
        manifest = {
            "version": version,
            "series": spec.version,
            "variants": list(spec.variants),
            "patches": [variant_patches.get(p, p.name) for p in patches],
            "patch_hash": spec.patch_hash(),
            "base": spec.base,
            "config_hash": config.hash(),
            "release": release,
            "fragment": fragment.read_text(),
            "base_configs": [config.base.target, *config.base.tree_fragments, *(p.name for p in config.base.fragments)],
            "variant_configs": {v.name: v.config.read_text() for v in config.variants if v.config},
            "objects": outcome.objects,
            "ccache": outcome.ccache,
            "build_seconds": time.monotonic() - started,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "size_bytes": size_on_disk(out),
        }
        tmp = out / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(out / "manifest.json")
        return LabKernel.load(out)


def resolve_kernel(
    kernel: KernelSpec | str,
    *,
    build: bool = True,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | bool = True,
) -> LabKernel:
    """The :class:`LabKernel` that ``kernel`` (a name or a :class:`KernelSpec`) names: a prebuilt kernel as it
    is, else the cached build, else (with ``build``) a new build with ``progress`` (see :func:`build_kernel`).
    Without ``build``, a kernel that is not cached raises :class:`KernelBuildError`."""
    spec = _spec(kernel)
    if (found := cached_kernel(spec)) is not None:
        return found
    if not build:
        flags = [f"--version {spec.version}", *(f"--variant {v}" for v in spec.variants)]
        flags += [f"--patch {p}" for p in spec.patches]
        raise KernelBuildError(f"the kernel {spec.name} is not built: `workbench kernel build {' '.join(flags)}`")
    return build_kernel(spec, jobs=jobs, progress=progress)


def running_kernel_config() -> str | None:
    """The running kernel's config, from /proc/config.gz or /boot/config-<release>."""
    proc = Path("/proc/config.gz")
    if proc.exists():
        return gzip.decompress(proc.read_bytes()).decode()
    boot = Path("/boot") / f"config-{os.uname().release}"
    return boot.read_text() if boot.exists() else None
