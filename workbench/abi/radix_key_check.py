"""Whether two kernels put a preserved folio at the same place in the KHO radix tree: each kernel's own radix-key
functions, taken from its own source tree and compiled with the system C compiler, run on the same (pfn, order)
pairs.

From each tree :func:`find_key_functions` takes the key encoder (``kho_radix_encode_key`` in 7.2,
``kho_encode_radix_key`` in 7.3: any function defined there whose name has ``radix``, ``encode`` and ``key``), the
decoder, the leaf-bitmap and table index functions, the ``kho_radix_consts`` enum and the defines they use, from
``kernel/liveupdate/kexec_handover.c`` and the ABI header. :func:`build_key_harness` puts them, unchanged, in a
small C program with the few kernel helpers they call (``fls64``, ``const_ilog2``, ``DIV_ROUND_UP``, ...) written
out for user space, and compiles it in a temporary folder. :func:`check_radix_keys` then compares, per pair, the
key, its path through the tree (the table index at every level and the bit in the leaf), and whether each kernel
decodes the key the other one wrote back to the same folio; the workbench's own encoder
(:func:`workbench.abi.radix.encode_key`) is compared too.

A kernel whose functions cannot be found or compiled makes the check ``impossible``, with the reason; nothing is
guessed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from workbench.abi.abi_headers import ABI_HEADER_DIR, without_comments
from workbench.abi.errors import AbiError
from workbench.abi.radix import encode_key

__all__ = [
    "KEY_SOURCES",
    "KeyHarnessUnavailable",
    "KeyFunctions",
    "KeyHarness",
    "RadixKeyCheck",
    "edge_pairs",
    "find_key_functions",
    "build_key_harness",
    "check_radix_keys",
]

#: Where the radix-key functions may live, relative to a kernel source tree, searched in this order.
KEY_SOURCES = (
    Path("kernel/liveupdate/kexec_handover.c"),
    Path("kernel/kexec_handover.c"),
    ABI_HEADER_DIR / "kexec_handover.h",
    Path("include/linux/kho_radix_tree.h"),
)

_ROLES = {
    "encoder": ("radix", "encode", "key"),
    "decoder": ("radix", "decode", "key"),
    "bitmap_index": ("radix", "bitmap_index"),
    "table_index": ("radix", "table_index"),
}
_FUNCTION = re.compile(
    r"^(?P<head>(?:static\s+)?(?:inline\s+)?(?:__\w+\s+)*(?P<ret>[A-Za-z_][\w \t*]*?))\s*\b(?P<name>[A-Za-z_]\w*)"
    r"\s*\((?P<params>[^()]*)\)\s*\{",
    re.MULTILINE,
)
_RADIX_ENUM = re.compile(r"\benum\s+(?P<name>\w*radix\w*)\s*\{")
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(?P<name>[A-Za-z_]\w*)(?P<rest>.*)$", re.MULTILINE)
_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*\b")

# What the harness provides in place of the kernel's headers; the kernel's own definitions of these are not used.
_PRELUDE = r"""
#include <stdint.h>
#include <stdio.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t s64;
typedef uint64_t phys_addr_t;
typedef _Bool bool;

#define PAGE_SHIFT {page_shift}
#define PAGE_SIZE (1UL << PAGE_SHIFT)
#define BITS_PER_BYTE 8
#define BITS_PER_LONG 64
#define BIT(n) (1UL << (n))
#define BIT_ULL(n) (1ULL << (n))
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define const_ilog2(n) (63 - __builtin_clzll((unsigned long long)(n)))
#define ilog2(n) const_ilog2(n)
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define PFN_PHYS(x) ((phys_addr_t)(x) << PAGE_SHIFT)
#define PHYS_PFN(x) ((unsigned long)((x) >> PAGE_SHIFT))
#define __always_inline inline
#define __init
#define __ref

static inline unsigned int fls64(u64 x) {{ return x ? 64 - __builtin_clzll(x) : 0; }}
static inline unsigned int fls(unsigned int x) {{ return x ? 32 - __builtin_clz(x) : 0; }}
static inline unsigned long __fls(unsigned long x) {{ return 63 - __builtin_clzl(x); }}
static inline unsigned long __ffs(unsigned long x) {{ return __builtin_ctzl(x); }}
"""
_PROVIDED = set(_IDENTIFIER.findall(_PRELUDE))

# The harness reads "E pfn order" (encode) and "D key" (decode) lines and answers each with one line.
_MAIN = r"""
int main(void)
{{
	char op;
	unsigned long long a, b;

{constants}
	while (scanf(" %c", &op) == 1) {{
		if (op == 'E') {{
			if (scanf("%llu %llu", &a, &b) != 2)
				return 2;
			unsigned long key = {encoder}({encoder_arg}, (unsigned int)b);
			printf("E %lu", key);
{path}
			printf("\n");
		}} else if (op == 'D') {{
			if (scanf("%llu", &a) != 1)
				return 2;
{decode}
		}} else {{
			return 2;
		}}
	}}
	return 0;
}}
"""


class KeyHarnessUnavailable(AbiError):
    """A kernel's radix-key functions cannot be found in its source tree, or the harness does not compile."""


@dataclass(frozen=True)
class KeyFunctions:
    """The radix-key code of one kernel source tree: ``functions`` (role → C function name; roles ``encoder``,
    ``decoder``, ``bitmap_index``, ``table_index``), ``files`` (role → file it came from, relative to the tree),
    ``code`` (the C text to compile: defines, the enum, the functions, in that order), ``enumerators`` (the names
    the ``kho_radix_consts`` enum defines), and how the encoder and decoder take and give a folio: ``encoder_takes``
    and ``decoder_gives`` (``phys`` or ``pfn``; ``None`` when there is no decoder)."""

    functions: dict[str, str]
    files: dict[str, str]
    code: str
    enumerators: tuple[str, ...]
    encoder_takes: str
    decoder_gives: str | None


def _matching_brace(code: str, opening: int) -> int:
    """The index just past the ``}`` that closes the ``{`` at ``opening``."""
    depth = 0
    for i in range(opening, len(code)):
        if code[i] == "{":
            depth += 1
        elif code[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced braces")


def _parameters(params: str) -> list[str]:
    return [p.strip() for p in params.split(",") if p.strip() and p.strip() != "void"]


def _folio_argument(declaration: str) -> str | None:
    """``phys`` or ``pfn``: what a parameter or return type declared as ``declaration`` holds."""
    if "phys" in declaration:
        return "phys"
    if "pfn" in declaration:
        return "pfn"
    return None


def _all_defines(code: str) -> dict[str, str]:
    """Every ``#define`` (object- and function-like) of ``code``: ``{name: the whole line}``."""
    return {m["name"]: m[0].strip() for m in _DEFINE.finditer(code)}


def _enumerators(body: str) -> list[str]:
    """The names an enum body (between its braces) defines."""
    names, depth, item = [], 0, []
    for ch in body + ",":
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            text = "".join(item).strip()
            if m := re.match(r"[A-Za-z_]\w*", text):
                names.append(m[0])
            item = []
        else:
            item.append(ch)
    return names


def find_key_functions(source_tree: str | Path) -> KeyFunctions:
    """The radix-key functions of the kernel source tree ``source_tree``, with the enum and defines they need.

    :param source_tree: the top of a kernel source tree
    :raises KeyHarnessUnavailable: no key encoder in :data:`KEY_SOURCES`, or one that takes neither a physical
        address nor a pfn
    """
    tree = Path(source_tree)
    texts = {rel: without_comments(p.read_text(errors="replace")) for rel in KEY_SOURCES if (p := tree / rel).is_file()}
    if not texts:
        raise KeyHarnessUnavailable(
            f"{tree} has none of {', '.join(map(str, KEY_SOURCES))}: not a kernel source tree with KHO"
        )
    functions: dict[str, str] = {}
    files: dict[str, str] = {}
    bodies: dict[str, str] = {}
    signatures: dict[str, tuple[str, list[str]]] = {}
    enum_code, enumerators = "", []
    defines: dict[str, str] = {}
    for rel, code in texts.items():
        for name, line in _all_defines(code).items():
            defines.setdefault(name, line)
        for m in _FUNCTION.finditer(code):
            for role, words in _ROLES.items():
                if role not in functions and all(w in m["name"] for w in words):
                    functions[role] = m["name"]
                    files[role] = str(rel)
                    bodies[role] = code[m.start() : _matching_brace(code, m.end() - 1)]
                    signatures[role] = (m["ret"], _parameters(m["params"]))
        if not enum_code and (m := _RADIX_ENUM.search(code)):
            end = _matching_brace(code, m.end() - 1)
            enum_code = code[m.start() : end] + ";"
            enumerators = _enumerators(code[m.end() : end - 1])
    if "encoder" not in functions:
        raise KeyHarnessUnavailable(
            f"no radix-key encoder (a static function named like kho_radix_encode_key) in {tree}'s "
            f"{', '.join(str(r) for r in texts)}"
        )
    _, encoder_params = signatures["encoder"]
    encoder_takes = _folio_argument(encoder_params[0]) if len(encoder_params) == 2 else None
    if encoder_takes is None:
        raise KeyHarnessUnavailable(
            f"{functions['encoder']}({', '.join(encoder_params)}) in {files['encoder']}: expected (phys or pfn, "
            "order); the harness would have to guess what it takes"
        )
    decoder_gives = None
    if "decoder" in functions:
        ret, params = signatures["decoder"]
        decoder_gives = _folio_argument(ret) if len(params) == 2 and "*" in params[1] else None
        if decoder_gives is None:
            del functions["decoder"], files["decoder"], bodies["decoder"]
    ordered_roles = [r for r in _ROLES if r in functions]
    code = "\n\n".join([enum_code, *(bodies[r] for r in ordered_roles)])
    needed = _needed_defines(code, defines)
    return KeyFunctions(
        functions,
        files,
        "\n".join(needed) + "\n\n" + code,
        tuple(enumerators),
        encoder_takes,
        decoder_gives,
    )


def _needed_defines(code: str, defines: dict[str, str]) -> list[str]:
    """The define lines ``code`` refers to, directly or through other defines, in an order that compiles."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(text: str) -> None:
        for name in _IDENTIFIER.findall(text):
            if name in defines and name not in seen and name not in _PROVIDED:
                seen.add(name)
                visit(defines[name].split(name, 1)[1])
                order.append(defines[name])

    visit(code)
    return order


@dataclass
class KeyHarness:
    """One kernel's radix-key functions compiled into ``program``; :meth:`encode` and :meth:`decode` run it.
    ``depth`` is the tree's depth (``KHO_TREE_MAX_DEPTH``) when the kernel defines it, ``constants`` the values of
    its ``kho_radix_consts`` as the compiler computed them."""

    functions: KeyFunctions
    program: Path
    constants: dict[str, int] = field(default_factory=dict)

    @property
    def depth(self) -> int | None:
        return self.constants.get("KHO_TREE_MAX_DEPTH")

    def _run(self, lines: Sequence[str]) -> list[list[str]]:
        try:
            done = subprocess.run(
                [str(self.program)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60
            )
        except subprocess.TimeoutExpired:
            raise KeyHarnessUnavailable(f"the radix-key harness {self.program} did not finish in 60 s") from None
        if done.returncode != 0:
            raise KeyHarnessUnavailable(f"the key harness {self.program} failed ({done.returncode}): {done.stderr}")
        return [line.split() for line in done.stdout.splitlines()]

    def encode(self, pairs: Sequence[tuple[int, int]]) -> list[tuple[int, tuple[int, ...]]]:
        """``(key, path)`` of every ``(pfn, order)``; ``path`` is the leaf bit and then the table index at levels
        1 and up, as far as the kernel's functions tell (empty when it has none)."""
        out = [row for row in self._run([f"E {pfn} {order}" for pfn, order in pairs]) if row[0] == "E"]
        if len(out) != len(pairs):
            raise KeyHarnessUnavailable(f"the key harness answered {len(out)} of {len(pairs)} pairs")
        return [(int(row[1]), tuple(int(x) for x in row[2:])) for row in out]

    def decode(self, keys: Sequence[int]) -> list[tuple[int, int]] | None:
        """``(pfn, order)`` the kernel decodes each key to, or ``None`` when it has no decoder."""
        if self.functions.decoder_gives is None:
            return None
        out = [row for row in self._run([f"D {key}" for key in keys]) if row[0] == "D"]
        if len(out) != len(keys):
            raise KeyHarnessUnavailable(f"the key harness decoded {len(out)} of {len(keys)} keys")
        page_shift = self.constants["PAGE_SHIFT"]
        return [
            ((int(where) >> page_shift) if self.functions.decoder_gives == "phys" else int(where), int(order))
            for _, where, order in out
        ]


def build_key_harness(
    source_tree: str | Path, workdir: str | Path, *, page_shift: int = 12, compiler: str = "cc"
) -> KeyHarness:
    """Compiles the radix-key functions of ``source_tree`` into a program in ``workdir``.

    :param source_tree: the top of a kernel source tree
    :param workdir: an existing folder for the C file and the program
    :param page_shift: the kernel's ``CONFIG_PAGE_SHIFT``
    :param compiler: the C compiler to run
    :raises KeyHarnessUnavailable: the functions cannot be found, there is no compiler, or it fails
    """
    functions = find_key_functions(source_tree)
    if shutil.which(compiler) is None:
        raise KeyHarnessUnavailable(f"no C compiler {compiler!r} on PATH to compile the kernel's key functions")
    names = functions.functions
    encoder_arg = "PFN_PHYS(a)" if functions.encoder_takes == "phys" else "(unsigned long)a"
    constants = "\n".join(
        f'\tprintf("C {name} %lld\\n", (long long){name});' for name in ("PAGE_SHIFT", *functions.enumerators)
    )
    path_lines = []
    if "bitmap_index" in names:
        path_lines.append(f'\t\t\tprintf(" %lu", (unsigned long){names["bitmap_index"]}(key));')
        if "table_index" in names and "KHO_TREE_MAX_DEPTH" in functions.enumerators:
            path_lines.append(
                "\t\t\tfor (unsigned int level = 1; level < KHO_TREE_MAX_DEPTH; level++)\n"
                f'\t\t\t\tprintf(" %lu", (unsigned long){names["table_index"]}(key, level));'
            )
    decode = '\t\t\tprintf("D 0 0\\n");'
    if "decoder" in names:
        decode = (
            "\t\t\tunsigned int order = 0;\n"
            f"\t\t\tunsigned long long where = {names['decoder']}((unsigned long)a, &order);\n"
            '\t\t\tprintf("D %llu %u\\n", where, order);'
        )
    source = "\n".join(
        [
            _PRELUDE.format(page_shift=page_shift),
            f"/* from {Path(source_tree)} */",
            functions.code,
            _MAIN.format(
                constants=constants,
                encoder=names["encoder"],
                encoder_arg=encoder_arg,
                path="\n".join(path_lines),
                decode=decode,
            ),
        ]
    )
    workdir = Path(workdir)
    c_file, program = workdir / "radix_key.c", workdir / "radix_key"
    c_file.write_text(source)
    try:
        done = subprocess.run(
            [compiler, "-std=gnu11", "-O1", "-Wno-unused-function", "-o", str(program), str(c_file)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired as exc:
        raise KeyHarnessUnavailable(f"the radix-key harness of {source_tree} did not finish: {exc}") from None
    except FileNotFoundError as exc:
        raise KeyHarnessUnavailable(f"no C compiler to build the radix-key harness: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise KeyHarnessUnavailable(
            f"the radix-key functions of {source_tree} ({', '.join(names.values())}) do not compile outside the "
            f"kernel with the harness's helpers: {tail}"
        )
    try:
        lines = subprocess.run([str(program)], input="", capture_output=True, text=True, timeout=60).stdout
    except subprocess.TimeoutExpired:
        raise KeyHarnessUnavailable(f"the radix-key harness {program} did not finish in 60 s") from None
    harness = KeyHarness(functions, program)
    harness.constants = {
        row[1]: int(row[2]) for line in lines.splitlines() if len(row := line.split()) >= 3 and row[0] == "C"
    }
    return harness


def edge_pairs(orders: Iterable[int] = range(19), max_pfn_bits: int = 52) -> list[tuple[int, int]]:
    """(pfn, order) pairs at the edges of the tree, for every order of ``orders``: the first folios, the last
    folio of the first leaf and the first of the second, the first folios past a table at levels 1 to 3, folios at
    1 GiB, 4 GiB and 1 TiB, and the highest folio a ``max_pfn_bits``-bit pfn reaches. Every pfn is aligned to its
    order."""
    pairs = []
    for order in orders:
        step = 1 << order
        multiples = [0, 1, 2, 3, (1 << 15) - 1, 1 << 15, (1 << 15) + 1, (1 << 24) - 1, 1 << 24, 1 << 33, 1 << 42]
        pfns = {m * step for m in multiples}
        pfns |= {(p >> order) << order for p in (0x40000, 0x100000, 0x10000000)}
        pfns.add((1 << max_pfn_bits) - step)
        pairs += [(pfn, order) for pfn in sorted(pfns) if pfn < 1 << max_pfn_bits]
    return pairs


@dataclass
class RadixKeyCheck:
    """The radix keys of two kernels compared on the same (pfn, order) pairs.

    ``status`` is ``same`` (every key, path and cross-decode agrees), ``differs`` or ``impossible`` (``reason``
    says why). ``keys_agree``, ``paths_agree`` and ``cross_decode_agrees`` are ``None`` when not checked (no
    path or decoder functions); ``workbench_agrees`` compares the workbench's encoder with kernel A's keys.
    ``mismatches`` lists the pairs where something differs, ``examples`` a few pairs of each order."""

    status: str
    pairs: int = 0
    orders: list[int] = field(default_factory=list)
    functions_a: dict[str, str] = field(default_factory=dict)
    functions_b: dict[str, str] = field(default_factory=dict)
    files_a: dict[str, str] = field(default_factory=dict)
    files_b: dict[str, str] = field(default_factory=dict)
    constants_a: dict[str, int] = field(default_factory=dict)
    constants_b: dict[str, int] = field(default_factory=dict)
    keys_agree: bool | None = None
    paths_agree: bool | None = None
    cross_decode_agrees: bool | None = None
    workbench_agrees: bool | None = None
    mismatches: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    reason: str | None = None

    def as_dict(self) -> dict:
        """Everything, as JSON-ready values."""
        return dict(self.__dict__)


def _harness(label: str, tree: Path, folder: Path, page_shift: int, compiler: str) -> KeyHarness:
    folder.mkdir()
    try:
        return build_key_harness(tree, folder, page_shift=page_shift, compiler=compiler)
    except KeyHarnessUnavailable as exc:
        raise KeyHarnessUnavailable(f"{label}: {exc}") from None


def check_radix_keys(
    source_a: str | os.PathLike[str],
    source_b: str | os.PathLike[str],
    *,
    names: tuple[str, str] = ("A", "B"),
    page_shifts: tuple[int, int] = (12, 12),
    pairs: Sequence[tuple[int, int]] | None = None,
    compiler: str = "cc",
) -> RadixKeyCheck:
    """Compiles both kernels' radix-key functions and compares what they make of the same (pfn, order) pairs.

    :param source_a: kernel A's source tree
    :param source_b: kernel B's source tree
    :param names: how reasons name the two kernels
    :param page_shifts: each kernel's ``CONFIG_PAGE_SHIFT``
    :param pairs: the pairs to compare (default: :func:`edge_pairs`)
    :param compiler: the C compiler
    """
    pairs = list(pairs) if pairs is not None else edge_pairs()
    with tempfile.TemporaryDirectory(prefix="workbench-radix-key-") as tmp:
        try:
            a = _harness(names[0], Path(source_a), Path(tmp) / "a", page_shifts[0], compiler)
            b = _harness(names[1], Path(source_b), Path(tmp) / "b", page_shifts[1], compiler)
            encoded_a, encoded_b = a.encode(pairs), b.encode(pairs)
            decoded_by_b = b.decode([key for key, _ in encoded_a])
            decoded_by_a = a.decode([key for key, _ in encoded_b])
        except KeyHarnessUnavailable as exc:
            return RadixKeyCheck("impossible", pairs=len(pairs), reason=str(exc))
    check = RadixKeyCheck(
        "same",
        pairs=len(pairs),
        orders=sorted({order for _, order in pairs}),
        functions_a=a.functions.functions,
        functions_b=b.functions.functions,
        files_a=a.functions.files,
        files_b=b.functions.files,
        constants_a=a.constants,
        constants_b=b.constants,
    )
    check.keys_agree = all(ka == kb for (ka, _), (kb, _) in zip(encoded_a, encoded_b, strict=True))
    with_paths = bool(encoded_a and encoded_a[0][1] and encoded_b[0][1])
    check.paths_agree = (
        all(pa == pb for (_, pa), (_, pb) in zip(encoded_a, encoded_b, strict=True)) if with_paths else None
    )
    if decoded_by_a is not None and decoded_by_b is not None:
        check.cross_decode_agrees = decoded_by_a == pairs and decoded_by_b == pairs
    try:
        check.workbench_agrees = all(
            encode_key(pfn, order) == key for (pfn, order), (key, _) in zip(pairs, encoded_a, strict=True)
        )
    except ValueError:  # a pair outside what the workbench's 7.2 encoder takes
        check.workbench_agrees = None
    seen_orders: set[int] = set()
    for i, ((pfn, order), (key_a, path_a), (key_b, path_b)) in enumerate(zip(pairs, encoded_a, encoded_b, strict=True)):
        row = {
            "pfn": pfn,
            "order": order,
            "key_a": key_a,
            "key_b": key_b,
            "path_a": list(path_a),
            "path_b": list(path_b),
        }
        if decoded_by_b is not None and decoded_by_a is not None:
            row["b_decodes_a"] = list(decoded_by_b[i])
            row["a_decodes_b"] = list(decoded_by_a[i])
        wrong_decode = "b_decodes_a" in row and (
            tuple(row["b_decodes_a"]) != (pfn, order) or tuple(row["a_decodes_b"]) != (pfn, order)
        )
        if key_a != key_b or (with_paths and path_a != path_b) or wrong_decode:
            check.mismatches.append(row)
        if pfn and order not in seen_orders and order in (0, 9, 18):
            seen_orders.add(order)
            check.examples.append(row)
    if check.mismatches:
        check.status = "differs"
    return check
