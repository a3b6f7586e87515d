"""The checks a cell can run, by name."""

import pytest

from workbench.lab.workload import Workload, make_workload
from workbench.qualify import checks
from workbench.qualify.checks import Check, check_class, check_names, register, same_version_checks
from workbench.qualify.errors import InvalidQualification
from workbench.qualify.matrix import Cell
from workbench.qualify.params import QualifyParams


def test_the_built_in_checks_and_which_run_only_into_the_same_kernel():
    assert {"memfd", "luo_kexec_simple", "luo_multi_session", "criu"} <= set(check_names())
    assert same_version_checks(["memfd", "criu", "luo_kexec_simple"]) == ["criu"]
    with pytest.raises(InvalidQualification, match="unknown check 'nope'.*memfd"):
        check_class("nope")


def test_the_memfd_check_is_the_sessions_workload_with_the_qualification_sizes():
    params = QualifyParams(kernels=["7.2"], sizes=[1 << 20, 4096], small_files=5)
    workload = check_class("memfd")().workload(Cell("7.2", "7.3", "memfd"), params)
    assert workload.name == "sessions" and workload.sizes == [1 << 20, 4096] and workload.small_files == 5
    workload.validate()


def test_a_selftest_check_runs_stage_1_from_the_source_kernel_and_stage_2_from_the_target():
    workload = check_class("luo_multi_session")().workload(
        Cell("7.2", "7.3", "luo_multi_session"), QualifyParams(["7.2"])
    )
    assert (workload.name, workload.test) == ("selftest", "luo_multi_session")
    assert (workload.stage1_kernel, workload.stage2_kernel) == ("7.2", "7.3")


def test_a_new_check_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(checks, "_REGISTRY", dict(checks._REGISTRY))

    @register
    class Tiny(Check):
        name = "tiny-test-check"

        def workload(self, cell, params) -> Workload:
            return make_workload("memfd", memfds=1, memfd_size=4096)

    assert check_class("tiny-test-check") is Tiny
    assert Tiny().workload(Cell("a", "b", "tiny-test-check"), QualifyParams(["a"])).memfds == 1
