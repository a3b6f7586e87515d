"""Lab kernels for tests without a build: cached kernel folders (a manifest and small stand-in files), a bzImage
with a real setup header, and tiny source trees."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

__all__ = ["fake_bzimage", "fake_cached_kernel", "fake_source_tree"]


def fake_bzimage(path: Path, release: str) -> Path:
    """Writes a file that parses as a bzImage whose setup header names ``release`` (and nothing else works)."""
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    version_at = 0x300
    struct.pack_into("<H", image, 0x20E, version_at - 0x200)
    text = f"{release} (lab@workbench) #1 SMP".encode() + b"\0"
    image[version_at : version_at + len(text)] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(image))
    return path


def fake_cached_kernel(cache: Path, folder: str, **manifest: Any) -> Path:
    """A kernel folder ``folder`` in the workbench cache under ``cache`` (what ``XDG_CACHE_HOME`` names), with
    ``manifest`` (version, series, config_hash and release get defaults) and stand-ins for its files."""
    path = cache / "live-update-workbench" / "kernels" / folder
    path.mkdir(parents=True)
    manifest = {"version": "7.2.13", "series": "7.2", "config_hash": "0" * 12, "release": "7.2.13-lab", **manifest}
    fake_bzimage(path / "bzImage", manifest["release"])
    (path / "vmlinux").write_bytes(b"\x7fELF")
    (path / "config").write_text("CONFIG_KEXEC_HANDOVER=y\n")
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def fake_source_tree(path: Path, files: dict[str, str]) -> Path:
    """A source tree at ``path`` with ``files`` ({relative path: text}) and a kernel Makefile's version lines."""
    files = {"Makefile": "VERSION = 7\nPATCHLEVEL = 2\nSUBLEVEL = 13\nEXTRAVERSION =\n", **files}
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path
