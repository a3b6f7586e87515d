"""A qualification's parameters."""

import pytest

from workbench.qualify.errors import InvalidQualification
from workbench.qualify.params import DEFAULT_CHECKS, DEFAULT_SIZES, QualifyParams


def test_defaults_have_a_256_mib_file_and_the_upstream_selftests():
    params = QualifyParams(kernels=["7.2", "7.3"])
    params.validate()
    assert max(params.sizes) >= 256 << 20 and len(set(DEFAULT_SIZES)) == len(DEFAULT_SIZES)
    assert {"luo_kexec_simple", "luo_multi_session", "criu", "memfd"} == set(DEFAULT_CHECKS)
    assert QualifyParams.from_dict({**params.as_dict(), "unknown": 1}) == params


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"kernels": []}, "at least one kernel"),
        ({"sizes": [4097]}, "whole number"),
        ({"small_files": -1}, "negative"),
        ({"cpus": 0}, "CPU"),
    ],
)
def test_bad_parameters_are_named(change, words):
    with pytest.raises(InvalidQualification, match=words):
        QualifyParams(**{"kernels": ["7.2"], **change}).validate()
