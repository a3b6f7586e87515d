"""The layout of C types as a file's DWARF describes them, read with drgn, and what differs between two layouts.

:func:`open_debug_file` opens the debug info of any ELF file (a ``vmlinux``, an object file compiled with ``-g``)
with no kernel or process behind it: types are all that is read. :func:`type_layout` flattens a struct or union
into its members, nested members included with dotted paths (``folios.first.phys``), each with its offset in bits,
bit-field width, type and size; an enum into its enumerators. :func:`layout_differences` says what changed from
one layout to another, and whether the change moves or reinterprets bytes: a member renamed in place, or an
enumerator renamed, changes names only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import drgn

from workbench.inspect.errors import DebugInfoNotFound

__all__ = [
    "MemberLayout",
    "TypeLayout",
    "LayoutDifferences",
    "open_debug_file",
    "type_layout",
    "layout_differences",
]

_COMPOUND = (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION, drgn.TypeKind.CLASS)
_MAX_DEPTH = 8


@dataclass(frozen=True)
class MemberLayout:
    """One member of a flattened struct or union: ``path`` (``first.phys``; ``name[]`` for the elements of an
    array of structs), ``bit_offset`` from the start of the outermost type, ``bit_size`` (the width of a bit field,
    else ``None``), ``type`` as written (``u64``), ``canonical_type`` (typedefs and qualifiers removed, ``unsigned
    long long``; struct and pointer targets named by tag), ``size`` in bytes (``None`` for a flexible array) and
    ``shape``: what the type makes of its bytes without any name (``unsigned int``, ``pointer``, ``union``,
    ``unsigned long long [512]``)."""

    path: str
    bit_offset: int
    bit_size: int | None
    type: str
    canonical_type: str
    size: int | None
    shape: str

    @property
    def offset(self) -> float:
        """The offset in bytes (a fraction for a bit field that does not start on a byte)."""
        return self.bit_offset / 8 if self.bit_offset % 8 else self.bit_offset // 8

    def where(self) -> str:
        """``offset 8`` in bytes, or ``bit 52, 12 bits`` for a bit field."""
        if self.bit_size is not None:
            return f"bit {self.bit_offset}, {self.bit_size} bits"
        return f"offset {self.offset}"

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "offset": self.offset,
            "bit_offset": self.bit_offset,
            "bit_size": self.bit_size,
            "type": self.type,
            "canonical_type": self.canonical_type,
            "size": self.size,
            "shape": self.shape,
        }


@dataclass(frozen=True)
class TypeLayout:
    """A type as DWARF lays it out: ``kind`` (``struct``, ``union``, ``enum``), ``name``, ``size`` in bytes,
    ``members`` (flattened, for a struct or union) and ``enumerators`` (``(name, value)``, for an enum)."""

    kind: str
    name: str
    size: int | None
    members: tuple[MemberLayout, ...] = ()
    enumerators: tuple[tuple[str, int], ...] = ()

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "name": self.name, "size": self.size}
        if self.kind == "enum":
            out["enumerators"] = dict(self.enumerators)
        else:
            out["members"] = [m.as_dict() for m in self.members]
        return out


@dataclass(frozen=True)
class LayoutDifferences:
    """What differs from layout A to layout B: ``changes`` (one sentence each, A's value → B's) and ``breaking``
    (whether a byte would be read differently: a size, an offset, a width, a type or an enumerator's value; not a
    name alone)."""

    changes: tuple[str, ...]
    breaking: bool


def open_debug_file(path: str | os.PathLike[str]) -> drgn.Program:
    """A drgn program holding only the debug info (types) of the ELF file ``path``.

    :param path: an ELF file with DWARF: a ``vmlinux``, an object file or a shared library compiled with ``-g``
    :raises DebugInfoNotFound: the file does not exist, is not ELF, or has no DWARF
    """
    path = Path(path)
    if not path.is_file():
        raise DebugInfoNotFound(f"{path} does not exist", path)
    prog = drgn.Program()
    module = prog.extra_module(str(path), 0, create=True)
    module.try_file(str(path), force=True)
    if module.debug_file_status != drgn.ModuleFileStatus.HAVE:
        raise DebugInfoNotFound(
            f"{path} has no DWARF debug info drgn can read: build it with debug info (CONFIG_DEBUG_INFO for a "
            "kernel, -g for an object file)",
            path,
        )
    return prog


def _canonical(t: drgn.Type) -> str:
    t = t.unaliased().unqualified()
    if t.kind == drgn.TypeKind.ARRAY:
        length = "" if t.length is None else t.length
        return f"{_canonical(t.type)} [{length}]"
    if t.kind == drgn.TypeKind.POINTER:
        return f"{_canonical(t.type)} *"
    if t.kind in (*_COMPOUND, drgn.TypeKind.ENUM):
        return f"{t.kind.name.lower()} {t.tag or '<anonymous>'}"
    return t.type_name()


def _byte_shape(t: drgn.Type) -> str:
    """What a type makes of its bytes, without names: the canonical type with struct, union and enum tags and
    pointer targets dropped (their members are compared on their own)."""
    t = t.unaliased().unqualified()
    if t.kind == drgn.TypeKind.ARRAY:
        return f"{_byte_shape(t.type)} [{'' if t.length is None else t.length}]"
    if t.kind == drgn.TypeKind.POINTER:
        return "pointer"
    if t.kind in _COMPOUND:
        return t.kind.name.lower()
    if t.kind == drgn.TypeKind.ENUM:
        return f"enum {_byte_shape(t.type) if t.type is not None else ''}"
    return t.type_name()


def _size(t: drgn.Type) -> int | None:
    try:
        return drgn.sizeof(t)
    except TypeError:  # an incomplete type: a flexible array
        return None


def _flatten(t: drgn.Type, prefix: str, base: int, depth: int, out: list[MemberLayout]) -> None:
    for m in t.members:
        path = f"{prefix}{m.name}" if m.name is not None else prefix.rstrip(".")
        member_type = m.type
        bit_offset = base + m.bit_offset
        if m.name is not None:
            out.append(
                MemberLayout(
                    path,
                    bit_offset,
                    m.bit_field_size,
                    member_type.type_name(),
                    _canonical(member_type),
                    _size(member_type),
                    _byte_shape(member_type),
                )
            )
        inner = member_type.unaliased().unqualified()
        nested_prefix = f"{path}." if path else ""
        if depth >= _MAX_DEPTH:
            continue
        if inner.kind in _COMPOUND and inner.is_complete():
            _flatten(inner, nested_prefix, bit_offset, depth + 1, out)
        elif inner.kind == drgn.TypeKind.ARRAY:
            element = inner.type.unaliased().unqualified()
            if element.kind in _COMPOUND and element.is_complete():
                _flatten(element, f"{path}[].", bit_offset, depth + 1, out)


def type_layout(prog: drgn.Program, kind: str, name: str) -> TypeLayout | None:
    """The layout of ``kind name`` (``struct``, ``luo_ser``) in ``prog``'s debug info; ``None`` when the debug
    info has no complete definition of it (a type no compiled code uses is not in DWARF).

    :param prog: a program with debug info (:func:`open_debug_file`)
    :param kind: ``struct``, ``union`` or ``enum``
    :param name: the type's tag
    """
    try:
        t = prog.type(f"{kind} {name}")
    except LookupError:
        return None
    if not t.is_complete():
        return None
    if t.kind == drgn.TypeKind.ENUM:
        return TypeLayout(kind, name, _size(t), enumerators=tuple((e.name, e.value) for e in t.enumerators or ()))
    members: list[MemberLayout] = []
    _flatten(t, "", 0, 0, members)
    return TypeLayout(kind, name, _size(t), members=tuple(members))


def _enum_differences(a: TypeLayout, b: TypeLayout, names: tuple[str, str]) -> LayoutDifferences:
    values_a, values_b = dict(a.enumerators), dict(b.enumerators)
    changes, breaking = [], False
    if a.size != b.size:
        changes.append(f"size {a.size} → {b.size} bytes")
        breaking = True
    for name, value in a.enumerators:
        if name in values_b and values_b[name] != value:
            changes.append(f"{name} = {value} → {values_b[name]}")
            breaking = True
    only_a = [f"{n} = {v}" for n, v in a.enumerators if n not in values_b]
    only_b = [f"{n} = {v}" for n, v in b.enumerators if n not in values_a]
    if only_a:
        changes.append(f"only in {names[0]}: {', '.join(only_a)}")
    if only_b:
        changes.append(f"only in {names[1]}: {', '.join(only_b)}")
    return LayoutDifferences(tuple(changes), breaking)


def layout_differences(a: TypeLayout, b: TypeLayout, names: tuple[str, str] = ("A", "B")) -> LayoutDifferences:
    """What differs from layout ``a`` to layout ``b`` (two layouts of the same type, e.g. from two kernels).

    Members are matched by path. A member both have that moved, or changed width, size or (name-free) type, is
    ``breaking``; members that only one has are not, as long as the two layouts without names agree (a member
    renamed in place). An enum is ``breaking`` when an enumerator both define has another value, not when one
    defines a name the other lacks.

    :param a: the layout in kernel A
    :param b: the layout in kernel B
    :param names: how the changes name A and B
    """
    if a.kind == "enum" or b.kind == "enum":
        return _enum_differences(a, b, names)
    changes: list[str] = []
    breaking = a.size != b.size
    if breaking:
        changes.append(f"size {a.size} → {b.size} bytes")
    members_a = {m.path: m for m in a.members}
    members_b = {m.path: m for m in b.members}
    for path, ma in members_a.items():
        mb = members_b.get(path)
        if mb is None:
            changes.append(f"{path} only in {names[0]} ({ma.type}, {ma.where()})")
            continue
        if (ma.bit_offset, ma.bit_size) != (mb.bit_offset, mb.bit_size):
            changes.append(f"{path}: {ma.where()} → {mb.where()}")
            breaking = True
        if ma.canonical_type != mb.canonical_type:
            changes.append(f"{path}: type {ma.type} → {mb.type}")
        elif ma.size != mb.size:
            changes.append(f"{path}: size {ma.size} → {mb.size} bytes")
        breaking = breaking or (ma.shape, ma.size) != (mb.shape, mb.size)
    for path, mb in members_b.items():
        if path not in members_a:
            changes.append(f"{path} only in {names[1]} ({mb.type}, {mb.where()})")
    # Members on one side only: renamed in place if the name-free layouts still agree.
    shapes_a = sorted((m.bit_offset, m.bit_size or 0, m.size or 0, m.shape) for m in a.members)
    shapes_b = sorted((m.bit_offset, m.bit_size or 0, m.size or 0, m.shape) for m in b.members)
    return LayoutDifferences(tuple(changes), breaking or shapes_a != shapes_b)
