"""Proof against the real kernel: the ABI decoders and encoders checked on what Linux 7.2 itself wrote.

One lab cycle (module fixture) preserves 64 memfds of 2 MiB in a session with a 63-byte name and tokens that
include 0 and 2**64-1, and captures guest physical memory three times:

* ``ram-preserve``: in the pause after preserve (guest stopped through QMP for the copy);
* ``ram-kexec`` (+ an ELF vmcore of the same moment): the guest stopped by QEMU's gdbstub at ``machine_kexec``,
  after ``liveupdate_reboot()`` has serialized sessions and FLBs, before the jump (see
  :mod:`workbench.lab.capture`);
* ``ram-restore``: in the new kernel, in the pause after the agent retrieved the session.

The agent's own records are the reference: the tokens and session name it used, ``frames-before.npy``
(pagemap), ``frames-after.npy``, the debugfs FDTs, and the fill pattern of every page. drgn reads the kernel's
own variables from the ELF vmcore as a second, independent reference.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.abi import ElfVmcore, Handover, PhysicalMemory, RawRamFile, decode_fdt_blob, decode_handover
from workbench.abi.block import BLOCK_HEADER_SIZE, encode_block_list, entries_per_block, read_block_list
from workbench.abi.encoder_check import compare_with_encoders
from workbench.abi.fdt import decode_kho_fdt, find_kho_fdts, read_fdt_blob
from workbench.abi.luo import FILE_SER_SIZE, SESSION_SER_SIZE, LuoFile
from workbench.abi.memfd import MEMFD_LUO_FH_COMPATIBLE, decode_memfd
from workbench.abi.physmem import PAGE_SIZE
from workbench.elf import ElfFile
from workbench.lab.capture import KexecCapture, KexecSnapshot, gdbstub_qemu_args, short_socket_dir, snapshot_live

pytestmark = pytest.mark.lab

MEMFDS = 64  # 63 files fill a kho_block: the file list needs two blocks
MEMFD_SIZE = 2 << 20  # 512 order-0 folios: a folio array of two pages
SESSION = ("abi-proof-real-kernel-" + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJK")[:63]
TOKENS = [0, (1 << 64) - 1, 1 << 63] + [1000 + 37 * i for i in range(MEMFDS - 3)]
SEED = 7


@dataclass
class Proof:
    result: dict
    run_dir: Path
    vmlinux: Path
    release: str
    kexec: KexecSnapshot
    kexec_stopped_before_restore: bool
    frames_before: np.ndarray
    frames_after: np.ndarray
    kho_out: bytes
    kho_in: bytes
    preserve_mem: PhysicalMemory
    kexec_mem: PhysicalMemory
    kexec_elf: PhysicalMemory
    restore_mem: PhysicalMemory
    handover: Handover  # decoded strictly from kexec_mem


@pytest.fixture(scope="module")
def proof(lab_kernel, tmp_path_factory):
    from workbench.lab.cycle import run_cycle
    from workbench.lab.params import CycleParams
    from workbench.lab.qemu_target import QemuTarget
    from workbench.lab.workloads.memfd import MemfdWorkload
    from workbench.records import RecordStore

    assert len(SESSION.encode()) == 63 and len(set(TOKENS)) == MEMFDS
    store = RecordStore(tmp_path_factory.mktemp("abi-proof") / "data")
    sockets = short_socket_dir()
    gdb_socket = sockets / "gdb"
    state: dict = {}

    def on_pause(phase, vm):
        if phase == "preserve":
            snapshot_live(vm, vm.workdir / "ram-preserve")
            capture = KexecCapture(vm, lab_kernel.vmlinux, gdb_socket, vm.workdir / "ram-kexec", elf=True)
            capture.arm()
            state["capture"] = capture
        elif phase == "restore":
            state["kexec_done"] = state["capture"].done
            snapshot_live(vm, vm.workdir / "ram-restore", elf=vm.workdir / "ram-restore.elf")

    workload = MemfdWorkload(memfds=MEMFDS, memfd_size=MEMFD_SIZE, tokens=TOKENS, seed=SEED)
    target = QemuTarget(
        lab_kernel,
        ram_file=True,
        qemu_args=gdbstub_qemu_args(gdb_socket),
        # TCG on a loaded host: the IO-APIC timer check of a booting kernel can miss its ticks and panic.
        kernel_args="no_timer_check",
    )
    params = CycleParams(session=SESSION, pause_after=["preserve", "restore"])
    try:
        result = run_cycle(workload, params, target=target, store=store, on_pause=on_pause)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    snapshot = state["capture"].result(timeout=60)
    run_dir = Path(result["run_dir"])
    guest = run_dir / "guest"
    memory_mb = target.memory_for(workload)
    mems = {
        name: RawRamFile(run_dir / name, ram_size=memory_mb << 20)
        for name in ("ram-preserve", "ram-kexec", "ram-restore")
    }
    elf = ElfVmcore(snapshot.elf_path)
    proof = Proof(
        result=result,
        run_dir=run_dir,
        vmlinux=Path(lab_kernel.vmlinux),
        release=lab_kernel.release,
        kexec=snapshot,
        kexec_stopped_before_restore=state["kexec_done"],
        frames_before=np.load(guest / "frames-before.npy"),
        frames_after=np.load(guest / "frames-after.npy"),
        kho_out=(guest / "kho-out.fdt").read_bytes(),
        kho_in=(guest / "kho-in.fdt").read_bytes(),
        preserve_mem=mems["ram-preserve"],
        kexec_mem=mems["ram-kexec"],
        kexec_elf=elf,
        restore_mem=mems["ram-restore"],
        handover=decode_handover(mems["ram-kexec"]),
    )
    yield proof
    for mem in (*mems.values(), elf):
        mem.close()
    for name in ("guest-ram", "ram-preserve", "ram-kexec", "ram-kexec.elf", "ram-restore", "ram-restore.elf"):
        (run_dir / name).unlink(missing_ok=True)


# -- helpers -----------------------------------------------------------------------------------------------------
def _pages(mem: PhysicalMemory, pfns) -> np.ndarray:
    pfns = np.asarray(pfns, dtype=np.int64).reshape(-1)
    out = np.empty((pfns.size, PAGE_SIZE), dtype=np.uint8)
    for i, pfn in enumerate(pfns.tolist()):
        out[i] = np.frombuffer(mem.view(pfn * PAGE_SIZE, PAGE_SIZE), dtype=np.uint8)
    return out


def _pattern(memfd_index: int) -> np.ndarray:
    from workbench.lab.agent_core import fill_pattern

    buf = bytearray(MEMFD_SIZE)
    fill_pattern(buf, memfd_index, SEED)
    return np.frombuffer(bytes(buf), dtype=np.uint8).reshape(-1, PAGE_SIZE)


def _memfds_in_token_order(handover: Handover):
    return [handover.memfds[(SESSION, token)] for token in TOKENS]


def _orders(handover: Handover) -> dict[int, int]:
    pfns, orders = handover.memory_map.folios()
    return dict(zip(pfns.tolist(), orders.tolist(), strict=True))


# -- the cycle and the stop --------------------------------------------------------------------------------------
def test_the_cycle_verified_and_the_guest_stopped_at_machine_kexec(proof):
    assert proof.result["verified"] is True
    assert proof.result["pages_checked"] == MEMFDS * MEMFD_SIZE // PAGE_SIZE
    assert proof.result["session"] == SESSION
    snap = proof.kexec
    with ElfFile(proof.vmlinux) as vmlinux:
        symbols = vmlinux.symbols(["machine_kexec"])
    assert snap.function == "machine_kexec"
    assert snap.rip == snap.address == symbols["machine_kexec"] + snap.slide
    assert snap.slide % 0x200000 == 0
    assert snap.stop_reply.startswith("T05")
    # The capture was done (and the guest let go) before the new kernel's agent paused after restore.
    assert proof.kexec_stopped_before_restore


# -- step 1: the handover at the kexec ---------------------------------------------------------------------------
def test_the_session_and_every_token_decode_exactly(proof):
    h = proof.handover
    assert h.errors == []
    assert [s.name for s in h.luo.sessions] == [SESSION]
    (session,) = h.luo.sessions
    assert [f.token for f in session.files] == TOKENS  # in preservation order
    assert {f.compatible for f in session.files} == {MEMFD_LUO_FH_COMPATIBLE}
    assert session.file_count == MEMFDS
    assert h.luo.liveupdate_num == 1 and h.luo.flbs == [] and h.luo.flb_pgcnt == 1
    assert h.kexec_metadata.previous_release == proof.release and h.kexec_metadata.kexec_count == 1
    assert [s.name for s in h.fdt.subtrees] == ["LUO", "kexec-metadata"]  # libfdt puts a new node first
    assert list(h.memfds) == [(SESSION, t) for t in TOKENS]


def test_each_memfd_matches_what_the_agent_created(proof):
    h = proof.handover
    orders = _orders(h)
    assert proof.frames_before.shape == (MEMFDS, MEMFD_SIZE // PAGE_SIZE)
    assert np.all(proof.frames_before != 0)
    for i, memfd in enumerate(_memfds_in_token_order(h)):
        assert memfd.size == MEMFD_SIZE
        assert memfd.ser.pos == 0 and memfd.ser.flags == 0
        assert memfd.ser.seals == 0x1  # F_SEAL_SEAL: memfd_create without MFD_ALLOW_SEALING
        assert set(memfd.folios["flags"].tolist()) == {3}  # dirty | uptodate, always
        pages = memfd.file_pages(orders)
        np.testing.assert_array_equal(pages["page"].to_numpy(), np.arange(MEMFD_SIZE // PAGE_SIZE))
        np.testing.assert_array_equal(pages["pfn"].to_numpy(), proof.frames_before[i], err_msg=f"memfd {i}")


def test_every_memfd_folio_is_in_the_radix_tree_and_nothing_else_is(proof):
    h = proof.handover
    preserved = h.preserved()
    preserved_set = set(zip(preserved["pfn"].tolist(), preserved["order"].tolist(), strict=True))
    folios = h.memfd_folios()
    orders = _orders(h)
    memfd_folios = {(p, orders[p]) for p in folios["pfn"].tolist() if p in orders}
    assert len(memfd_folios) == len(folios) == MEMFDS * MEMFD_SIZE // PAGE_SIZE  # no folio missing from the tree
    assert memfd_folios <= preserved_set
    assert set(proof.frames_before.reshape(-1).tolist()) <= {p for p, _ in preserved_set}
    refs = h.referenced_pages()
    assert not refs["pfn"].duplicated().any()
    assert h.unpreserved_references().empty
    # Exactly the referenced pages are preserved: the memfd folios, and order-0 metadata pages.
    assert set(refs["pfn"].tolist()) == {p for p, _ in preserved_set}
    assert len(preserved) == len(refs)
    metadata = set(refs.loc[~refs["what"].str.endswith(" folio"), "pfn"].tolist())
    assert all(orders[p] == 0 for p in metadata)
    kinds = refs["what"].str.replace(r"memfd \S+ ", "memfd ", regex=True).value_counts().to_dict()
    # per memfd: its memfd_luo_ser page, one kho_vmalloc chunk, two folio array pages
    assert kinds == {
        "memfd folio": MEMFDS * MEMFD_SIZE // PAGE_SIZE,
        "memfd metadata": MEMFDS * 4,
        "LUO metadata": 1 + 1 + 1 + 2,  # luo_ser, FLB page, session block, two file blocks
        "KHO FDT": 1,
        "kexec-metadata": 1,
    }


def test_the_memfd_pages_hold_the_agents_data_at_the_kexec(proof):
    for i in range(MEMFDS):
        got = _pages(proof.kexec_mem, proof.frames_before[i])
        mismatched = np.flatnonzero((got != _pattern(i)).any(axis=1))
        assert mismatched.size == 0, f"memfd {i}: pages {mismatched[:10].tolist()} differ from the fill pattern"


def test_the_kernels_own_variables_agree_with_the_decoder(proof):
    drgn = pytest.importorskip("drgn")
    from drgn import cast
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.mm import compound_order, page_to_pfn, virt_to_phys
    from drgn.helpers.linux.xarray import xa_for_each

    prog = drgn.Program()
    prog.set_core_dump(str(proof.kexec.elf_path))
    prog.load_debug_info([str(proof.vmlinux)])
    h = proof.handover
    kho_out = prog["kho_out"]
    assert virt_to_phys(kho_out.fdt).value_() == h.fdt.phys
    assert virt_to_phys(kho_out.radix_tree.root).value_() == h.fdt.memory_map_phys
    luo_global = prog["luo_global"]
    assert virt_to_phys(luo_global.luo_ser_out).value_() == h.luo.phys
    assert luo_global.liveupdate_num.value_() + 1 == h.luo.liveupdate_num
    outgoing = prog["luo_session_global"].outgoing
    assert outgoing.block_set.head_pa.value_() == h.luo.sessions_pa
    sessions = list(list_for_each_entry("struct luo_session", outgoing.list.address_of_(), "list"))
    assert [s.name.string_().decode() for s in sessions] == [s.name for s in h.luo.sessions]
    for kernel_session, session in zip(sessions, h.luo.sessions, strict=True):
        file_set = kernel_session.file_set
        assert file_set.block_set.head_pa.value_() == session.files_phys
        assert file_set.count.value_() == session.file_count
        files = list(list_for_each_entry("struct luo_file", file_set.files_list.address_of_(), "list"))
        assert [(f.token.value_(), f.serialized_data.value_()) for f in files] == [
            (f.token, f.data) for f in session.files
        ]
        orders = _orders(h)
        for f, decoded in zip(files, session.files, strict=True):
            memfd = h.memfds[(session.name, decoded.token)]
            cache = [
                (int(index), page_to_pfn(cast("struct page *", entry)).value_(), entry)
                for index, entry in xa_for_each(f.file.f_inode.i_mapping.i_pages.address_of_())
            ]
            assert [(i, p) for i, p, _ in cache] == list(
                zip(memfd.folios["index"].tolist(), memfd.folios["pfn"].tolist(), strict=True)
            )
            kernel_orders = [compound_order(cast("struct page *", e)).value_() for _, _, e in cache]
            assert kernel_orders == [orders[p] for _, p, _ in cache]


def test_the_raw_ram_copy_and_the_elf_vmcore_decode_identically(proof):
    elf = decode_handover(proof.kexec_elf)
    raw = proof.handover
    assert elf.summary() == raw.summary()
    pd.testing.assert_frame_equal(elf.preserved(), raw.preserved())
    pd.testing.assert_frame_equal(elf.files(), raw.files())
    pd.testing.assert_frame_equal(elf.memfd_folios(), raw.memfd_folios())
    pfns = raw.referenced_pages()["pfn"].to_numpy()
    np.testing.assert_array_equal(_pages(proof.kexec_elf, pfns), _pages(proof.kexec_mem, pfns))


def test_before_the_kexec_only_the_session_and_file_lists_are_missing(proof):
    """What liveupdate_reboot() writes, exactly: the entries of the (already allocated and linked) session and
    file blocks, and luo_ser.sessions_pa. Every other page of the handover is final at PRESERVE_FD time."""
    h = proof.handover
    before = decode_handover(proof.preserve_mem, h.fdt.phys)
    assert before.errors == [] and before.luo.sessions == [] and before.luo.sessions_pa == 0
    assert before.fdt.blob == h.fdt.blob
    pd.testing.assert_frame_equal(before.preserved(), h.preserved())
    for f in h.luo.sessions[0].files:
        memfd = decode_memfd(proof.preserve_mem, f.data)
        assert memfd.ser == h.memfds[(SESSION, f.token)].ser
        pd.testing.assert_frame_equal(memfd.folios, h.memfds[(SESSION, f.token)].folios)

    tree = h.memory_map
    pages = set(h.referenced_pages()["pfn"].tolist())
    pages |= {int(p) // PAGE_SIZE for p in np.concatenate([tree.table_phys, tree.leaf_phys])}
    pages = sorted(pages)
    differ = (_pages(proof.preserve_mem, pages) != _pages(proof.kexec_mem, pages)).any(axis=1)
    changed = {p for p, d in zip(pages, differ.tolist(), strict=True) if d}
    block_pages = {p // PAGE_SIZE for p in h.luo.session_block_pages + h.luo.sessions[0].block_pages}
    assert changed == block_pages | {h.luo.phys // PAGE_SIZE}
    luo_before = proof.preserve_mem.read(h.luo.phys, PAGE_SIZE)
    luo_after = proof.kexec_mem.read(h.luo.phys, PAGE_SIZE)
    assert [i for i in range(PAGE_SIZE) if luo_before[i] != luo_after[i]] == [
        i for i in range(16, 24) if luo_after[i]
    ]  # only sessions_pa
    for phys in sorted(block_pages):
        page = proof.preserve_mem.read(phys * PAGE_SIZE, PAGE_SIZE)
        next_phys, count = struct.unpack_from("<QQ", page)
        assert count == 0 and not any(page[BLOCK_HEADER_SIZE:])  # allocated, linked, not yet filled
        assert next_phys == proof.kexec_mem.read_u64(phys * PAGE_SIZE)


def test_the_debugfs_out_fdt_is_a_prefix_of_the_fdt_in_memory(proof):
    h = proof.handover
    assert len(proof.kho_out) < h.fdt.totalsize
    assert h.fdt.blob.startswith(proof.kho_out)
    decoded = decode_fdt_blob(proof.kho_out, proof.preserve_mem)
    assert decoded.fdt.phys == h.fdt.phys and decoded.fdt.blob == h.fdt.blob


# -- step 2: the new kernel ---------------------------------------------------------------------------------------
def test_the_in_fdt_is_the_fdt_written_before_the_kexec(proof):
    h = proof.handover
    assert proof.kho_in == h.fdt.blob
    incoming = decode_kho_fdt(proof.kho_in)
    assert incoming.memory_map_phys == h.fdt.memory_map_phys
    assert [(s.name, s.data_phys, s.blob_size) for s in incoming.subtrees] == [
        (s.name, s.data_phys, s.blob_size) for s in h.fdt.subtrees
    ]
    assert incoming.subtree("LUO").data_phys == h.luo.phys
    assert incoming.subtree("kexec-metadata").data_phys == h.kexec_metadata.phys


def test_the_new_kernel_keeps_the_fdt_and_kexec_metadata_pages(proof):
    h = proof.handover
    assert read_fdt_blob(proof.restore_mem, h.fdt.phys) == h.fdt.blob
    meta = h.kexec_metadata.phys
    assert proof.restore_mem.read(meta, PAGE_SIZE) == proof.kexec_mem.read(meta, PAGE_SIZE)
    again = decode_fdt_blob(proof.kho_in, proof.restore_mem, h.fdt.phys, strict=False)
    assert again.kexec_metadata == h.kexec_metadata
    # What else of the old handover the new kernel still holds when the agent has retrieved the session (freed
    # pages may or may not have been reused: recorded, not asserted).
    refs = h.referenced_pages()
    refs = refs[~refs["what"].str.endswith(" folio")]
    kept = (_pages(proof.restore_mem, refs["pfn"]) == _pages(proof.kexec_mem, refs["pfn"])).all(axis=1)
    tree = h.memory_map
    nodes = np.concatenate([tree.table_phys, tree.leaf_phys]) // np.uint64(PAGE_SIZE)
    tree_kept = (_pages(proof.restore_mem, nodes) == _pages(proof.kexec_mem, nodes)).all(axis=1)
    kinds = refs["what"].str.replace(r"memfd \S+ ", "memfd ", regex=True)
    survival = {
        "metadata_pages_unchanged": refs.assign(kept=kept, kind=kinds)
        .groupby("kind")["kept"]
        .agg(["sum", "size"])
        .astype(int)
        .to_dict(orient="index"),
        "radix_nodes_unchanged": int(tree_kept.sum()),
        "radix_nodes": int(nodes.size),
        "decode_errors": [str(e) for e in again.errors],
    }
    (proof.run_dir / "new-kernel-survival.json").write_text(json.dumps(survival, indent=1, default=str))


def test_the_new_kernel_read_what_the_decoder_decoded(proof):
    """drgn on the new kernel (ELF vmcore of the pause after restore): its incoming KHO and LUO state, built from
    the handover, is what the decoder read from memory at the kexec."""
    drgn = pytest.importorskip("drgn")
    from drgn import cast
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.mm import page_to_pfn, virt_to_phys
    from drgn.helpers.linux.xarray import xa_for_each

    prog = drgn.Program()
    prog.set_core_dump(str(proof.run_dir / "ram-restore.elf"))
    prog.load_debug_info([str(proof.vmlinux)])
    h = proof.handover
    kho_in = prog["kho_in"]
    assert kho_in.fdt_phys.value_() == h.fdt.phys
    assert kho_in.kexec_count.value_() == h.kexec_metadata.kexec_count
    assert kho_in.previous_release.string_().decode() == h.kexec_metadata.previous_release
    assert prog["luo_global"].liveupdate_num.value_() == h.luo.liveupdate_num
    assert virt_to_phys(prog["luo_flb_global"].incoming.header_ser).value_() == h.luo.flbs_pa
    incoming = prog["luo_session_global"].incoming
    sessions = list(list_for_each_entry("struct luo_session", incoming.list.address_of_(), "list"))
    assert [s.name.string_().decode() for s in sessions] == [SESSION]
    assert bool(sessions[0].retrieved)
    files = list(list_for_each_entry("struct luo_file", sessions[0].file_set.files_list.address_of_(), "list"))
    assert [(f.token.value_(), f.serialized_data.value_()) for f in files] == [
        (f.token, f.data) for f in h.luo.sessions[0].files
    ]
    for i, f in enumerate(files):
        assert f.retrieve_status.value_() == 1  # retrieved successfully
        cache = list(xa_for_each(f.file.f_inode.i_mapping.i_pages.address_of_()))
        assert [int(index) for index, _ in cache] == list(range(MEMFD_SIZE // PAGE_SIZE))
        pfns = [page_to_pfn(cast("struct page *", entry)).value_() for _, entry in cache]
        np.testing.assert_array_equal(np.array(pfns, dtype=np.uint64), proof.frames_before[i])


def test_the_memfd_folios_are_restored_in_place(proof):
    np.testing.assert_array_equal(proof.frames_after, proof.frames_before)
    for i in range(MEMFDS):
        got = _pages(proof.restore_mem, proof.frames_before[i])
        mismatched = np.flatnonzero((got != _pattern(i)).any(axis=1))
        assert mismatched.size == 0, f"memfd {i}: pages {mismatched[:10].tolist()} differ after the kexec"


def test_the_new_kernels_own_handover_counts_up(proof):
    old = proof.handover.fdt.phys
    found = find_kho_fdts(proof.restore_mem)
    assert old in found and len(found) == 2
    (new_phys,) = [p for p in found if p != old]
    new = decode_handover(proof.restore_mem, new_phys)
    assert new.kexec_metadata.kexec_count == 2 and new.kexec_metadata.previous_release == proof.release
    assert new.luo.liveupdate_num == 2 and new.luo.sessions == [] and new.luo.sessions_pa == 0
    refs = new.referenced_pages()
    assert set(refs["what"]) == {"KHO FDT", "kexec-metadata", "LUO metadata"}
    assert set(new.preserved()["pfn"].tolist()) == set(refs["pfn"].tolist())
    assert new.memory_map.folio_count == len(refs) == 4  # FDT, kexec-metadata, luo_ser, FLB page


# -- step 3: the encoders against the kernel's bytes ---------------------------------------------------------------
def test_the_encoders_reproduce_every_page_the_kernel_wrote(proof):
    h = proof.handover
    report = compare_with_encoders(h, proof.kexec_mem)
    bad = report[report["differing_bytes"] != 0]
    assert bad.empty, bad.to_string()
    # Bytes differ only in the pages that hold addresses of other metadata pages, and only there.
    assert (report.loc[report["pointer_words"] == 0, "raw_differing_bytes"] == 0).all()
    assert (report["raw_differing_bytes"] <= 8 * report["pointer_words"]).all()
    counts = report["what"].str.replace(r" \(level \d\)", "", regex=True).value_counts().to_dict()
    tree = h.memory_map
    assert counts == {
        "radix table": int(tree.table_phys.size),
        "radix leaf": int(tree.leaf_phys.size),
        "memfd_luo_ser": MEMFDS,
        "kho_vmalloc chunk": MEMFDS,
        "memfd folio array page": 2 * MEMFDS,
        "LUO file block": 2,
        "LUO session block": 1,
        "luo_ser": 1,
        "LUO FLB page": 1,
        "kexec-metadata": 1,
        "KHO FDT": 1,
    }
    (proof.run_dir / "encoder-check.csv").write_text(report.to_csv(index=False))


def test_the_file_list_spans_two_blocks_as_the_encoder_lays_it_out(proof):
    from workbench.abi.alloc import PageAllocator
    from workbench.abi.physmem import BufferMemory

    session = proof.handover.luo.sessions[0]
    kernel_list = read_block_list(proof.kexec_mem, session.files_phys, FILE_SER_SIZE)
    per_block = entries_per_block(FILE_SER_SIZE)
    assert [b.count for b in kernel_list.blocks] == [per_block, MEMFDS - per_block]
    memory = BufferMemory(16 * PAGE_SIZE, base=1 << 40)
    encoded = encode_block_list(kernel_list.entries, FILE_SER_SIZE, PageAllocator(memory))
    assert [b.count for b in encoded.blocks] == [b.count for b in kernel_list.blocks]
    assert [LuoFile.unpack(e) for e in encoded.entries] == session.files
    sessions = read_block_list(proof.kexec_mem, proof.handover.luo.sessions_pa, SESSION_SER_SIZE)
    assert [b.count for b in sessions.blocks] == [1]


def test_an_encoded_handover_decodes_like_the_kernels(proof):
    from workbench.abi.alloc import PageAllocator
    from workbench.abi.handover import MemfdSpec, encode_handover
    from workbench.abi.physmem import BufferMemory

    h = proof.handover
    orders = _orders(h)
    specs = []
    for token in TOKENS:
        memfd = h.memfds[(SESSION, token)]
        pfns = memfd.folios["pfn"].to_numpy(dtype=np.uint64)
        specs.append(
            MemfdSpec(
                token,
                pfns,
                np.array([orders[int(p)] for p in pfns], dtype=np.uint8),
                memfd.folios["index"].to_numpy(dtype=np.uint64),
                memfd.size,
                memfd.ser.pos,
                memfd.ser.seals,
            )
        )
    # The decoder checks that every folio is in memory: the encoder's memory spans the guest's RAM (never
    # touched, so calloc'ed and free) and its metadata pages lie just above it.
    ram_end = max(r.phys_end for r in proof.kexec_mem.ranges)
    memory = BufferMemory(ram_end + 16 * (1 << 20), base=0)
    encoded = encode_handover(PageAllocator(memory, start=ram_end), {SESSION: specs}, release=proof.release)
    e = decode_handover(memory, encoded.fdt_phys)
    assert e.errors == [] and e.unpreserved_references().empty
    where = ("memory_map_pages", "moment_evidence")  # page counts and addresses that depend on the layout
    assert {k: v for k, v in e.summary().items() if not k.endswith("_phys") and k not in where} == {
        k: v for k, v in h.summary().items() if not k.endswith("_phys") and k not in where
    }
    pd.testing.assert_frame_equal(e.memfd_folios(), h.memfd_folios())
    assert e.files().drop(columns="data").equals(h.files().drop(columns="data"))
    assert e.preserved()["order"].value_counts().to_dict() == h.preserved()["order"].value_counts().to_dict()


def test_the_cli_decodes_the_capture(proof):
    from click.testing import CliRunner

    from workbench.cli.abi import abi

    out = CliRunner().invoke(abi, ["decode", "--ram", str(proof.kexec.path), "--json", "--check-encoders"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    labelled = {"role_reason", "fdt_choice"}  # what only the CLI, which looked at every FDT in memory, can say
    assert {k: v for k, v in data["summary"].items() if k not in labelled} == json.loads(
        json.dumps(proof.handover.summary())
    )
    assert data["summary"]["moment"] == "serialized" and data["summary"]["role"] == "outgoing"
    assert [f["token"] for f in data["files"]] == TOKENS
    assert data["encoders_identical"] is True
    assert data["unpreserved_references"] == []


def test_the_cli_tells_the_two_fdts_of_the_new_kernel_apart(proof):
    """The new kernel's RAM holds the handover it was given and its own: the kexec metadata says which is which,
    the incoming one is reported, and its consumed preserved-memory map raises no false alarms."""
    from click.testing import CliRunner

    from workbench.cli.abi import abi

    out = CliRunner().invoke(abi, ["decode", "--ram", str(proof.run_dir / "ram-restore"), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    summary = data["summary"]
    assert summary["fdt_phys"] == proof.handover.fdt.phys and summary["role"] == "incoming"
    assert "kexec count 1" in summary["role_reason"] and "kexec metadata" in summary["fdt_choice"]
    assert summary["memory_map_consumed"] is True and summary["unpreserved_check"].startswith("skipped")
    assert data["unpreserved_references"] == []
    assert summary["previous_release"] == proof.release and summary["kexec_count"] == 1
    roles = {h["role"]: h for h in data["handovers"]}
    assert set(roles) == {"incoming", "outgoing"}
    own = roles["outgoing"]["summary"]
    assert own["kexec_count"] == 2 and own["moment"] == "before_preserve" and own["sessions"] == []
    assert "only at reboot" in own["sessions_note"]


def test_before_the_kexec_the_decoder_says_why_there_are_no_sessions(proof):
    from click.testing import CliRunner

    from workbench.cli.abi import abi

    out = CliRunner().invoke(abi, ["decode", "--ram", str(proof.run_dir / "ram-preserve"), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)["summary"]
    assert summary["sessions"] == [] and summary["moment"] == "preserved"
    assert "only at reboot" in summary["sessions_note"] and "before serialization" in summary["sessions_note"]
