"""``workbench abi``: the KHO/LUO handover decoded from raw guest physical memory, with no debug information."""

from __future__ import annotations

from pathlib import Path

import click

from workbench.cli.common import SIZE, json_option


def _address(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an address (use 0x... or a decimal number)") from None


class _AddressType(click.ParamType):
    name = "ADDR"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return _address(value)
        except click.BadParameter as exc:
            self.fail(str(exc.message), param, ctx)


ADDRESS = _AddressType()


@click.group("abi")
def abi() -> None:
    """The handover ABI (KHO FDT, preserved-memory radix tree, LUO, memfd): decoded from raw memory, compared
    between two kernels."""


@abi.command("decode")
@click.option("--ram", type=click.Path(exists=True, dir_okay=False), help="A QEMU RAM file (q35 layout) or a copy.")
@click.option("--ram-size", type=SIZE, help="Guest RAM size for --ram (default: the file's size).")
@click.option("--vmcore", type=click.Path(exists=True, dir_okay=False), help="An ELF vmcore (dump-guest-memory).")
@click.option("--fdt-phys", type=ADDRESS, help="Physical address of the KHO FDT (default: search memory for it).")
@click.option(
    "--fdt",
    "fdt_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Start from this FDT blob (debugfs kho/in/fdt or kho/out/fdt) instead of searching memory.",
)
@click.option("--no-memory-map", is_flag=True, help="Do not walk the preserved-memory radix tree.")
@click.option("--lenient", is_flag=True, help="Decode what can be decoded and list the errors (default: stop).")
@click.option(
    "--check-encoders", is_flag=True, help="Re-encode everything and compare with the bytes in memory (page by page)."
)
@json_option
def decode(ram, ram_size, vmcore, fdt_phys, fdt_file, no_memory_map, lenient, check_encoders, as_json) -> None:
    """Decodes the handover in a memory image: KHO FDT, preserved folios, LUO sessions and files, memfds.

    Every KHO FDT in memory is decoded and labelled from its kexec metadata (the running kernel's outgoing
    handover, the incoming one it was handed, older ones); the one reported is named with the reason. The summary
    says which moment of the live update the bytes show: a dump taken before the kexec reboot has no sessions yet
    (LUO serializes them in the reboot path), one taken at machine_kexec (workbench.lab.capture) has everything,
    and in the next kernel the incoming preserved-memory map was consumed at boot, so it is not checked against.
    """
    from workbench.abi import AbiError, AmbiguousHandover, ElfVmcore, RawRamFile, decode_fdt_blob
    from workbench.abi.handovers import decode_handovers, fdt_address
    from workbench.cli.output import emit_frame, emit_json, fail

    if (ram is None) == (vmcore is None):
        fail("give exactly one of --ram and --vmcore", 2)
    try:
        mem = RawRamFile(ram, ram_size=ram_size) if ram else ElfVmcore(vmcore)
    except (AbiError, OSError, ValueError) as exc:
        fail(f"cannot read {ram or vmcore}: {exc}")
    with mem:
        try:
            if fdt_file:
                blob = Path(fdt_file).read_bytes()
                if fdt_phys is None:  # the blob's own FDT in memory, which the others can be told apart from
                    fdt_phys = fdt_address(mem, blob)
                if fdt_phys is None:  # a cut-short blob (7.2's kho/out/fdt) names its complete FDT in memory
                    fdt_phys = decode_fdt_blob(blob, mem, memory_map=False, strict=False).fdt.phys
            if fdt_file and fdt_phys is None:
                handover = decode_fdt_blob(blob, mem, memory_map=not no_memory_map, strict=not lenient)
                handovers, why = [], "the FDT blob given (not found in memory)"
            else:
                found = decode_handovers(mem, fdt_phys, memory_map=not no_memory_map, strict=not lenient)
                handover, handovers, why = found.chosen, found.labelled(), found.why
        except AmbiguousHandover as exc:
            fail(f"{exc} with --fdt-phys")
        except AbiError as exc:
            fail(f"the handover cannot be decoded: {exc}")
        report = _report(handover)
        report["summary"]["fdt_choice"] = why
        encoders = None
        if check_encoders:
            from workbench.abi.encoder_check import compare_with_encoders

            try:
                encoders = compare_with_encoders(handover, mem)
            except (AbiError, ValueError) as exc:
                fail(f"cannot compare with the encoders: {exc}")
    if as_json:
        out = {k: (v.to_dict(orient="records") if hasattr(v, "to_dict") else v) for k, v in report.items()}
        out["handovers"] = handovers
        if encoders is not None:
            out["encoders"] = encoders.to_dict(orient="records")
            out["encoders_identical"] = bool((encoders["differing_bytes"] == 0).all())
        emit_json(out)
        return
    if len(handovers) > 1:
        click.echo(f"{len(handovers)} KHO FDTs in memory:")
        for h in handovers:
            mark = "*" if h["chosen"] else " "
            click.echo(f" {mark} {h['fdt_phys']:#x}: {h['role']} ({h['role_reason']}), moment {h['summary']['moment']}")
        click.echo("")
    for key, value in report["summary"].items():
        if key == "moment_evidence":
            click.echo(f"{key}:" + "".join(f"\n  - {line}" for line in value))
        else:
            click.echo(f"{key}: {_hex(key, value)}")
    for title in ("files", "memfds", "preserved_by_order", "unpreserved_references"):
        click.echo(f"\n{title.replace('_', ' ')}:")
        emit_frame(report[title])
    if encoders is not None:
        click.echo("\nencoders (after translating the addresses of metadata pages):")
        emit_frame(encoders)
        same = int((encoders["differing_bytes"] == 0).sum())
        click.echo(f"{same} of {len(encoders)} page(s) reproduced byte for byte")


def _hex(key: str, value):
    if isinstance(value, int) and (key.endswith("_phys") or key == "fdt_phys"):
        return f"{value:#x}"
    return value


def _report(handover) -> dict:
    import pandas as pd

    memfds = pd.DataFrame(
        [
            {
                "session": session,
                "token": token,
                "phys": m.phys,
                "size": m.size,
                "pos": m.ser.pos,
                "seals": m.ser.seals,
                "folios": m.ser.nr_folios,
                "array_pages": m.ser.folios.total_pages,
                "first_pfn": int(m.folios["pfn"].iat[0]) if len(m.folios) else None,
            }
            for (session, token), m in handover.memfds.items()
        ],
        columns=["session", "token", "phys", "size", "pos", "seals", "folios", "array_pages", "first_pfn"],
    )
    preserved = handover.preserved()
    by_order = (
        preserved.groupby("order").size().rename("folios").reset_index()
        if len(preserved)
        else pd.DataFrame(columns=["order", "folios"])
    )
    return {
        "summary": handover.summary(),
        "files": handover.files(),
        "memfds": memfds,
        "preserved_by_order": by_order,
        "unpreserved_references": handover.unpreserved_references(),
    }


@abi.command("diff")
@click.argument("kernel_a", metavar="A")
@click.argument("kernel_b", metavar="B")
@json_option
def diff(kernel_a, kernel_b, as_json) -> None:
    """Compares the handover ABI of kernel A (handing over) and kernel B (taking over), from their own files.

    A and B are kernel names (7.2, 7.3, 7.2+luo-compat-mismatch) or kernel folders. Compared: every struct, union
    and enum of include/linux/kho/abi/*.h as each vmlinux's DWARF lays it out; every compatible string and version
    those headers define, looked up in each vmlinux; and the KHO radix-tree key of the same (pfn, order) pairs, from
    each kernel's own key functions compiled with cc. The verdict is compatible, incompatible (with the reasons)
    or undetermined (the keys could not be compared).
    """
    from workbench.cli.output import emit_json, fail
    from workbench.inspect.abi_diff import abi_diff, kernel_abi_source
    from workbench.inspect.errors import InspectError
    from workbench.lab.errors import LabError
    from workbench.lab.kernel import resolve_kernel

    try:
        sources = [kernel_abi_source(resolve_kernel(name)) for name in (kernel_a, kernel_b)]
        result = abi_diff(*sources)
    except (LabError, InspectError, FileNotFoundError, ValueError) as exc:
        fail(f"abi diff {kernel_a} {kernel_b}: {exc}")
    if as_json:
        emit_json(result.as_dict())
        return
    _print_diff(result)


def _print_diff(result) -> None:
    import pandas as pd

    from workbench.cli.output import emit_frame

    for label, kernel, headers in (("A", result.a, result.headers_a), ("B", result.b, result.headers_b)):
        click.echo(f"{label}: {kernel.name} ({kernel.release}), {len(headers)} ABI headers in {kernel.source}")
    click.echo(f"\nstructs ({len(result.structs)} declared by include/linux/kho/abi/*.h):")
    structs = pd.DataFrame(
        [
            {
                "subsystem": s.subsystem,
                "type": s.c_name,
                "header": s.header,
                "size A": "-" if s.size_a is None else s.size_a,
                "size B": "-" if s.size_b is None else s.size_b,
                "status": s.status + (" (names only)" if s.status == "differs" and not s.breaking else ""),
            }
            for s in result.structs
        ]
    )
    emit_frame(structs)
    for s in result.structs:
        for change in s.changes:
            click.echo(f"  {s.c_name}: {change}")
    click.echo("\ncompatible strings and versions:")
    strings = pd.DataFrame(
        [
            {
                "subsystem": c.subsystem,
                "macro": c.macro,
                "A": "-" if c.a is None else c.a,
                "B": "-" if c.b is None else c.b,
                "in vmlinux A": c.section_a or ("-" if c.kind == "string" else "n/a"),
                "in vmlinux B": c.section_b or ("-" if c.kind == "string" else "n/a"),
                "status": c.status,
            }
            for c in result.compatible_strings
        ]
    )
    emit_frame(strings)
    click.echo(f"\nradix-tree keys: {_radix_summary(result.radix_keys)}")
    click.echo(f"\nverdict: {result.verdict}")
    for reason in result.reasons:
        click.echo(f"  - {reason}")
    if result.notes:
        click.echo("notes:")
        for note in result.notes:
            click.echo(f"  - {note}")


def _radix_summary(check) -> str:
    if check is None:
        return "not compared"
    if check.status == "impossible":
        return f"impossible: {check.reason}"
    facts = [f"{check.status} on {check.pairs} (pfn, order) pairs, orders {min(check.orders)}..{max(check.orders)}"]
    for value, agree, differ in (
        (check.keys_agree, "keys agree", "keys DIFFER"),
        (check.paths_agree, "tree paths agree", "tree paths DIFFER"),
        (check.cross_decode_agrees, "each decodes the other's keys", "a kernel MISDECODES the other's keys"),
        (check.workbench_agrees, "the workbench's encoder agrees with A", "the workbench's encoder DIFFERS from A"),
    ):
        if value is not None:
            facts.append(agree if value else differ)
    lines = ["; ".join(facts)]
    lines.append(
        f"  A: {check.functions_a['encoder']} ({check.files_a['encoder']}); "
        f"B: {check.functions_b['encoder']} ({check.files_b['encoder']})"
    )
    for row in check.examples:
        keys = f"{row['key_a']:#x}" if row["key_a"] == row["key_b"] else f"{row['key_a']:#x} / {row['key_b']:#x}"
        lines.append(f"  pfn {row['pfn']:#x}, order {row['order']}: key {keys}")
    for row in check.mismatches[:5]:
        lines.append(
            f"  differs: pfn {row['pfn']:#x}, order {row['order']}: A {row['key_a']:#x} path {row['path_a']}, "
            f"B {row['key_b']:#x} path {row['path_b']}"
        )
    return "\n".join(lines)
