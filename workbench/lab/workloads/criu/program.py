"""The CRIU workload's program and CRIU's nftables shim: C sources, compiled with the host's gcc into the cache,
which the lab VM sees read-only over 9p.

What the program does: it allocates ``anon_size`` bytes of private anonymous memory and, optionally,
``memfd_region`` bytes of shared memory backed by a shmem file, fills both with the agent's deterministic pattern
(word ``i`` of region ``r`` is ``(i + salt) * K ^ salt`` with ``salt = seed * 1000003 + r * 7919 + 1``), then
loops: increment a counter, note the time, sleep ``period_us``. It notices its own resumption after a restore (its
parent changed, or its monotonic clock jumped) and prints a ``WB-MARK workload-resumed`` line on /dev/console at
once, which the host timestamps like every other mark."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from workbench.lab.kernel import cache_root

__all__ = ["WORKLOAD_SOURCE", "NFT_SHIM_SOURCE", "build_workload", "build_nft_shim"]

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

/* The agent reads this page through /proc/PID/mem: keep the layout in step with process.STATUS. */
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
