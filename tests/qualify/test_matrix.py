"""The cells of a qualification matrix."""

import pytest

from workbench.qualify.errors import InvalidQualification
from workbench.qualify.matrix import Cell, pairs, plan_cells


def test_every_ordered_pair_each_kernel_into_itself_included():
    assert pairs(["7.2", "7.3"]) == [("7.2", "7.2"), ("7.2", "7.3"), ("7.3", "7.2"), ("7.3", "7.3")]
    assert len(pairs(["a", "b", "c"])) == 9


def test_same_version_checks_run_only_on_the_diagonal():
    cells = plan_cells(["7.2", "7.3"], ["memfd", "criu"], same_version_only=["criu"])
    criu = [c for c in cells if c.check == "criu"]
    assert [(c.source, c.target) for c in criu] == [("7.2", "7.2"), ("7.3", "7.3")]
    assert len([c for c in cells if c.check == "memfd"]) == 4
    assert all(c.same_version for c in criu)


def test_a_cell_travels_as_plain_data():
    cell = Cell("7.2", "7.3", "memfd")
    assert Cell(**cell.as_dict()) == cell
    assert cell.label == "7.2 → 7.3: memfd" and not cell.same_version


@pytest.mark.parametrize(
    ("kernels", "checks", "words"),
    [
        ([], ["memfd"], "at least one kernel"),
        (["7.2", "7.2"], ["memfd"], "named twice"),
        (["7.2"], [], "check"),
        (["7.2"], ["memfd", "memfd"], "named twice"),
    ],
)
def test_a_matrix_that_cannot_be_planned_says_why(kernels, checks, words):
    with pytest.raises(InvalidQualification, match=words):
        plan_cells(kernels, checks)
