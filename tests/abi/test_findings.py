"""The handover metadata notebook's headline, from a real sweep of small synthetic hosts."""

import pytest

from workbench.abi.design_space import Workload, sweep
from workbench.abi.findings import metadata_finding
from workbench.report.headline import Headline


@pytest.fixture(scope="module")
def by_size():
    return sweep([Workload(size, "4K:0.7,2M:0.3", sparsity=0.3, memfds=4) for size in (256 << 20, 1 << 30)])


def test_at_the_chosen_size(by_size):
    finding = metadata_finding(by_size, memory=256 << 20)
    Headline("metadata", "m", finding.text, tuple(finding.numbers))
    numbers = {n.name: n for n in finding.numbers}
    rows = by_size[by_size["memory_bytes"] == 256 << 20].set_index("structure")
    assert numbers["radix_bytes"].value == rows.loc["radix", "metadata_bytes"] and numbers["radix_bytes"].exact
    assert numbers["memfd_arrays_bytes"].value == rows.loc["memfd_arrays", "metadata_bytes"]
    assert numbers["preserved_pages"].value == rows.loc["radix", "preserved_pages"]
    assert not numbers["radix_decode_s"].exact and numbers["radix_decode_s"].better == "lower"
    assert finding.text.startswith("On a 256 MiB host") and "short of" not in finding.text


def test_the_largest_size_when_the_sweep_stops_short(by_size):
    finding = metadata_finding(by_size)
    assert (
        finding.text.startswith("On a 1 GiB host") and "(The sweep stopped at 1 GiB, short of 1 TiB.)" in finding.text
    )


def test_exact_numbers_are_the_same_for_the_same_hosts(by_size):
    again = sweep([Workload(256 << 20, "4K:0.7,2M:0.3", sparsity=0.3, memfds=4)])
    exact = lambda f: {n.name: n.value for n in f.numbers if n.exact}  # noqa: E731
    assert exact(metadata_finding(again, 256 << 20)) == exact(metadata_finding(by_size, 256 << 20))
