"""Small drgn utilities shared by the inspection helpers (not part of the public API)."""

from __future__ import annotations

from typing import Any

import drgn
from drgn.helpers.linux.mm import pfn_to_page, phys_to_virt

from workbench.inspect.errors import MissingKernelSupport, UnsupportedLayout

PAGE_SIZE = 4096


def global_object(prog: drgn.Program, name: str, option: str) -> drgn.Object:
    """``prog[name]``, or :class:`MissingKernelSupport` naming the config option that provides it."""
    try:
        return prog.object(name)
    except LookupError:
        raise MissingKernelSupport(
            f"the kernel's debug info has no {name!r}: it was built without {option}",
            [option],
            [name],
        ) from None


def has_member(obj: drgn.Object, name: str) -> bool:
    """Whether the structure (or pointer to one) ``obj`` has a member ``name`` (nested names allowed)."""
    try:
        obj.member_(name)
    except LookupError:
        return False
    return True


def member(obj: drgn.Object, *names: str) -> drgn.Object:
    """The first of ``names`` that ``obj`` has; :class:`UnsupportedLayout` listing them when none exists."""
    for name in names:
        try:
            return obj.member_(name)
        except LookupError:
            continue
    raise UnsupportedLayout(f"{obj.type_} has none of the members {', '.join(names)}: unsupported kernel layout")


def c_string(obj: drgn.Object) -> str:
    """A ``char []`` or ``char *`` as ``str`` (undecodable bytes replaced)."""
    return obj.string_().decode("utf-8", "replace")


def direct_map_offset(prog: drgn.Program) -> int:
    """Virtual address of physical address 0 in the kernel's direct map."""
    cache = prog.cache
    key = "workbench.inspect.direct_map"
    if key not in cache:
        cache[key] = phys_to_virt(prog, 0).value_()
    return cache[key]


def read_phys(prog: drgn.Program, phys: int, size: int) -> bytes:
    """``size`` bytes at physical address ``phys``, read through the direct map (works on every target); a
    ``drgn.FaultError`` where there is no memory, also for an address (from damaged memory) past the address
    space."""
    address = direct_map_offset(prog) + phys
    if not 0 <= address < 1 << 64:
        raise drgn.FaultError(f"physical address {phys:#x} is outside the direct map", address % (1 << 64))
    return prog.read(address, size)


def virt_to_phys_direct(prog: drgn.Program, addr: int) -> int:
    """Physical address of a direct-map virtual address."""
    return addr - direct_map_offset(prog)


def page_geometry(prog: drgn.Program) -> tuple[int, int]:
    """(address of ``struct page`` of pfn 0, ``sizeof(struct page)``): pfn arithmetic without per-page calls."""
    key = "workbench.inspect.page_geometry"
    if key not in prog.cache:
        prog.cache[key] = (pfn_to_page(prog, 0).value_(), drgn.sizeof(prog.type("struct page")))
    return prog.cache[key]


def page_pfn(prog: drgn.Program, page_addr: int) -> int:
    """The pfn of the ``struct page`` (or ``struct folio``) at ``page_addr``."""
    base, size = page_geometry(prog)
    return (page_addr - base) // size


def constant(prog: drgn.Program, name: str, default: int) -> int:
    """An enumerator or macro constant the DWARF may hold, else ``default``."""
    try:
        return prog.constant(name).value_()
    except (LookupError, AttributeError):
        return default


def cached(prog: drgn.Program, key: str, compute: Any) -> Any:
    if key not in prog.cache:
        prog.cache[key] = compute()
    return prog.cache[key]
