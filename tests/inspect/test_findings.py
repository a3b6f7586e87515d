"""The inspection notebook's headline, from snapshots made by hand."""

import pandas as pd

from workbench.inspect.findings import inspection_finding
from workbench.inspect.snapshot import Snapshot
from workbench.report.headline import Headline


def _snapshot(folios=2048):
    return Snapshot(
        source={},
        kho={},
        luo={},
        tables={
            "sessions": pd.DataFrame({"name": ["wb"]}),
            "memfds": pd.DataFrame({"token": [1000]}),
            "memfd_folios": pd.DataFrame({"token": [1000] * folios, "pfn": range(folios)}),
            "preserved": pd.DataFrame({"pfn": range(folios + 4), "order": 0}),
        },
    )


def _checks(same=True):
    return pd.DataFrame(
        [{"token": 1000, "pages": 2048, "pfns equal frames-before": same, "all preserved in KHO": True}]
    )


def test_everything_agreed():
    result = {"verified": True, "blackout_s": 2.5}
    finding = inspection_finding(result, _snapshot(), _checks(), {"KHO facts": True, "table memfds": True}, {"a": True})
    Headline("inspection", "i", finding.text, tuple(finding.numbers))
    numbers = {n.name: n for n in finding.numbers}
    assert (numbers["sessions"].value, numbers["memfds"].value, numbers["memfd_folios"].value) == (1, 1, 2048)
    assert numbers["kho_preserved_folios"].value == 2052
    assert all(
        numbers[n].value is True for n in ("verified", "frames_match_agent", "all_in_kho", "dump_agrees", "frames_kept")
    )
    assert all(n.exact for n in finding.numbers if n.name != "blackout_s")
    assert "exactly at the frames the agent recorded" in finding.text and "very same frames" in finding.text


def test_disagreements_are_said():
    finding = inspection_finding({"verified": False}, _snapshot(), _checks(False), {"LUO facts": False}, {})
    numbers = {n.name: n.value for n in finding.numbers}
    assert numbers["frames_match_agent"] is False and numbers["dump_agrees"] is False
    assert numbers["frames_kept"] is False  # nothing checked is not agreement
    assert "NOT at the frames" in finding.text and "DISAGREES" in finding.text and "NOT verified" in finding.text
