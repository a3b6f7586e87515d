"""Building a kernel's own liveupdate selftests (:mod:`workbench.lab.selftests`): from small trees shaped like a
kernel's (a top Makefile with ``headers_install``, the selftest framework's ``lib.mk``, the liveupdate Makefile),
built with the real ``make`` and ``gcc``; and, marked ``lab``, from the cached 7.2 and 7.3 trees."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.lab.fake_kernel import fake_cached_kernel, fake_source_tree
from workbench.lab.errors import SelftestBuildError
from workbench.lab.kernel import LabKernel
from workbench.lab.selftests import (
    FAILED_LOG,
    KEXEC_SELFTESTS,
    MANIFEST,
    build_selftests,
    cached_selftests,
    compiler_version,
    kexec_programs,
    selftest_source,
    selftests_key,
)

TOP_MAKEFILE = """VERSION = 7
PATCHLEVEL = 2
SUBLEVEL = 13
EXTRAVERSION =

headers_install:
\tmkdir -p $(INSTALL_HDR_PATH)/include/linux
\tcp $(CURDIR)/include/uapi/linux/liveupdate.h $(INSTALL_HDR_PATH)/include/linux/
"""
LIB_MK = """TEST_GEN_PROGS_EXTENDED := $(patsubst %,$(OUTPUT)/%,$(TEST_GEN_PROGS_EXTENDED))
$(OUTPUT)/%: %.c
\t$(CC) $(CFLAGS) $< -o $@
"""
SELFTEST_MAKEFILE = """TEST_GEN_PROGS += liveupdate
TEST_GEN_PROGS_EXTENDED += luo_kexec_simple
TEST_GEN_PROGS_EXTENDED += luo_multi_session
include ../lib.mk
CFLAGS += $(KHDR_INCLUDES) -Wall
"""
# The binary's exit status comes from the kernel's uapi header: it proves which headers it was compiled with.
PROGRAM = "#include <linux/liveupdate.h>\nint main(void) { return LIVEUPDATE_FAKE_STATUS; }\n"


def kernel_with_tree(
    cache: Path, status: int = 7, *, folder: str = "7.2.13-fake", manifest: dict | None = None, **overrides: str
) -> LabKernel:
    """A cached kernel (``folder`` under ``cache``, with ``manifest``) whose source tree has the liveupdate selftests
    in small: ``luo_kexec_simple`` and ``luo_multi_session`` exit with ``status``, from the uapi header;
    ``overrides``: {path in the tree: text}."""
    path = fake_cached_kernel(cache, folder, **(manifest or {}))
    files = {
        "include/uapi/linux/liveupdate.h": f"#define LIVEUPDATE_FAKE_STATUS {status}\n",
        "tools/testing/selftests/lib.mk": LIB_MK,
        "tools/testing/selftests/liveupdate/Makefile": SELFTEST_MAKEFILE,
        "tools/testing/selftests/liveupdate/luo_kexec_simple.c": PROGRAM,
        "tools/testing/selftests/liveupdate/luo_multi_session.c": PROGRAM,
        **overrides,
    }
    fake_source_tree(path / "source", files)
    (path / "source" / "Makefile").write_text(TOP_MAKEFILE)
    return LabKernel.load(path)


def entries(kernel: LabKernel) -> list[str]:
    """What the kernel's selftests folder holds, but for the lock file."""
    root = kernel.path / "selftests"
    return sorted(p.name for p in root.iterdir() if p.name != ".lock") if root.exists() else []


def test_builds_every_kexec_program_with_the_kernels_own_headers_and_caches_them(tmp_path):
    kernel = kernel_with_tree(tmp_path)
    steps: list[str] = []
    build = build_selftests(kernel, progress=steps.append)
    assert sorted(build.programs) == ["luo_kexec_simple", "luo_multi_session"]  # not the in-kernel `liveupdate`
    assert build.folder.parent == kernel.path / "selftests" and build.folder.name == f"liveupdate-{build.key}"
    assert subprocess.run([build.binary("luo_kexec_simple")]).returncode == 7
    assert build.compiler == compiler_version("gcc") and build.compiler.startswith("gcc")
    assert build.make.startswith("GNU Make")
    assert (build.kernel, build.release) == ("7.2", "7.2.13-lab")
    assert build.headers_s is not None and build.compile_s is not None
    assert [s.split()[0] for s in steps] == ["installing", "compiling"]
    assert (build.folder / "build.log").read_text().count("$ make") == 2
    steps.clear()
    assert build_selftests(kernel, progress=steps.append) == build and steps == []  # cached: nothing runs
    assert cached_selftests(kernel) == build
    assert entries(kernel) == [build.folder.name]


def test_a_changed_source_or_header_builds_again(tmp_path):
    kernel = kernel_with_tree(tmp_path)
    first = build_selftests(kernel)
    header = kernel.path / "source/include/uapi/linux/liveupdate.h"
    header.write_text("#define LIVEUPDATE_FAKE_STATUS 9\n")
    assert cached_selftests(kernel) is None
    second = build_selftests(kernel)
    assert second.key != first.key
    assert subprocess.run([second.binary("luo_kexec_simple")]).returncode == 9
    program = kernel.path / "source/tools/testing/selftests/liveupdate/luo_multi_session.c"
    program.write_text(PROGRAM.replace("return", "return 1 +"))
    third = build_selftests(kernel)
    assert len({first.key, second.key, third.key}) == 3
    assert subprocess.run([third.binary("luo_multi_session")]).returncode == 10


def test_the_key_covers_the_compiler_and_the_selftest_files(tmp_path):
    source = kernel_with_tree(tmp_path).path / "source"
    key = selftests_key(source, "gcc 12")
    assert key == selftests_key(source, "gcc 12") and key != selftests_key(source, "gcc 13")
    (source / "tools/testing/selftests/liveupdate/luo_new.c").write_text("int main(void) { return 0; }\n")
    assert selftests_key(source, "gcc 12") != key


def test_kexec_programs_reads_every_form_of_the_assignment(tmp_path):
    makefile = tmp_path / "tools/testing/selftests/liveupdate/Makefile"
    makefile.parent.mkdir(parents=True)
    makefile.write_text(
        "TEST_GEN_PROGS += liveupdate\nTEST_GEN_PROGS_EXTENDED := a b\nTEST_GEN_PROGS_EXTENDED += c\n"
        "  TEST_GEN_PROGS_EXTENDED += b d\n"
    )
    assert kexec_programs(tmp_path) == ("a", "b", "c", "d")


def test_a_tree_without_the_selftests_is_an_error_that_says_where_it_looked(tmp_path):
    folder = fake_cached_kernel(tmp_path, "7.2.13-bare")
    fake_source_tree(folder / "source", {})
    kernel = LabKernel.load(folder)
    with pytest.raises(SelftestBuildError, match=r"no source tree with tools/testing/selftests/liveupdate/Makefile"):
        build_selftests(kernel)
    with pytest.raises(SelftestBuildError, match=str(folder / "source")):
        selftest_source(kernel)


def test_a_test_the_tree_lacks_is_an_error_listing_what_it_has(tmp_path):
    build = build_selftests(kernel_with_tree(tmp_path))
    with pytest.raises(
        SelftestBuildError, match=r"no selftest 'luo_stress_files'.*luo_kexec_simple, luo_multi_session"
    ):
        build.binary("luo_stress_files")


def test_a_missing_compiler_is_named_with_what_to_install(tmp_path, monkeypatch):
    kernel = kernel_with_tree(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(SelftestBuildError, match=r"no C compiler: 'gcc' is not on PATH.*build-essential"):
        build_selftests(kernel)
    assert entries(kernel) == []


def test_a_missing_make_is_named(tmp_path, monkeypatch):
    kernel = kernel_with_tree(tmp_path)
    only_gcc = tmp_path / "bin"
    only_gcc.mkdir()
    gcc = subprocess.run(["sh", "-c", "command -v gcc"], capture_output=True, text=True).stdout.strip()
    (only_gcc / "gcc").symlink_to(os.path.realpath(gcc))
    monkeypatch.setenv("PATH", str(only_gcc))
    with pytest.raises(SelftestBuildError, match=r"no make: 'make' is not on PATH"):
        build_selftests(kernel)


def test_a_compile_error_quotes_its_last_lines_and_caches_nothing(tmp_path):
    broken = "int main(void) { return undeclared_thing; }\n"
    kernel = kernel_with_tree(tmp_path, **{"tools/testing/selftests/liveupdate/luo_multi_session.c": broken})
    with pytest.raises(SelftestBuildError) as caught:
        build_selftests(kernel)
    message = str(caught.value)
    assert "compiling the liveupdate selftests of 7.2 failed" in message
    assert "'undeclared_thing' undeclared" in message
    assert str(kernel.path / "selftests" / FAILED_LOG) in message and "nothing was cached" in message
    assert entries(kernel) == [FAILED_LOG]  # the log of the failure; no cache entry, no scratch folder
    assert "undeclared_thing" in (kernel.path / "selftests" / FAILED_LOG).read_text()


def test_a_failed_header_install_is_named(tmp_path):
    kernel = kernel_with_tree(tmp_path)
    (kernel.path / "source/include/uapi/linux/liveupdate.h").unlink()
    with pytest.raises(SelftestBuildError, match=r"installing the uapi headers of 7.2 \(make headers_install\) failed"):
        build_selftests(kernel)
    assert entries(kernel) == [FAILED_LOG]


def test_an_interrupted_build_leaves_nothing_cached_and_the_next_one_completes(tmp_path):
    kernel = kernel_with_tree(tmp_path)

    def interrupt(step: str) -> None:
        if step.startswith("compiling"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_selftests(kernel, progress=interrupt)
    assert entries(kernel) == [] and cached_selftests(kernel) is None
    assert subprocess.run([build_selftests(kernel).binary("luo_kexec_simple")]).returncode == 7


def test_what_a_killed_build_left_is_not_taken_for_a_cache_entry(tmp_path):
    kernel = kernel_with_tree(tmp_path)
    key = selftests_key(kernel.path / "source", compiler_version())
    half = kernel.path / "selftests" / f"liveupdate-{key}"
    half.mkdir(parents=True)
    (half / "luo_kexec_simple").write_text("half-written")  # the entry's name, but no manifest
    scratch = kernel.path / "selftests" / ".build-killed"
    scratch.mkdir()
    assert cached_selftests(kernel) is None
    build = build_selftests(kernel)
    assert build.folder == half and (half / MANIFEST).is_file()
    assert subprocess.run([build.binary("luo_kexec_simple")]).returncode == 7
    assert entries(kernel) == [half.name]


def test_an_entry_whose_binary_went_missing_is_built_again(tmp_path):
    kernel = kernel_with_tree(tmp_path)
    build = build_selftests(kernel)
    build.binary("luo_multi_session").unlink()
    assert cached_selftests(kernel) is None
    again = build_selftests(kernel)
    assert again.binary("luo_multi_session").is_file()


@pytest.mark.lab
@pytest.mark.parametrize("version", ["7.2", "7.3"])
def test_builds_from_a_cached_lab_kernels_own_tree(version):
    from workbench.lab.kernel import resolve_kernel

    kernel = resolve_kernel(version, progress=False)
    build = build_selftests(kernel)
    assert {"luo_kexec_simple", "luo_multi_session"} <= set(build.programs) <= set(KEXEC_SELFTESTS)
    assert build.release == kernel.release and build.folder.parent == kernel.path / "selftests"
    for binary in build.programs.values():
        assert binary.read_bytes()[:4] == b"\x7fELF" and os.access(binary, os.X_OK)
    log = (build.folder / "build.log").read_text()
    assert "headers_install" in log and str(kernel.path / "source" / "tools/testing/selftests/liveupdate") in log
