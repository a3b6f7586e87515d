"""The answer to "is vmsplice/splice the way to turn anonymous memory into memfd memory?", computed from one
conversion run (:func:`workbench.kernels.conversion.run_conversion`), never written by hand."""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["best_by_strategy", "answer"]

_SPLICE = ("vmsplice-splice", "vmsplice-gift")


def best_by_strategy(frame: pd.DataFrame, size: int | None = None) -> pd.DataFrame:
    """The fastest verified combination of each available strategy at ``size`` (default: the largest size),
    fastest first; memfd-from-birth (nothing to convert) is left out."""
    size = size if size is not None else int(frame["size"].max())
    rows = frame[(frame["size"] == size) & frame["available"] & frame["verified"]]
    rows = rows[rows["strategy"] != "memfd-from-birth"]
    best = rows.loc[rows.groupby("strategy")["bytes_per_s"].idxmax()]
    return best.sort_values("bytes_per_s", ascending=False).reset_index(drop=True)


def answer(frame: pd.DataFrame, limits: dict[str, float]) -> str:
    """One paragraph, every number taken from ``frame`` and ``limits``."""
    size = int(frame["size"].max())
    best = best_by_strategy(frame, size)
    if best.empty:
        return "No conversion strategy verified in this run: there is nothing to conclude."
    top = best.iloc[0]
    splice = best[best["strategy"].isin(_SPLICE)]
    gb = 1e9
    memcpy = limits["memcpy_bytes_per_s"]
    parts = [
        f"For {size / (1 << 20):.0f} MiB of touched anonymous memory, the fastest verified conversion into a memfd "
        f"was {top['strategy']} ({top['copier']}, {int(top['threads'])} thread(s)) at {top['bytes_per_s'] / gb:.2f} "
        f"GB/s, {top['ratio_to_memcpy']:.0%} of the {memcpy / gb:.2f} GB/s that memcpy reaches between prefaulted "
        "buffers in the same run."
    ]
    if not splice.empty:
        s = splice.iloc[0]
        verdict = "is" if s["strategy"] == top["strategy"] else "is not"
        parts.append(
            f"vmsplice/splice {verdict} the answer: its best ({s['strategy']}, pipe "
            f"{int(s['pipe_size_obtained']) >> 10} KiB) reached {s['bytes_per_s'] / gb:.2f} GB/s "
            f"({s['bytes_per_s'] / top['bytes_per_s']:.0%} of the fastest)."
        )
    fault = limits.get("fault_pages_per_s")
    alloc_copy = limits.get("alloc_then_copy_bytes_per_s")
    if fault and alloc_copy:
        parts.append(
            f"Allocating the destination pages, not copying, sets the limit: fresh 4 KiB pages arrive at "
            f"{fault / 1e3:.0f} k pages/s ({fault * 4096 / gb:.2f} GB/s), and allocating then copying cannot beat "
            f"{alloc_copy / gb:.2f} GB/s on one thread."
        )
    huge = frame[frame["strategy"].isin(("thp-shmem", "hugetlb"))]
    unavailable = huge[~huge["available"]].drop_duplicates("strategy")
    if not unavailable.empty:
        reasons = "; ".join(f"{r.strategy}: {r.reason}" for r in unavailable.itertuples())
        parts.append(f"Huge pages, which would cut the allocation cost, were unavailable here ({reasons}).")
    birth = frame[(frame["strategy"] == "memfd-from-birth") & frame["verified"]]
    if not birth.empty:
        seconds = size / top["bytes_per_s"] if top["bytes_per_s"] and not math.isinf(top["bytes_per_s"]) else math.nan
        parts.append(
            f"Memory that is a memfd from birth needs no conversion at all, which saves {seconds:.2f} s per "
            f"{size / (1 << 20):.0f} MiB even against the fastest strategy: allocate in memfds from the start."
        )
    return " ".join(parts)
