"""Building lab kernels without a kernel: patches on a tiny source tree, ccache's sharing and counters, and the
size a kernel folder takes."""

import os
import shutil
import subprocess

import pytest

from tests.lab.fake_kernel import fake_source_tree
from workbench.lab import kernel_build as B
from workbench.lab.errors import KernelBuildError
from workbench.lab.kernel_config import load_variant

FIX = """Change the answer.

--- a/src/answer.c\t2026-11-29 07:00:00
+++ b/src/answer.c\t2026-11-29 07:01:00
@@ -1,3 +1,3 @@
 int answer(void)
 {
-\treturn 41;
+\treturn 42;
 }
"""
NEW_FILE = """--- /dev/null
+++ b/docs/NOTE
@@ -0,0 +1 @@
+patched
"""
ANSWER = "int answer(void)\n{\n\treturn 41;\n}\n"


@pytest.fixture
def shared(tmp_path):
    return fake_source_tree(tmp_path / "src" / "linux-source-7.2", {"src/answer.c": ANSWER, "src/other.c": "x\n"})


def _patch(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_patched_files():
    assert B.patched_files(FIX) == ["src/answer.c"]
    assert B.patched_files(NEW_FILE) == ["docs/NOTE"]
    assert B.patched_files("--- a/../../etc/passwd\n+++ /etc/passwd\n") == []


def test_patch_hash_follows_content_and_order(tmp_path):
    a, b = _patch(tmp_path, "a.patch", FIX), _patch(tmp_path, "b.patch", NEW_FILE)
    assert B.patch_hash([]) is None
    assert B.patch_hash([a, b]) != B.patch_hash([b, a])
    assert B.patch_hash([a]) == B.patch_hash([_patch(tmp_path, "renamed.patch", FIX)])


def test_patches_apply_to_a_private_tree_only(tmp_path, shared):
    patches = [_patch(tmp_path, "1.patch", FIX), _patch(tmp_path, "2.patch", NEW_FILE)]
    tree = B.private_source_tree(shared, tmp_path / "k" / "source", patches)
    assert "return 42;" in (tree / "src/answer.c").read_text()
    assert (tree / "docs/NOTE").read_text() == "patched\n"
    assert (shared / "src/answer.c").read_text() == ANSWER and not (shared / "docs").exists()
    assert (shared / "src/answer.c").stat().st_nlink == 1
    # untouched files are hard links to the shared tree, not copies
    assert (tree / "src/other.c").stat().st_ino == (shared / "src/other.c").stat().st_ino
    (tree / "src/answer.c").write_text("changed")  # made once: a complete tree is returned as it is
    assert B.private_source_tree(shared, tmp_path / "k" / "source", patches).joinpath("src/answer.c").read_text() == (
        "changed"
    )


def test_a_patch_that_does_not_apply_leaves_nothing(tmp_path, shared):
    good = _patch(tmp_path, "good.patch", NEW_FILE)
    bad = _patch(tmp_path, "bad.patch", FIX.replace("return 41;", "return 40;"))
    dest = tmp_path / "k" / "source"
    with pytest.raises(KernelBuildError, match=r"the patch .*bad\.patch does not apply to linux-source-7.2:\n") as err:
        B.private_source_tree(shared, dest, [good, bad])
    assert "FAILED" in str(err.value) and "src/answer.c" in str(err.value)
    assert not dest.exists() and not dest.with_name("source.partial").exists()
    assert (shared / "src/answer.c").read_text() == ANSWER and not (shared / "docs").exists()


def test_the_negative_control_patch_changes_what_luo_writes_and_accepts(tmp_path):
    (patch,) = load_variant("luo-compat-mismatch").patches
    diff = patch.read_text()
    # the header as the patch's context and removed lines describe it
    hunk = diff[diff.index("@@") :].split("\n", 1)[1]
    original = "".join(line[1:] + "\n" for line in hunk.splitlines() if line[:1] in (" ", "-"))
    shared = fake_source_tree(tmp_path / "shared", {"include/linux/kho/abi/luo.h": "\n" * 64 + original})
    tree = B.private_source_tree(shared, tmp_path / "private", [patch])
    header = (tree / "include/linux/kho/abi/luo.h").read_text()
    assert '#define LUO_ABI_COMPATIBLE\t"luo-v5"' not in header
    new = header.split('#define LUO_ABI_COMPATIBLE\t"')[1].split('"')[0]
    assert new != "luo-v5" and len(new) + 1 <= 8  # same LUO_ABI_COMPAT_LEN: struct luo_ser keeps its layout


@pytest.mark.lab
@pytest.mark.parametrize("version", ["7.2", "7.3"])
def test_the_negative_control_patch_applies_to_debian_sources(version, tmp_path):
    from workbench.lab.kernel_source import source_tree

    tree = source_tree(version, tmp_path / "log")
    (patch,) = load_variant("luo-compat-mismatch").patches
    result = subprocess.run(
        ["patch", "-p1", "--dry-run", "--batch", "--forward", "-i", str(patch)], cwd=tree, capture_output=True
    )
    assert result.returncode == 0, result.stdout


def test_ccache_stats_are_the_difference_of_two_readings():
    before = {"direct_cache_hit": 10, "preprocessed_cache_hit": 2, "cache_miss": 5}
    after = {"direct_cache_hit": 40, "preprocessed_cache_hit": 2, "cache_miss": 15}
    assert B.ccache_stats(before, after) == {"hits": 30, "misses": 10, "hit_rate": 0.75}
    assert B.ccache_stats(before, before) == {"hits": 0, "misses": 0, "hit_rate": 0.0}
    assert B.ccache_stats(None, after) is None


@pytest.mark.skipif(not (shutil.which("ccache") and shutil.which("gcc")), reason="needs ccache and gcc")
def test_builds_at_the_same_depth_share_ccache_hits(tmp_path):
    env = B.ccache_env(tmp_path)
    assert env["CCACHE_DIR"] == str(tmp_path / "ccache") and env["CCACHE_NOHASHDIR"] == "1"
    readings = [B.ccache_counters(env)]
    for kernel in ("7.2.13-aaaa", "7.2.13+x-bbbb"):
        source = fake_source_tree(tmp_path / "kernels" / kernel / "source", {"src/answer.c": ANSWER})
        build = tmp_path / "kernels" / kernel / "build"
        build.mkdir()
        subprocess.run(
            ["ccache", "gcc", "-g", "-c", str(source / "src/answer.c"), "-I", str(source / "src"), "-o", "answer.o"],
            cwd=build,
            env={**os.environ, **env},
            check=True,
        )
        readings.append(B.ccache_counters(env))
    assert B.ccache_stats(readings[0], readings[1]) == {"hits": 0, "misses": 1, "hit_rate": 0.0}
    assert B.ccache_stats(readings[1], readings[2]) == {"hits": 1, "misses": 0, "hit_rate": 1.0}


def test_size_on_disk_counts_what_deleting_the_folder_frees(tmp_path):
    outside = tmp_path / "shared.bin"
    outside.write_bytes(b"s" * 100_000)
    folder = tmp_path / "kernel"
    (folder / "build").mkdir(parents=True)
    (folder / "build" / "vmlinux").write_bytes(b"v" * 200_000)
    os.link(folder / "build" / "vmlinux", folder / "vmlinux")
    os.link(outside, folder / "shared.bin")
    size = B.size_on_disk(folder)
    vmlinux = (folder / "vmlinux").stat().st_blocks * 512
    assert vmlinux <= size < vmlinux + (outside.stat().st_blocks * 512)
