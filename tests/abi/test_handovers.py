"""Several KHO FDTs in one memory image (the next kernel's RAM: the handover it was given and its own): labelled
from their kexec metadata, the right one chosen, the consumed map never checked against, a garbled FDT beside it
decoded leniently (the hostile-bytes tests are in tests/fuzz/abi/test_handovers.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.abi.helpers import area
from tests.abi.test_moment import SESSIONS_PA_OFFSET, one_memfd
from tests.abi.test_physmem import write_elf
from workbench.abi.errors import AbiError, AmbiguousHandover
from workbench.abi.handover import encode_handover
from workbench.abi.handovers import decode_handovers, fdt_roles
from workbench.abi.physmem import PAGE_SIZE


def next_kernel_ram(own_serialized: bool = False):
    """Memory as a next kernel holds it: the previous kernel's handover (kexec count 1, a session with a memfd),
    its radix tree overwritten (consumed, its pages reused), and the running kernel's own (count 2)."""
    mem, alloc = area(512)
    incoming = encode_handover(alloc, {"vm": [one_memfd(alloc, token=42, pages=8)]}, kexec_count=1)
    mem.write(incoming.memory_map_phys, b"\xff" * PAGE_SIZE)  # reused after boot: garbage as a radix tree
    sessions = {"next": [one_memfd(alloc, token=43)]} if own_serialized else {}
    outgoing = encode_handover(alloc, sessions, kexec_count=2, liveupdate_num=2)
    return mem, incoming, outgoing


def test_the_kexec_counts_say_which_fdt_is_which():
    mem, incoming, outgoing = next_kernel_ram()
    roles = {r.phys: r for r in fdt_roles(mem, [incoming.fdt_phys, outgoing.fdt_phys])}
    assert roles[incoming.fdt_phys].role == "incoming" and "previous kernel" in roles[incoming.fdt_phys].reason
    assert roles[outgoing.fdt_phys].role == "outgoing" and roles[outgoing.fdt_phys].kexec_count == 2


def test_in_the_next_kernel_the_incoming_handover_is_chosen_and_its_map_not_checked():
    mem, incoming, outgoing = next_kernel_ram()
    found = decode_handovers(mem)
    assert [h.fdt.phys for h in found.handovers] == sorted([incoming.fdt_phys, outgoing.fdt_phys])
    chosen = found.chosen
    assert chosen.fdt.phys == incoming.fdt_phys and chosen.role == "incoming" and "kexec metadata" in found.why
    assert chosen.memory_map is None and chosen.memory_map_consumed
    assert chosen.unpreserved_references().empty and len(chosen.referenced_pages()) > 8
    assert [s.name for s in chosen.luo.sessions] == ["vm"] and list(chosen.memfds) == [("vm", 42)]
    summary = chosen.summary()
    assert summary["moment"] == "next_kernel_pending" and not summary["moment_certain"]
    own = next(h for h in found.handovers if h.role == "outgoing")
    assert own.memory_map is not None and own.summary()["moment"] == "before_preserve"
    labelled = found.labelled()
    assert [entry["chosen"] for entry in labelled] == [h is chosen for h in found.handovers]
    json.dumps(labelled)


def test_a_serialized_outgoing_handover_is_the_one_reported():
    mem, _incoming, outgoing = next_kernel_ram(own_serialized=True)
    found = decode_handovers(mem)
    assert found.chosen.fdt.phys == outgoing.fdt_phys and found.chosen.summary()["moment"] == "serialized"
    assert "serialized" in found.why


def test_an_address_asked_for_wins_and_fdts_that_cannot_be_told_apart_are_refused():
    mem, incoming, outgoing = next_kernel_ram()
    assert decode_handovers(mem, outgoing.fdt_phys).chosen.fdt.phys == outgoing.fdt_phys
    mem.write(outgoing.kexec_metadata.phys + 4 + 65, (1).to_bytes(4, "little"))  # both now say kexec count 1
    with pytest.raises(AmbiguousHandover, match="does not say which"):
        decode_handovers(mem)


def test_the_cli_decodes_every_fdt_labelled(tmp_path):
    from workbench.cli.abi import abi

    mem, incoming, outgoing = next_kernel_ram()
    path = tmp_path / "vmcore"
    write_elf(path, [(mem.base, mem.read(mem.base, mem.size))])
    out = CliRunner().invoke(abi, ["decode", "--vmcore", str(path), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["summary"]["fdt_phys"] == incoming.fdt_phys and data["summary"]["role"] == "incoming"
    assert data["summary"]["memory_map_consumed"] is True and data["unpreserved_references"] == []
    assert data["summary"]["moment"] == "next_kernel_pending" and "kexec metadata" in data["summary"]["fdt_choice"]
    assert {h["role"] for h in data["handovers"]} == {"incoming", "outgoing"}
    assert [f["token"] for f in data["files"]] == [42]
    text = CliRunner().invoke(abi, ["decode", "--vmcore", str(path)])
    assert text.exit_code == 0, text.output
    assert "2 KHO FDTs in memory:" in text.output and "moment: next_kernel_pending" in text.output
    assert "unpreserved_check: skipped: the next kernel consumed" in text.output


def test_a_single_fdt_before_the_kexec_says_why_there_are_no_sessions(tmp_path):
    from workbench.cli.abi import abi

    mem, alloc = area(256)
    encoded = encode_handover(alloc, {"s": [one_memfd(alloc)]})
    mem.write(encoded.luo.phys + SESSIONS_PA_OFFSET, bytes(8))
    path = tmp_path / "vmcore"
    write_elf(path, [(mem.base, mem.read(mem.base, mem.size))])
    data = json.loads(CliRunner().invoke(abi, ["decode", "--vmcore", str(path), "--json"]).stdout)
    assert data["summary"]["moment"] == "preserved" and data["summary"]["sessions"] == []
    assert "only at reboot" in data["summary"]["sessions_note"] and len(data["handovers"]) == 1
    assert data["handovers"][0]["role"] == "outgoing"


def test_a_blob_given_is_found_in_memory_and_labelled(tmp_path):
    from workbench.abi.fdt import read_fdt_blob
    from workbench.abi.handovers import fdt_address
    from workbench.cli.abi import abi

    mem, incoming, _outgoing = next_kernel_ram()
    blob = read_fdt_blob(mem, incoming.fdt_phys)  # what debugfs kho/in/fdt shows
    assert fdt_address(mem, blob) == incoming.fdt_phys and fdt_address(mem, blob[:-1] + b"\x01") is None
    path, fdt = tmp_path / "vmcore", tmp_path / "kho-in.fdt"
    write_elf(path, [(mem.base, mem.read(mem.base, mem.size))])
    fdt.write_bytes(blob)
    out = CliRunner().invoke(abi, ["decode", "--vmcore", str(path), "--fdt", str(fdt), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)["summary"]
    assert summary["fdt_phys"] == incoming.fdt_phys and summary["role"] == "incoming"
    assert summary["fdt_choice"] == f"the FDT at {incoming.fdt_phys:#x} was asked for"


def ram_with_a_garbled_stale_fdt():
    """A handover whose kexec metadata and LUO state are garbage (a stale FDT from an earlier boot), then the
    running kernel's own, intact."""
    mem, alloc = area(256)
    stale = encode_handover(alloc, {"old": [one_memfd(alloc, token=5)]}, kexec_count=1)
    mem.write(stale.kexec_metadata.phys, b"\xff" * 4)  # no version: its role is unknown
    mem.write(stale.luo.phys, b"\xff" * 64)
    own = encode_handover(alloc, {"vm": [one_memfd(alloc, token=42)]}, kexec_count=2)
    return mem, stale, own


def test_a_garbled_fdt_beside_the_chosen_one_is_decoded_leniently_and_the_chosen_one_reported(tmp_path):
    from workbench.cli.abi import abi

    mem, stale, own = ram_with_a_garbled_stale_fdt()
    found = decode_handovers(mem, strict=True)
    assert (
        found.chosen.fdt.phys == own.fdt_phys
        and found.chosen.errors == []
        and list(found.chosen.memfds) == [("vm", 42)]
    )
    garbled = next(h for h in found.handovers if h.fdt.phys == stale.fdt_phys)
    assert garbled.role == "unknown" and garbled.luo is None and garbled.errors
    path = tmp_path / "vmcore"
    write_elf(path, [(mem.base, mem.read(mem.base, mem.size))])
    out = CliRunner().invoke(abi, ["decode", "--vmcore", str(path), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["summary"]["fdt_phys"] == own.fdt_phys and [f["token"] for f in data["files"]] == [42]
    entry = next(h for h in data["handovers"] if h["fdt_phys"] == stale.fdt_phys)
    assert entry["role"] == "unknown" and not entry["chosen"] and entry["summary"]["errors"]


def test_the_chosen_fdt_is_still_decoded_strictly():
    mem, stale, own = ram_with_a_garbled_stale_fdt()
    mem.write(own.luo.phys, b"\xff" * 64)
    with pytest.raises(AbiError, match=f"{own.luo.phys:#x}"):
        decode_handovers(mem, strict=True)
    found = decode_handovers(mem, strict=False)
    assert found.chosen.fdt.phys == own.fdt_phys and found.chosen.errors
    asked = decode_handovers(mem, stale.fdt_phys, strict=False)  # the stale one asked for: lenient only if asked so
    assert asked.chosen.fdt.phys == stale.fdt_phys
    with pytest.raises(AbiError):
        decode_handovers(mem, stale.fdt_phys, strict=True)


def test_an_outgoing_handover_whose_luo_state_is_garbage_does_not_stop_the_incoming_one():
    mem, incoming, outgoing = next_kernel_ram()
    mem.write(outgoing.luo.phys, b"\xff" * 64)
    found = decode_handovers(mem, strict=True)
    assert found.chosen.fdt.phys == incoming.fdt_phys and "no LUO state that decodes" in found.why
    own = next(h for h in found.handovers if h.role == "outgoing")
    assert own.luo is None and own.errors
