"""Sizes and durations written the way people write them (:mod:`workbench.units`)."""

import pytest

from workbench.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("4096", 4096),
        ("64M", 64 << 20),
        ("64m", 64 << 20),
        ("1G", 1 << 30),
        ("1.5G", 3 << 29),
        ("2T", 2 << 40),
        ("16KiB", 16 << 10),
        ("8MB", 8 << 20),
        (" 8 M ", 8 << 20),
        (12345, 12345),
    ],
)
def test_parse_size(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["", "M", "-1M", "64X", "1,5G", "64 megabytes", "0x1000"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(
        ValueError, match=r"is not a size: use a number with an optional K, M, G or T suffix, e\.g\. 64M"
    ):
        parse_size(text)


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [(0, "0"), (1000, "1000"), (4096, "4K"), (64 << 20, "64M"), (3 << 29, "1.5G"), (1 << 40, "1T"), (5 << 40, "5T")],
)
def test_format_size(nbytes, text):
    assert format_size(nbytes) == text


@pytest.mark.parametrize("text", ["512", "4K", "64M", "1.5G", "3T", "1023K"])
def test_format_size_reads_back_whole_units(text):
    assert format_size(parse_size(text)) == text


def test_format_size_rounds_the_rest_and_refuses_negative_sizes():
    assert format_size((1 << 30) + (1 << 28) + 12345) == "1.25G"
    with pytest.raises(ValueError, match="cannot be negative"):
        format_size(-1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("2.5", 2.5),
        ("90s", 90.0),
        ("250ms", 0.25),
        ("1.5m", 90.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1m30.5s", 90.5),
        ("1h5s", 3605.0),
        ("2 h 5 m", 7500.0),
        (" 3S ", 3.0),
        (45, 45.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "abc", "-3s", "1m2h", "1s1s", "1.s", "3 days", "90 seconds"])
def test_parse_duration_refuses_what_is_not_a_duration(text):
    with pytest.raises(ValueError, match=r"is not a duration: use seconds, or a number with a unit ms, s, m or h"):
        parse_duration(text)


def test_parse_duration_refuses_negative_numbers():
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(-1)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.0004, "0.4ms"),
        (0.25, "250ms"),
        (1, "1s"),
        (42.3456, "42.35s"),
        (60, "1m"),
        (90, "1m30s"),
        (100.4, "1m40s"),
        (3600, "1h"),
        (3605, "1h5s"),
        (5400, "1h30m"),
        (-90, "-1m30s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.25, 1.5, 42.35, 90, 3605, 5400, 7322])
def test_format_duration_reads_back(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
