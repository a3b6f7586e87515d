"""The blackout of keeping a program's memory through its birth memfds (the ``preload`` workload) against the two
other ways to keep the same amount of anonymous memory, in one run on the same target: converting it into a memfd
with a conversion strategy (the ``converted`` workload) and dumping the whole process with CRIU (the ``criu``
workload). Each comparison cycle keeps as many bytes as the ``preload`` cycle preserved; under TCG the absolute
times mean little, so the result leads with the ratios."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from workbench.lab.cycle import run_cycle
from workbench.lab.target import Target
from workbench.lab.workloads.converted import ConvertedMemfdWorkload
from workbench.lab.workloads.criu import CriuWorkload
from workbench.lab.workloads.preload import PreloadWorkload
from workbench.records import RecordStore

__all__ = ["compare_blackouts", "blackout_ratios", "COMPARED_FIELDS"]

#: the fields of each cycle the comparison keeps
COMPARED_FIELDS = ("verified", "blackout_s", "record_id")
_PAGE = 4096
_PRELOAD_FIELDS = (
    "birth_memfds",
    "bytes_preserved",
    "pages_verified",
    "preserve_s",
    "retrieve_s",
    "data_after",
)


def compare_blackouts(
    preload: PreloadWorkload,
    make_target: Callable[[], Target],
    *,
    strategy: str = "copy-fresh",
    store: RecordStore | None = None,
) -> dict[str, Any]:
    """Runs the ``preload`` cycle, then a ``converted`` cycle (one memfd filled by ``strategy``) and a ``criu`` cycle
    (that much private anonymous memory) of the bytes it preserved, each on a fresh target, each recorded.

    :param preload: the program and its data set
    :param make_target: a new target for each cycle (e.g. ``lambda: QemuTarget(kernel=...)``)
    :param strategy: the conversion strategy to compare with (the fastest of ``workbench bench conversion --target
        vm`` on this machine; ``copy-fresh`` by default)
    :param store: where the three ``lab.cycle`` records go (default: the workbench's store)
    :returns: ``ratios`` (``preload_to_converted`` and ``preload_to_criu`` of the blackouts, ``criu_downtime_to_
        preload_blackout``), ``bytes`` (the preserved bytes every cycle kept) and each cycle's ``verified``,
        ``blackout_s`` and ``record_id`` (the preload cycle's birth memfds, bytes preserved, pages verified,
        preserve and retrieve seconds and data found; CRIU's ``downtime_s``)"""
    first = run_cycle(preload, target=make_target(), store=store)
    size = -(-first["bytes_preserved"] // _PAGE) * _PAGE
    converted = run_cycle(
        ConvertedMemfdWorkload(memfds=1, memfd_size=size, convert=[strategy]), target=make_target(), store=store
    )
    criu = run_cycle(CriuWorkload(anon_size=size), target=make_target(), store=store)
    cycles = {
        "preload": {k: first.get(k) for k in (*COMPARED_FIELDS, *_PRELOAD_FIELDS)},
        "converted": {k: converted.get(k) for k in COMPARED_FIELDS} | {"strategy": strategy},
        "criu": {k: criu.get(k) for k in COMPARED_FIELDS} | {"downtime_s": criu.get("downtime_s")},
    }
    return {"ratios": blackout_ratios(first, converted, criu), "bytes": size, "program": preload.program,
            "cycles": cycles}  # fmt: skip


def blackout_ratios(
    preload: Mapping[str, Any], converted: Mapping[str, Any], criu: Mapping[str, Any]
) -> dict[str, float | None]:
    """The ``preload`` cycle's blackout against the ``converted`` and ``criu`` cycles' (their results), and CRIU's
    downtime against it; None where a cycle did not verify or did not measure it."""

    def verified_blackout(result: Mapping[str, Any]) -> float | None:
        seconds = result.get("blackout_s")
        return float(seconds) if result.get("verified") and seconds else None

    mine, theirs, dumped = verified_blackout(preload), verified_blackout(converted), verified_blackout(criu)
    downtime = criu.get("downtime_s") if criu.get("verified") else None
    return {
        "preload_to_converted": mine / theirs if mine and theirs else None,
        "preload_to_criu": mine / dumped if mine and dumped else None,
        "criu_downtime_to_preload_blackout": downtime / mine if mine and downtime else None,
    }
