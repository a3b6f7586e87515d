"""Lab kernels: the cache (listing, finding a kernel by name, prebuilt kernels), a build that a patch stops, and
the real lab kernel."""

import json
import os
import subprocess

import pytest

from tests.lab.fake_kernel import fake_bzimage, fake_cached_kernel, fake_source_tree
from workbench.lab import kernel as K
from workbench.lab.kernel_config import BASES, DEFAULT_BASE, config_hash


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty workbench cache (what ``XDG_CACHE_HOME`` names)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_list_reads_every_manifest_and_skips_the_rest(cache):
    spec = K.KernelSpec("7.2", ("deferred-init",))
    fake_cached_kernel(
        cache,
        spec.folder_name("7.2.13"),
        config_hash=spec.config().hash(),
        variants=["deferred-init"],
        release="7.2.13-lab+deferred-init",
        size_bytes=123,
        build_seconds=60.0,
        objects=2905,
        ccache={"hits": 2800, "misses": 105, "hit_rate": 0.9638},
    )
    fake_cached_kernel(cache, "7.3.0-rc7-aaaa", version="7.3.0-rc7", series="7.3", release="7.3.0-rc7-lab")
    fake_cached_kernel(cache, "7.2.13-bbbb")
    (cache / "live-update-workbench" / "kernels" / "7.2.13-half-built" / "build").mkdir(parents=True)
    broken = fake_cached_kernel(cache, "7.2.13-broken")
    (broken / "manifest.json").write_text("{")
    kernels = K.list_kernels()
    assert [k.name for k in kernels] == ["7.2", "7.2+deferred-init", "7.3"]
    variant = kernels[1]
    assert variant.variants == ("deferred-init",) and variant.release == "7.2.13-lab+deferred-init"
    assert (variant.objects, variant.ccache["hits"], variant.disk_usage()) == (2905, 2800, 123)
    assert kernels[0].disk_usage() > 0  # measured when the manifest does not say
    assert variant.as_dict()["variants"] == ["deferred-init"] and variant.as_dict()["ccache"]["misses"] == 105


def test_cached_kernel_matches_version_configuration_and_patches(cache, tmp_path):
    assert K.cached_kernel() is None
    # a manifest as builds wrote it before variants existed
    old = fake_cached_kernel(cache, f"7.2.13-{config_hash()}", config_hash=config_hash(), base_configs=["x"])
    assert K.cached_kernel().path == old == K.cached_kernel("7.2").path
    assert K.cached_kernel().base == "defconfig" and K.cached_kernel().patch_hash is None
    assert K.cached_kernel("7.3") is None
    assert K.cached_kernel("7.2+kho-debug") is None
    control = K.KernelSpec("7.2", ("luo-compat-mismatch",))
    fake_cached_kernel(
        cache, "control", config_hash=control.config().hash(), variants=["luo-compat-mismatch"], patch_hash="other"
    )
    assert K.cached_kernel(control) is None  # same configuration, other patches
    fake_cached_kernel(
        cache,
        "control-2",
        config_hash=control.config().hash(),
        variants=["luo-compat-mismatch"],
        patch_hash=control.patch_hash(),
    )
    assert K.cached_kernel(control).path.name == "control-2"


def test_resolve_returns_cached_and_prebuilt_kernels_and_builds_nothing_when_told(cache, tmp_path):
    with pytest.raises(K.KernelBuildError, match=r"the kernel 7.2\+kho-debug is not built"):
        K.resolve_kernel("7.2+kho-debug", build=False)
    path = fake_cached_kernel(cache, "a", config_hash=config_hash())
    assert K.resolve_kernel("7.2", build=False).path == path
    assert K.resolve_kernel(str(path), build=False).path == path  # a cached kernel's folder
    mine = tmp_path / "mine"
    fake_bzimage(mine / "bzImage", "7.2.9-custom")
    (mine / "config").write_text("CONFIG_LIVEUPDATE=y\n")
    lab = K.resolve_kernel(str(mine), build=False)
    assert lab.prebuilt and lab.bzimage == mine / "bzImage" and lab.config_file == mine / "config"
    assert (lab.release, lab.version) == ("7.2.9-custom", "7.2.9") and lab.config == {"CONFIG_LIVEUPDATE": "y"}
    assert K.build_kernel(K.parse_kernel_name(str(mine))) == lab


def test_a_patch_that_does_not_apply_stops_the_build_and_leaves_the_cache_clean(cache, tmp_path, monkeypatch):
    shared = fake_source_tree(cache / "live-update-workbench" / "src" / "linux-source-7.2", {"a.c": "one\n"})
    monkeypatch.setattr(K, "ensure_system_packages", lambda: None)
    monkeypatch.setattr(K, "source_tree", lambda version, log: shared)
    bad = tmp_path / "bad.patch"
    bad.write_text("--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-two\n+three\n")
    with pytest.raises(K.KernelBuildError, match="the patch .*bad.patch does not apply to linux-source-7.2"):
        K.build_kernel(K.KernelSpec("7.2", patches=(bad,)), progress=False)
    kernels = cache / "live-update-workbench" / "kernels"
    assert [p.name for p in kernels.iterdir() if not p.name.startswith(".lock-")] == []
    assert [p.name for p in shared.parent.iterdir()] == ["linux-source-7.2"]
    assert (shared / "a.c").read_text() == "one\n"


# Stands in for the kernel's make: "configures" by writing .config, "builds" by printing three compile steps and
# writing the files a build leaves; records its arguments.
FAKE_MAKE = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_MAKE_LOG"
skip=0
for a in "$@"; do
  if [ $skip = 1 ]; then skip=0; continue; fi
  case "$a" in
    -C) skip=1 ;; O=*) out=${a#O=} ;; LOCALVERSION=*) extra=${a#LOCALVERSION=} ;; -*|*=*) ;; *) target=$a ;;
  esac
done
case "$target" in
  *config) [ "$target" = olddefconfig ] || echo "CONFIG_BASE=y" > "$out/.config" ;;
  bzImage)
    printf '  CC      kernel/a.o\n  CC      mm/b.o\n  AS      arch/x86/c.o\n  LD      vmlinux\n'
    mkdir -p "$out/arch/x86/boot" "$out/include/config"
    echo bz > "$out/arch/x86/boot/bzImage"; echo elf > "$out/vmlinux"
    local=$(sed -n 's/^CONFIG_LOCALVERSION="\(.*\)"/\1/p' "$out/.config" | tail -1)
    echo "7.2.13$local$extra" > "$out/include/config/kernel.release" ;;
esac
"""
FAKE_MERGE = r"""#!/usr/bin/env bash
shift 3; base=$1; shift; cat "$@" >> "$base"
"""


def test_a_build_with_a_stand_in_make_is_recorded_and_then_cached(cache, tmp_path, monkeypatch):
    shared = fake_source_tree(
        cache / "live-update-workbench" / "src" / "linux-source-7.2",
        {"kernel/configs/kvm_guest.config": "CONFIG_KVM_GUEST=y\n", "scripts/kconfig/merge_config.sh": FAKE_MERGE},
    )
    (shared / "scripts/kconfig/merge_config.sh").chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(FAKE_MAKE)
    (bin_dir / "make").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MAKE_LOG", str(tmp_path / "make.log"))
    monkeypatch.setattr(K, "ensure_system_packages", lambda: None)
    monkeypatch.setattr(K, "source_tree", lambda version, log: shared)
    seen = []

    lab = K.build_kernel("7.2+kho-debug", jobs=2, progress=lambda done, expected: seen.append((done, expected)))
    spec = K.parse_kernel_name("7.2+kho-debug")
    assert lab.path.name == f"7.2.13+kho-debug-{spec.key()}" and lab.release == "7.2.13-lab+kho-debug"
    assert (lab.variants, lab.config_hash, lab.objects, lab.patch_hash) == (
        ("kho-debug",),
        spec.config().hash(),
        4,
        None,
    )
    assert seen == [(1, 2900), (2, 2900), (3, 2900), (4, 2900)]
    assert lab.bzimage.read_text() == "bz\n" and "CONFIG_KEXEC_HANDOVER_DEBUG=y" in lab.config_file.read_text()
    assert lab.size_bytes > 0 and lab.build_seconds > 0 and lab.built_at
    make_calls = (tmp_path / "make.log").read_text().splitlines()
    assert [c.split()[-1] for c in make_calls] == [BASES[DEFAULT_BASE].target, "olddefconfig", "bzImage"]
    assert all(f"-C {lab.path / 'source'} O={lab.path / 'build'}" in c for c in make_calls)  # the private tree
    if lab.ccache is not None:
        assert "CC=ccache gcc HOSTCC=ccache gcc KCPPFLAGS=-fmacro-prefix-map=../source/=" in make_calls[-1]
        assert lab.ccache == {"hits": 0, "misses": 0, "hit_rate": 0.0}

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the cached kernel must not run {args[0]!r}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    assert K.build_kernel("7.2+kho-debug") == lab
    assert K.resolve_kernel(spec) == lab and [k.name for k in K.list_kernels()] == ["7.2+kho-debug"]


def test_manifest_fields_round_trip(tmp_path):
    path = tmp_path / "k"
    path.mkdir()
    manifest = {"version": "7.3.0-rc7", "series": "7.3", "config_hash": "c", "release": "r", "patches": ["x.patch"]}
    (path / "manifest.json").write_text(json.dumps({**manifest, "patch_hash": "p", "base": "lean"}))
    lab = K.LabKernel.load(path)
    assert (lab.series, lab.patches, lab.patch_hash, lab.base, lab.prebuilt) == (
        "7.3",
        ("x.patch",),
        "p",
        "lean",
        False,
    )
    assert lab.name == "7.3" and lab.bzimage == path / "bzImage"


# Before FAKE_MAKE: a compile that fails (FAKE_MAKE_FAIL=compile), or an olddefconfig that drops KHO, as a missing
# dependency would (FAKE_MAKE_FAIL=config).
FAILING = r"""
last=${@: -1}
if [ "$FAKE_MAKE_FAIL" = compile ] && [ "$last" = bzImage ]; then
  echo "$*" >> "$FAKE_MAKE_LOG"
  echo "  CC      kernel/a.o"
  echo "kernel/a.c:3:9: error: expected ';' before '}' token"
  exit 2
fi
if [ "$FAKE_MAKE_FAIL" = config ] && [ "$last" = olddefconfig ]; then
  for a in "$@"; do case "$a" in O=*) sed -i '/CONFIG_KEXEC_HANDOVER=/d' "${a#O=}/.config" ;; esac; done
fi
"""


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        ("compile", r"the kernel build failed \(exit 2\); see .*/build\.log"),
        ("config", "did not survive olddefconfig .*CONFIG_KEXEC_HANDOVER"),
    ],
)
def test_a_failed_build_leaves_no_kernel_in_the_cache_and_the_next_resolve_builds_again(
    cache, tmp_path, monkeypatch, failure, error
):
    shared = fake_source_tree(
        cache / "live-update-workbench" / "src" / "linux-source-7.2",
        {"kernel/configs/kvm_guest.config": "CONFIG_KVM_GUEST=y\n", "scripts/kconfig/merge_config.sh": FAKE_MERGE},
    )
    (shared / "scripts/kconfig/merge_config.sh").chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(FAKE_MAKE.replace("\n", f"\n{FAILING}\n", 1))
    (bin_dir / "make").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MAKE_LOG", str(tmp_path / "make.log"))
    monkeypatch.setenv("FAKE_MAKE_FAIL", failure)
    monkeypatch.setattr(K, "ensure_system_packages", lambda: None)
    monkeypatch.setattr(K, "source_tree", lambda version, log: shared)

    with pytest.raises(K.KernelBuildError, match=error):
        K.resolve_kernel("7.2", progress=False)
    assert K.list_kernels() == [] and K.cached_kernel("7.2") is None
    with pytest.raises(K.KernelBuildError, match="the kernel 7.2 is not built"):
        K.resolve_kernel("7.2", build=False)
    kernels = cache / "live-update-workbench" / "kernels"
    (left,) = [p for p in kernels.iterdir() if not p.name.startswith(".lock-")]
    assert not (left / "manifest.json").exists() and not (left / "bzImage").exists()  # its log only, not a kernel
    if failure == "compile":
        assert "error: expected ';'" in (left / "build.log").read_text()

    monkeypatch.delenv("FAKE_MAKE_FAIL")
    lab = K.resolve_kernel("7.2", progress=False)
    assert lab.path == left and (lab.path / "manifest.json").exists() and lab.bzimage.read_text() == "bz\n"
    assert "error: expected" not in (lab.path / "build.log").read_text()  # the failed build's leftovers are gone
    assert [k.path for k in K.list_kernels()] == [lab.path]
    targets = [c.split()[-1] for c in (tmp_path / "make.log").read_text().splitlines()]
    assert targets.count("olddefconfig") == 2  # built again from the start, nothing taken from the failed build


@pytest.mark.lab
def test_built_kernel_has_every_option_and_kho(lab_kernel):
    assert K.missing_options(K.FRAGMENT.read_text(), lab_kernel.config_file.read_text()) == []
    K.require_live_update(lab_kernel.config_file.read_text(), "the lab kernel")
    assert lab_kernel.bzimage.stat().st_size > 1 << 20
    assert lab_kernel.vmlinux.stat().st_size > 50 << 20
    assert lab_kernel.release.startswith(lab_kernel.version)
    assert lab_kernel.config_hash == K.config_hash()


@pytest.mark.lab
def test_second_build_comes_from_the_cache_without_running_anything(lab_kernel, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the cached kernel must not run {args[0]!r}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    again = K.build_kernel(progress=False)
    assert again.path == lab_kernel.path and again.release == lab_kernel.release


@pytest.mark.lab
def test_vmlinux_has_dwarf_for_drgn(lab_kernel):
    out = subprocess.run(["readelf", "-S", "-W", str(lab_kernel.vmlinux)], capture_output=True, text=True).stdout
    assert ".debug_info" in out
