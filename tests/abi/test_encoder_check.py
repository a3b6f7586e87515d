"""The encoders compared with a handover's bytes: a handover they wrote themselves compares equal page by page
once addresses are translated; a byte changed afterwards shows up in its page and nowhere else."""

from __future__ import annotations

import numpy as np
import pytest

from tests.abi.helpers import area
from tests.abi.test_handover import memfd_spec
from workbench.abi import decode_handover
from workbench.abi.encoder_check import compare_with_encoders
from workbench.abi.handover import encode_handover
from workbench.abi.luo import LuoFlb


@pytest.fixture
def written():
    """A handover as a kernel leaves it at machine_kexec, written by the encoders at another place than the one
    compare_with_encoders uses, and decoded back."""
    mem, alloc = area(8192)
    sessions = {
        "vm0": [memfd_spec(alloc, 0x10, [0, 9, 0, 4]), memfd_spec(alloc, 0x11, [0] * 600)],
        "vm1": [memfd_spec(alloc, 0x20, [9])],
    }
    encoded = encode_handover(alloc, sessions, flbs=[LuoFlb("test-flb", 0x1234, 1)], release="7.2.13-lab")
    return mem, decode_handover(mem, encoded.fdt_phys)


def test_the_encoders_reproduce_their_own_handover(written):
    mem, handover = written
    report = compare_with_encoders(handover, mem)
    assert (report["differing_bytes"] == 0).all(), report.to_string()
    # pages that point at other metadata pages differ before translation, the others never
    assert (report.loc[report["pointer_words"] == 0, "raw_differing_bytes"] == 0).all()
    assert report.loc[report["what"] == "luo_ser", "raw_differing_bytes"].item() > 0
    counts = report["what"].str.replace(r" \(level \d\)", "", regex=True).value_counts().to_dict()
    assert counts["memfd_luo_ser"] == 3 and counts["kho_vmalloc chunk"] == 3 and counts["KHO FDT"] == 1
    assert counts["memfd folio array page"] == 1 + 3 + 1  # 4, 600 and 1 folios of 16 bytes
    assert report["kernel_phys"].dtype == np.uint64


def test_a_changed_byte_is_found_in_its_page(written):
    mem, handover = written
    at = handover.kexec_metadata.phys + 2000
    mem.write(at, bytes([mem.read(at, 1)[0] ^ 0xFF]))
    report = compare_with_encoders(handover, mem)
    differing = report[report["differing_bytes"] != 0]
    assert differing["what"].tolist() == ["kexec-metadata"] and differing["differing_bytes"].item() == 1


def test_the_handover_must_be_complete(written):
    mem, handover = written
    handover.luo = None
    with pytest.raises(ValueError, match="decoded completely"):
        compare_with_encoders(handover, mem)
