"""The qualification as people see it: the heatmap, the tables and the headline."""

import json
from pathlib import Path

import pandas as pd

from workbench.qualify.findings import abi_structs_table, cells_table, matrix_figure, qualification_finding
from workbench.qualify.run import summarize
from workbench.report.headline import Headline


def row(source, target, check, outcome, **extra):
    base = {"from": source, "to": target, "check": check, "outcome": outcome, "stage": None, "diagnosis": None}
    more = {"message": None, "blackout_s": 4.2, "pages_checked": 10, "record_ids": ["r1"], "cell_s": 30.0}
    return {**base, **more, "accelerator": "tcg", **extra}


def result_of(rows):
    return {**summarize(rows, wall_s=40.0, workers=2), "cells": rows, "record_id": "q1"}


PANIC = "LUO refused the handover (it accepts 'luo-neg'); kernel panic in liveupdate_early_init: …"
ROWS = [
    row("7.2", "7.2", "memfd", "pass"),
    row("7.2", "neg", "memfd", "panic", stage="kexec", diagnosis=PANIC, blackout_s=None),
    row("neg", "7.2", "memfd", "refused", stage="preflight", message="preflight refuses"),
    row("neg", "neg", "memfd", "pass"),
]


def test_the_heatmap_colours_each_pair_by_its_worst_outcome_and_explains_it_on_hover():
    fig = matrix_figure(result_of(ROWS))
    heat = fig.data[0]
    assert list(heat.x) == ["7.2", "neg"] and list(heat.y) == ["7.2", "neg"]
    assert [list(r) for r in heat.text] == [["pass", "panic"], ["refused", "pass"]]
    assert "liveupdate_early_init" in heat.customdata[0][1] and "at kexec" in heat.customdata[0][1]
    assert "tcg" in fig.layout.title.text
    json.dumps(fig.to_plotly_json(), default=str)


def test_the_cells_table_shows_why_a_cell_did_not_pass():
    table = cells_table(result_of(ROWS))
    assert len(table) == 4 and table.loc[1, "diagnosis"] == PANIC
    assert table.loc[2, "diagnosis"] == "preflight refuses" and pd.isna(table.loc[0, "diagnosis"])


def test_the_headline_names_the_cells_that_did_not_pass_and_the_abi_verdict():
    diff = json.loads((Path(__file__).parent / "abi_diff_7.2_7.3.json").read_text())
    finding = qualification_finding(result_of(ROWS), diff)
    assert "2 of 4 cells did not pass" in finding.text and "7.2 → neg memfd: panic" in finding.text
    assert "ABI diff 7.2 → 7.3: compatible" in finding.text
    numbers = {n.name: n.value for n in finding.numbers}
    assert numbers["qualified"] is False and numbers["cells_panic"] == 1 and numbers["cells_pass"] == 2
    assert numbers["abi_compatible"] is True and numbers["abi_structs_compared"] == len(diff["structs"])
    Headline("qualification", "t", finding.text, tuple(finding.numbers))  # a valid headline


def test_a_qualified_matrix_says_so_and_an_empty_one_too():
    good = qualification_finding(result_of([row("a", "a", "memfd", "pass")]))
    assert "all 1 cells passed" in good.text
    assert qualification_finding({"cells": []}).text == "No cell of the qualification finished."


def test_the_abi_struct_table_has_one_row_per_struct():
    diff = json.loads((Path(__file__).parent / "abi_diff_7.2_7.3.json").read_text())
    table = abi_structs_table(diff)
    assert len(table) == len(diff["structs"]) and set(table["status"]) <= {"same", "differs", "only in A", "only in B"}
