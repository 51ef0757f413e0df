from __future__ import annotations

import re
from collections import Counter

import pytest

from infra import templates
from infra.templates import (
    MAX_TOKENS,
    SHOWN_POSITIONS,
    MissingField,
    fields_of,
    missing_fields,
    problems,
    render,
    spaced_placeholders,
)


def test_any_contact_field_fills_its_placeholder() -> None:
    text = render("Olá [nome], [empresa] ganhou o cupom [cupom].", {"nome": "Ana", "empresa": "ACME", "cupom": "X10"})
    assert text == "Olá Ana, ACME ganhou o cupom X10."


def test_values_are_not_expanded_again() -> None:
    text = render("Oi [nome], use [cupom]", {"nome": "[cupom] {a|b}", "cupom": "[nome]"})
    assert text == "Oi [cupom] {a|b}, use [nome]"


def test_fallback_stands_in_for_a_missing_or_empty_value() -> None:
    assert render("Oi [nome|cliente]!", {}) == "Oi cliente!"
    assert render("Oi [nome|cliente]!", {"nome": ""}) == "Oi cliente!"
    assert render("Oi [nome|cliente]!", {"nome": "Bia"}) == "Oi Bia!"
    assert fields_of("Oi [nome|cliente] [cupom]") == {"cupom"}


def test_missing_fields_name_every_contact_they_affect() -> None:
    missing = missing_fields("[nome] [cupom]", [{"nome": "a"}, {"cupom": "c", "nome": "b"}, {}])
    assert [(m.field, m.positions, m.count) for m in missing] == [("cupom", [0, 2], 2), ("nome", [2], 1)]


def test_a_refusal_names_the_first_contacts_and_counts_the_rest() -> None:
    missing = missing_fields("[cupom]", [{}] * 100_000)
    assert missing == [MissingField(field="cupom", positions=list(range(SHOWN_POSITIONS)), count=100_000)]


def test_a_template_with_more_placeholders_and_variations_than_the_limit_is_refused() -> None:
    assert problems("[a]{b|c}" * (MAX_TOKENS // 2)) == []
    assert problems("[a]{b|c}" * (MAX_TOKENS // 2) + "[d]") == [
        f"it has {MAX_TOKENS + 1} placeholders and variations; the limit is {MAX_TOKENS}"
    ]


def test_variations_differ_across_recipients_but_not_across_retries() -> None:
    texts = [render("{Olá|Oi|E aí} [nome]", {"nome": "Ana"}, seed=f"id-{i}") for i in range(60)]
    assert set(Counter(texts)) == {"Olá Ana", "Oi Ana", "E aí Ana"}
    assert render("{Olá|Oi|E aí}", {}, seed="same") == render("{Olá|Oi|E aí}", {}, seed="same")


def test_every_character_arrives_as_written() -> None:
    template = "Olá [nome] ção ñ 👨‍👩‍👧‍👦 🇧🇷 שלום עולם مرحبا {sem escolha} [não fecha"
    assert render(template, {"nome": "Zoë"}) == template.replace("[nome]", "Zoë")


def test_placeholders_inside_a_variation_are_filled_too() -> None:
    template = "{Oi [nome]|Olá [nome]|E aí [apelido|amigo]}, tudo bem?"
    rendered = {templates.render(template, {"nome": "Ana"}, seed=f"m{i}") for i in range(30)}
    assert rendered == {"Oi Ana, tudo bem?", "Olá Ana, tudo bem?", "E aí amigo, tudo bem?"}
    assert templates.fields_of(template) == {"nome"}


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{a|{b|c}}", "inside another"),
        ("Olá [nome, tudo bem?", "'[nome, tudo bem?' is not closed"),
        ("Oi {Ana|Bia", "'{Ana|Bia' is not closed"),
    ],
)
def test_templates_that_would_arrive_as_typed_are_problems(template: str, words: str) -> None:
    assert any(words in problem for problem in templates.problems(template))


@pytest.mark.parametrize(
    "template", ["Olá [nome]!", "{Oi|Olá} [nome]", "use [ and ] and { }", "{x}", "a | b", "😀 [nome|amigo]"]
)
def test_well_formed_templates_have_no_problems(template: str) -> None:
    assert templates.problems(template) == []


def test_a_spaced_placeholder_is_refused_only_when_it_names_a_contact_field() -> None:
    from infra.documents import Job, Recipient
    from infra.jobs import InvalidJob, prepare_job

    def job(message: str) -> Job:
        recipient = Recipient(number="5511900000001", name="Ana", fields={"cupom": "X1"})
        return Job(userId="u1", recipients=[recipient], message=message)

    for message, name in [("Oi [ nome ]", "nome"), ("Seu cupom: [cupom ]", "cupom"), ("[ nome|amigo ]", "nome")]:
        with pytest.raises(InvalidJob, match=re.escape(f"has blanks inside its brackets; write [{name}]")):
            prepare_job(job(message), job_id="j1", default_region="BR")
    assert prepare_job(job("Responda [ SIM ] ou [ NÃO ], [nome]"), job_id="j1", default_region="BR").message


def test_numero_fills_with_the_normalised_number_and_blanks_are_no_value() -> None:
    from infra.documents import Job, Recipient
    from infra.jobs import prepare_job, render

    job = prepare_job(
        Job(
            userId="u1", recipients=[Recipient(number="+55 (11) 90000-0001", name="   ")], message="[nome|Oi], [numero]"
        ),
        job_id="j1",
        default_region="BR",
    )
    assert render(job, 0) == "Oi, 5511900000001"  # a name of spaces alone takes the fallback
    assert [(m.field, m.count) for m in missing_fields("[nome]", [{"nome": " \t"}, {"nome": "Ana"}])] == [("nome", 1)]


def test_a_placeholder_with_zero_width_characters_inside_is_caught_like_one_with_spaces() -> None:
    from infra.documents import Job, Recipient
    from infra.jobs import InvalidJob, prepare_job

    job = Job(userId="u1", recipients=[Recipient(number="5511900000001", name="Ana")], message="Olá [\u200bnome]")
    with pytest.raises(InvalidJob, match=re.escape("write [nome]")):
        prepare_job(job, job_id="j1", default_region="BR")


def test_a_blank_left_by_a_nested_placeholder_is_not_taken_for_spaces() -> None:
    assert spaced_placeholders("Oi [nome|[x]]") == {}
    assert problems("Oi [nome|[x]]") == ["'[nome|['…: a fallback is plain text, without placeholders or variations"]
