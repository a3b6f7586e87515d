"""The lab VM's initramfs: static busybox and an ``/init`` that mounts the host's root read-only over 9p, adds
writable tmpfs where the guest needs it, mounts the run's results folder, and runs the agent with the project's own
Python environment. No disk image: the guest sees the host's files, read-only."""

from __future__ import annotations

import hashlib
import shutil
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from workbench.lab.kernel import cache_root

__all__ = ["INIT_SCRIPT", "write_cpio", "busybox_initramfs", "build_initramfs", "BUSYBOX"]

BUSYBOX = Path("/bin/busybox")

# Kernel command line parameters read by /init (all optional but wb.python and wb.repo):
#   wb.python=PATH  the Python interpreter to run the agent with (a host path, seen through the 9p root)
#   wb.repo=PATH    the checkout to put on PYTHONPATH
#   wb.phase=NAME   prepare | restore | probe | shell | kdump (probe: print a marker and power off; kdump: the
#                   capture kernel after a panic, see workbench.lab.kdump)
#   wb.dumplevel=N  kdump: makedumpfile's dump level
#   wb.dumpfile=F   kdump: the dump's name in the results folder
#   wb.hang=1       fault injection: never start the agent (a target that does not come back)
#   wb.sshd=PATH    start this sshd from the host's root before the agent (the SSH-target tests)
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /bin /sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

phase=prepare python= repo= hang= sshd= dumplevel=23 dumpfile=vmcore-crash.kdump
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    wb.phase=*) phase=${arg#wb.phase=} ;;
    wb.python=*) python=${arg#wb.python=} ;;
    wb.repo=*) repo=${arg#wb.repo=} ;;
    wb.hang=*) hang=${arg#wb.hang=} ;;
    wb.sshd=*) sshd=${arg#wb.sshd=} ;;
    wb.dumplevel=*) dumplevel=${arg#wb.dumplevel=} ;;
    wb.dumpfile=*) dumpfile=${arg#wb.dumpfile=} ;;
  esac
done
echo "WB-MARK init $phase"

if [ "$phase" = probe ]; then
  echo "WB-MARK probe-ok"
  poweroff -f
fi
if [ -n "$hang" ]; then
  echo "WB-MARK hang (fault injection: the agent will not start)"
  while true; do sleep 3600; done
fi

fail() { echo "WB-MARK init-error $*"; sleep 1; poweroff -f; }
p9="trans=virtio,version=9p2000.L,msize=524288"
mount -t 9p -o "$p9,ro,cache=loose" hostroot /newroot || fail "cannot mount the host root over 9p"
# The guest writes to tmpfs on /tmp, /run and /var/tmp; a checkout or Python that lives under the host's /tmp
# (a CI clone, say) stays visible by bind-mounting it back from the read-only host root.
mkdir -p /hosttmp
mount --bind /newroot/tmp /hosttmp
for d in tmp run var/tmp; do
  [ -d /newroot/$d ] && mount -t tmpfs -o mode=1777 tmpfs /newroot/$d
done
for p in "$repo" "$python"; do
  case "$p" in
    /tmp/?*)
      top=${p#/tmp/}; top=${top%%/*}
      if [ -e "/hosttmp/$top" ] && [ ! -e "/newroot/tmp/$top" ]; then
        mkdir -p "/newroot/tmp/$top" && mount --bind "/hosttmp/$top" "/newroot/tmp/$top"
      fi ;;
  esac
done
mount --bind /dev /newroot/dev
mount -t devpts devpts /newroot/dev/pts 2>/dev/null
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null
mkdir -p /newroot/tmp/wb-results /newroot/tmp/wb-cache
mount -t 9p -o "$p9" wbresults /newroot/tmp/wb-results || fail "cannot mount the results folder"
mount -t 9p -o "$p9" wbcache /newroot/tmp/wb-cache 2>/dev/null

if [ "$phase" = kdump ]; then
  # the capture kernel: the panicked kernel's memory as a kdump-compressed file in the results folder, written
  # under a temporary name and renamed only when makedumpfile succeeded
  echo "WB-MARK kdump-start"
  out=/tmp/wb-results/$dumpfile
  rm -f "/newroot$out.part"
  chroot /newroot /usr/bin/env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    makedumpfile -c -d "$dumplevel" /proc/vmcore "$out.part" >/newroot/tmp/wb-results/makedumpfile.log 2>&1
  rc=$?
  cat /newroot/tmp/wb-results/makedumpfile.log
  if [ $rc -eq 0 ] && mv "/newroot$out.part" "/newroot$out"; then
    sync
    echo "WB-MARK kdump-saved {\"file\":\"$dumpfile\",\"level\":$dumplevel}"
  else
    echo "WB-MARK kdump-error {\"rc\":$rc}"
  fi
  sync
  poweroff -f
fi
ip link set lo up 2>/dev/null
if ip link set eth0 up 2>/dev/null; then
  ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
fi

if [ -n "$sshd" ]; then
  cfg=/tmp/wb-results/sshd_config log=/tmp/wb-results/sshd.log
  if chroot /newroot /bin/sh -c "mkdir -p /run/sshd && $sshd -f $cfg -E $log"; then
    # sshd's daemonized child listens a moment after its parent returns: "ready" means port 22 accepts
    tries=0
    while ! grep -q ':0016 00000000:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null && [ $tries -lt 600 ]; do
      sleep 0.1; tries=$((tries + 1))
    done
    echo "WB-MARK sshd-started"
  fi
fi

if [ "$phase" = shell ]; then
  echo "WB-MARK ready"
  while true; do sleep 3600; done
fi

chroot /newroot /usr/bin/env -i HOME=/tmp PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  PYTHONPATH="$repo" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/wb-cache/numba \
  "$python" -m workbench.lab.agent --results /tmp/wb-results --phase "$phase"
echo "WB-MARK agent-exit $?"
sync
poweroff -f
"""


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    namebytes = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(namebytes), 0]
    header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    out = header + namebytes
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def write_cpio(path: Path, files: dict[str, tuple[int, bytes]]) -> None:
    """A ``newc`` cpio archive of ``files`` ({name: (mode, contents)}; directories have S_IFDIR and no data)."""
    out = bytearray()
    for ino, (name, (mode, data)) in enumerate(sorted(files.items()), start=1):
        out += _cpio_entry(name, mode, data, ino)
    out += _cpio_entry("TRAILER!!!", 0)
    out += b"\0" * (-len(out) % 512)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(out)
    tmp.replace(path)


def busybox_initramfs(
    name: str,
    script: str,
    folders: Sequence[str],
    busybox: Path = BUSYBOX,
    missing: Callable[[str], Exception] = FileNotFoundError,
) -> Path:
    """The cached initramfs ``<name>-<key>.cpio`` of ``busybox`` (as ``/bin/busybox``), the init ``script`` (as
    ``/init``) and empty ``folders``, keyed by the script and the busybox binary; built atomically on first use.

    :raises missing: (called with the message) ``busybox`` does not exist"""
    if not busybox.exists():
        raise missing(f"{busybox} is missing: install Debian's busybox-static (make system-deps)")
    blob = busybox.read_bytes()
    key = hashlib.sha256(script.encode() + blob).hexdigest()[:12]
    path = cache_root() / "initramfs" / f"{name}-{key}.cpio"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    files = {folder: (stat.S_IFDIR | 0o755, b"") for folder in ("bin", *folders)}
    files.update({"bin/busybox": (stat.S_IFREG | 0o755, blob), "init": (stat.S_IFREG | 0o755, script.encode())})
    write_cpio(path, files)
    return path


def build_initramfs(busybox: Path = BUSYBOX) -> Path:
    """The cached initramfs for the current init script and busybox binary."""
    return busybox_initramfs("initramfs", INIT_SCRIPT, ("dev", "proc", "sys", "newroot"), busybox)


def clear_cache() -> None:
    shutil.rmtree(cache_root() / "initramfs", ignore_errors=True)
