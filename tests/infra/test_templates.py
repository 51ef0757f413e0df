from __future__ import annotations

from collections import Counter

from infra.templates import fields_of, missing_fields, render


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
    assert [(m.field, m.positions) for m in missing] == [("cupom", [0, 2]), ("nome", [2])]


def test_variations_differ_across_recipients_but_not_across_retries() -> None:
    texts = [render("{Olá|Oi|E aí} [nome]", {"nome": "Ana"}, seed=f"id-{i}") for i in range(60)]
    assert set(Counter(texts)) == {"Olá Ana", "Oi Ana", "E aí Ana"}
    assert render("{Olá|Oi|E aí}", {}, seed="same") == render("{Olá|Oi|E aí}", {}, seed="same")


def test_every_character_arrives_as_written() -> None:
    template = "Olá [nome] ção ñ 👨‍👩‍👧‍👦 🇧🇷 שלום עולם مرحبا {sem escolha} [não fecha"
    assert render(template, {"nome": "Zoë"}) == template.replace("[nome]", "Zoë")
