"""Phone numbers as WhatsApp wants them: the international digits, no ``+``, no punctuation.

Parsing and validity come from ``phonenumbers``. What is ours is how a number is read, chosen so
that the original contract's input (international digits without ``+``) keeps working and that no
number is sent abroad by a guess:

1. With ``+`` or ``00`` in front, the number is international (valid, or of a possible length).
2. With ``(`` in front (``(81) 98765-4321``), it is national in the default country (valid, or of a
   possible length there, as the old mobiles without the ninth digit are).
3. Bare digits are read both ways. A valid number of the default country written with its country
   code is that. Otherwise, when both readings are valid and differ (``81987654321``: Japan, or
   Recife in Brazil), or the international one is valid abroad and the national one has a possible
   length (``8187654321``: Japan, or an old Recife mobile), the number is refused as ambiguous,
   naming both readings. A valid national number is that; a valid foreign one, when it cannot be
   national, is that.
4. With no valid reading, digits that start with the default country's code and have a possible
   length are taken as they are (numbering plans lag behind reality, and test numbers are fake);
   WhatsApp's own lookup decides later whether the account exists. Anything else is refused: a
   number missing its area code (``98765-4321``) never becomes a foreign one.

The Brazilian ninth digit is never added or dropped here: WhatsApp's lookup says which form has an
account (see ``session_host`` sending).
"""

from __future__ import annotations

import re
from typing import TypeGuard

import phonenumbers

_PUNCTUATION = re.compile(r"[\s()\-./]")
_CARRIER_PLACEHOLDER = re.compile(r"^(\(?)0[xX]{2}")  # "0xx", where a carrier's code goes when dialling
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
    body = _CARRIER_PLACEHOLDER.sub(r"\g<1>0", body)  # "(0xx11) ...": the trunk 0, then the area code
    digits = _PUNCTUATION.sub("", body)
    if not digits:
        raise InvalidNumber("is empty")
    if not digits.isdigit() or not digits.isascii():
        wrong = next(ch for ch in digits if not (ch.isascii() and ch.isdigit()))
        raise InvalidNumber(f"may only hold digits, spaces and + ( ) - . / but has {wrong!r}")
    if digits.startswith("00") and not plus:
        digits, plus = digits[2:], True  # the international call prefix: as good as a +
    if plus:
        return _digits(_possible_or_refused(_parse("+" + digits, None), "give the country code after the +"))
    if default_region is None:
        return _digits(_possible_or_refused(_parse("+" + digits, None), "give the country code, as in 5511999999999"))
    if body.startswith("("):
        return _digits(_possible_or_refused(_parse(digits, default_region), f"not a number of {default_region}"))
    international = _parse("+" + digits, None)
    if _valid(international) and _region(international) == default_region:
        return _digits(international)  # the common case: never also a valid national number, being longer
    national = _parse(digits, default_region)
    if _valid(international) and _possible(national) and _digits(international) != _digits(national):
        raise InvalidNumber(_ambiguous(international, national, default_region))
    if _valid(national):
        return _digits(national)
    if _valid(international):
        return _digits(international)
    if _possible(international) and _region(international) == default_region:
        return _digits(international)
    raise InvalidNumber("is not a valid phone number: give the country code and the area code, as in 5511999999999")


def _valid(number: phonenumbers.PhoneNumber | None) -> TypeGuard[phonenumbers.PhoneNumber]:
    return number is not None and phonenumbers.is_valid_number(number)


def _possible(number: phonenumbers.PhoneNumber | None) -> TypeGuard[phonenumbers.PhoneNumber]:
    return number is not None and phonenumbers.is_possible_number(number)


def _possible_or_refused(number: phonenumbers.PhoneNumber | None, hint: str) -> phonenumbers.PhoneNumber:
    if not _possible(number):
        raise InvalidNumber(f"is not a possible phone number ({hint})")
    return number


def _ambiguous(international: phonenumbers.PhoneNumber, national: phonenumbers.PhoneNumber, region: str) -> str:
    def shown(number: phonenumbers.PhoneNumber, region: str | None) -> str:
        written = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        return f"{written} ({region})"

    return (
        f"is ambiguous: it reads as {shown(international, _region(international))} or, as a national "
        f"number, {shown(national, region)}; write it with + and its country code, as in "
        f"+{_digits(international)} or +{_digits(national)}"
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
