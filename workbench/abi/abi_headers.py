"""What a kernel's handover ABI headers (``include/linux/kho/abi/*.h`` in its source tree) declare: the structs,
unions and enums that describe handover bytes, and the compatible strings and version numbers that name each
format (``#define KHO_FDT_COMPATIBLE "kho-v4"``, ``#define KHO_KEXEC_METADATA_VERSION 1``).

The headers are read as text, the way a person reads them: comments are dropped, line continuations joined,
``struct NAME {`` (and ``union``/``enum``) taken as a declaration, and an object-like ``#define`` whose name ends in
``_COMPATIBLE`` (a string literal) or ``_VERSION`` (an integer) as a format's name. A define that names another
define is followed (``#define A_COMPATIBLE B_COMPATIBLE``); function-like macros are not formats and are left out.
Nothing is compiled: preprocessor conditionals are not evaluated, so a declaration under ``#ifdef`` counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ABI_HEADER_DIR",
    "AbiType",
    "AbiConstant",
    "AbiHeaders",
    "parse_abi_header",
    "read_abi_headers",
    "without_comments",
    "object_like_defines",
    "header_subsystem",
    "constant_subsystem",
]

#: Where the handover ABI headers are, relative to a kernel source tree.
ABI_HEADER_DIR = Path("include/linux/kho/abi")

# The subsystem each header's structures belong to; other headers are named after their file.
_HEADER_SUBSYSTEMS = {
    "kexec_handover.h": "KHO",
    "block.h": "KHO block",
    "kexec_metadata.h": "kexec-metadata",
    "luo.h": "LUO",
    "memfd.h": "memfd",
    "memblock.h": "memblock",
}
# The subsystem each compatible string or version names (two live in memblock.h).
_CONSTANT_SUBSYSTEMS = {
    "KHO_FDT_COMPATIBLE": "KHO",
    "LUO_ABI_COMPATIBLE": "LUO",
    "MEMFD_LUO_FH_COMPATIBLE": "memfd",
    "MEMBLOCK_KHO_NODE_COMPATIBLE": "memblock",
    "RESERVE_MEM_KHO_NODE_COMPATIBLE": "reserve-mem",
    "KHO_KEXEC_METADATA_VERSION": "kexec-metadata",
}

_TOKENS = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|/\*.*?\*/|//[^\n]*', re.DOTALL)
_LITERALS = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'')
_DECLARATION = re.compile(r"\b(struct|union|enum)\s+([A-Za-z_]\w*)\s*\{")
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(?![\w(])[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_STRING = re.compile(r'"((?:\\.|[^"\\])*)"')
_INTEGER = re.compile(r"\(?\s*(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\s*\)?")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class AbiType:
    """A struct, union or enum an ABI header declares: ``kind`` (``struct``, ``union``, ``enum``), ``name`` (its
    tag) and ``header`` (the header's file name, e.g. ``luo.h``)."""

    kind: str
    name: str
    header: str

    @property
    def c_name(self) -> str:
        """How C names the type: ``struct luo_ser``."""
        return f"{self.kind} {self.name}"

    @property
    def subsystem(self) -> str:
        """The handover subsystem whose bytes the type describes (``LUO`` for ``luo.h``)."""
        return header_subsystem(self.header)


@dataclass(frozen=True)
class AbiConstant:
    """A format's name an ABI header defines: ``macro`` (``LUO_ABI_COMPATIBLE``), ``value`` (a ``str`` for a
    compatible string, an ``int`` for a version), ``header`` and ``subsystem``."""

    macro: str
    value: str | int
    header: str
    subsystem: str

    @property
    def kind(self) -> str:
        """``string`` (a compatible string) or ``number`` (a version)."""
        return "string" if isinstance(self.value, str) else "number"


@dataclass(frozen=True)
class AbiHeaders:
    """Everything a kernel's ABI headers declare: ``directory`` (where they were read), ``headers`` (file names),
    ``types`` and ``constants``."""

    directory: Path | None
    headers: tuple[str, ...]
    types: tuple[AbiType, ...]
    constants: tuple[AbiConstant, ...]

    def type(self, kind: str, name: str) -> AbiType | None:
        """The declaration of ``kind name`` (``struct``, ``luo_ser``), or ``None``."""
        return next((t for t in self.types if t.kind == kind and t.name == name), None)

    def constant(self, macro: str) -> AbiConstant | None:
        """The constant ``macro`` defines, or ``None``."""
        return next((c for c in self.constants if c.macro == macro), None)


def header_subsystem(header: str) -> str:
    """The subsystem whose handover bytes the header ``header`` (a file name such as ``luo.h``) describes."""
    return _HEADER_SUBSYSTEMS.get(header, Path(header).stem)


def constant_subsystem(macro: str, header: str) -> str:
    """The subsystem a compatible string or version ``macro``, defined in ``header``, names."""
    return _CONSTANT_SUBSYSTEMS.get(macro, header_subsystem(header))


def without_comments(text: str) -> str:
    """C source ``text`` with its comments replaced by blanks (their newlines kept) and continued lines joined.

    :param text: C source (a header or a ``.c`` file)
    """

    def blank(match: re.Match[str]) -> str:
        token = match.group(0)
        if token.startswith(("/*", "//")):
            return "\n" * token.count("\n") or " "
        return token

    return _TOKENS.sub(blank, text).replace("\\\n", " ")


def object_like_defines(text: str) -> dict[str, str]:
    """Every object-like ``#define`` of ``text``: ``{name: replacement text}``.

    :param text: C source whose comments are already dropped (:func:`without_comments`)
    """
    return {m[1]: m[2] for m in _DEFINE.finditer(text)}


def _value(raw: str, defines: dict[str, str], depth: int = 0) -> str | int | None:
    """The string literal or integer ``raw`` stands for, following defines that name other defines."""
    raw = raw.strip()
    if m := _STRING.fullmatch(raw):
        return bytes(m[1], "utf-8").decode("unicode_escape")
    if m := _INTEGER.fullmatch(raw):
        return int(m[1], 0)
    if depth < 8 and _IDENTIFIER.fullmatch(raw) and raw in defines:
        return _value(defines[raw], defines, depth + 1)
    return None


def _constants(text: str, header: str, known: dict[str, str]) -> list[AbiConstant]:
    found = []
    for name, raw in object_like_defines(text).items():
        value = _value(raw, known)
        is_string = name.endswith("_COMPATIBLE") and isinstance(value, str)
        if is_string or (name.endswith("_VERSION") and isinstance(value, int)):
            found.append(AbiConstant(name, value, header, constant_subsystem(name, header)))
    return found


def parse_abi_header(
    text: str, header: str, known_defines: dict[str, str] | None = None
) -> tuple[list[AbiType], list[AbiConstant]]:
    """The types and constants one ABI header declares, in the order it declares them.

    :param text: the header's text
    :param header: its file name (``luo.h``), recorded in what is returned
    :param known_defines: object-like defines of other headers that this one's defines may refer to
    """
    code = without_comments(text)
    types: list[AbiType] = []
    for m in _DECLARATION.finditer(_LITERALS.sub('""', code)):
        found = AbiType(m[1], m[2], header)
        if found not in types:
            types.append(found)
    return types, _constants(code, header, {**(known_defines or {}), **object_like_defines(code)})


def read_abi_headers(source_tree: str | Path) -> AbiHeaders:
    """What the ABI headers of the kernel source tree ``source_tree`` declare (every ``*.h`` in
    ``include/linux/kho/abi``, in name order).

    :param source_tree: the top of a kernel source tree (the folder holding ``include/`` and ``kernel/``)
    :raises FileNotFoundError: the tree has no ``include/linux/kho/abi`` folder, or it holds no header
    """
    directory = Path(source_tree) / ABI_HEADER_DIR
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{source_tree} has no {ABI_HEADER_DIR}: give the source tree of a kernel with the KHO handover ABI "
            "headers (Linux 7.2 or later)"
        )
    paths = sorted(directory.glob("*.h"))
    if not paths:
        raise FileNotFoundError(f"{directory} holds no header (*.h)")
    texts = {p.name: without_comments(p.read_text(errors="replace")) for p in paths}
    known: dict[str, str] = {}
    for code in texts.values():
        known.update(object_like_defines(code))
    types: list[AbiType] = []
    constants: list[AbiConstant] = []
    for name, code in texts.items():
        header_types, header_constants = parse_abi_header(code, name, known)
        types += header_types
        constants += header_constants
    return AbiHeaders(directory, tuple(texts), tuple(types), tuple(constants))
