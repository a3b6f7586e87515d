"""User-space side of the Live Update Orchestrator: ``/dev/liveupdate`` sessions and file preservation, plus the
kexec and reboot system calls a cycle needs. Standard library only, so that it runs on any target.

The layouts follow ``include/uapi/linux/liveupdate.h`` (Linux 7.2): every ioctl is ``_IO(0xBA, nr)`` and every
argument struct starts with its own ``__u32 size``."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass

__all__ = [
    "DEVICE",
    "SESSION_NAME_MAX",
    "LiveUpdateError",
    "LiveUpdate",
    "Session",
    "KEXEC_FILE_ON_CRASH",
    "KEXEC_FILE_NO_INITRAMFS",
    "kexec_file_load",
    "reboot_kexec",
    "power_off",
    "check_session_name",
]

DEVICE = "/dev/liveupdate"
IOCTL_TYPE = 0xBA
SESSION_NAME_MAX = 63  # LIVEUPDATE_SESSION_NAME_LENGTH (64) includes the terminating NUL

CMD_CREATE_SESSION = 0x00
CMD_RETRIEVE_SESSION = 0x01
CMD_SESSION_PRESERVE_FD = 0x40
CMD_SESSION_RETRIEVE_FD = 0x41
CMD_SESSION_FINISH = 0x42
CMD_SESSION_GET_NAME = 0x43

_SESSION_ARG = struct.Struct("<Ii64s")  # struct liveupdate_ioctl_{create,retrieve}_session
_FD_ARG = struct.Struct("<IiQ")  # struct liveupdate_session_{preserve,retrieve}_fd
_FINISH_ARG = struct.Struct("<II")  # struct liveupdate_session_finish
_NAME_ARG = struct.Struct("<II64s")  # struct liveupdate_session_get_name

SYS_KEXEC_FILE_LOAD = 320  # x86_64
KEXEC_FILE_ON_CRASH = 0x2  # load the kernel a panic boots (into the crashkernel= reservation)
KEXEC_FILE_NO_INITRAMFS = 0x4
LINUX_REBOOT_MAGIC1 = 0xFEE1DEAD
LINUX_REBOOT_MAGIC2 = 672274793
LINUX_REBOOT_CMD_KEXEC = 0x45584543
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC


def _io(nr: int) -> int:
    return (IOCTL_TYPE << 8) | nr


class LiveUpdateError(OSError):
    """An ioctl on /dev/liveupdate or a session failed; the message says which and what it means."""


def _ioctl(fd: int, nr: int, arg: bytearray, what: str) -> bytearray:
    try:
        fcntl.ioctl(fd, _io(nr), arg, True)
    except OSError as exc:
        raise LiveUpdateError(exc.errno, f"{what}: {os.strerror(exc.errno)}{_hint(exc.errno, nr)}") from None
    return arg


def _hint(err: int, nr: int) -> str:
    hints = {
        (errno.EEXIST, CMD_CREATE_SESSION): " (a session with this name already exists)",
        (errno.EEXIST, CMD_SESSION_PRESERVE_FD): " (this token, or this file, is already preserved in the session)",
        (errno.ENOENT, CMD_RETRIEVE_SESSION): " (the previous kernel handed over no session with this name)",
        (errno.ENOENT, CMD_SESSION_RETRIEVE_FD): " (no file with this token in the session)",
        (errno.EOPNOTSUPP, CMD_SESSION_PRESERVE_FD): " (no LUO file handler can preserve this kind of file)",
        (errno.ENAMETOOLONG, CMD_CREATE_SESSION): f" (session names are at most {SESSION_NAME_MAX} bytes)",
    }
    return hints.get((err, nr), "")


def check_session_name(name: str) -> bytes:
    raw = name.encode()
    if not raw:
        raise ValueError("the session name is empty")
    if len(raw) > SESSION_NAME_MAX:
        raise ValueError(
            f"session name {name!r} is {len(raw)} bytes; LUO allows at most {SESSION_NAME_MAX} "
            "(LIVEUPDATE_SESSION_NAME_LENGTH is 64 including the NUL)"
        )
    if b"\0" in raw:
        raise ValueError("the session name contains a NUL byte")
    return raw


@dataclass
class Session:
    """A LUO session file descriptor. Closing it before the kexec releases everything preserved in it."""

    fd: int
    name: str

    def preserve(self, file_fd: int, token: int) -> None:
        arg = bytearray(_FD_ARG.pack(_FD_ARG.size, file_fd, token))
        _ioctl(self.fd, CMD_SESSION_PRESERVE_FD, arg, f"preserving fd {file_fd} as token {token} in {self.name!r}")

    def retrieve(self, token: int) -> int:
        arg = _ioctl(
            self.fd,
            CMD_SESSION_RETRIEVE_FD,
            bytearray(_FD_ARG.pack(_FD_ARG.size, -1, token)),
            f"retrieving token {token} from {self.name!r}",
        )
        return _FD_ARG.unpack(arg)[1]

    def finish(self) -> None:
        _ioctl(
            self.fd, CMD_SESSION_FINISH, bytearray(_FINISH_ARG.pack(_FINISH_ARG.size, 0)), f"finishing {self.name!r}"
        )

    def kernel_name(self) -> str:
        arg = _ioctl(self.fd, CMD_SESSION_GET_NAME, bytearray(_NAME_ARG.pack(_NAME_ARG.size, 0, b"")), "get name")
        return _NAME_ARG.unpack(arg)[2].split(b"\0", 1)[0].decode()

    def close(self) -> None:
        os.close(self.fd)


class LiveUpdate:
    """``/dev/liveupdate``, which only one process may hold open at a time."""

    def __init__(self, device: str = DEVICE):
        try:
            self.fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LiveUpdateError(
                errno.ENOENT,
                f"{device} does not exist: this kernel has no Live Update Orchestrator (build it with "
                "CONFIG_LIVEUPDATE and boot it with kho=on liveupdate=on)",
            ) from None
        except OSError as exc:
            extra = " (another process holds it open)" if exc.errno == errno.EBUSY else ""
            raise LiveUpdateError(exc.errno, f"cannot open {device}: {os.strerror(exc.errno)}{extra}") from None

    def _session(self, nr: int, name: str, what: str) -> Session:
        raw = check_session_name(name)
        arg = _ioctl(self.fd, nr, bytearray(_SESSION_ARG.pack(_SESSION_ARG.size, -1, raw)), f"{what} {name!r}")
        return Session(_SESSION_ARG.unpack(arg)[1], name)

    def create_session(self, name: str) -> Session:
        return self._session(CMD_CREATE_SESSION, name, "creating session")

    def retrieve_session(self, name: str) -> Session:
        return self._session(CMD_RETRIEVE_SESSION, name, "retrieving session")

    def close(self) -> None:
        os.close(self.fd)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def kexec_file_load(kernel: str, initrd: str | None, cmdline: str, flags: int = 0) -> None:
    """Loads a kernel with ``kexec_file_load(2)``: by default the next kernel, to which KHO state is handed at the
    kexec. Raises ``OSError`` with the kernel's errno.

    :param kernel: the bzImage, a path on this machine
    :param initrd: its initramfs (None: none, ``KEXEC_FILE_NO_INITRAMFS`` is added to ``flags``)
    :param cmdline: its command line
    :param flags: ``KEXEC_FILE_*`` flags, e.g. :data:`KEXEC_FILE_ON_CRASH` for the kernel a panic boots
    """
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    if not initrd:
        flags |= KEXEC_FILE_NO_INITRAMFS
    raw = cmdline.encode() + b"\0"
    kfd = os.open(kernel, os.O_RDONLY)
    try:
        ifd = os.open(initrd, os.O_RDONLY) if initrd else -1
        try:
            ret = libc.syscall(
                ctypes.c_long(SYS_KEXEC_FILE_LOAD),
                ctypes.c_int(kfd),
                ctypes.c_int(ifd),
                ctypes.c_ulong(len(raw)),
                ctypes.c_char_p(raw),
                ctypes.c_ulong(flags),
            )
        finally:
            if ifd >= 0:
                os.close(ifd)
    finally:
        os.close(kfd)
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"kexec_file_load({kernel}, flags {flags:#x}): {os.strerror(err)}")


def _reboot(cmd: int) -> None:
    libc = _libc()
    os.sync()
    if libc.reboot(ctypes.c_int(cmd)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"reboot({cmd:#x}): {os.strerror(err)}")


def reboot_kexec() -> None:
    """Jumps into the loaded kernel. Returns only on failure."""
    _reboot(LINUX_REBOOT_CMD_KEXEC)


def power_off() -> None:
    _reboot(LINUX_REBOOT_CMD_POWER_OFF)
