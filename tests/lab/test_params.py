"""The cycle's own parameters are checked on the host, before anything boots."""

import pytest

from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults, PageRef
from workbench.lab.params import CycleParams


def test_session_name_too_long_is_refused_before_boot():
    with pytest.raises(InvalidCycle, match="at most 63"):
        CycleParams(session="s" * 80).validate()
    with pytest.raises(ValueError, match="empty"):
        CycleParams(session="").validate()


def test_pause_points_and_timeouts():
    with pytest.raises(InvalidCycle, match="can pause after prepare, preserve, restore, not 'kexec'"):
        CycleParams(pause_after=["kexec"]).validate()
    with pytest.raises(InvalidCycle, match="timeout_s must be positive"):
        CycleParams(timeout_s=0).validate()
    CycleParams(pause_after=["preserve"], return_timeout_s=5).validate()


def test_faults_given_as_a_dict_become_typed_and_unknown_ones_are_refused():
    params = CycleParams(faults={"corrupt_page": {"memfd": 1, "page": 2}})
    params.validate()
    assert params.faults == Faults(corrupt_page=PageRef(1, 2))
    assert params.record_params()["faults"] == {"corrupt_page": {"memfd": 1, "page": 2}}
    with pytest.raises(InvalidCycle, match="unknown fault 'melt'"):
        CycleParams(faults={"melt": True}).validate()
