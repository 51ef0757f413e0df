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
        ("(81) 98765-4321", "5581987654321"),  # an area code in brackets: national, not Japan's +81
        ("(51) 99123-4567", "5551991234567"),  # ... not Peru's +51
        ("+51 991 234 567", "51991234567"),  # with +, international
        ("0081 98765 4321", "81987654321"),  # with 00, international
        ("11987654321", "5511987654321"),  # national only: +1 198… is no number
        ("(21) 8765-4321", "552187654321"),  # an old mobile without the ninth digit: still national, not Libya
        ("(0xx81) 98765-4321", "5581987654321"),  # the carrier placeholder of a written number
        ("447911123456", "447911123456"),  # foreign, and too long to be national
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
        ("123", "not a valid"),
        ("98765-4321", "give the country code and the area code"),  # no area code: not +98 (Iran)
        ("8187654321", "not a valid"),  # neither a number of Japan nor a valid one of Recife
        ("+123", "not a possible"),
        ("55119000000011234567", "not a valid"),
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


@pytest.mark.parametrize(
    ("given", "readings"),
    [
        ("81987654321", ["+81 987-65-4321 (JP)", "+55 81 98765-4321 (BR)", "+5581987654321"]),
        ("51991234567", ["+51 991 234 567 (PE)", "+55 51 99123-4567 (BR)", "+5551991234567"]),
        ("4532345678", ["+45 32 34 56 78 (DK)", "+55 45 3234-5678 (BR)", "+554532345678"]),
        ("14155552671", ["+1 415-555-2671 (US)", "+55 14 15555-2671 (BR)", "+14155552671"]),  # national length
    ],
)
def test_bare_digits_that_read_as_two_countries_are_refused_naming_both(given: str, readings: list[str]) -> None:
    with pytest.raises(InvalidNumber, match="is ambiguous") as refused:
        normalize_number(given, "BR")
    assert all(reading in str(refused.value) for reading in readings)
