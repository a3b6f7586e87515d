"""Naming a lab kernel: ``7.2``, ``7.3``, ``7.2+deferred-init``, ``7.2+deferred-init+kho-debug`` (variants compose
in the order named), ``7.2+./fix.patch`` (a researcher's own patch), or the path of a kernel built elsewhere.
:func:`parse_kernel_name` reads a name into a :class:`KernelSpec`, which knows the kernel's configuration and
its cache key; :func:`prebuilt_files` finds a prebuilt kernel's bzImage and config."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from workbench.lab.errors import UnknownName
from workbench.lab.kernel_build import patch_hash
from workbench.lab.kernel_config import BASES, DEFAULT_BASE, FRAGMENT, KernelConfig, known_variants, load_variant

__all__ = [
    "KERNEL_VERSIONS",
    "DEFAULT_VERSION",
    "KernelSpec",
    "parse_kernel_name",
    "PrebuiltFiles",
    "prebuilt_files",
]

KERNEL_VERSIONS = ("7.2", "7.3")
DEFAULT_VERSION = "7.2"
_PATCH_SUFFIXES = (".patch", ".diff")


@dataclass(frozen=True)
class KernelSpec:
    """Which lab kernel: ``version`` (the Debian series, e.g. ``"7.2"``), ``variants`` (names of
    ``kconfig/variants/`` folders, composed in order), ``patches`` (a researcher's own patch files, applied with
    ``patch -p1`` after the variants' patches), ``base`` (a key of :data:`~workbench.lab.kernel_config.BASES`);
    or ``prebuilt``, the path of a kernel built elsewhere. Invalid values raise :class:`UnknownName`."""

    version: str = DEFAULT_VERSION
    variants: tuple[str, ...] = ()
    patches: tuple[Path, ...] = ()
    base: str = DEFAULT_BASE
    prebuilt: Path | None = None

    def __post_init__(self) -> None:
        if self.prebuilt is not None:
            return
        if self.version not in KERNEL_VERSIONS:
            raise UnknownName(f"no lab kernel version {self.version!r}; the versions are: {', '.join(KERNEL_VERSIONS)}")
        if self.base not in BASES:
            raise UnknownName(f"no kernel base {self.base!r}; the bases are: {', '.join(BASES)}")
        for name in self.variants:
            load_variant(name)
        if len(set(self.variants)) != len(self.variants):
            raise UnknownName(f"a variant is named twice in {'+'.join(self.variants)}")
        for patch in self.patches:
            if not Path(patch).is_file():
                raise UnknownName(f"the patch {patch} does not exist")

    @property
    def name(self) -> str:
        """The kernel's name, as :func:`parse_kernel_name` reads it."""
        if self.prebuilt is not None:
            return str(self.prebuilt)
        return "+".join([self.version, *self.variants, *(str(p) for p in self.patches)])

    def all_patches(self) -> tuple[Path, ...]:
        """Every patch applied, in order: each variant's, then the researcher's."""
        return tuple(p for v in self.variants for p in load_variant(v).patches) + tuple(Path(p) for p in self.patches)

    def patch_hash(self) -> str | None:
        """The hash of :meth:`all_patches`, None without patches."""
        return patch_hash(self.all_patches())

    def config(self, fragment: Path = FRAGMENT) -> KernelConfig:
        """The configuration this kernel is built from, with the lab ``fragment``."""
        own = patch_hash([Path(p) for p in self.patches])
        variants = tuple(load_variant(v) for v in self.variants)
        base = BASES[self.base].for_version(self.version)
        return KernelConfig(base, fragment, variants, patch_tag=f"p{own[:8]}" if own else "")

    def key(self, fragment: Path = FRAGMENT) -> str:
        """The cache key after the version: the config hash, then the patch hash if there are patches."""
        patches = self.patch_hash()
        return self.config(fragment).hash() + (f"-{patches}" if patches else "")

    def folder_name(self, source_version: str, fragment: Path = FRAGMENT) -> str:
        """The kernel's folder in the cache, for the version its source tree declares (e.g. ``"7.2.13"``)."""
        return f"{source_version}{''.join(f'+{v}' for v in self.variants)}-{self.key(fragment)}"


def parse_kernel_name(text: str) -> KernelSpec:
    """The kernel ``text`` names: a version (``7.2``), variants and patch files after ``+`` (``7.2+deferred-init``,
    ``7.2+kho-debug+./fix.patch``), or the path of a prebuilt kernel (a bzImage, or a folder with a bzImage and
    its config). Raises :class:`UnknownName` saying what is accepted."""
    text = text.strip()
    if m := re.fullmatch(r"(\d+\.\d+)((?:\+[^+]*)*)", text):
        parts = m[2].split("+")[1:]
        if any(not p for p in parts):
            raise UnknownName(f"empty variant name in {text!r}")
        patches = tuple(Path(p).expanduser() for p in parts if p.endswith(_PATCH_SUFFIXES))
        variants = tuple(p for p in parts if not p.endswith(_PATCH_SUFFIXES))
        return KernelSpec(m[1], variants, patches)
    path = Path(text).expanduser()
    if text and path.exists():
        if not (path / "manifest.json").is_file():
            prebuilt_files(path)
        return KernelSpec(prebuilt=path.resolve())
    raise UnknownName(
        f"{text!r} is not a kernel: give a version ({', '.join(KERNEL_VERSIONS)}), variants after '+' "
        f"(e.g. {DEFAULT_VERSION}+deferred-init; the variants are: {', '.join(known_variants()) or '(none)'}), "
        "or the path of a bzImage or of a folder with a bzImage and its config"
    )


def _bzimage_release(image: Path) -> str | None:
    """The release in a bzImage's setup header (the string ``kernel_version`` points to), None if not a bzImage."""
    with open(image, "rb") as f:
        header = f.read(0x4000)
    if header[0x202:0x206] != b"HdrS":
        return None
    (offset,) = struct.unpack_from("<H", header, 0x20E)
    text = header[0x200 + offset : 0x200 + offset + 256].split(b"\0")[0].decode(errors="replace")
    return text.split()[0] if text.split() else None


@dataclass(frozen=True)
class PrebuiltFiles:
    """A kernel built elsewhere: its ``folder``, ``image`` (the bzImage), ``config`` and ``release``."""

    folder: Path
    image: Path
    config: Path
    release: str


def prebuilt_files(path: Path) -> PrebuiltFiles:
    """The files of the prebuilt kernel at ``path``: a folder with ``bzImage`` (or a build tree's
    ``arch/x86/boot/bzImage``) and ``config`` (or ``.config``), or a bzImage file with its config beside it
    (``config``, ``.config`` or Debian's ``config-<release>``). Raises :class:`UnknownName` when it is none."""
    path = Path(path).expanduser().resolve()
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        image = next((p for p in (path / "bzImage", path / "arch/x86/boot/bzImage") if p.is_file()), None)
        if image is None:
            raise UnknownName(f"{path} holds no bzImage")
    else:
        image = path
    release = _bzimage_release(image)
    if release is None:
        raise UnknownName(f"{image} is not a bzImage (no Linux boot header)")
    config = next(
        (p for p in (folder / "config", folder / ".config", folder / f"config-{release}") if p.is_file()), None
    )
    if config is None:
        raise UnknownName(f"no kernel config beside {image}: put it there as 'config'")
    return PrebuiltFiles(folder, image, config, release)
