"""memfd helpers against the lab kernel: the folios the kernel holds are the frames the agent saw."""

from __future__ import annotations

import numpy as np
import pytest

from tests.inspect.conftest import MEMFD_SIZE, TOKENS
from workbench.inspect.memfd import decode_seals

lab = pytest.mark.lab


def test_seal_names():
    assert decode_seals(0) == []
    assert decode_seals(0x1 | 0x8) == ["SEAL", "WRITE"]
    assert decode_seals(0x41) == ["SEAL", "0x40"]


def _folio_pfns(folios, token):
    mine = folios[folios["token"] == token].sort_values("index")
    assert (mine["index"].to_numpy() == np.arange(len(mine))).all()
    return mine["pfn"].to_numpy(np.uint64), mine["order"].to_numpy()


@lab
def test_preserved_memfd_after_preserve(inspection):
    assert not inspection.errors, "\n".join(inspection.errors)
    snap = inspection.snapshots["preserve"]
    (memfd,) = snap.tables["memfds"].to_dict("records")
    assert memfd["direction"] == "outgoing" and memfd["token"] == TOKENS[0]
    assert memfd["size"] == MEMFD_SIZE == memfd["ser_size"]
    assert memfd["nrpages"] == memfd["folios"] == memfd["ser_nr_folios"] == MEMFD_SIZE // 4096
    assert memfd["seal_names"] == "SEAL"  # memfd_create without MFD_ALLOW_SEALING
    assert memfd["inode"] != 0


@lab
def test_page_cache_folios_are_exactly_the_frames_the_agent_saw(inspection):
    frames = np.load(inspection.run_dir / "guest" / "frames-before.npy")
    folios = inspection.snapshots["preserve"].tables["memfd_folios"]
    for i, token in enumerate(TOKENS):
        pfns, orders = _folio_pfns(folios, token)
        assert (orders == 0).all()  # shmem THP is off: one page per folio
        assert np.array_equal(pfns, frames[i].astype(np.uint64))


@lab
def test_serialized_folio_array_matches_the_page_cache(inspection):
    serialized = inspection.serialized_folios["preserve"]
    folios = inspection.snapshots["preserve"].tables["memfd_folios"]
    pfns, _ = _folio_pfns(folios, TOKENS[0])
    assert np.array_equal(serialized.sort_values("index")["pfn"].to_numpy(np.uint64), pfns)
    assert set(serialized["flags"]) == {3}  # MEMFD_LUO_FOLIO_DIRTY | MEMFD_LUO_FOLIO_UPTODATE


@lab
def test_restored_memfd_keeps_its_physical_pages(inspection):
    snap = inspection.snapshots["restore"]
    (memfd,) = snap.tables["memfds"].to_dict("records")
    assert memfd["direction"] == "incoming" and memfd["retrieved"] is True
    assert memfd["size"] == MEMFD_SIZE and memfd["folios"] == MEMFD_SIZE // 4096
    assert memfd["ser_phys"] is None  # memfd_luo_retrieve freed the serialized data
    before = np.load(inspection.run_dir / "guest" / "frames-before.npy")
    after = np.load(inspection.run_dir / "guest" / "frames-after.npy")
    pfns, _ = _folio_pfns(snap.tables["memfd_folios"], TOKENS[0])
    assert np.array_equal(pfns, after[0].astype(np.uint64))
    assert np.array_equal(pfns, before[0].astype(np.uint64))  # preserved in place across the kexec
