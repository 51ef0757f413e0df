"""Phone numbers as WhatsApp wants them: the international digits, no ``+``, no punctuation.

Parsing and validity come from ``phonenumbers``. What is ours is how a number is read, chosen so
that the original contract's input (international digits without ``+``) keeps working and that no
number is sent abroad by a guess:

1. With ``+`` or ``00`` in front, the number is international.
2. With ``(`` in front (``(81) 98765-4321``), it is national in the default country, when valid there.
3. Bare digits are read both ways. When only one reading is a valid number, that one; when both are
   and they differ (``81987654321``: Japan, or Recife in Brazil), the number is refused as
   ambiguous, naming both readings.
4. If no reading is valid but the international one has a possible length, that reading.
   Numbering plans lag behind reality (and test numbers are fake); WhatsApp's own lookup decides
   later whether the account exists.

The Brazilian ninth digit is never added or dropped here: WhatsApp's lookup says which form has an
account (see ``session_host`` sending).
"""

from __future__ import annotations

import re

import phonenumbers

_PUNCTUATION = re.compile(r"[\s()\-./]")
_JID_SUFFIXES = ("@s.whatsapp.net", "@c.us")


class InvalidNumber(ValueError):
    """The input cannot be a phone number; the message says why."""


def normalize_number(raw: str | int, default_region: str | None = None) -> str:
    """Return the number as international digits, or raise InvalidNumber with the reason."""
    text = str(raw).strip()
    for suffix in _JID_SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    plus = text.startswith("+")
    body = text[1:] if plus else text
    if body[:1] not in ("(", "") and not body[:1].isdigit():
        raise InvalidNumber(f"must start with a digit, '+' or '(', not {body[:1]!r}")
    digits = _PUNCTUATION.sub("", body)
    if not digits:
        raise InvalidNumber("is empty")
    if not digits.isdigit() or not digits.isascii():
        wrong = next(ch for ch in digits if not (ch.isascii() and ch.isdigit()))
        raise InvalidNumber(f"may only hold digits, spaces and + ( ) - . / but has {wrong!r}")
    if digits.startswith("00") and not plus:
        digits, plus = digits[2:], True  # the international call prefix: as good as a +
    international = _parse("+" + digits, None)
    valid_international = international is not None and phonenumbers.is_valid_number(international)
    national = None
    if default_region and not plus and not (valid_international and _region(international) == default_region):
        # (A valid number of the default country written internationally is never also a valid
        # national one there: it is longer by the country code. That is the common case; skip it.)
        national = _parse(digits, default_region)
    valid_national = national is not None and phonenumbers.is_valid_number(national)
    if valid_national and (body.startswith("(") or not valid_international):
        assert national is not None
        return _digits(national)
    if valid_international and valid_national and _digits(international) != _digits(national):
        raise InvalidNumber(_ambiguous(international, national))
    if valid_international or (international is not None and phonenumbers.is_possible_number(international)):
        assert international is not None
        return _digits(international)
    raise InvalidNumber("is not a possible phone number (give the country code, as in 5511999999999)")


def _ambiguous(international: phonenumbers.PhoneNumber, national: phonenumbers.PhoneNumber) -> str:
    def shown(number: phonenumbers.PhoneNumber) -> str:
        written = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        return f"{written} ({phonenumbers.region_code_for_number(number)})"

    return (
        f"is ambiguous: it reads as {shown(international)} or, as a national number, {shown(national)}; "
        f"write it with its country code, as in {_digits(national)} or +{_digits(international)}"
    )


def _region(number: phonenumbers.PhoneNumber | None) -> str | None:
    return phonenumbers.region_code_for_number(number) if number is not None else None


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None


def _digits(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")
