"""Small kernels for the ABI diff tests, written here: a source tree with handover ABI headers and a
``kernel/liveupdate/kexec_handover.c`` holding radix-key functions, and a "vmlinux" that is one C file including
those headers, compiled with ``cc -g -c`` so that its DWARF and data are real.

The headers model the shape of the handover ABI (a vmalloc descriptor with an anonymous union, a packed LUO
header, bit fields, an enum of radix constants) at a fraction of its size; every option below changes one thing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.lab.fake_kernel import fake_bzimage

__all__ = ["ENCODERS", "write_source_tree", "compile_vmlinux", "fake_abi_kernel"]

_HANDOVER_H = """\
/* fake kexec_handover.h; a comment with struct not_a_type { inside it */
#define KHO_FDT_COMPATIBLE "kho-v4"
#define KHO_NOT_A_FORMAT(x) "kho-" #x

struct kho_vmalloc_chunk;

struct kho_vmalloc {
	union {
		u64 phys;
		struct kho_vmalloc_chunk *ptr;
	} first;
	unsigned int total_pages;
	unsigned short flags;
	unsigned short order;
};

enum kho_radix_consts {
	{width_line}
	KHO_TABLE_SIZE_LOG2 = const_ilog2(PAGE_SIZE / sizeof(phys_addr_t)),
	KHO_BITMAP_SIZE_LOG2 = PAGE_SHIFT + const_ilog2(BITS_PER_BYTE),
	KHO_TREE_MAX_DEPTH = DIV_ROUND_UP({depth_term} - KHO_BITMAP_SIZE_LOG2, KHO_TABLE_SIZE_LOG2) + 1,
};

/* declared, used by no code: not in DWARF */
struct kho_radix_spare {
	u64 unused;
};
"""

_LUO_H = """\
#define LUO_ABI_COMPATIBLE "{luo}"
#define LUO_ABI_COMPAT_LEN 8

struct luo_ser {{
	char compatible[LUO_ABI_COMPAT_LEN];
	u64 liveupdate_num;
	u64 {sessions};
	u64 flbs_pa;
}} __packed;
"""

_MEMFD_H = """\
#define MEMFD_LUO_FH_COMPATIBLE	"memfd-v2"

struct memfd_luo_folio_ser {{
	u64 pfn:{pfn_bits};
	u64 flags:{flag_bits};
	u64 index;
}} __packed;

struct memfd_luo_ser {{
	u64 pos;
	u64 size;
	u32 seals;
	u32 flags;
	u64 nr_folios;
	struct kho_vmalloc folios;
}} __packed;
"""

_METADATA_H = """\
#define KHO_KEXEC_METADATA_VERSION 1
#define KHO_METADATA_LINK_VERSION KHO_KEXEC_METADATA_VERSION
"""

_EXTRA_H = """\
#define EXTRA_COMPATIBLE "extra-v1"

struct extra_ser {
	u64 payload;
};
"""

# The radix-key functions of each style; "none" has no encoder at all, "unbuildable" one that needs a macro the
# harness does not provide.
ENCODERS = {
    "7.2": """\
static unsigned long kho_radix_encode_key(phys_addr_t phys, unsigned int order)
{
	return (1UL << (KHO_ORDER_0_LOG2 - order)) | (phys >> (PAGE_SHIFT + order));
}

static phys_addr_t kho_radix_decode_key(unsigned long key, unsigned int *order)
{
	*order = KHO_ORDER_0_LOG2 + 1 - fls64(key);
	return key << (PAGE_SHIFT + *order);
}
""",
    "7.3": """\
static unsigned long kho_encode_radix_key(phys_addr_t phys, unsigned int order)
{
	unsigned long shift = PAGE_SHIFT + order;

	return (1UL << (64 - shift)) | (phys >> shift);
}

static phys_addr_t kho_decode_radix_key(unsigned long key, unsigned int *order)
{
	unsigned int top = fls64(key) - 1;

	*order = 64 - PAGE_SHIFT - top;
	return key << (PAGE_SHIFT + *order);
}
""",
    "shifted": """\
static unsigned long kho_radix_encode_key(phys_addr_t phys, unsigned int order)
{
	return (1UL << (KHO_ORDER_0_LOG2 - 1 - order)) | (phys >> (PAGE_SHIFT + order));
}
""",
    "unbuildable": """\
static unsigned long kho_radix_encode_key(phys_addr_t phys, unsigned int order)
{
	return KHO_MAGIC_FROM_ELSEWHERE(phys, order);
}
""",
    "none": "",
}

_INDEXES = """\
static unsigned long kho_radix_get_bitmap_index(unsigned long key)
{
	return key & ((1UL << KHO_BITMAP_SIZE_LOG2) - 1);
}

static unsigned long kho_radix_get_table_index(unsigned long key, unsigned int level)
{
	unsigned int shift = KHO_BITMAP_SIZE_LOG2 + (level - 1) * KHO_TABLE_SIZE_LOG2;

	return (key >> shift) & ((1UL << KHO_TABLE_SIZE_LOG2) - 1);
}
"""

_VMLINUX_C = """\
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned long long phys_addr_t;
#define __packed __attribute__((packed))
#define PAGE_SHIFT 12
#define PAGE_SIZE (1UL << PAGE_SHIFT)
#define BITS_PER_BYTE 8
#define const_ilog2(n) (63 - __builtin_clzll(n))
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

#include <linux/kho/abi/kexec_handover.h>
#include <linux/kho/abi/luo.h>
#include <linux/kho/abi/memfd.h>
{extra_include}

struct luo_ser luo_ser_out;
struct memfd_luo_ser memfd_out;
struct memfd_luo_folio_ser folio_out;
enum kho_radix_consts radix_consts_in_use;
{extra_use}
const char *const written_formats[] = {{ {strings} }};

/* a file handler embeds its compatible string, as memfd's does: in .data, not .rodata */
struct handler {{ char compatible[48]; }} memfd_handler = {{ MEMFD_LUO_FH_COMPATIBLE }};
"""


def write_source_tree(
    root: Path,
    *,
    encoder: str = "7.2",
    luo: str = "luo-v5",
    sessions_member: str = "sessions_pa",
    pfn_bits: int = 52,
    extra_header: bool = False,
) -> Path:
    """A kernel source tree at ``root`` with the fake ABI headers and radix-key functions of style ``encoder``
    (a key of :data:`ENCODERS`); ``luo`` is the LUO compatible string, ``sessions_member`` the name of
    ``luo_ser``'s third member, ``pfn_bits`` the width of ``memfd_luo_folio_ser.pfn`` (``flags`` takes the rest of
    64 bits), ``extra_header`` adds ``extra.h`` with a struct and a compatible string of its own."""
    abi = root / "include/linux/kho/abi"
    abi.mkdir(parents=True)
    width = "KHO_RADIX_KEY_WIDTH = 64 - PAGE_SHIFT + 1," if encoder == "7.3" else "KHO_ORDER_0_LOG2 = 64 - PAGE_SHIFT,"
    depth_term = "KHO_RADIX_KEY_WIDTH" if encoder == "7.3" else "(KHO_ORDER_0_LOG2 + 1)"
    (abi / "kexec_handover.h").write_text(
        _HANDOVER_H.replace("{width_line}", width).replace("{depth_term}", depth_term)
    )
    (abi / "luo.h").write_text(_LUO_H.format(luo=luo, sessions=sessions_member))
    (abi / "memfd.h").write_text(_MEMFD_H.format(pfn_bits=pfn_bits, flag_bits=64 - pfn_bits))
    (abi / "kexec_metadata.h").write_text(_METADATA_H)
    if extra_header:
        (abi / "extra.h").write_text(_EXTRA_H)
    c_file = root / "kernel/liveupdate/kexec_handover.c"
    c_file.parent.mkdir(parents=True)
    c_file.write_text(
        "// fake kexec_handover.c\n#include <linux/kho/abi/kexec_handover.h>\n\n" + ENCODERS[encoder] + "\n" + _INDEXES
    )
    return root


def compile_vmlinux(source: Path, out: Path) -> Path:
    """Compiles a C file using every ABI type of the tree ``source`` (but ``kho_radix_spare``) and its strings,
    with ``cc -g -c``, into ``out``."""
    extra = (source / "include/linux/kho/abi/extra.h").is_file()
    strings = ["KHO_FDT_COMPATIBLE", "LUO_ABI_COMPATIBLE", *(["EXTRA_COMPATIBLE"] if extra else [])]
    text = _VMLINUX_C.format(
        extra_include="#include <linux/kho/abi/extra.h>" if extra else "",
        extra_use="struct extra_ser extra_out;" if extra else "",
        strings=", ".join(strings),
    )
    c_file = out.with_suffix(".c")
    c_file.write_text(text)
    subprocess.run(["cc", "-g", "-c", f"-I{source / 'include'}", "-o", str(out), str(c_file)], check=True)
    return out


def fake_abi_kernel(folder: Path, release: str = "7.2.13-fake", **tree_options) -> Path:
    """A prebuilt kernel folder (``bzImage``, ``config``, ``vmlinux`` and ``source/``) that ``resolve_kernel``
    accepts by path; ``tree_options`` go to :func:`write_source_tree`."""
    source = write_source_tree(folder / "source", **tree_options)
    fake_bzimage(folder / "bzImage", release)
    (folder / "config").write_text("CONFIG_KEXEC_HANDOVER=y\nCONFIG_PAGE_SHIFT=12\n")
    compile_vmlinux(source, folder / "vmlinux")
    return folder
