"""Host side of the CRIU workload: the workload program (C, built with the host's gcc into the cache, which the lab
VM sees read-only over 9p), the request entries a ``workload="criu"`` cycle sends to the guest, and the result the
host assembles from the guest's records and the serial console's host timestamps.

The guest side is :mod:`workbench.lab.criu_agent`. What the workload does: it allocates ``anon_size`` bytes of
private anonymous memory and, optionally, ``memfd_region`` bytes of shared memory backed by a shmem file, fills
both with the agent's deterministic pattern (word ``i`` of region ``r`` is ``(i + salt) * K ^ salt`` with
``salt = seed * 1000003 + r * 7919 + 1``), then loops: increment a counter, note the time, sleep ``period_us``.
It notices its own resumption after a restore (its parent changed, or its monotonic clock jumped) and prints a
``WB-MARK workload-resumed`` line on /dev/console at once, which the host timestamps like every other mark.

Why ``vdso=0``: CRIU 3.17 (Debian 12) fails to initialise on any x86 kernel from 6.13 on, whose vDSO has a third
mapping, ``[vvar_vclock]`` (commit e93d2521b27f): ``vdso: Unexpected rt vDSO area bounds`` ... ``Could not
initialize kernel features detection``. CRIU learnt about it in 4.1 (commit 8ee2eba47). Booting the lab kernel
with ``vdso=0`` maps no vDSO at all, which CRIU 3.17 handles ("Kernel doesn't premap vDSO"); no kernel rebuild.

Why the shim: CRIU 3.17's kernel probe also stops when the kernel has no nf_tables (fixed in CRIU 4.0, commit
13854a988); the lab kernel has none, so a two-line ``LD_PRELOAD`` library answers CRIU's nftables probe (see
:data:`NFT_SHIM_SOURCE`). With both, ``criu check`` still says "Does not look good", for things this workload does
not use: no tun device and no veth pairs in the lab kernel, and its check of mremapping the vDSO, which cannot run
without a vDSO (``mmap(0) failed``). Dump, restore and lazy restore work.

The process's region ("memfd from birth") is an unlinked tmpfs file by default (``region_kind="tmpfile"``): CRIU
3.17 treats it as a regular file and can be told it is external (``--external file[mnt_id:inode]``), so it writes
none of its pages; LUO preserves it like a memfd (a shmem file with no links) and hands it back as a memfd, which
``criu restore --inherit-fd`` maps in its place. A real memfd (``region_kind="memfd"``) cannot be skipped: CRIU
3.17 always dumps a memfd's contents (there is no external memfd), though the restore can still take it from LUO
(``--inherit-fd fd[N]:/memfd:NAME``)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

from workbench.lab.kernel import cache_root

__all__ = [
    "CRIU_KERNEL_ARGS",
    "CRIU_PATH",
    "NFT_SHIM_SOURCE",
    "WORKLOAD_SOURCE",
    "PHASES_BEFORE",
    "PHASES_AFTER",
    "build_nft_shim",
    "build_workload",
    "collect_criu",
    "criu_memory_mb",
    "criu_request",
    "downtime_breakdown",
    "run_probe",
    "validate_criu",
]

CRIU_PATH = "/usr/sbin/criu"
CRIU_KERNEL_ARGS = "vdso=0"
IMAGE_MODES = ("direct", "copy")
REGION_KINDS = ("tmpfile", "memfd")

# The guest agent's phases, in order, before and after the kexec (each ends with a WB-MARK phase-end).
PHASES_BEFORE = ("prepare", "load", "dump", "convert", "preserve")
PHASES_AFTER = ("retrieve", "images", "criu-init", "restore", "resume", "verify")

WORKLOAD_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* The agent reads this page through /proc/PID/mem: keep the layout in step with criu_agent.STATUS. */
struct status {
    uint64_t magic;             /* "WBCRIU01" */
    uint64_t counter;           /* loop iterations */
    uint64_t resumes;           /* resumptions noticed */
    int64_t last_ns;            /* CLOCK_MONOTONIC at the last iteration */
    int64_t resume_ns;          /* CLOCK_MONOTONIC when the last resumption was noticed */
    uint64_t counter_at_resume; /* counter when it was noticed */
    int32_t ppid;               /* parent at the last iteration */
    int32_t resume_reason;      /* 1: the parent changed, 2: the clock went back, 4: the clock jumped */
};

static int32_t birth_ppid;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void fill(uint64_t *w, size_t n, uint64_t seed, uint64_t region) {
    uint64_t salt = seed * 1000003ULL + region * 7919ULL + 1ULL;
    for (size_t i = 0; i < n; i++)
        w[i] = ((uint64_t)i + salt) * 0x9E3779B97F4A7C15ULL ^ salt;
}

static void console(const char *line) {
    int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t unused = write(fd, line, strlen(line));
    (void)unused;
    close(fd);
}

static void die(const char *what) {
    char line[512];
    snprintf(line, sizeof(line), "\nWB-MARK workload-error {\"what\":\"%s\",\"errno\":%d}\n", what, errno);
    console(line);
    exit(2);
}

int main(int argc, char **argv) {
    size_t anon = 0, region = 0;
    uint64_t seed = 0;
    long period_us = 1000;
    const char *kind = "none", *dir = "/run", *info = NULL;
    int undumpable = 0, c;
    while ((c = getopt(argc, argv, "a:r:k:d:s:i:p:u")) != -1) {
        switch (c) {
        case 'a': anon = strtoull(optarg, NULL, 0); break;
        case 'r': region = strtoull(optarg, NULL, 0); break;
        case 'k': kind = optarg; break;
        case 'd': dir = optarg; break;
        case 's': seed = strtoull(optarg, NULL, 0); break;
        case 'i': info = optarg; break;
        case 'p': period_us = strtol(optarg, NULL, 0); break;
        case 'u': undumpable = 1; break;
        default: return 2;
        }
    }
    if (!info || anon % 4096 || region % 4096) {
        fprintf(stderr, "usage: wb-criu-workload -i INFO [-a ANON] [-r REGION -k tmpfile|memfd -d DIR] [-s SEED]\n");
        return 2;
    }
    setsid(); /* its own session and process group: CRIU dumps the tree without --shell-job */

    struct status *st = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (st == MAP_FAILED)
        die("mmap status");
    uint64_t *a = NULL;
    if (anon) {
        a = mmap(NULL, anon, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (a == MAP_FAILED)
            die("mmap anon");
        fill(a, anon / 8, seed, 0);
    }
    uint64_t *r = NULL;
    int rfd = -1;
    if (region) {
        if (strcmp(kind, "memfd") == 0)
            rfd = memfd_create("wb-region", 0);
        else
            rfd = open(dir, O_TMPFILE | O_RDWR, 0600); /* an unlinked tmpfs (shmem) file */
        if (rfd < 0)
            die("region file");
        if (ftruncate(rfd, region))
            die("ftruncate region");
        r = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_SHARED, rfd, 0);
        if (r == MAP_FAILED)
            die("mmap region");
        fill(r, region / 8, seed, 1);
    }
    int xfd = -1;
    if (undumpable) {
        /* a pidfd: CRIU 3.17 has no dumper for it and gives up after freezing the process */
        xfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
        if (xfd < 0)
            die("pidfd_open");
    }
    memcpy(&st->magic, "WBCRIU01", 8);
    st->ppid = birth_ppid = getppid();
    st->last_ns = now_ns();

    char tmp[4096], text[1024];
    snprintf(text, sizeof(text),
             "{\"pid\":%d,\"ppid\":%d,\"status_addr\":%lu,\"anon_addr\":%lu,\"anon_size\":%zu,"
             "\"region_addr\":%lu,\"region_size\":%zu,\"region_fd\":%d,\"region_kind\":\"%s\",\"undumpable_fd\":%d}\n",
             getpid(), st->ppid, (unsigned long)st, (unsigned long)a, anon, (unsigned long)r, region, rfd,
             region ? kind : "none", xfd);
    snprintf(tmp, sizeof(tmp), "%s.tmp", info);
    int ifd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (ifd < 0 || write(ifd, text, strlen(text)) != (ssize_t)strlen(text) || close(ifd) || rename(tmp, info))
        die("info file");

    struct timespec nap = {period_us / 1000000, (period_us % 1000000) * 1000};
    for (;;) {
        int64_t t = now_ns();
        int32_t pp = getppid();
        /* a restore: the parent it was born with is gone (criu restore is the parent now), or the clock went back
         * or jumped (another boot); the later change of parent, when criu exits, is not another resumption */
        int reason = (pp != st->ppid && st->ppid == birth_ppid ? 1 : 0) | (t < st->last_ns ? 2 : 0) |
                     (t - st->last_ns > 2000000000LL ? 4 : 0);
        st->counter++;
        if (reason) {
            st->resumes++;
            st->resume_ns = t;
            st->counter_at_resume = st->counter;
            st->resume_reason = reason;
            char line[256];
            snprintf(line, sizeof(line),
                     "\nWB-MARK workload-resumed {\"pid\":%d,\"counter\":%llu,\"ppid\":%d,\"was_ppid\":%d,"
                     "\"reason\":%d,\"t\":%.6f}\n",
                     getpid(), (unsigned long long)st->counter, pp, st->ppid, reason, t / 1e9);
            console(line);
        }
        st->ppid = pp;
        st->last_ns = t;
        nanosleep(&nap, NULL);
    }
}
"""


NFT_SHIM_SOURCE = r"""
/* Preloaded into CRIU 3.17 in the lab VM. CRIU's kernel probe (kerndat_has_nftables_concat) creates an nftables
 * table and treats failure as fatal before CRIU 4.0 (commit 13854a988); the lab kernel has no nf_tables. Creating
 * the table "succeeds" here and adding the concatenated set fails, so CRIU records what is true of this kernel:
 * no nftables concatenations (used only by nftables network locking, which these dumps do not use). */
#include <string.h>
struct nft_ctx;
int nft_run_cmd_from_buffer(struct nft_ctx *nft, const char *buf) {
    (void)nft;
    return strncmp(buf, "add set", 7) == 0 ? -1 : 0;
}
"""
NFT_SHIM_VERSIONS = "LIBNFTABLES_1 { global: nft_run_cmd_from_buffer; local: *; };\n"


def _compile(name: str, source: str, variants: list[list[str]], cc: str = "gcc") -> Path:
    key = hashlib.sha256(source.encode() + repr(variants).encode()).hexdigest()[:12]
    out = cache_root() / "criu" / f"{name}-{key}"
    if out.exists():
        return out
    if shutil.which(cc) is None:
        raise FileNotFoundError(f"{cc} is missing: the CRIU workload and shim are built on the host (apt install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_name(out.name + ".c")
    src.write_text(source)
    tmp = out.with_name(out.name + ".tmp")
    errors = ""
    for extra in variants:
        proc = subprocess.run([cc, "-O2", "-Wall", *extra, "-o", str(tmp), str(src)], capture_output=True, text=True)
        if proc.returncode == 0:
            tmp.replace(out)
            return out
        errors = proc.stderr
    raise RuntimeError(f"cannot build {name} with {cc}: {errors[-2000:]}")


def build_nft_shim(cc: str = "gcc") -> Path:
    """The LD_PRELOAD shim that lets CRIU 3.17 initialise on a kernel without nf_tables (see NFT_SHIM_SOURCE)."""
    versions = cache_root() / "criu" / "nft-shim.map"
    versions.parent.mkdir(parents=True, exist_ok=True)
    if not versions.exists() or versions.read_text() != NFT_SHIM_VERSIONS:
        versions.write_text(NFT_SHIM_VERSIONS)
    return _compile("nft-shim", NFT_SHIM_SOURCE, [["-shared", "-fPIC", f"-Wl,--version-script={versions}"]], cc)


def build_workload(cc: str = "gcc") -> Path:
    """The workload binary, compiled once per source into the cache (static where the toolchain allows: fewer
    file mappings for CRIU to dump and check)."""
    return _compile("wb-criu-workload", WORKLOAD_SOURCE, [["-static"], []], cc)


def criu_request(params) -> dict[str, Any]:
    """The request entries of a ``workload="criu"`` cycle (merged into request.json)."""
    return {
        "workload": "criu",
        "anon_size": params.anon_size,
        "memfd_region": params.memfd_region,
        "region_kind": params.region_kind,
        "images": params.images,
        "criu": params.criu,
        "criu_preload": str(build_nft_shim()),
        "criu_kdat": params.criu_kdat,
        "lazy_pages": params.lazy_pages,
        "workload_binary": str(build_workload()),
    }


def validate_criu(params) -> None:
    if params.anon_size < 0 or params.anon_size % 4096:
        raise ValueError(f"anonymous size {params.anon_size} is not a multiple of the 4096-byte page size")
    if params.memfd_region < 0 or params.memfd_region % 4096:
        raise ValueError(f"memfd region {params.memfd_region} is not a multiple of the 4096-byte page size")
    if params.anon_size + params.memfd_region == 0:
        raise ValueError("the CRIU workload needs some memory: give anon_size or memfd_region")
    if params.images not in IMAGE_MODES:
        raise ValueError(f"images is one of {', '.join(IMAGE_MODES)}, not {params.images!r}")
    if params.criu_kdat not in ("probe", "carry"):
        raise ValueError(f"criu_kdat is probe or carry, not {params.criu_kdat!r}")
    if params.region_kind not in REGION_KINDS:
        raise ValueError(f"region_kind is one of {', '.join(REGION_KINDS)}, not {params.region_kind!r}")


def criu_memory_mb(params) -> int:
    """Guest RAM for a CRIU cycle: the workload, its images (twice when they are copied) and the agent's buffers."""
    total_mb = (params.anon_size + params.memfd_region) / (1 << 20)
    copies = 3 if params.images == "copy" else 2
    return int(max(1024, -(-(768 + copies * total_mb) // 256) * 256))


def _first(marks: list[tuple[str, dict, float]], event: str, after: float = float("-inf"), **match) -> float | None:
    for name, data, t in marks:
        if name == event and t >= after and all(data.get(k) == v for k, v in match.items()):
            return t
    return None


def downtime_breakdown(marks: list[tuple[str, dict, float]], prepare: dict) -> dict[str, Any]:
    """The process's downtime, cut at the host timestamps of the marks: from the freeze (the dump's start plus the
    moment CRIU's log says it seized the task) to the workload's own first ``workload-resumed`` line. The steps add
    up to the downtime: dump, convert, preserve, to-kexec (state file, sync), blackout (kexec to the agent in the
    next kernel), retrieve, images, criu-init, restore (``criu restore`` until the process's first line)."""
    t_dump = _first(marks, "phase-begin", phase="dump")
    t_kexec = _first(marks, "kexec")
    if t_dump is None or t_kexec is None:
        return {}
    t_freeze = t_dump + (prepare.get("criu", {}).get("seize_offset_s") or 0.0)
    points = [("freeze", t_freeze)]
    for phase in ("dump", "convert", "preserve"):
        t = _first(marks, "phase-end", after=t_dump, phase=phase)
        if t is not None:
            points.append((phase, t))
    points.append(("to-kexec", t_kexec))
    t_back = _first(marks, "agent-start", after=t_kexec, phase="restore")
    t_resumed = _first(marks, "workload-resumed", after=t_kexec)
    if t_back is not None:
        points.append(("blackout", t_back))
        for phase in ("retrieve", "images", "criu-init"):
            t = _first(marks, "phase-end", after=t_back, phase=phase)
            if t is not None:
                points.append((phase, t))
    out: dict[str, Any] = {"freeze_to_kexec_s": t_kexec - t_freeze}
    if t_resumed is not None:
        points.append(("restore", t_resumed))
        out["downtime_s"] = t_resumed - t_freeze
        t_restored = _first(marks, "phase-end", after=t_resumed, phase="restore")
        if t_restored is not None:
            out["criu_exit_after_resume_s"] = t_restored - t_resumed
    out["steps"] = {name: t - prev for (_, prev), (name, t) in zip(points, points[1:], strict=False)}
    return out


def collect_criu(base: dict[str, Any], marks, prepare: dict, restore: dict) -> dict[str, Any]:
    """The result of a CRIU cycle: ``base`` (what every cycle reports) plus the CRIU phases and the downtime."""
    guest = {**prepare.get("phases", {}), **restore.get("phases", {})}
    phases = {name: guest[name] for name in PHASES_BEFORE if name in guest}
    phases["kexec"] = base["blackout_s"]
    for name in PHASES_AFTER + ("finish",):
        if name in guest:
            phases[name] = guest[name]
    breakdown = downtime_breakdown(marks, prepare)
    regions = restore.get("regions", [])
    result = dict(base)
    result.update(
        {
            "workload": "criu",
            "verified": bool(restore.get("verified")) and bool(restore.get("finished")),
            "pages_checked": restore.get("pages_checked", 0),
            "phases": phases,
            "downtime_s": breakdown.get("downtime_s"),
            "downtime_breakdown": breakdown.get("steps", {}),
            "freeze_to_kexec_s": breakdown.get("freeze_to_kexec_s"),
            "memfds": regions,
            "differing_pages": {str(r["memfd"]): r["differing_pages"] for r in regions if r["differing_count"]},
            "criu": {
                "version": prepare.get("criu", {}).get("version"),
                "check": prepare.get("criu", {}).get("check"),
                "images_mode": prepare.get("images_mode"),
                "region_kind": prepare.get("region_kind"),
                "anon_size": prepare.get("anon_size"),
                "memfd_region": prepare.get("memfd_region"),
                "image_bytes": prepare.get("image_bytes"),
                "images": prepare.get("images", []),
                "dump": prepare.get("criu", {}).get("dump"),
                "restore": restore.get("criu", {}).get("restore"),
                "seize_offset_s": prepare.get("criu", {}).get("seize_offset_s"),
                "lazy_pages": restore.get("lazy_pages"),
                "counter": {
                    "before_dump": prepare.get("status_at_dump", {}).get("counter"),
                    "after_restore": restore.get("counter_after_restore"),
                    "later": restore.get("counter_later"),
                },
                "status_after_restore": restore.get("status_after_restore"),
                "workload_alive_at_end": restore.get("workload_alive_at_end"),
                "token_map": "criu-tokens.json",
            },
        }
    )
    return result


def run_probe(
    script: str,
    *,
    kernel=None,
    kernel_args: str = CRIU_KERNEL_ARGS,
    memory_mb: int = 1024,
    timeout_s: float = 600,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Boots the lab VM once and runs ``script`` (``/bin/sh -c``) in the guest's chroot, as root, with ``$WB_CRIU``
    (the CRIU binary) and ``$WB_RESULTS`` (a writable folder the host keeps) set; no kexec. Returns the script's
    output and exit status: for asking CRIU what it thinks of the lab kernel (``criu check``)."""
    import json
    import sys
    import tempfile
    import time

    from workbench.environment import REPO_ROOT
    from workbench.lab.accel import choose_accelerator
    from workbench.lab.initramfs import build_initramfs
    from workbench.lab.kernel import build_kernel
    from workbench.lab.qemu import QemuVM, VMConfig

    kernel = kernel or build_kernel()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="wb-criu-probe-"))
    results = workdir / "guest"
    results.mkdir(parents=True, exist_ok=True)
    request = {"workload": "criu", "probe": script, "criu": CRIU_PATH, "workload_binary": str(build_workload())}
    request.update(probe_timeout=timeout_s, criu_preload=str(build_nft_shim()))
    (results / "request.json").write_text(json.dumps(request, indent=1))
    initrd = build_initramfs()
    accel = choose_accelerator(kernel.bzimage, initrd)
    guest_cache = cache_root() / "guest-cache"
    (guest_cache / "numba").mkdir(parents=True, exist_ok=True)
    args = ["console=ttyS0", "panic=-1", "loglevel=6", "wb.phase=prepare", "kho=on", "liveupdate=on"]
    args += [f"wb.python={sys.executable}", f"wb.repo={REPO_ROOT}", *kernel_args.split()]
    config = VMConfig(
        kernel=kernel.bzimage,
        initrd=initrd,
        cmdline=" ".join(args),
        memory_mb=memory_mb,
        accel=accel.accel,
        shares={
            "hostroot": (Path("/"), True),
            "wbresults": (results, False),
            "wbcache": (guest_cache, False),
        },
    )
    t0 = time.monotonic()
    with QemuVM(config, workdir) as vm:
        hit = vm.wait_for(lambda ln: "WB-MARK done" in ln.text or "WB-MARK error" in ln.text, timeout_s + 300)
        vm.wait_exit(30)
    state = json.loads((results / "prepare.json").read_text()) if (results / "prepare.json").exists() else {}
    probe = results / "probe.txt"
    return {
        "output": probe.read_text() if probe.exists() else "",
        "rc": state.get("probe_rc"),
        "error": state.get("error", {}).get("message") if hit is None or "error" in hit[1].text else None,
        "kernel_args": kernel_args,
        "seconds": time.monotonic() - t0,
        "serial_log": str(vm.serial_log),
        "results": str(results),
    }
