"""Case 2 and its kind: punctuation removed, letters and impossible numbers refused."""

from __future__ import annotations

import pytest

from infra.numbers import InvalidNumber, normalize_number


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("+55 (11) 90000-0001", "5511900000001"),
        ("5511900000001", "5511900000001"),
        (5511900000001, "5511900000001"),
        ("55.11.90000.0001", "5511900000001"),
        ("0055 11 90000 0001", "5511900000001"),
        ("551100000002", "551100000002"),  # the old form without the 9 is kept as given
        ("(11) 99999-9999", "5511999999999"),  # national, in the default country
        ("+1 (415) 555-2671", "14155552671"),
        ("5511999999999@s.whatsapp.net", "5511999999999"),
        ("5511999999999@c.us", "5511999999999"),
    ],
)
def test_numbers_are_normalised_to_international_digits(given: str | int, expected: str) -> None:
    assert normalize_number(given, "BR") == expected


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("55 11 9000O-0001", "'O'"),
        ("5511abc", "'a'"),
        ("", "empty"),
        ("+", "empty"),
        ("123", "not a possible"),
        ("55119000000011234567", "not a possible"),
        ("٥٥١١٩٠٠٠٠٠٠٠١", "'٥'"),  # Arabic-Indic digits are not ASCII digits
        ("5511*900", "'*'"),
        ("-5511900000001", "must start with a digit"),
        (-5511900000001, "must start with a digit"),
        ("+-5511900000001", "must start with a digit"),
    ],
)
def test_invalid_numbers_say_why(given: str | int, reason: str) -> None:
    with pytest.raises(InvalidNumber, match=reason):
        normalize_number(given, "BR")
