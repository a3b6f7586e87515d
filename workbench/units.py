"""Sizes and durations as people write them: ``64M``, ``1.5G``, ``90s``, ``1.5m``, ``1h30m``.

Sizes use binary units (``K`` is 1024 bytes); durations are seconds. Every parser raises :class:`ValueError` with a
message that shows what it accepts, so that a command line or a notebook can pass it on as it is."""

from __future__ import annotations

import re

__all__ = ["parse_size", "format_size", "parse_duration", "format_duration"]

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"\d+(?:\.\d+)?"
#: hours, minutes, seconds, milliseconds, each optional, in that order ("m" followed by "s" is milliseconds)
_DURATION = re.compile(
    rf"(?:(?P<h>{_NUMBER})\s*h)?\s*(?:(?P<m>{_NUMBER})\s*m(?!s))?\s*"
    rf"(?:(?P<s>{_NUMBER})\s*s)?\s*(?:(?P<ms>{_NUMBER})\s*ms)?",
    re.IGNORECASE,
)


def parse_size(text: str | int) -> int:
    """Bytes from a size.

    :param text: ``64M``, ``1G``, ``4096``, ``1.5G``: a number with an optional binary unit K, M, G or T (a trailing
        ``B``/``iB`` is allowed, case does not matter), or an int, which is already bytes.
    :raises ValueError: ``text`` is not a size."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(rf"\s*({_NUMBER})\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size: use a number with an optional K, M, G or T suffix, e.g. 64M")
    return int(float(m[1]) * _SIZE_UNITS[m[2].upper()])


def format_size(nbytes: int) -> str:
    """A size in the largest binary unit it reaches: ``64M``, ``1.5G``, ``1000`` (below 1 KiB, plain bytes).

    Whole units are exact, so ``parse_size(format_size(n)) == n`` for them; other sizes are rounded to two decimals.

    :param nbytes: a number of bytes, not negative.
    :raises ValueError: ``nbytes`` is negative."""
    if nbytes < 0:
        raise ValueError(f"a size cannot be negative: {nbytes}")
    suffix, unit = next((s, u) for s, u in reversed(_SIZE_UNITS.items()) if nbytes >= u or u == 1)
    if nbytes % unit == 0:
        return f"{nbytes // unit}{suffix}"
    return f"{_decimals(nbytes / unit, 2)}{suffix}"


def parse_duration(text: str | float) -> float:
    """Seconds from a duration.

    :param text: ``90`` (seconds), ``90s``, ``250ms``, ``1.5m``, ``2h``, or parts from hours down, such as ``1h30m``
        or ``1m30.5s`` (what :func:`format_duration` writes); or a number, which is already seconds.
    :raises ValueError: ``text`` is not a duration (a negative number is not one either)."""
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"a duration cannot be negative: {text}")
        return float(text)
    stripped = str(text).strip()
    if re.fullmatch(_NUMBER, stripped):
        return float(stripped)
    m = _DURATION.fullmatch(stripped)
    if not m or m.lastindex is None:
        raise ValueError(
            f"{text!r} is not a duration: use seconds, or a number with a unit ms, s, m or h, e.g. 90s, 1.5m, 1h30m"
        )
    return sum(float(m[unit]) * factor for unit, factor in _DURATION_UNITS.items() if m[unit] is not None)


def format_duration(seconds: float) -> str:
    """A duration as people read it: ``250ms`` below a second, ``42.35s`` below a minute, then hours, minutes and
    whole seconds with the zero parts left out (``1m30s``, ``2h``, ``1h5s``). :func:`parse_duration` reads it back.

    :param seconds: the duration in seconds; a negative one is written with a leading ``-``."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if round(seconds * 1000, 3) < 1000:
        return f"{_decimals(seconds * 1000, 3)}ms"
    if round(seconds, 2) < 60:
        return f"{_decimals(seconds, 2)}s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value)


def _decimals(value: float, places: int) -> str:
    return f"{value:.{places}f}".rstrip("0").rstrip(".")
