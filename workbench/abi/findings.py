"""The headline finding of the handover metadata notebook, computed from one
:func:`workbench.abi.design_space.sweep`: what recording the preserved memory costs on a large host, for every
structure, and how long the kernel's radix tree takes to decode. Returns a
:class:`~workbench.report.headline.Finding` for :func:`~workbench.report.headline.show_headline`."""

from __future__ import annotations

import pandas as pd

from workbench.report.headline import Finding, Number, format_value

__all__ = ["metadata_finding", "TARGET_MEMORY"]

#: the host size the finding is about, when the sweep has it (else its largest host)
TARGET_MEMORY = 1 << 40

_LABELS = {
    "radix": "KHO radix tree (7.2)",
    "sparse_bitmaps": "sparse bitmaps",
    "flat_array": "flat (pfn, order) array",
    "memfd_arrays": "memfd folio arrays, on top",
}


def metadata_finding(by_size: pd.DataFrame, memory: int = TARGET_MEMORY) -> Finding:
    """Each structure's metadata at ``memory`` bytes of host memory (or, when the sweep does not have that size,
    at its largest), and the radix tree's decode time there.

    :param by_size: :func:`~workbench.abi.design_space.sweep` over host sizes (one row per structure and size)
    :param memory: the host size to report, in bytes
    """
    sizes = sorted(by_size["memory_bytes"].unique())
    chosen = memory if memory in sizes else sizes[-1]
    rows = by_size[by_size["memory_bytes"] == chosen].set_index("structure")
    radix = rows.loc["radix"]
    pages = int(radix["preserved_pages"])
    numbers = [Number("preserved_pages", "preserved 4 KiB pages", pages, "pages", exact=True)]
    for structure, label in _LABELS.items():
        if structure in rows.index:
            numbers.append(
                Number(
                    f"{structure}_bytes",
                    label,
                    int(rows.loc[structure, "metadata_bytes"]),
                    "B",
                    exact=True,
                    better="lower",
                )
            )
    numbers.append(
        Number("radix_decode_s", "radix tree decode, one core", radix["radix_decode_s"], "s", better="lower")
    )
    host = format_value(int(chosen), "B")
    text = (
        f"On a {host} host ({pages:,} preserved pages, folio mix {radix['folio_mix']}), the KHO radix tree costs "
        f"{format_value(int(radix['metadata_bytes']), 'B')} ({radix['bytes_per_preserved_page']:.2f} bytes per "
        f"preserved page) and decodes in {format_value(radix['radix_decode_s'], 's')} on one core."
    )
    if "memfd_arrays" in rows.index:
        arrays = format_value(int(rows.loc["memfd_arrays", "metadata_bytes"]), "B")
        text += f" Preserved memfds add {arrays} of folio arrays on top"
        text += (
            f"; a flat array would take {format_value(int(rows.loc['flat_array', 'metadata_bytes']), 'B')}."
            if "flat_array" in rows.index
            else "."
        )
    if chosen != memory:
        text += f" (The sweep stopped at {host}, short of {format_value(memory, 'B')}.)"
    return Finding(text, numbers)
