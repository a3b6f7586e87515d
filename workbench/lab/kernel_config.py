"""What a lab kernel's ``.config`` is made of, and the checks on it.

A configuration is a *base* (a ``make`` target, then config fragments of the source tree and of the project), the
lab fragment (``kconfig/lab.config``: KHO/LUO, inspection, guest plumbing), then the config deltas of the
*variants* named, in that order (``kconfig/variants/<name>/config``). Everything the project contributes is
verified after ``olddefconfig``: an option whose dependencies are missing is a :class:`KernelConfigError`, never a
silently different kernel. :func:`config_hash` identifies a configuration; the cache is keyed by it."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from workbench.lab.errors import KernelWithoutLiveUpdate, UnknownName

__all__ = [
    "FRAGMENT",
    "LEAN_FRAGMENT",
    "VARIANTS_DIR",
    "REQUIRED_FOR_CYCLE",
    "KernelBase",
    "BASES",
    "DEFAULT_BASE",
    "Variant",
    "known_variants",
    "load_variant",
    "KernelConfig",
    "config_hash",
    "parse_config",
    "missing_options",
    "require_live_update",
]

KCONFIG_DIR = Path(__file__).resolve().parent / "kconfig"
FRAGMENT = KCONFIG_DIR / "lab.config"
LEAN_FRAGMENT = KCONFIG_DIR / "lean-base.config"
VARIANTS_DIR = KCONFIG_DIR / "variants"
REQUIRED_FOR_CYCLE = ("CONFIG_KEXEC_FILE", "CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD")
_VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


@dataclass(frozen=True)
class KernelBase:
    """A base configuration: ``make <target>``, then the source tree's fragments ``tree_fragments`` (paths
    relative to the tree), then the project's ``fragments`` (verified after ``olddefconfig``)."""

    name: str
    target: str
    tree_fragments: tuple[str, ...]
    fragments: tuple[Path, ...] = ()

    def for_version(self, version: str) -> KernelBase:
        """This base for kernel ``version``: each project fragment ``NAME.config`` is followed by
        ``NAME-<version>.config`` where that exists (what a version renamed or added, e.g. 7.3's ``SYSCTL``)."""
        extra = [p.with_name(f"{p.stem}-{version}.config") for p in self.fragments]
        fragments = [f for pair in zip(self.fragments, extra, strict=True) for f in pair if f.is_file()]
        return dataclasses.replace(self, fragments=tuple(fragments))


BASES = {
    "defconfig": KernelBase("defconfig", "x86_64_defconfig", ("kernel/configs/kvm_guest.config",)),
    "lean": KernelBase("lean", "tinyconfig", ("kernel/configs/kvm_guest.config",), (LEAN_FRAGMENT,)),
}
DEFAULT_BASE = "lean"


@dataclass(frozen=True)
class Variant:
    """A named change to the lab kernel: ``folder`` (``kconfig/variants/<name>/``) holds an optional config delta
    (``config``), optional patches (``*.patch``, applied in name order) and a ``README`` saying what it is for."""

    name: str
    folder: Path

    @property
    def config(self) -> Path | None:
        path = self.folder / "config"
        return path if path.exists() else None

    @property
    def patches(self) -> tuple[Path, ...]:
        return tuple(sorted(self.folder.glob("*.patch")))

    @property
    def description(self) -> str:
        readme = self.folder / "README"
        return " ".join(readme.read_text().split()) if readme.exists() else ""


def known_variants(variants_dir: Path = VARIANTS_DIR) -> list[str]:
    """The names of the variants in ``variants_dir``, sorted."""
    if not variants_dir.is_dir():
        return []
    return sorted(p.name for p in variants_dir.iterdir() if p.is_dir() and _VARIANT_NAME.fullmatch(p.name))


def load_variant(name: str, variants_dir: Path = VARIANTS_DIR) -> Variant:
    """The variant called ``name``; :class:`UnknownName` (listing the known ones) when there is none."""
    known = known_variants(variants_dir)
    if name not in known:
        raise UnknownName(f"no kernel variant {name!r}; the variants are: {', '.join(known) or '(none)'}")
    return Variant(name, variants_dir / name)


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
class KernelConfig:
    """Everything a lab kernel's ``.config`` is made of, in merge order: ``base``, the lab ``fragment``, the
    ``variants``' deltas. A kernel with variants or patches gets their names in its release
    (``7.2.13-lab+deferred-init``) through kbuild's ``LOCALVERSION`` make variable, not the ``.config``: a
    patch-only variant then compiles to the same objects as the plain kernel wherever its patch does not reach, so
    ccache serves them; ``patch_tag`` names the researcher's own patches there (e.g. ``"p1a2b3c4d"``)."""

    base: KernelBase = field(default_factory=lambda: BASES[DEFAULT_BASE])
    fragment: Path = FRAGMENT
    variants: tuple[Variant, ...] = ()
    patch_tag: str = ""

    @property
    def local_version_suffix(self) -> str:
        return "".join(f"+{name}" for name in (*(v.name for v in self.variants), self.patch_tag) if name)

    def project_fragments(self) -> list[Path]:
        """The project's fragment files merged after the base's target and tree fragments, in order."""
        return [*self.base.fragments, self.fragment, *(v.config for v in self.variants if v.config)]

    def expected(self) -> dict[str, str]:
        """The options the final ``.config`` must have: every project fragment merged, later ones winning."""
        wanted: dict[str, str] = {}
        for path in self.project_fragments():
            wanted.update(parse_config(path.read_text()))
        return wanted

    def missing(self, config_text: str) -> list[str]:
        """The expected options a final ``.config`` lacks, as ``CONFIG_X=wanted (got value)``."""
        have = parse_config(config_text)
        return [
            f"{option}={wanted} (got {have.get(option, 'n')})"
            for option, wanted in self.expected().items()
            if have.get(option, "n") != wanted
        ]

    def hash(self) -> str:
        """12 hex digits identifying this configuration: the base's target and tree fragments by name, then the
        bytes of each project fragment, each variant's name and delta, and the release suffix, in order."""
        h = hashlib.sha256("".join(f"{c}\n" for c in (self.base.target, *self.base.tree_fragments)).encode())
        for path in self.base.fragments:
            h.update(f"{path.name}\n".encode())
            h.update(path.read_bytes())
        h.update(self.fragment.read_bytes())
        for variant in self.variants:
            h.update(f"\n# variant {variant.name}\n".encode())
            if variant.config:
                h.update(variant.config.read_bytes())
        if suffix := self.local_version_suffix:
            h.update(f"\n# LOCALVERSION={suffix}\n".encode())
        return h.hexdigest()[:12]


def config_hash(fragment: Path = FRAGMENT, *, base: str = DEFAULT_BASE, variants: tuple[str, ...] = ()) -> str:
    """The hash of the configuration made of the base called ``base``, ``fragment`` and the variants named."""
    config = KernelConfig(BASES[base], fragment, tuple(load_variant(v) for v in variants))
    return config.hash()
