"""Whether one kernel can hand over to another, from the two kernels' own files: :func:`abi_diff` compares

* every struct, union and enum the handover ABI headers (``include/linux/kho/abi/*.h``) declare, as each kernel's
  ``vmlinux`` DWARF lays it out (:mod:`~workbench.inspect.struct_layout`): size, members, offsets, types;
* every compatible string and version those headers define (:mod:`~workbench.abi.abi_headers`), and whether the
  string is really in each ``vmlinux``'s read-only data (:func:`find_elf_strings`). A kernel writes and accepts
  the same string: the code that writes a format's name and the code that checks it use the one macro;
* the KHO radix-tree keys, from each kernel's own key functions compiled from its own tree
  (:mod:`~workbench.abi.radix_key_check`),

and gives a verdict: ``compatible`` when every compared layout, string and key agrees, ``incompatible`` with the
reasons (which subsystem, what differs) otherwise, ``undetermined`` when nothing differs but the keys could not be
compared. A type that no compiled code uses is not in DWARF: it is listed, not counted against compatibility.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import drgn

from workbench.abi.abi_headers import ABI_HEADER_DIR, AbiConstant, AbiHeaders, AbiType, read_abi_headers
from workbench.abi.radix_key_check import RadixKeyCheck, check_radix_keys
from workbench.elf import ElfFile
from workbench.inspect.struct_layout import TypeLayout, layout_differences, open_debug_file, type_layout
from workbench.lab.kernel import LabKernel

__all__ = [
    "KernelAbiSource",
    "TypeComparison",
    "ConstantComparison",
    "AbiDiff",
    "kernel_abi_source",
    "find_elf_strings",
    "compare_formats",
    "compare_types",
    "compare_constants",
    "abi_diff",
]

_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 0x1, 0x2, 0x4
_SHT_NOBITS = 8
_SHN_XINDEX = 0xFFFF


@dataclass(frozen=True)
class KernelAbiSource:
    """The files of one kernel that :func:`abi_diff` reads: ``vmlinux`` (with DWARF) and ``source`` (its source
    tree), with its ``name``, ``release`` and ``page_shift`` (``CONFIG_PAGE_SHIFT``)."""

    name: str
    release: str
    vmlinux: Path
    source: Path
    page_shift: int = 12

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "release": self.release,
            "vmlinux": str(self.vmlinux),
            "source": str(self.source),
            "page_shift": self.page_shift,
        }


def kernel_abi_source(kernel: LabKernel) -> KernelAbiSource:
    """The vmlinux and source tree of a lab kernel: a cached kernel keeps its tree in ``source/``; a prebuilt
    kernel's folder may be the build tree itself.

    :param kernel: a kernel from :func:`workbench.lab.kernel.resolve_kernel`
    :raises FileNotFoundError: no vmlinux, or no source tree with the ABI headers
    """
    if not kernel.vmlinux.is_file():
        raise FileNotFoundError(
            f"the kernel {kernel.name} has no vmlinux at {kernel.vmlinux}: abi diff reads its DWARF"
        )
    source = kernel.source_with(ABI_HEADER_DIR)
    if source is None:
        raise FileNotFoundError(
            f"the kernel {kernel.name} has no source tree with {ABI_HEADER_DIR} (looked in "
            f"{', '.join(map(str, kernel.source_candidates))}): abi diff reads each kernel's own headers; put its "
            f"source tree in {kernel.path / 'source'}"
        )
    page_shift = 12
    if kernel.config_file.is_file():
        page_shift = int(kernel.config.get("CONFIG_PAGE_SHIFT", "12"))
    return KernelAbiSource(kernel.name, kernel.release, kernel.vmlinux, source, page_shift)


def _section_names(elf: ElfFile, sections: list) -> list[str]:
    index = elf.header.shstrndx
    if index == _SHN_XINDEX:
        index = sections[0].link
    if not 0 < index < len(sections):
        return [""] * len(sections)
    table = sections[index]
    names = elf.read(table.offset, table.size, "the section name string table")
    return [names[s.name : names.find(b"\0", s.name)].decode("latin-1") for s in sections]


def _data_sections(elf: ElfFile) -> list[tuple[str, int, int]]:
    """``(name, offset, size)`` of the sections that hold data (allocated, with bytes in the file, not code, i.e.
    not executable unless writable):
    read-only data first (every ``.rodata*``, ``.init.rodata`` and other non-writable section; a vmlinux's
    ``.rodata`` is flagged writable because read-only-after-init data shares it), then writable data."""
    sections = elf.section_headers()
    readonly, writable = [], []
    for section, name in zip(sections, _section_names(elf, sections), strict=True):
        code = section.flags & _SHF_EXECINSTR and not section.flags & _SHF_WRITE  # a vmlinux's .data is WAX
        if not section.flags & _SHF_ALLOC or code:
            continue
        if section.type == _SHT_NOBITS or not section.size:
            continue
        if name.startswith((".rodata", ".init.rodata")) or not section.flags & _SHF_WRITE:
            readonly.append((name, section.offset, section.size))
        else:
            writable.append((name, section.offset, section.size))
    return readonly + writable


def find_elf_strings(path: str | os.PathLike[str], strings: list[str]) -> dict[str, str | None]:
    """Where each of ``strings`` is, NUL-terminated, in the data of the ELF file ``path``: the name of the first
    section holding it, or ``None``. Read-only data is searched first (a string literal is in ``.rodata``), then
    writable data: a compatible string that a struct embeds as a ``char`` array in a writable object, as a LUO
    file handler's ``compatible`` in memfd's ``memfd_luo_handler``, is in ``.data``. Code is not searched.

    :param path: a ``vmlinux`` or an object file
    :param strings: the strings to look for (ASCII)
    """
    found: dict[str, str | None] = dict.fromkeys(strings)
    with ElfFile(path) as elf:
        for name, offset, size in _data_sections(elf):
            if all(where is not None for where in found.values()):
                break
            data = elf.read(offset, size, f"section {name}")
            for text in strings:
                if found[text] is None and text.encode() + b"\0" in data:
                    found[text] = name
    return found


@dataclass
class TypeComparison:
    """One ABI type in two kernels. ``status``: ``same``, ``differs``, ``only in A``, ``only in B`` (declared by
    one kernel's headers only) or ``not in DWARF`` (declared by both, missing from ``in_dwarf_a``/``in_dwarf_b``'s
    debug info); ``breaking`` when the handover bytes would be read differently; ``changes`` says what differs,
    A's value → B's."""

    kind: str
    name: str
    header: str
    subsystem: str
    status: str
    breaking: bool
    in_dwarf_a: bool
    in_dwarf_b: bool
    layout_a: TypeLayout | None = None
    layout_b: TypeLayout | None = None
    changes: list[str] = field(default_factory=list)

    @property
    def c_name(self) -> str:
        return f"{self.kind} {self.name}"

    @property
    def size_a(self) -> int | None:
        return self.layout_a.size if self.layout_a is not None else None

    @property
    def size_b(self) -> int | None:
        return self.layout_b.size if self.layout_b is not None else None

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "header": self.header,
            "subsystem": self.subsystem,
            "status": self.status,
            "breaking": self.breaking,
            "size_a": self.size_a,
            "size_b": self.size_b,
            "in_dwarf_a": self.in_dwarf_a,
            "in_dwarf_b": self.in_dwarf_b,
            "changes": self.changes,
            "layout_a": self.layout_a.as_dict() if self.layout_a is not None else None,
            "layout_b": self.layout_b.as_dict() if self.layout_b is not None else None,
        }


@dataclass
class ConstantComparison:
    """One compatible string (or version) in two kernels: the value each kernel's headers define (``None``: not
    defined), and the ``.rodata`` section of its vmlinux the string was found in (``section_a``/``section_b``;
    ``None`` when not found, or for a number, which is not looked for). ``status``: ``same``, ``differs``,
    ``only in A``, ``only in B``; ``breaking`` when a handover between the two would be refused or lost."""

    subsystem: str
    macro: str
    header: str
    kind: str
    a: str | int | None
    b: str | int | None
    section_a: str | None
    section_b: str | None
    status: str
    breaking: bool
    problem: str | None = None

    def as_dict(self) -> dict[str, object]:
        out = dict(self.__dict__)
        if self.kind == "string":
            out["in_vmlinux_a"] = self.section_a is not None if self.a is not None else None
            out["in_vmlinux_b"] = self.section_b is not None if self.b is not None else None
        return out


@dataclass
class AbiDiff:
    """The comparison of two kernels' handover ABI (see :func:`abi_diff`)."""

    a: KernelAbiSource
    b: KernelAbiSource
    headers_a: tuple[str, ...]
    headers_b: tuple[str, ...]
    structs: list[TypeComparison]
    compatible_strings: list[ConstantComparison]
    radix_keys: RadixKeyCheck | None
    verdict: str
    reasons: list[str]
    notes: list[str]

    def as_dict(self) -> dict[str, object]:
        """The JSON form: ``a``, ``b``, ``structs``, ``compatible_strings``, ``radix_keys``, ``verdict``,
        ``reasons``, ``notes``."""
        return {
            "a": {**self.a.as_dict(), "headers": list(self.headers_a)},
            "b": {**self.b.as_dict(), "headers": list(self.headers_b)},
            "structs": [s.as_dict() for s in self.structs],
            "compatible_strings": [c.as_dict() for c in self.compatible_strings],
            "radix_keys": self.radix_keys.as_dict() if self.radix_keys is not None else None,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "notes": self.notes,
        }


def compare_types(
    headers_a: AbiHeaders,
    headers_b: AbiHeaders,
    prog_a: drgn.Program,
    prog_b: drgn.Program,
    names: tuple[str, str] = ("A", "B"),
) -> list[TypeComparison]:
    """Every type either kernel's ABI headers declare, compared in the two kernels' DWARF (A's order first).

    :param headers_a: kernel A's ABI headers
    :param headers_b: kernel B's
    :param prog_a: a ``drgn.Program`` with kernel A's debug info
        (:func:`~workbench.inspect.struct_layout.open_debug_file`)
    :param prog_b: the same for kernel B
    :param names: how the changes name the two kernels
    """
    declared: list[AbiType] = list(headers_a.types)
    declared += [t for t in headers_b.types if headers_a.type(t.kind, t.name) is None]
    out = []
    for t in declared:
        in_a = headers_a.type(t.kind, t.name) is not None
        in_b = headers_b.type(t.kind, t.name) is not None
        layout_a = type_layout(prog_a, t.kind, t.name) if in_a else None
        layout_b = type_layout(prog_b, t.kind, t.name) if in_b else None
        comparison = TypeComparison(
            t.kind, t.name, t.header, t.subsystem, "same", False, layout_a is not None, layout_b is not None
        )
        comparison.layout_a, comparison.layout_b = layout_a, layout_b
        if not in_b:
            comparison.status, comparison.breaking = "only in A", True
        elif not in_a:
            comparison.status, comparison.breaking = "only in B", True
        elif layout_a is None or layout_b is None:
            comparison.status = "not in DWARF"
        else:
            differences = layout_differences(layout_a, layout_b, names)
            if differences.changes:
                comparison.status = "differs"
                comparison.changes = list(differences.changes)
                comparison.breaking = differences.breaking
        out.append(comparison)
    return out


def _constant_comparison(
    ca: AbiConstant | None, cb: AbiConstant | None, section_a: str | None, section_b: str | None, names: tuple[str, str]
) -> ConstantComparison:
    first = ca if ca is not None else cb
    assert first is not None
    va = ca.value if ca is not None else None
    vb = cb.value if cb is not None else None
    c = ConstantComparison(
        first.subsystem, first.macro, first.header, first.kind, va, vb, section_a, section_b, "same", False
    )
    if ca is None or cb is None:
        c.status = "only in B" if ca is None else "only in A"
        c.breaking = True
        c.problem = f"only {names[1] if ca is None else names[0]} defines {first.macro}: the other has no such format"
    elif va != vb:
        c.status, c.breaking = "differs", True
        c.problem = f"{first.macro} is {va!r} in {names[0]} and {vb!r} in {names[1]}: each refuses the other's state"
    elif first.kind == "string" and (section_a is None) != (section_b is None):
        missing = names[0] if section_a is None else names[1]
        c.breaking = True
        c.problem = f"{va!r} is not in {missing}'s vmlinux: {first.subsystem} is not built into {missing}"
    return c


def compare_constants(
    headers_a: AbiHeaders,
    headers_b: AbiHeaders,
    in_vmlinux_a: dict[str, str | None],
    in_vmlinux_b: dict[str, str | None],
    names: tuple[str, str] = ("A", "B"),
) -> list[ConstantComparison]:
    """Every compatible string and version either kernel's ABI headers define, paired by macro name.

    :param headers_a: kernel A's ABI headers
    :param headers_b: kernel B's
    :param in_vmlinux_a: where each of A's strings is in A's vmlinux (:func:`find_elf_strings`)
    :param in_vmlinux_b: the same for B
    :param names: how problems name the two kernels
    """
    macros = [c.macro for c in headers_a.constants]
    macros += [c.macro for c in headers_b.constants if c.macro not in macros]
    out = []
    for macro in macros:
        ca, cb = headers_a.constant(macro), headers_b.constant(macro)
        section_a = in_vmlinux_a.get(ca.value) if ca is not None and isinstance(ca.value, str) else None
        section_b = in_vmlinux_b.get(cb.value) if cb is not None and isinstance(cb.value, str) else None
        out.append(_constant_comparison(ca, cb, section_a, section_b, names))
    return out


def _strings(headers: AbiHeaders) -> list[str]:
    return [c.value for c in headers.constants if isinstance(c.value, str)]


def compare_formats(
    a: KernelAbiSource,
    b: KernelAbiSource,
    headers_a: AbiHeaders,
    headers_b: AbiHeaders,
    names: tuple[str, str] = ("A", "B"),
) -> list[ConstantComparison]:
    """:func:`compare_constants` of two kernels, each compatible string looked up in its own vmlinux.

    :param a: kernel A's files (:func:`kernel_abi_source`)
    :param b: kernel B's
    :param headers_a: A's ABI headers (:func:`~workbench.abi.abi_headers.read_abi_headers` of ``a.source``)
    :param headers_b: B's
    :param names: how problems name the two kernels
    """
    return compare_constants(
        headers_a,
        headers_b,
        find_elf_strings(a.vmlinux, _strings(headers_a)),
        find_elf_strings(b.vmlinux, _strings(headers_b)),
        names,
    )


def _radix_findings(check: RadixKeyCheck, names: tuple[str, str]) -> tuple[list[str], list[str]]:
    """(reasons, notes) the radix key check gives."""
    if check.status == "impossible":
        return [], [f"KHO: the radix-tree keys were not compared: {check.reason}"]
    encoders = f"{names[0]}'s {check.functions_a['encoder']} and {names[1]}'s {check.functions_b['encoder']}"
    orders = f"orders {min(check.orders)}..{max(check.orders)}" if check.orders else "no orders"
    if check.status == "differs":
        first = check.mismatches[0]
        return [
            f"KHO: {encoders} disagree on {len(check.mismatches)} of {check.pairs} (pfn, order) pairs "
            f"(first: pfn {first['pfn']:#x}, order {first['order']}: key {first['key_a']:#x} vs {first['key_b']:#x})"
        ], []
    ca, cb = check.constants_a, check.constants_b
    constants = [f"{k} = {ca[k]} ({names[0]} only)" for k in ca if k not in cb]
    constants += [f"{k} = {cb[k]} ({names[1]} only)" for k in cb if k not in ca]
    constants += [f"{k} = {ca[k]} → {cb[k]}" for k in ca if k in cb and ca[k] != cb[k]]
    if check.functions_a != check.functions_b or constants:
        what = "; ".join([encoders, *constants])
        return [], [
            f"KHO: the radix-key code differs ({what}) but gives the same keys, tree paths and decodes for all "
            f"{check.pairs} (pfn, order) pairs ({orders})"
        ]
    return [], []


def abi_diff(
    a: KernelAbiSource,
    b: KernelAbiSource,
    *,
    radix_keys: bool = True,
    pairs: list[tuple[int, int]] | None = None,
    compiler: str = "cc",
) -> AbiDiff:
    """Compares the handover ABI of kernel ``a`` (the one handing over) and kernel ``b``.

    :param a: kernel A's files (:func:`kernel_abi_source`)
    :param b: kernel B's files
    :param radix_keys: compile and compare the radix-key functions (needs a C compiler)
    :param pairs: the (pfn, order) pairs for the key check (default:
        :func:`~workbench.abi.radix_key_check.edge_pairs`)
    :param compiler: the C compiler for the key check
    :raises FileNotFoundError: a source tree without ABI headers
    :raises DebugInfoNotFound: a vmlinux without DWARF
    """
    names = (a.name, b.name) if a.name != b.name else (f"A ({a.name})", f"B ({b.name})")
    headers_a, headers_b = read_abi_headers(a.source), read_abi_headers(b.source)
    structs = compare_types(headers_a, headers_b, open_debug_file(a.vmlinux), open_debug_file(b.vmlinux), names)
    strings = compare_formats(a, b, headers_a, headers_b, names)
    check = None
    if radix_keys:
        check = check_radix_keys(
            a.source, b.source, names=names, page_shifts=(a.page_shift, b.page_shift), pairs=pairs, compiler=compiler
        )
    reasons: list[str] = []
    notes: list[str] = []
    for s in structs:
        if s.status in ("only in A", "only in B"):
            who = names[0] if s.status == "only in A" else names[1]
            reasons.append(f"{s.subsystem}: {s.c_name} ({s.header}) is part of {who}'s handover ABI only")
        elif s.status == "not in DWARF":
            missing = " and ".join(n for n, have in zip(names, (s.in_dwarf_a, s.in_dwarf_b), strict=True) if not have)
            notes.append(f"{s.c_name} ({s.header}) is not in the DWARF of {missing}: no compiled code uses it")
        elif s.status == "differs" and s.breaking:
            reasons.append(f"{s.subsystem}: {s.c_name} differs: {'; '.join(s.changes)}")
        elif s.status == "differs":
            notes.append(f"{s.subsystem}: {s.c_name} differs in names only ({'; '.join(s.changes)}): same bytes")
    for c in strings:
        if c.breaking:
            reasons.append(f"{c.subsystem}: {c.problem}")
        elif c.kind == "string" and c.section_a is None and c.section_b is None:
            notes.append(f"{c.subsystem}: {c.a!r} is in neither vmlinux: not built into either kernel")
    if check is not None:
        radix_reasons, radix_notes = _radix_findings(check, names)
        reasons += radix_reasons
        notes += radix_notes
    if reasons:
        verdict = "incompatible"
    elif check is None or check.status == "impossible":
        verdict = "undetermined"
        reasons.append("the radix-tree keys were not compared" + (f": {check.reason}" if check else ""))
    else:
        verdict = "compatible"
    return AbiDiff(a, b, headers_a.headers, headers_b.headers, structs, strings, check, verdict, reasons, notes)
