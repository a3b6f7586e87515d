"""Headlines: their fields are checked, their JSON round-trips, and a cell's call displays all three forms."""

import base64
import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest
from hypothesis import given
from hypothesis import strategies as st
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from workbench.report.errors import BadHeadline
from workbench.report.headline import MIME_TYPE, Headline, Number, figure_json, format_value, show_headline

from .helpers import a_headline


def test_json_round_trip_keeps_every_field():
    data = a_headline(noise=0.25)
    assert Headline.from_json(data).to_json() == data
    assert set(data) == {"key", "title", "text", "numbers", "figure", "record_ids"}
    assert set(data["numbers"][0]) == {"name", "label", "value", "unit", "exact", "noise", "better"}
    assert data["numbers"][0]["noise"] == 0.25 and data["numbers"][1]["exact"] is True
    json.dumps(data, allow_nan=False)  # plain JSON, figure included


def test_numbers_become_plain_json_values():
    assert Number("n", "n", np.float64(2.5)).value == 2.5 and type(Number("n", "n", np.int64(3)).value) is int
    assert Number("n", "n", np.bool_(True)).value is True
    assert Number("n", "n", math.nan).value is None and Number("n", "n", math.inf).value is None
    assert Number("n", "n", 1.0, noise=np.float32(0.5)).noise == 0.5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "has space"}, "letters, digits"),
        ({"better": "faster"}, "better must be"),
        ({"noise": -1.0}, "standard deviation"),
        ({"value": "fast"}, "not a number"),
        ({"exact": "yes"}, "exact must be"),
    ],
)
def test_a_bad_number_is_refused_naming_the_field(fields, message):
    with pytest.raises(BadHeadline, match=message):
        Number(**{"name": "blackout_s", "label": "blackout", "value": 1.0, **fields})


def test_a_bad_headline_is_refused():
    with pytest.raises(BadHeadline, match="has no 'numbers'"):
        Headline.from_json({"key": "k", "title": "t", "text": "x"})
    with pytest.raises(BadHeadline, match="unknown fields"):
        Headline.from_json(
            {"key": "k", "title": "t", "text": "x", "numbers": [{"name": "a", "label": "a", "value": 1, "x": 0}]}
        )
    with pytest.raises(BadHeadline, match="repeat"):
        Headline("k", "t", "x", (Number("a", "a", 1), Number("a", "b", 2)))
    with pytest.raises(BadHeadline, match="list of record ids"):
        Headline("k", "t", "x", (), None, "20260101-000000-abcdef")
    with pytest.raises(BadHeadline, match="not a plotly figure"):
        Headline("k", "t", "x", (), object())


def test_figure_json_is_plain_json_that_plotly_reads_back():
    fig = go.Figure(go.Scatter(x=np.arange(3), y=np.array([1.0, 2.0, 4.0])), layout={"title": "t"})
    data = figure_json(fig)
    y = json.loads(json.dumps(data, allow_nan=False))["data"][0]["y"]
    # plotly writes NumPy arrays as typed arrays (base64), which plotly.js decodes
    values = np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]) if isinstance(y, dict) else y
    assert list(values) == [1.0, 2.0, 4.0]
    assert figure_json(None) is None


def test_show_headline_displays_json_html_and_text():
    InteractiveShell.instance()
    with capture_output() as captured:
        returned = show_headline(
            "cycle",
            "A cycle",
            "It <worked>.",
            [
                Number("verified", "verified", True, exact=True),
                {"name": "blackout_s", "label": "blackout", "value": 1.5, "unit": "s"},
            ],
            figure=go.Figure(go.Bar(x=[1], y=[2])),
            record_ids=["20260101-000000-abcdef"],
        )
    assert returned is None  # nothing for the cell to display a second time
    (output,) = captured.outputs
    assert set(output.data) == {MIME_TYPE, "text/html", "text/plain"}
    headline = output.data[MIME_TYPE]
    assert headline["numbers"][1] == {
        "name": "blackout_s",
        "label": "blackout",
        "value": 1.5,
        "unit": "s",
        "exact": False,
        "noise": None,
        "better": None,
    }
    assert headline["figure"]["data"][0]["type"] == "bar" and headline["record_ids"] == ["20260101-000000-abcdef"]
    assert "It &lt;worked&gt;." in output.data["text/html"] and "1.5 s" in output.data["text/html"]
    assert "blackout: 1.5 s" in output.data["text/plain"]


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (True, "", "yes"),
        (None, "s", "n/a"),
        (math.nan, "s", "n/a"),
        (0.0123, "s", "12.3 ms"),
        (12.345, "s", "12.3 s"),
        (3 << 30, "B", "3 GiB"),
        (512, "B", "512 B"),
        (2.5e9, "B/s", "2.5 GB/s"),
        (0.834, "ratio", "83.4 %"),
        (2048, "pages", "2,048 pages"),
    ],
)
def test_format_value(value, unit, shown):
    assert format_value(value, unit) == shown


def test_formatted_shows_the_noise():
    assert Number("t", "t", 1.5, "s", noise=0.25).formatted() == "1.5 s ± 250 ms"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_NUMBER = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b_s", "bad name"]) | st.text(max_size=4), "label": _JSON, "value": _JSON},
    optional={"unit": _JSON, "exact": _JSON, "noise": _JSON, "better": _JSON, "extra": _JSON},
)
_HEADLINE = st.fixed_dictionaries(
    {
        "key": st.sampled_from(["cycle", "x y"]) | _JSON,
        "title": _JSON,
        "text": _JSON,
        "numbers": st.lists(_NUMBER, max_size=3) | _JSON,
    },
    optional={"figure": st.none() | st.just({"data": []}) | _JSON, "record_ids": st.lists(_JSON, max_size=2) | _JSON},
)


@given(_HEADLINE)
def test_any_json_is_read_as_a_headline_or_refused_clearly(data):
    """What a notebook or a record holds is read back whole, or refused with BadHeadline, never anything else."""
    try:
        headline = Headline.from_json(data)
    except BadHeadline:
        return
    assert Headline.from_json(json.loads(json.dumps(headline.to_json()))) == headline
    assert isinstance(headline.to_html(), str) and isinstance(headline.to_plain(), str)
