"""Debian guests for the lab VM: a root file system built from Debian packages and cached
(:mod:`~workbench.lab.guest.image`), booted with systemd as PID 1 (:mod:`~workbench.lab.guest.boot`)."""

from __future__ import annotations

from workbench.lab.guest.image import (
    DEFAULT_SUITE,
    GUEST_PACKAGES,
    GuestImage,
    GuestImageError,
    GuestSpec,
    build_guest,
    cached_guest,
    guest_spec,
    list_guests,
    resolve_guest,
)

__all__ = [
    "DEFAULT_SUITE",
    "GUEST_PACKAGES",
    "GuestImage",
    "GuestImageError",
    "GuestSpec",
    "build_guest",
    "cached_guest",
    "guest_spec",
    "list_guests",
    "resolve_guest",
]
