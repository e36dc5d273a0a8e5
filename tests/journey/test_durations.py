from datetime import timedelta

import pytest

from cairn_journey.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(minutes=90)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("PT90M", timedelta(minutes=90)),
        ("P2W", timedelta(weeks=2)),
        ("-1d", timedelta(days=-1)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_duration_forms_people_write_are_understood(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["1x", "", "d", "P", "PT", "P1Y", "P1M", "1 day", "10"])
def test_a_non_duration_is_refused_naming_the_text(text: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert str(info.value) == f'"{text}" is not a duration'


def test_formatting_gives_the_short_form_back() -> None:
    assert format_duration(timedelta(days=1, hours=2, seconds=5)) == "1d2h5s"
    assert parse_duration(format_duration(timedelta(minutes=-90))) == timedelta(minutes=-90)
