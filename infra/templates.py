"""Message templates: ``[field]`` placeholders filled from each contact, and ``{a|b|c}`` variations.

- ``[nome]``, ``[empresa]``, ``[cupom]``…: the contact's field of that name. Filled in one pass, so
  a value that itself contains ``[x]`` or ``{a|b}`` arrives as written and is not expanded again.
- ``[empresa|nossa loja]``: the text after ``|`` stands in when the contact has no such field (or
  it is empty). A placeholder with no fallback and no value is refused when the job is submitted,
  naming the contacts it affects: a literal ``[nome]`` never reaches anyone.
- ``{Olá|Oi|E aí}``: one of the choices, picked per recipient from its message id, so a campaign is
  not one identical text and a resend picks the same words. Braces without ``|`` are plain text.

Everything else is copied as it is: accents, emoji sequences, right-to-left text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

import msgspec

# [field] or [field|fallback]: a field name is a word (letters of any script, digits, _ and -).
_PLACEHOLDER = re.compile(r"\[([^\W\d][\w-]{0,63})(?:\|([^\[\]]*))?\]")
_VARIATION = re.compile(r"\{([^{}]*\|[^{}]*)\}")
_TOKENS = re.compile(f"{_PLACEHOLDER.pattern}|{_VARIATION.pattern}")


class MissingField(msgspec.Struct, frozen=True):
    """A placeholder without fallback that some recipients cannot fill (their positions, 0-based)."""

    field: str
    positions: list[int]


def fields_of(template: str) -> set[str]:
    """The placeholders that need a value (those without a fallback)."""
    return {match[1] for match in _PLACEHOLDER.finditer(template) if match[2] is None}


def missing_fields(template: str, recipients: Sequence[Mapping[str, str]]) -> list[MissingField]:
    missing = []
    for field in sorted(fields_of(template)):
        positions = [index for index, values in enumerate(recipients) if not values.get(field)]
        if positions:
            missing.append(MissingField(field=field, positions=positions))
    return missing


def render(template: str, values: Mapping[str, str], seed: str = "") -> str:
    """Fill ``template`` for one recipient; ``seed`` (its message id) picks the variations."""

    def replace(match: re.Match[str]) -> str:
        if match[3] is not None:  # a variation
            choices = match[3].split("|")
            digest = hashlib.sha256(f"{seed}:{match.start()}".encode()).digest()
            return choices[int.from_bytes(digest[:4], "big") % len(choices)]
        value = values.get(match[1])
        if value:
            return value
        if match[2] is not None:
            return match[2]
        raise KeyError(match[1])  # prevented by missing_fields at submission

    return _TOKENS.sub(replace, template)
