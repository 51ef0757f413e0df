"""Message templates: ``[field]`` placeholders filled from each contact, and ``{a|b|c}`` variations.

- ``[nome]``, ``[empresa]``, ``[cupom]``…: the contact's field of that name. Filled in one pass, so
  a value that itself contains ``[x]`` or ``{a|b}`` arrives as written and is not expanded again.
- ``[empresa|nossa loja]``: the text after ``|`` stands in when the contact has no such field (or
  it is empty). A placeholder with no fallback and no value is refused when the job is submitted,
  naming the contacts it affects: a literal ``[nome]`` never reaches anyone.
- ``{Olá|Oi|E aí}``: one of the choices, picked per recipient from its message id, so a campaign is
  not one identical text and a resend picks the same words. A choice may hold placeholders
  (``{Oi [nome]|Olá [nome|amigo]}``), filled like any other. Braces without ``|`` are plain text.
- Refused at submission (``problems``), because they would reach people as typed: a variation
  inside another, a ``[field`` or a ``{a|b`` that is never closed, and a template that fills in to
  nothing but blanks for some contact.

Everything else is copied as it is: accents, emoji sequences, right-to-left text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

import msgspec

# [field] or [field|fallback]: a field name is a word (letters of any script, digits, _ and -).
_PLACEHOLDER = re.compile(r"\[([^\W\d][\w-]{0,63})(?:\|([^\[\]]*))?\]")
# One choice of a variation: text without braces, bars or brackets, and whole placeholders.
_CHOICE = rf"(?:{_PLACEHOLDER.pattern.replace('(', '(?:').replace('(?:?:', '(?:')}|[^{{}}\[\]|])*"
_VARIATION = re.compile(rf"\{{({_CHOICE}(?:\|{_CHOICE})+)\}}")
_TOKENS = re.compile(f"{_PLACEHOLDER.pattern}|{_VARIATION.pattern}")
_CHOICE_BAR = re.compile(r"\|(?![^\[]*\])")  # a bar between choices, not a placeholder's own
# "[nome" with no "]" before the next "[" or the end: a placeholder never closed.
_OPEN_PLACEHOLDER = re.compile(r"\[[^\W\d][\w-]{0,63}[^\[\]]*(?=\[|$)")
_OPEN_VARIATION = re.compile(r"\{[^{}]*\|[^{}]*$")
# "[nome|{Oi|Olá}]" or "[nome|[apelido]]": a fallback is plain text; these would arrive as typed.
_TEMPLATE_IN_FALLBACK = re.compile(r"\[[^\W\d][\w-]{0,63}\|[^\[\]{}]*[\[{]")
# "[ nome ]": a placeholder written with spaces inside its brackets, which would arrive as typed.
# (Zero-width characters count as spaces: they come in with text pasted from elsewhere.)
_BLANK = r"[\s\u200b-\u200d\u2060\ufeff]"
_SPACED_PLACEHOLDER = re.compile(rf"\[{_BLANK}*([^\W\d][\w-]{{0,63}}){_BLANK}*(?:\|[^\[\]]*)?\]")


MAX_TOKENS = 40  # placeholders and variations in one template: each costs work for every contact
SHOWN_POSITIONS = 20  # contacts named in a refusal; the rest are counted


class MissingField(msgspec.Struct, frozen=True):
    """A placeholder without fallback that ``count`` recipients cannot fill; the positions (0-based)
    of the first ``SHOWN_POSITIONS`` of them."""

    field: str
    positions: list[int]
    count: int


def fields_of(template: str) -> set[str]:
    """The placeholders that need a value (those without a fallback)."""
    return {match[1] for match in _PLACEHOLDER.finditer(template) if match[2] is None}


def missing_fields(template: str, recipients: Sequence[Mapping[str, str]]) -> list[MissingField]:
    missing = []
    for field in sorted(fields_of(template)):
        positions, count = [], 0
        for index, values in enumerate(recipients):
            if not values.get(field, "").strip():
                count += 1
                if count <= SHOWN_POSITIONS:
                    positions.append(index)
        if count:
            missing.append(MissingField(field=field, positions=positions, count=count))
    return missing


def render(template: str, values: Mapping[str, str], seed: str = "") -> str:
    """Fill ``template`` for one recipient; ``seed`` (its message id) picks the variations."""

    def fill(match: re.Match[str]) -> str:
        value = values.get(match[1])
        if value and value.strip():  # blanks alone are no value: the fallback stands in
            return value
        if match[2] is not None:
            return match[2]
        raise KeyError(match[1])  # prevented by missing_fields at submission

    def replace(match: re.Match[str]) -> str:
        if match[3] is None:
            return fill(match)
        choices = _choices(match[3])
        digest = hashlib.sha256(f"{seed}:{match.start()}".encode()).digest()
        chosen = choices[int.from_bytes(digest[:4], "big") % len(choices)]
        return _PLACEHOLDER.sub(fill, chosen)  # the template's own text: its placeholders are filled

    return _TOKENS.sub(replace, template)


def problems(template: str) -> list[str]:
    """What in ``template`` would reach people as typed instead of as meant."""
    if (tokens := sum(1 for _ in _TOKENS.finditer(template))) > MAX_TOKENS:
        return [f"it has {tokens} placeholders and variations; the limit is {MAX_TOKENS}"]
    found = []
    if inner := _TEMPLATE_IN_FALLBACK.search(template):
        found.append(f"{inner[0][:40]!r}…: a fallback is plain text, without placeholders or variations")
    for match in _PLACEHOLDER.finditer(template):
        if match[2] and not re.sub(_BLANK, "", match[2]):
            found.append(f"the fallback of {match[0]!r} is invisible: write a word, or leave it out")
    rest = _VARIATION.sub("", template)  # well-formed variations out: what is left is plain text
    if _VARIATION.search(rest):  # removing an inner one made its outer one whole
        found.append("a variation {a|b} is inside another; write the choices side by side: {a|b|c}")
    if opened := _OPEN_PLACEHOLDER.search(_PLACEHOLDER.sub("", rest)):
        found.append(f"{opened[0][:40]!r} is not closed with ]")
    if opened := _OPEN_VARIATION.search(rest):
        found.append(f"the variation {opened[0][:40]!r} is not closed with }}")
    return found


def spaced_placeholders(template: str) -> dict[str, str]:
    """``[ nome ]`` and the like, as written, by the field they name: placeholders with spaces inside
    their brackets, which are copied as typed. Whether one was meant depends on the contacts' fields."""
    rest = _PLACEHOLDER.sub("", template)
    return {
        match[0]: match[1]
        for match in _SPACED_PLACEHOLDER.finditer(rest)
        if match[0][1:].split("|")[0].rstrip("]") != match[1]  # with a blank inside, not just left by a removal
    }


def _choices(body: str) -> list[str]:
    return _CHOICE_BAR.split(body)
