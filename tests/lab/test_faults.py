"""Faults travel to the agent in the request form it reads."""

import pytest

from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults, PageRef


def test_request_form_round_trips():
    faults = Faults(corrupt_page=PageRef(1, 77), modify_after_preserve=PageRef(0, 3), next_boot_hangs=True)
    request = faults.to_request()
    assert request == {
        "corrupt_page": {"memfd": 1, "page": 77},
        "modify_after_preserve": {"memfd": 0, "page": 3},
        "next_boot_hangs": True,
    }
    assert Faults.from_dict(request) == faults
    assert Faults().to_request() == {}


def test_unknown_fault_names_the_known_ones():
    with pytest.raises(InvalidCycle, match="unknown fault 'corrupt_pages': the faults are corrupt_page, "):
        Faults.from_dict({"corrupt_pages": {}})
