"""A notebook's headline finding: the sentence, the few numbers and the figure that the report's front page shows.

A notebook cell calls :func:`show_headline` after its key result. It displays one output with three
representations: the headline as JSON under :data:`MIME_TYPE` (what :mod:`workbench.report.collect` reads back
from the executed notebook), ``text/html`` (so the notebook's own page shows the finding) and ``text/plain``.

The JSON shape, which records and re-runs rely on::

    {"key", "title", "text",
     "numbers": [{"name", "label", "value", "unit", "exact": bool, "noise": float | null,
                  "better": "higher" | "lower" | null}],
     "figure": plotly figure JSON or null,
     "record_ids": [...]}

An ``exact`` number is a count or a verdict (pages verified, cells passed) that must come out the same on a
re-run; a measured one may carry ``noise``, the standard deviation of its repeats within the run.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from workbench.report.errors import BadHeadline

__all__ = [
    "MIME_TYPE",
    "Number",
    "Headline",
    "Finding",
    "show_headline",
    "figure_json",
    "format_value",
]

MIME_TYPE = "application/vnd.live-update-workbench.headline+json"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_BETTER = ("higher", "lower", None)

Value = bool | int | float | None


def _plain_value(value: Any, where: str) -> Value:
    """``value`` as a JSON-ready bool, int or float; NaN and infinities (a rate over zero seconds, a phase that
    did not run) become None."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, bool | int | float):
        value = value.item()  # a NumPy scalar
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    raise BadHeadline(f"{where}: the value {value!r} is not a number, a bool or None")


@dataclass(frozen=True)
class Number:
    """One number of a headline.

    :param name: identifies the number across runs (letters, digits, ``_.-``), e.g. ``blackout_s``
    :param label: what a reader sees, e.g. ``blackout``
    :param value: the number (int or float), a verdict (bool), or None when this run could not measure it
    :param unit: ``s``, ``B``, ``B/s``, ``ratio`` (shown as a percentage), or any other word shown after the value
    :param exact: a count or verdict that must be the same on a re-run
    :param noise: the standard deviation of the value over repeats within the run, when there were repeats
    :param better: whether a ``higher`` or ``lower`` value is an improvement, or None when neither is
    """

    name: str
    label: str
    value: Value
    unit: str = ""
    exact: bool = False
    noise: float | None = None
    better: Literal["higher", "lower"] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise BadHeadline(f"number name {self.name!r} must be letters, digits and _.- (e.g. 'blackout_s')")
        where = f"number {self.name!r}"
        if not isinstance(self.label, str) or not isinstance(self.unit, str):
            raise BadHeadline(f"{where}: label and unit must be text")
        if not isinstance(self.exact, bool):
            raise BadHeadline(f"{where}: exact must be true or false, not {self.exact!r}")
        if self.better not in _BETTER:
            raise BadHeadline(f"{where}: better must be 'higher', 'lower' or None, not {self.better!r}")
        object.__setattr__(self, "value", _plain_value(self.value, where))
        noise = _plain_value(self.noise, f"{where} noise")
        if isinstance(noise, bool) or (noise is not None and noise < 0):
            raise BadHeadline(f"{where}: noise must be a standard deviation (a number >= 0) or None")
        object.__setattr__(self, "noise", None if noise is None else float(noise))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "exact": self.exact,
            "noise": self.noise,
            "better": self.better,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Number:
        """A number from its JSON form (or a plain dict a notebook cell wrote); missing optional fields take
        their defaults."""
        if not isinstance(data, Mapping):
            raise BadHeadline(f"a headline number must be an object, not {type(data).__name__}")
        for required in ("name", "label", "value"):
            if required not in data:
                raise BadHeadline(f"headline number {dict(data)!r} has no {required!r}")
        unknown = set(data) - {"name", "label", "value", "unit", "exact", "noise", "better"}
        if unknown:
            raise BadHeadline(f"headline number {data.get('name')!r} has unknown fields {sorted(unknown)}")
        return cls(
            name=data["name"],
            label=data["label"],
            value=data["value"],
            unit=data.get("unit") or "",
            exact=data.get("exact", False),
            noise=data.get("noise"),
            better=data.get("better"),
        )

    def formatted(self) -> str:
        """The value with its unit, as the report shows it (``1.23 GB/s``, ``83 %``, ``yes``)."""
        text = format_value(self.value, self.unit)
        if self.noise is not None and self.value is not None and not isinstance(self.value, bool):
            text += f" ± {format_value(self.noise, self.unit)}"
        return text


class Finding(NamedTuple):
    """What a library function computes for a headline from a run's numbers: the sentence and the numbers; the
    notebook cell adds the key, title, figure and records."""

    text: str
    numbers: list[Number]


@dataclass(frozen=True)
class Headline:
    """A notebook's headline finding (see the module docstring for its JSON form)."""

    key: str
    title: str
    text: str
    numbers: tuple[Number, ...] = ()
    figure: dict[str, Any] | None = None
    record_ids: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _NAME.fullmatch(self.key):
            raise BadHeadline(f"headline key {self.key!r} must be letters, digits and _.- (e.g. 'cycle')")
        if not isinstance(self.title, str) or not isinstance(self.text, str):
            raise BadHeadline(f"headline {self.key!r}: title and text must be text")
        numbers = tuple(n if isinstance(n, Number) else Number.from_json(n) for n in self.numbers)
        names = [n.name for n in numbers]
        if len(set(names)) != len(names):
            raise BadHeadline(f"headline {self.key!r}: number names repeat ({names})")
        object.__setattr__(self, "numbers", numbers)
        if isinstance(self.record_ids, str) or not all(isinstance(r, str) for r in self.record_ids):
            raise BadHeadline(f"headline {self.key!r}: record_ids must be a list of record ids (text)")
        object.__setattr__(self, "record_ids", tuple(r for r in self.record_ids if r))
        if self.figure is not None and not isinstance(self.figure, Mapping):
            object.__setattr__(self, "figure", figure_json(self.figure))

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "text": self.text,
            "numbers": [n.to_json() for n in self.numbers],
            "figure": self.figure,
            "record_ids": list(self.record_ids),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Headline:
        """A headline from its JSON form; extra fields (``notebook``, ``page``, added by the collector) are
        ignored. Raises :class:`~workbench.report.errors.BadHeadline` naming what is wrong."""
        if not isinstance(data, Mapping):
            raise BadHeadline(f"a headline must be an object, not {type(data).__name__}")
        for required in ("key", "title", "text", "numbers"):
            if required not in data:
                raise BadHeadline(f"headline {data.get('key')!r} has no {required!r}")
        if not isinstance(data["numbers"], list):
            raise BadHeadline(f"headline {data.get('key')!r}: numbers must be a list")
        figure = data.get("figure")
        if figure is not None and not isinstance(figure, Mapping):
            raise BadHeadline(f"headline {data.get('key')!r}: figure must be plotly figure JSON or null")
        record_ids = data.get("record_ids") or []
        if not isinstance(record_ids, list):
            raise BadHeadline(f"headline {data.get('key')!r}: record_ids must be a list")
        return cls(
            key=data["key"],
            title=data["title"],
            text=data["text"],
            numbers=tuple(data["numbers"]),
            figure=dict(figure) if figure is not None else None,
            record_ids=tuple(record_ids),
        )

    def to_html(self) -> str:
        """The headline as the notebook's page shows it: title, text, a table of the numbers, the records."""
        rows = "".join(
            f"<tr><td>{html.escape(n.label)}</td><td style='text-align:right'><b>{html.escape(n.formatted())}</b>"
            f"</td><td>{'exact' if n.exact else ''}</td></tr>"
            for n in self.numbers
        )
        records = ", ".join(f"<code>{html.escape(r)}</code>" for r in self.record_ids)
        return (
            "<div class='wb-headline' style='border-left:4px solid #2b6cb0;padding:.4em 1em;margin:.5em 0'>"
            f"<div style='font-size:1.2em;font-weight:bold'>Headline: {html.escape(self.title)}</div>"
            f"<p>{html.escape(self.text)}</p>"
            f"<table>{rows}</table>"
            + (f"<p style='font-size:.9em'>records: {records}</p>" if records else "")
            + "</div>"
        )

    def to_plain(self) -> str:
        lines = [f"Headline: {self.title}", self.text]
        lines += [f"  {n.label}: {n.formatted()}" + (" (exact)" if n.exact else "") for n in self.numbers]
        if self.record_ids:
            lines.append("records: " + ", ".join(self.record_ids))
        return "\n".join(lines)

    def mimebundle(self) -> dict[str, Any]:
        """The display bundle :func:`show_headline` displays."""
        return {MIME_TYPE: self.to_json(), "text/html": self.to_html(), "text/plain": self.to_plain()}


def figure_json(figure: Any) -> dict[str, Any] | None:
    """A plotly figure (a ``go.Figure``, or its dict) as plain JSON data (NumPy arrays, dates and the like
    encoded the way plotly encodes them), or None for None."""
    if figure is None:
        return None
    import plotly.io as pio

    try:
        data = json.loads(pio.to_json(figure, validate=False, engine="json"))
    except (TypeError, ValueError) as exc:
        raise BadHeadline(f"the headline's figure is not a plotly figure: {exc}") from exc
    if not isinstance(data, dict) or "data" not in data:
        raise BadHeadline("the headline's figure is not a plotly figure (it has no 'data')")
    return data


def show_headline(
    key: str,
    title: str,
    text: str,
    numbers: Iterable[Number | Mapping[str, Any]],
    *,
    figure: Any = None,
    record_ids: Iterable[str] = (),
) -> None:
    """Displays a notebook's headline finding (call it from a cell, after the result it sums up).

    :param key: identifies the headline across runs (letters, digits, ``_.-``), e.g. ``cycle``
    :param title: the finding's title on the front page
    :param text: one or two sentences, every number in them computed from this run
    :param numbers: :class:`Number` objects (or dicts of their fields)
    :param figure: the key figure (a plotly figure the notebook already made), or None
    :param record_ids: the ids of the records the notebook made for this finding
    :raises ~workbench.report.errors.BadHeadline: a field does not have the documented shape
    """
    from IPython.display import display

    headline = Headline(key, title, text, tuple(numbers), figure, tuple(record_ids))
    display(headline.mimebundle(), raw=True)


def format_value(value: Value, unit: str = "") -> str:
    """``value`` as the report writes it: ``yes``/``no`` for verdicts, binary sizes for ``B``, decimal rates for
    ``B/s``, a percentage for ``ratio``, three significant digits for seconds."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if unit == "B":
        return _format_bytes(value)
    if unit == "B/s":
        return f"{_significant(value / 1e9)} GB/s" if abs(value) >= 1e8 else f"{_significant(value / 1e6)} MB/s"
    if unit == "ratio":
        return f"{_significant(value * 100)} %"
    if unit == "s":
        return f"{_significant(value * 1000)} ms" if 0 < abs(value) < 1 else f"{_significant(value)} s"
    number = f"{value:,}" if isinstance(value, int) else _significant(value)
    return f"{number} {unit}".strip()


def _significant(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _format_bytes(value: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= size:
            return f"{_significant(value / size)} {unit}"
    return f"{value:,.0f} B" if isinstance(value, int) or float(value).is_integer() else f"{_significant(value)} B"
