"""A kernel program's debug info and what it records about itself: the vmlinux found (or given) for it, checked
against the kernel's VMCOREINFO by build id or release before drgn loads it; the KHO/LUO globals the inspection
helpers need (:func:`check_live_update_support`); and how the program was opened (:func:`program_info`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import drgn

from workbench.inspect.errors import DebugInfoNotFound, MissingKernelSupport, VmlinuxMismatch
from workbench.inspect.vmcoreinfo import vmcoreinfo
from workbench.inspect.vmlinux import elf_build_id, find_vmlinux, vmlinux_release

__all__ = ["REQUIREMENTS", "load_debug_info", "check_live_update_support", "program_info"]

#: What each kernel feature must provide (global symbols), and the config option that builds it.
REQUIREMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "kho": ("CONFIG_KEXEC_HANDOVER", ("kho_out", "kho_in", "kho_scratch", "kho_scratch_cnt")),
    "luo": ("CONFIG_LIVEUPDATE", ("luo_global", "luo_session_global", "luo_file_handler_list")),
    "memfd": ("CONFIG_LIVEUPDATE_MEMFD", ("memfd_luo_handler",)),
}

_SOURCE_KEY = "workbench.inspect.source"  # prog.cache key of program_info()


def _describe(prog: drgn.Program) -> str:
    info = prog.cache.get(_SOURCE_KEY, {})
    return info.get("description", "the kernel")


def _attach_debug_info(prog: drgn.Program, vmlinux: str | os.PathLike[str] | None, what: str) -> Path:
    """Loads the debug info of ``vmlinux`` (or of the one found by build id) into ``prog`` once it is known to be
    the kernel's; returns its path."""
    info = vmcoreinfo(prog)
    want_id = info.get("BUILD-ID") or None
    release = info.get("OSRELEASE") or None
    if vmlinux is None:
        found = find_vmlinux(want_id, release)
        if found is None:
            raise DebugInfoNotFound(
                f"no vmlinux with debug info found for {what} (release {release or 'unknown'}, build id "
                f"{want_id or 'unknown'}): pass --vmlinux (for the lab kernel: build_kernel().vmlinux, "
                "~/.cache/live-update-workbench/kernels/*/vmlinux) or install the kernel's debug package",
                None,
                want_id,
            )
        path = found
    else:
        path = Path(vmlinux)
        if not path.is_file():
            raise DebugInfoNotFound(f"vmlinux {path} does not exist", path, want_id)
    try:
        have_id = elf_build_id(path)
    except ValueError as exc:
        raise DebugInfoNotFound(f"{path} is not a vmlinux (not an ELF file): {exc}", path, want_id) from None
    if want_id and have_id and want_id != have_id:
        raise VmlinuxMismatch(
            f"{path} does not match {what}: its build id is {have_id} but the kernel's VMCOREINFO says "
            f"{want_id} (release {release or 'unknown'}). Use the vmlinux of that exact build (for a lab kernel: "
            "the one in ~/.cache/live-update-workbench/kernels/ whose build id matches, or omit --vmlinux to "
            "search for it)",
            path,
            want_id,
            have_id,
            release,
        )
    if not (want_id and have_id) and release:
        # no build ids to compare (an old kernel, a vmlinux without notes): compare the releases instead
        have_release = vmlinux_release(path)
        if have_release is not None and have_release != release:
            raise VmlinuxMismatch(
                f"{path} is release {have_release} but {what} is {release}: use the vmlinux of {release}",
                path,
                want_id,
                have_id,
                release,
            )
    prog.load_debug_info([str(path)])
    try:
        module = prog.main_module()
        status = module.debug_file_status
    except LookupError:
        status = None
    if status != drgn.ModuleFileStatus.HAVE:
        raise DebugInfoNotFound(
            f"{path} matches {what} but drgn found no DWARF debug info in it (stripped?): build the kernel with "
            "CONFIG_DEBUG_INFO_DWARF5 (or DWARF4) and use the unstripped vmlinux from the build tree",
            path,
            want_id,
        )
    return path


def check_live_update_support(prog: drgn.Program, require: Sequence[str] = ("kho", "luo")) -> None:
    """Raises :class:`MissingKernelSupport` unless the kernel's debug info has the globals of every feature in
    ``require`` (keys of :data:`REQUIREMENTS`: ``kho``, ``luo``, ``memfd``).

    :param prog: a Linux kernel program with debug info
    """
    options, missing = [], []
    for feature in require:
        option, symbols = REQUIREMENTS[feature]
        absent = [s for s in symbols if not _has_object(prog, s)]
        if absent:
            options.append(option)
            missing += absent
    if options:
        raise MissingKernelSupport(
            f"{_describe(prog)} was built without {' and '.join(options)} (its debug info has no "
            f"{', '.join(missing)}): inspect a kernel built with them, e.g. the lab kernel "
            "(`workbench kernel build`), or check that --vmlinux is that kernel's",
            options,
            missing,
        )


def _has_object(prog: drgn.Program, name: str) -> bool:
    try:
        prog.object(name)
    except LookupError:
        return False
    return True


def load_debug_info(
    prog: drgn.Program,
    vmlinux: str | os.PathLike[str] | None,
    what: str,
    source: dict[str, Any],
    require: Sequence[str],
) -> drgn.Program:
    """Finishes opening ``prog``: records ``source`` (how it was opened, see :func:`program_info`), loads the
    debug info of ``vmlinux`` (default: searched by the kernel's build id) after checking it is the kernel's, and
    checks the globals of ``require``.

    :param prog: a Linux kernel program without debug info
    :param vmlinux: the kernel's vmlinux, or ``None`` to search for it
    :param what: the kernel in messages, e.g. ``the running kernel``
    :param source: ``target``, ``path``, ``live``, ``notes``...: completed with ``vmlinux``, ``release``,
        ``build_id``
    :param require: features whose globals must exist (keys of :data:`REQUIREMENTS`)
    """
    source["description"] = what
    prog.cache[_SOURCE_KEY] = source
    source["vmlinux"] = str(_attach_debug_info(prog, vmlinux, what))
    info = vmcoreinfo(prog)
    source["release"] = info.get("OSRELEASE")
    source["build_id"] = info.get("BUILD-ID")
    if require:
        check_live_update_support(prog, require)
    return prog


def program_info(prog: drgn.Program) -> dict[str, Any]:
    """How ``prog`` was opened: ``target`` (``kcore``, ``qmp``, ``ram-file``, ``vmcore``), ``path``, ``live``,
    ``vmlinux``, ``release``, ``build_id`` and ``notes`` (e.g. why the QMP transport was not used)."""
    return dict(prog.cache.get(_SOURCE_KEY, {}))
