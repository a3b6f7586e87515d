"""The known data set of the ``preload`` workload: values that say which key and seed they belong to, written into
a redis-server over its unix socket, and found again in raw memory (a program's birth memfds after the kexec).

Every value is ``value_size`` bytes: a text header ``wb-preload seed=S key=K|`` and a body of words derived from the
seed and the key, so that a value found in memory proves both where it came from and that none of its bytes
changed. :func:`find_values` scans memory once for the headers (a regular expression, linear in the memory) and
compares each candidate with the value it names; the memory may hold stale copies too (a client's query buffer,
freed blocks), so a key counts as found when at least one intact copy of its value is there."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["HEADER_PATTERN", "DataFound", "key_name", "value_of", "key_count", "RedisSocket", "find_values"]

#: what every value starts with; ``seed`` and ``key`` in decimal
HEADER_PATTERN = re.compile(rb"wb-preload seed=(\d{1,10}) key=(\d{1,10})\|")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIN_VALUE_SIZE = 64


def key_name(seed: int, key: int) -> str:
    """The redis key of value number ``key`` of the data set of ``seed``."""
    return f"wb:{seed}:{key}"


def value_of(seed: int, key: int, value_size: int) -> bytes:
    """Value number ``key`` of the data set of ``seed``, ``value_size`` bytes (at least 64): its header, then words
    that differ for every key and seed.

    :raises ValueError: ``value_size`` too small for the header"""
    if value_size < _MIN_VALUE_SIZE:
        raise ValueError(f"a value needs at least {_MIN_VALUE_SIZE} bytes, not {value_size}")
    header = f"wb-preload seed={seed} key={key}|".encode()
    words = (value_size - len(header) + 7) // 8
    salt = np.uint64((seed * 1_000_003 + key * 7919 + 1) & 0xFFFFFFFFFFFFFFFF)
    body = (np.arange(words, dtype=np.uint64) + salt) * _GOLDEN ^ salt
    return header + body.tobytes()[: value_size - len(header)]


def key_count(data_bytes: int, value_size: int) -> int:
    """How many values of ``value_size`` bytes make about ``data_bytes`` of data (at least one)."""
    return max(1, -(-data_bytes // value_size))


class RedisSocket:
    """A connection to a redis-server's unix socket at ``path`` that sends commands in pipelined batches."""

    def __init__(self, path: str, timeout_s: float = 120.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout_s)
        self.sock.connect(path)
        self.pending = b""

    def close(self) -> None:
        self.sock.close()

    def call(self, *words: bytes) -> bytes:
        """One command; returns its reply's first line (without ``\\r\\n``), e.g. ``+PONG`` or ``:42``."""
        self.sock.sendall(_encode(words))
        return self._replies(1)[0]

    def set_many(self, items: Iterable[tuple[bytes, bytes]], batch: int = 256) -> int:
        """``SET`` of every (key, value) of ``items``, ``batch`` commands in flight; returns how many were set.

        :raises RuntimeError: redis answered one of them with anything but ``+OK``"""
        done, chunk = 0, []
        for key, value in items:
            chunk.append(_encode((b"SET", key, value)))
            if len(chunk) == batch:
                done += self._send_sets(chunk)
                chunk = []
        if chunk:
            done += self._send_sets(chunk)
        return done

    def _send_sets(self, chunk: list[bytes]) -> int:
        self.sock.sendall(b"".join(chunk))
        bad = [r for r in self._replies(len(chunk)) if r != b"+OK"]
        if bad:
            raise RuntimeError(f"redis refused a SET: {bad[0].decode(errors='replace')}")
        return len(chunk)

    def _replies(self, count: int) -> list[bytes]:
        """``count`` single-line replies (status, error or integer)."""
        while self.pending.count(b"\r\n") < count:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.pending += data
        lines = self.pending.split(b"\r\n", count)
        self.pending = lines[count] if len(lines) > count else b""
        return lines[:count]


def _encode(words: Iterable[bytes]) -> bytes:
    words = list(words)
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


@dataclass(frozen=True)
class DataFound:
    """What :func:`find_values` found: ``keys`` expected, ``intact`` (keys with at least one intact copy of their
    value), ``copies`` (intact copies, stale ones included), ``damaged`` (headers of this seed whose value differs:
    stale, partly overwritten copies in freed memory, or damage), ``missing`` (up to 20 keys with no intact copy)."""

    keys: int
    intact: int
    copies: int
    damaged: int
    missing: tuple[int, ...]

    @property
    def complete(self) -> bool:
        return self.keys > 0 and self.intact == self.keys

    def as_dict(self) -> dict:
        return {
            "keys": self.keys,
            "intact": self.intact,
            "copies": self.copies,
            "damaged": self.damaged,
            "missing": list(self.missing),
            "complete": self.complete,
        }


def find_values(buffers: Iterable[bytes], seed: int, keys: int, value_size: int) -> DataFound:
    """Looks for the ``keys`` values of the data set of ``seed`` in ``buffers`` (each contiguous memory; a value
    that straddles two buffers is not seen, so join what is adjacent in the program's address space first).

    :param buffers: the memory to search
    :param seed: the data set's seed
    :param keys: how many values it has (keys ``0 .. keys-1``)
    :param value_size: each value's size in bytes"""
    intact: set[int] = set()
    copies = damaged = 0
    for buf in buffers:
        for match in HEADER_PATTERN.finditer(buf):
            if int(match[1]) != seed:
                continue
            key = int(match[2])
            start = match.start()
            if key < keys and buf[start : start + value_size] == value_of(seed, key, value_size):
                intact.add(key)
                copies += 1
            else:
                damaged += 1
    missing = tuple(k for k in range(keys) if k not in intact)[:20]
    return DataFound(keys, len(intact), copies, damaged, missing)
