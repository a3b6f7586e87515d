"""Thin ctypes wrappers for the Linux calls that move memory into a memfd and are missing from :mod:`os`.

Every wrapper raises :class:`OSError` with the errno of the failed call. Addresses are plain integers (see
:func:`buffer_address`); the caller keeps the memory they point to alive for the duration of the call.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os

import numpy as np

__all__ = [
    "MADV_HUGEPAGE",
    "MADV_POPULATE_WRITE",
    "SPLICE_F_MOVE",
    "SPLICE_F_GIFT",
    "buffer_address",
    "fallocate",
    "vmsplice",
    "splice",
    "process_vm_readv",
    "set_pipe_size",
]

MADV_HUGEPAGE = mmap.MADV_HUGEPAGE
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14; Python 3.11 lacks the name
SPLICE_F_MOVE = 0x01
SPLICE_F_GIFT = 0x08


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)

_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int
_libc.vmsplice.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_size_t, ctypes.c_uint]
_libc.vmsplice.restype = ctypes.c_ssize_t
_libc.splice.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_int64),
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_int64),
    ctypes.c_size_t,
    ctypes.c_uint,
]
_libc.splice.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.process_vm_readv.restype = ctypes.c_ssize_t


def _check(result: int, call: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{call}: {os.strerror(errno)}")
    return result


def buffer_address(buf: mmap.mmap | np.ndarray) -> int:
    """The address of the first byte of ``buf`` (an mmap or a numpy array), without keeping it exported."""
    array = buf if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=np.uint8)
    return array.ctypes.data


def fallocate(fd: int, offset: int, length: int, mode: int = 0) -> None:
    """``fallocate(2)``: allocates the file's blocks (for a memfd, its pages) without writing them."""
    _check(_libc.fallocate(fd, mode, offset, length), "fallocate")


def vmsplice(pipe_write_fd: int, address: int, length: int, flags: int = 0) -> int:
    """``vmsplice(2)`` of one user range into a pipe; returns the bytes queued (possibly fewer than asked)."""
    iov = _IoVec(address, length)
    return _check(_libc.vmsplice(pipe_write_fd, ctypes.byref(iov), 1, flags), "vmsplice")


def splice(fd_in: int, fd_out: int, length: int, *, offset_out: int | None = None, flags: int = 0) -> int:
    """``splice(2)`` from a pipe to ``fd_out`` at ``offset_out`` (or its file position when ``None``);
    returns the bytes moved (possibly fewer than asked)."""
    out = ctypes.byref(ctypes.c_int64(offset_out)) if offset_out is not None else None
    return _check(_libc.splice(fd_in, None, fd_out, out, length, flags), "splice")


def process_vm_readv(pid: int, local_address: int, remote_address: int, length: int) -> int:
    """``process_vm_readv(2)`` of one range of process ``pid`` into one local range; returns the bytes read
    (possibly fewer than asked)."""
    local = _IoVec(local_address, length)
    remote = _IoVec(remote_address, length)
    return _check(_libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0), "process_vm_readv")


def set_pipe_size(fd: int, size: int) -> int:
    """Asks for a pipe buffer of ``size`` bytes (``F_SETPIPE_SZ``); returns the size the kernel granted."""
    return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
