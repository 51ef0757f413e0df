"""Phone numbers as WhatsApp wants them: the international digits, no ``+``, no punctuation.

Parsing and validity come from ``phonenumbers``. What is ours is the order of the attempts,
chosen so that the original contract's input (international digits without ``+``) keeps working:

1. the number read as international (a ``+`` in front, or digits that start with a country code);
2. if that is not a valid number, the number read as national in the default country;
3. if neither is valid but the international reading has a possible length, that reading.
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
        digits = digits[2:]
    international = _parse("+" + digits, None)
    if international is not None and phonenumbers.is_valid_number(international):
        return _digits(international)
    if not plus and default_region:
        national = _parse(digits, default_region)
        if national is not None and phonenumbers.is_valid_number(national):
            return _digits(national)
    if international is not None and phonenumbers.is_possible_number(international):
        return _digits(international)
    raise InvalidNumber("is not a possible phone number (give the country code, as in 5511999999999)")


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None


def _digits(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")
