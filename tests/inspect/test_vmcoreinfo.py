"""VMCOREINFO: parsed from its text, found in raw guest RAM, and the running kernel's copy chosen when a kexec left
another one behind."""

from __future__ import annotations

import pytest

from tests.lab.fake_qemu import FakeQmp, short_socket_path
from workbench.abi.physmem import MemoryRange
from workbench.inspect import VmUnreachable
from workbench.inspect.vmcoreinfo import parse_vmcoreinfo, running_vmcoreinfo, vmcoreinfo_candidates
from workbench.lab.qmp import QMPClient

PAGE = 4096
UTS_NAME_OFFSET = 4  # OFFSET(uts_namespace.name) in these VMCOREINFOs


def vmcoreinfo_text(release: str, init_uts_ns: int, phys_base: int = 0) -> str:
    return (
        f"OSRELEASE={release}\nBUILD-ID=00112233\nPAGESIZE=4096\nKERNELOFFSET=0\n"
        f"SYMBOL(init_uts_ns)={init_uts_ns:x}\nNUMBER(phys_base)={phys_base:#x}\n"
        f"OFFSET(uts_namespace.name)={UTS_NAME_OFFSET}\n"
    )


def guest_ram(*texts: str, uts: dict[int, str] | None = None) -> bytearray:
    """64 pages of RAM: each VMCOREINFO text NUL-terminated at the start of page 1, 2, ...; ``uts`` puts a
    release where a struct uts_namespace's ``name.release`` is, for each physical address given."""
    ram = bytearray(64 * PAGE)
    for i, text in enumerate(texts, start=1):
        ram[i * PAGE : i * PAGE + len(text) + 1] = text.encode() + b"\0"
    for phys, release in (uts or {}).items():
        at = phys + UTS_NAME_OFFSET + 65
        ram[at : at + len(release)] = release.encode()
    return ram


def test_vmcoreinfo_parsing():
    info = parse_vmcoreinfo(b"OSRELEASE=7.2.13-lab\nBUILD-ID=abcd\nSYMBOL(init_uts_ns)=ffffffff81e5dec0\n\0junk")
    assert info == {"OSRELEASE": "7.2.13-lab", "BUILD-ID": "abcd", "SYMBOL(init_uts_ns)": "ffffffff81e5dec0"}
    assert parse_vmcoreinfo("A=1\nnot a pair\n B = 2 \n") == {"A": "1", "B": "2"}


def test_candidates_are_the_complete_distinct_copies_in_address_order():
    first, second = vmcoreinfo_text("7.2.13-a", 0xFFFFFFFF82000000), vmcoreinfo_text("7.2.13-b", 0xFFFFFFFF84000000)
    ram = guest_ram(first, "OSRELEASE=7.2.13-c\nPAGESIZE=4096\n", second, first)  # a partial one, a repeat
    assert vmcoreinfo_candidates(bytes(ram)) == [first, second]
    assert vmcoreinfo_candidates(bytes(ram), limit=1) == [first]
    assert vmcoreinfo_candidates(bytes(64)) == []


def test_one_candidate_is_taken():
    text = vmcoreinfo_text("7.2.13", 0xFFFFFFFF82000000)
    assert running_vmcoreinfo([text], None, b"", []) == (text, "one VMCOREINFO in guest RAM")


def test_without_qmp_the_copy_whose_utsname_holds_its_release():
    # init_uts_ns of the running kernel at physical 0x30000 (phys_base 0x30000), of the old one at 0x20000 where
    # the running kernel has since written something else
    old = vmcoreinfo_text("7.2.12", 0xFFFFFFFF80000000, phys_base=0x20000)
    new = vmcoreinfo_text("7.2.13", 0xFFFFFFFF80000000, phys_base=0x30000)
    ram = guest_ram(old, new, uts={0x20000: "garbage", 0x30000: "7.2.13"})
    text, why = running_vmcoreinfo([old, new], None, bytes(ram), [MemoryRange(0, len(ram), 0)])
    assert text == new and "2 VMCOREINFO copies in guest RAM, 1 plausible" in why


def test_no_consistent_copy():
    old = vmcoreinfo_text("7.2.12", 0xFFFFFFFF80000000, phys_base=0x20000)
    new = vmcoreinfo_text("7.2.13", 0xFFFFFFFF80000000, phys_base=0x30000)
    ram = guest_ram(old, new)
    with pytest.raises(VmUnreachable, match="2 VMCOREINFO copies in guest RAM and none is consistent"):
        running_vmcoreinfo([old, new], None, bytes(ram), [MemoryRange(0, len(ram), 0)])


def test_with_qmp_the_copy_the_cpu_maps():
    old = vmcoreinfo_text("7.2.12", 0xFFFFFFFF81000000)
    new = vmcoreinfo_text("7.2.13", 0xFFFFFFFF83000000)

    def gva2gpa(args: dict) -> str:
        return "gpa: 0x3000000\r\n" if args["command-line"] == "gva2gpa 0xffffffff83000000" else "Unmapped\r\n"

    path = short_socket_path("qmp")
    with FakeQmp(path, {"human-monitor-command": gva2gpa}) as qemu, QMPClient(path, timeout=5) as qmp:
        text, why = running_vmcoreinfo([old, new], qmp, b"", [])
    assert text == new and "chose the one the CPU maps" in why
    assert qemu.commands == ["qmp_capabilities", "human-monitor-command", "human-monitor-command"]


def test_a_monitor_that_refuses_gva2gpa_falls_back_to_the_utsname():
    old = vmcoreinfo_text("7.2.12", 0xFFFFFFFF80000000, phys_base=0x20000)
    new = vmcoreinfo_text("7.2.13", 0xFFFFFFFF80000000, phys_base=0x30000)
    ram = guest_ram(old, new, uts={0x30000: "7.2.13"})
    path = short_socket_path("qmp")
    with FakeQmp(path), QMPClient(path, timeout=5) as qmp:  # every human-monitor-command fails
        text, _ = running_vmcoreinfo([old, new], qmp, bytes(ram), [MemoryRange(0, len(ram), 0)])
    assert text == new
