"""What changed since last time: every headline number of a report compared with earlier reports.

The reference is the previous report on the same machine (the latest earlier ``demo`` record with the same
hostname and the same smoke/full parameters whose result stores its headlines), or a chosen set of demo records
(their mean for measured numbers, the latest for exact ones). The noise of a measured number combines its own
noise (the spread of its repeats within the run) with the run-to-run spread of that number over the earlier
reports on this machine (their standard deviation, once there are at least two). A measured number is flagged
when it left the 99 % prediction interval of that spread (Student's t for the number of earlier reports, so two
reports flag almost nothing, widened for the reference's own noise; :data:`THRESHOLD` times the noise when the
noise is only the run's own repeats); an exact number (a count, a verdict) is flagged whenever it differs; when
the noise is not known, the row says so instead of flagging.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from workbench.experiments.compare import t_quantile
from workbench.records import RecordStore, RunNotFound, RunRecord
from workbench.report.errors import ChangesError

__all__ = [
    "THRESHOLD",
    "COLUMNS",
    "VERDICTS",
    "Changes",
    "compare_headlines",
    "earlier_reports",
    "chosen_reports",
    "changes_since",
]

#: a measured number whose noise is only its run's own repeats is flagged beyond this many times that noise
THRESHOLD = 3.0

#: the columns of :attr:`Changes.table`, in order
COLUMNS = (
    "notebook",
    "key",
    "headline",
    "name",
    "label",
    "unit",
    "exact",
    "better",
    "previous",
    "now",
    "change",
    "relative_change",
    "noise",
    "earlier_values",
    "verdict",
    "direction",
    "flagged",
)

#: what a row's ``verdict`` can say, and whether it is flagged
VERDICTS = {
    "same": False,
    "changed": True,
    "within noise": False,
    "beyond noise": True,
    "noise unknown": False,
    "not measured": False,
    "new": False,
    "missing now": True,
}


@dataclass(frozen=True)
class Changes:
    """A comparison of one report's headlines with earlier reports.

    ``table`` has :data:`COLUMNS`, flagged rows first; ``reference`` is what the numbers were compared with
    (``id`` and ``started`` of each demo record; empty when there was nothing to compare with), ``history`` the ids
    of the earlier reports whose spread is the run-to-run noise."""

    table: pd.DataFrame
    reference: list[dict[str, str]] = field(default_factory=list)
    history: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> pd.DataFrame:
        return self.table[self.table["flagged"]]

    def since(self) -> str:
        """``<record id, date>`` of the reference, as the front page's heading names it."""
        if not self.reference:
            return "no earlier report"
        return "; ".join(f"{r['id']}, {r['started'][:16].replace('T', ' ')}" for r in self.reference)

    def as_json(self) -> dict[str, Any]:
        rows = [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in self.table.to_dict("records")
        ]
        flagged = int(self.table["flagged"].sum())
        return {"since": self.reference, "history": self.history, "flagged": flagged, "rows": rows}


def _numbers(headlines: Iterable[dict[str, Any]]) -> dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]:
    """(headline key, number name) -> (headline, number), in display order."""
    found = {}
    for headline in headlines:
        for number in headline.get("numbers", []):
            found[(headline["key"], number["name"])] = (headline, number)
    return found


def _is_measure(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare_headlines(
    current: Sequence[dict[str, Any]],
    reference: Sequence[Sequence[dict[str, Any]]],
    history: Sequence[Sequence[dict[str, Any]]] = (),
    notebooks: Collection[str] | None = None,
) -> pd.DataFrame:
    """Every number of ``current`` (a report's headlines, as :func:`workbench.report.collect.headlines_of` returns
    them) compared with ``reference`` (the headlines of each report compared with, oldest first), with the
    run-to-run spread taken over ``history`` (the headlines of each earlier report on the machine). Numbers are
    matched by headline key and number name; a number only the reference has is ``missing now``, if its notebook
    is among ``notebooks`` (the notebooks the report ran; default: any). Returns a table with :data:`COLUMNS`,
    flagged rows first."""
    now_numbers = _numbers(current)
    ref_numbers = [_numbers(r) for r in reference]
    hist_numbers = [_numbers(h) for h in history]
    keys = list(now_numbers)
    for numbers in ref_numbers:
        keys += [
            k
            for k, (headline, _) in numbers.items()
            if k not in now_numbers and k not in keys and (notebooks is None or headline.get("notebook") in notebooks)
        ]
    rows = []
    for key in keys:
        refs = [numbers[key] for numbers in ref_numbers if key in numbers]
        headline, number = now_numbers.get(key) or refs[-1]
        current_number = now_numbers[key][1] if key in now_numbers else None
        earlier = [n[key][1]["value"] for n in hist_numbers if key in n and _is_measure(n[key][1]["value"])]
        rows.append(_row(headline, number, current_number, [n for _, n in refs], earlier))
    # object columns keep None (not NaN) where a value is missing, and verdicts apart from numbers
    table = pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)
    table = table.astype({"exact": bool, "flagged": bool, "earlier_values": int})
    if table.empty:
        return table
    order = table["flagged"].map(lambda f: 0 if f else 1)
    return table.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def _row(
    headline: dict[str, Any],
    number: dict[str, Any],
    current_number: dict[str, Any] | None,
    previous_numbers: list[dict[str, Any]],
    earlier: list[float],
) -> dict[str, Any]:
    """One row of the table: ``number`` (of ``headline``) now (``current_number``, None when this report does not
    have it) against its values in the reference reports and the earlier reports' values."""
    exact = bool(number.get("exact"))
    present = current_number is not None
    now = current_number["value"] if present else None
    values = [n["value"] for n in previous_numbers]
    if not values:
        previous = None
    elif exact or not all(_is_measure(v) for v in values):
        previous = values[-1]
    else:
        previous = statistics.fmean(values)
    change = relative = noise = None
    if _is_measure(now) and _is_measure(previous):
        change = now - previous
        relative = change / abs(previous) if previous else None
    if not exact:
        own = current_number.get("noise") if present else None
        if own is None and previous_numbers:
            own = previous_numbers[-1].get("noise")
        parts = [own] if own is not None else []
        if len(earlier) >= 2:
            parts.append(statistics.stdev(earlier))
        noise = math.sqrt(sum(p * p for p in parts)) if parts else None
    if not previous_numbers:
        verdict = "new"
    elif not present:
        verdict = "missing now"
    elif exact:
        verdict = "same" if now == previous else "changed"
    elif change is None:
        verdict = "same" if now == previous else "not measured"
    elif noise is None:
        verdict = "noise unknown"
    else:
        factor = THRESHOLD
        if len(earlier) >= 2:
            factor = t_quantile(len(earlier) - 1) * math.sqrt(1 + 1 / max(1, len(values)))
        verdict = "beyond noise" if abs(change) > factor * noise else "within noise"
    direction = None
    better = number.get("better")
    if change and better in ("higher", "lower"):
        direction = "better" if (change > 0) == (better == "higher") else "worse"
    return {
        "notebook": headline.get("notebook"),
        "key": headline["key"],
        "headline": headline.get("title"),
        "name": number["name"],
        "label": number.get("label"),
        "unit": number.get("unit", ""),
        "exact": exact,
        "better": better,
        "previous": previous,
        "now": now,
        "change": change,
        "relative_change": relative,
        "noise": noise,
        "earlier_values": len(earlier),
        "verdict": verdict,
        "direction": direction,
        "flagged": VERDICTS[verdict],
    }


def _has_headlines(record: RunRecord) -> bool:
    return isinstance(record.result.get("headlines"), list)


def earlier_reports(
    store: RecordStore,
    hostname: str | None,
    smoke: bool,
    full: bool,
    before: datetime,
    exclude: Iterable[str] = (),
) -> list[RunRecord]:
    """The demo records made before ``before`` on the machine ``hostname`` with the same smoke/full parameters
    whose result stores headlines (finished, whether every notebook succeeded or not), oldest first.

    :param exclude: ids to leave out (the report being compared)"""
    skip = set(exclude)
    return [
        r
        for r in store.runs(kind="demo")
        if r.id not in skip
        and r.status in ("ok", "failed")
        and r.started < before
        and r.environment.get("hostname") == hostname
        and bool(r.params.get("smoke")) == smoke
        and bool(r.params.get("full")) == full
        and _has_headlines(r)
    ]


def chosen_reports(store: RecordStore, record_ids: Iterable[str]) -> list[RunRecord]:
    """The demo records ``record_ids``, oldest first, checked: each must exist, be a ``demo`` record and store
    its headlines.

    :raises ~workbench.report.errors.ChangesError: naming the first id that cannot be compared with"""
    records = []
    for record_id in record_ids:
        try:
            record = store.get(record_id)
        except RunNotFound:
            raise ChangesError(
                f"no record {record_id!r} in {store.path}: pick a demo record from 'workbench records list --kind demo'"
            ) from None
        if record.kind != "demo":
            raise ChangesError(f"record {record.id} is a {record.kind} record, not a demo: only reports compare")
        if not _has_headlines(record):
            raise ChangesError(
                f"demo record {record.id} stores no headlines (it was made before reports kept them, or it was "
                "interrupted): pick a later one"
            )
        records.append(record)
    return sorted({r.id: r for r in records}.values(), key=lambda r: (r.started, r.id))


def changes_since(
    store: RecordStore,
    headlines: Sequence[dict[str, Any]],
    *,
    hostname: str | None,
    smoke: bool,
    full: bool,
    before: datetime,
    exclude: Iterable[str] = (),
    compare_with: Iterable[str] | None = None,
    notebooks: Collection[str] | None = None,
) -> Changes:
    """The comparison of ``headlines`` (a report's) with the previous report on this machine, or with the demo
    records ``compare_with``; the run-to-run spread always comes from the earlier reports on this machine (with
    the same parameters).

    :param hostname: the machine the report ran on (the demo record's ``environment["hostname"]``)
    :param smoke: the report ran with the smoke parameters
    :param full: the report ran with the full parameters
    :param before: when the report started; only earlier reports count
    :param exclude: ids never to compare with (the report's own record)
    :param compare_with: demo record ids chosen instead of the previous report
    :param notebooks: the notebooks the report ran (file names): numbers of the others are not ``missing now``
    :raises ~workbench.report.errors.ChangesError: a chosen record cannot be compared with
    """
    history = earlier_reports(store, hostname, smoke, full, before, exclude)
    chosen = list(compare_with or [])
    reference = chosen_reports(store, chosen) if chosen else history[-1:]
    table = compare_headlines(
        headlines,
        [r.result["headlines"] for r in reference],
        [r.result["headlines"] for r in history],
        notebooks,
    )
    return Changes(
        table=table,
        reference=[{"id": r.id, "started": r.started.isoformat()} for r in reference],
        history=[r.id for r in history],
    )
