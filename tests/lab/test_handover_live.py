"""The live preflight: the formats the running kernel hands over, read from KHO's debugfs blobs, against what the
next kernel accepts. The lab test in tests/lab/test_negative_control.py runs it in a real target."""

import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.abi.fdt import encode_kho_fdt, parse_fdt
from workbench.lab.handover_live import (
    HandoverFormat,
    blob_compatible,
    fdt_root_compatible,
    live_preflight,
    read_handover_formats,
)

LUO_SER = b"luo-v5".ljust(16, b"\0") + struct.pack("<QQQ", 1, 0x1000, 0)
METADATA = struct.pack("<II", 1, 0) + b"\0" * 24


def debugfs(tmp_path, luo=LUO_SER):
    out = tmp_path / "out"
    (out / "sub_fdts").mkdir(parents=True)
    (out / "fdt").write_bytes(encode_kho_fdt(0x2000, [("LUO", 0x3000, len(luo))]))
    (out / "sub_fdts" / "LUO").write_bytes(luo)
    (out / "sub_fdts" / "kexec-metadata").write_bytes(METADATA)
    return out


def test_each_blob_names_its_format(tmp_path):
    formats = read_handover_formats(debugfs(tmp_path))
    assert formats == [
        HandoverFormat("KHO", "kho-v4", "fdt"),
        HandoverFormat("LUO", "luo-v5", "struct"),
        HandoverFormat("kexec-metadata", None, "struct"),
    ]


def test_a_format_the_next_kernel_does_not_accept_is_refused_by_subsystem(tmp_path):
    luo_neg = b"luo-neg".ljust(16, b"\0") + LUO_SER[16:]
    formats = read_handover_formats(debugfs(tmp_path, luo_neg))
    verdict = live_preflight(formats, ["kho-v4", "luo-v5", "memfd-v2"], "7.2")
    assert verdict["verdict"] == "refuse"
    assert verdict["reasons"] == ["LUO: the running kernel hands over 'luo-neg', which 7.2 does not accept"]
    assert verdict["unchecked"] == ["kexec-metadata"]
    assert live_preflight(formats, ["kho-v4", "luo-neg"])["verdict"] == "pass"


def test_no_debugfs_is_an_os_error(tmp_path):
    try:
        read_handover_formats(tmp_path / "missing")
    except OSError:
        pass
    else:
        raise AssertionError("a missing debugfs folder must raise OSError")


def test_a_damaged_fdt_has_no_compatible_rather_than_an_error():
    blob = bytearray(encode_kho_fdt(0x2000))
    blob[8:12] = b"\xff\xff\xff\xff"  # the structure block's offset, past the end
    assert blob_compatible(bytes(blob)) == (None, "fdt")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256), st.booleans())
def test_any_bytes_give_a_string_or_none_and_nothing_escapes(blob, as_fdt):
    data = (b"\xd0\x0d\xfe\xed" + blob) if as_fdt else blob
    compatible, kind = blob_compatible(data)
    assert kind in ("fdt", "struct")
    assert compatible is None or (0 < len(compatible) < 64 and compatible.isprintable())


def test_7_2_debugfs_shows_the_root_fdt_cut_short_and_it_is_listed_unchecked(tmp_path):
    """A real ``kho/out/fdt`` read in a 7.2 guest after LUO and kexec-metadata added their nodes: debugfs still
    has the size of the FDT before them, so the strings block (and the name ``compatible``) is cut off."""
    real = (Path(__file__).parent / "kho-out-7.2-debugfs.fdt").read_bytes()
    assert len(real) == 233 and b"kho-v4" in real
    out = tmp_path / "out"
    out.mkdir()
    (out / "fdt").write_bytes(real)
    (formats,) = read_handover_formats(out)
    assert formats.compatible is None and formats.note == "debugfs shows 233 of the FDT's 285 bytes"
    verdict = live_preflight([formats], ["kho-v4"])
    assert verdict["verdict"] == "pass" and verdict["unchecked"] == ["KHO (debugfs shows 233 of the FDT's 285 bytes)"]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_the_standard_library_reader_agrees_with_libfdt(data):
    name = data.draw(st.from_regex(r"[a-z][a-z0-9-]{2,20}", fullmatch=True))
    subtrees = data.draw(
        st.lists(
            st.tuples(st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.integers(0, 2**40), st.integers(0, 2**20)),
            max_size=3,
            unique_by=lambda t: t[0],
        )
    )
    blob = encode_kho_fdt(data.draw(st.integers(0, 2**40)), subtrees).replace(
        b"kho-v4", name.encode()[:6].ljust(6, b"x")
    )
    expected = parse_fdt(blob).strings("compatible")[0]
    assert fdt_root_compatible(blob) == expected
