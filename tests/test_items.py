"""Tests for the concept item bank: shipped content quality, user banks in public layouts,
and the refusals a thin or malformed bank gets.

Fast and model-free: everything here reads small text files.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from traitlens.data import (
    FACETS,
    TRAIT_NAMES,
    TRAITS,
    ConceptItem,
    check_item_bank,
    load_items,
    load_statements,
)
from traitlens.data.schema import _TRAIT_ALIASES
from traitlens.errors import DataError

FIXTURES = Path(__file__).parent / "data"

# Words that would name a facet of the shipped bank outright (stems catch "anxious" etc.).
FACET_WORD_STEMS = (
    "imagin",
    "artist",
    "emotion",
    "adventur",
    "intellect",
    "liberal",
    "efficac",
    "orderl",
    "dutiful",
    "duty",
    "achiev",
    "disciplin",
    "cautio",
    "friendl",
    "gregari",
    "assertiv",
    "activit",
    "excite",
    "cheerful",
    "trust",
    "moral",
    "altruis",
    "cooperat",
    "modest",
    "sympath",
    "anxi",
    "anger",
    "angry",
    "depress",
    "self-conscious",
    "immoderat",
    "vulnerab",
)


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


# ---------------------------------------------------------------- shipped bank


@pytest.fixture(scope="module")
def bank() -> list[ConceptItem]:
    return load_items()


def test_facets_constant() -> None:
    assert tuple(FACETS) == TRAITS
    labels = [facet for facets in FACETS.values() for facet in facets]
    assert all(len(facets) == 6 for facets in FACETS.values())
    assert len(set(labels)) == len(labels) == 30
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", label) for label in labels)


def test_shipped_bank_counts_facets_and_keying(bank: list[ConceptItem]) -> None:
    assert len(bank) >= 300
    check_item_bank(bank, min_facets=6, min_items=60)
    for trait in TRAITS:
        domain = [item for item in bank if item.trait == trait]
        assert len(domain) >= 60, trait
        per_facet = Counter(item.facet for item in domain)
        assert set(per_facet) == set(FACETS[trait]), trait
        assert min(per_facet.values()) >= 8, (trait, per_facet)
        plus = sum(item.keyed == "+" for item in domain) / len(domain)
        assert 0.4 <= plus <= 0.6, (trait, plus)
        for facet in FACETS[trait]:
            keys = Counter(item.keyed for item in domain if item.facet == facet)
            assert keys["+"] == keys["-"], (trait, facet, keys)


def test_shipped_bank_ids_and_texts_unique(bank: list[ConceptItem]) -> None:
    assert len({item.id for item in bank}) == len(bank)
    assert len({_norm(item.text) for item in bank}) == len(bank)
    statements = {_norm(s.text) for s in load_statements()}
    assert not [item.id for item in bank if _norm(item.text) in statements]
    for item in bank:
        code = item.id.split("-")
        assert re.fullmatch(r"[OCEAN]-[A-Z]{3}-\d{2}", item.id), item.id
        assert code[0] == item.trait, item.id


def test_shipped_bank_wording(bank: list[ConceptItem]) -> None:
    trait_words = [*TRAIT_NAMES.values(), *_TRAIT_ALIASES, "extravert", "introvert"]
    trait_pattern = re.compile(r"\b(" + "|".join(trait_words) + r")", re.IGNORECASE)
    facet_pattern = re.compile(r"\b(" + "|".join(FACET_WORD_STEMS) + ")", re.IGNORECASE)
    for item in bank:
        assert not trait_pattern.search(item.text), item
        assert not facet_pattern.search(item.text), item
        assert 4 <= len(item.text.split()) <= 14, item
        assert re.search(r"\b(I|me|my)\b", item.text, re.IGNORECASE), item  # first person
        assert item.text.endswith(".") and item.text.count(".") == 1, item
    openings = Counter(item.text.split()[0] for item in bank)
    assert openings["I"] < 0.5 * len(bank), openings.most_common(3)


# ---------------------------------------------------------------- user banks


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _csv(tmp_path: Path, header: str, *rows: str, name: str = "items.csv") -> Path:
    return _write(tmp_path / name, "\n".join([header, *rows]) + "\n")


def test_ipip_layout_csv_loads_unchanged() -> None:
    items = load_items(FIXTURES / "ipip_layout_sample.csv")
    assert [(i.id, i.trait, i.facet, i.keyed) for i in items] == [
        ("E-001", "E", "friendliness", "+"),
        ("E-002", "E", "gregariousness", "-"),
        ("E-003", "E", "assertiveness", "+"),
        ("E-004", "E", "activity_level", "+"),
        ("C-001", "C", "orderliness", "+"),
        ("C-002", "C", "orderliness", "-"),
        ("C-003", "C", "self_discipline", "+"),
        ("N-001", "N", "anxiety", "+"),
        ("N-002", "N", "anger", "-"),
        ("N-003", "N", "depression", "+"),
        ("A-001", "A", "altruism", "+"),
        ("A-002", "A", "sympathy", "-"),
        ("A-003", "A", "trust", "+"),
        ("O-001", "O", "imagination", "+"),
        ("O-002", "O", "adventurousness", "-"),
    ]
    assert items[0].text == "I chat with the barista every morning."
    assert items[-1].text == "New foods make me nervous, so I skip them."
    # deterministic: loading again gives the same ids
    assert load_items(FIXTURES / "ipip_layout_sample.csv") == items
    check_item_bank(items, "E,C,N,A", min_items=3)


def test_no_facet_column_makes_each_item_its_own_facet(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "Item,DOMAIN,Sign,notes",
        "I like parties.,e,+,ignored",
        "I hate parties.,E,-,",
        "I fret.,neuroticism,-1,",
        "I stay calm.,N,minus,",
    )
    items = load_items(path)
    assert [(i.id, i.facet, i.keyed) for i in items] == [
        ("E-001", "e_001", "+"),
        ("E-002", "e_002", "-"),
        ("N-001", "n_001", "-"),
        ("N-002", "n_002", "-"),
    ]
    check_item_bank(items, "E,N", min_items=2)  # one facet per item: two facets each
    with_ids = _csv(tmp_path, "item_id,text,trait,keying", "Q1,I plan.,C,plus", "Q2,I drift.,C,-")
    assert [(i.id, i.facet) for i in load_items(with_ids)] == [("Q1", "q1"), ("Q2", "q2")]


def test_json_bank_with_other_key_names(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bank.json",
        json.dumps(
            [
                {"Code": 7, "Question": "I hum.", "Big5": "Openness", "KEY": 1, "Subscale": 2},
                {"Code": 8, "Question": "I sit.", "Big5": "o", "KEY": -1, "Subscale": 2},
            ],
            indent=2,
        ),
    )
    items = load_items(path)
    assert [(i.id, i.trait, i.facet, i.keyed) for i in items] == [
        ("7", "O", "2", "+"),
        ("8", "O", "2", "-"),
    ]


def test_concept_item_validates_directly() -> None:
    item = ConceptItem(
        id="x", trait="Extraversion", facet=" Self-Consciousness ", keyed="+1", text="  I sing. "
    )
    assert (item.trait, item.facet, item.keyed, item.text) == (
        "E",
        "self_consciousness",
        "+",
        "I sing.",
    )
    assert ConceptItem(id="y", trait="n", facet="Activity Level", keyed="-1", text="x").facet == (
        "activity_level"
    )
    with pytest.raises(ValidationError):
        item.text = "changed"  # type: ignore[misc]
    for bad in ({"facet": ""}, {"facet": "--"}, {"text": " "}, {"keyed": "maybe"}):
        fields = {"id": "x", "trait": "E", "facet": "f", "keyed": "+", "text": "I sing."}
        with pytest.raises(ValidationError):
            ConceptItem(**{**fields, **bad})


# ---------------------------------------------------------------- refusals: files


def test_error_missing_key_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "text,domain,facet", "I plan.,C,order")
    with pytest.raises(DataError) as exc:
        load_items(path)
    msg = str(exc.value)
    assert "items.csv" in msg and "no keying column" in msg
    assert "columns found (text, domain, facet)" in msg
    assert "keyed, key, sign, keying" in msg and "ignoring case" in msg


def test_error_missing_several_columns_is_one_message(tmp_path: Path) -> None:
    path = _csv(tmp_path, "wording,sign", "I plan.,+")
    with pytest.raises(DataError) as exc:
        load_items(path)
    msg = str(exc.value)
    assert "no item text or Big Five domain column" in msg and "O/C/E/A/N" in msg
    assert "text, item, statement, question" in msg
    assert "trait, domain, label_ocean, factor, big5" in msg
    assert "wording, sign" in msg


def test_error_two_text_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, "text,trait,keyed,Item", "I plan.,C,+,I really plan.")
    with pytest.raises(DataError) as exc:
        load_items(path)
    msg = str(exc.value)
    assert "columns 'text' and 'item' both look like the item text" in msg
    assert "keep one of them" in msg


def test_error_bad_key_value_names_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, "text,label_ocean,key", "I plan.,C,1", "I drift.,C,-1", "I tidy.,C,often")
    with pytest.raises(DataError) as exc:
        load_items(path)
    msg = str(exc.value)
    assert "items.csv line 4" in msg and "field 'key'" in msg and "'often'" in msg
    assert "'+'" in msg and "'-'" in msg


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        ("Emotional Stability", "relabel those items N and flip each key"),
        ("INTELLECT", "relabel those items O"),
        ("3", "factor number"),
        ("honesty", "use one of O, C, E, A, N"),
    ],
)
def test_error_unmapped_domain(tmp_path: Path, value: str, fix: str) -> None:
    path = _csv(tmp_path, "text,factor,key", "I plan.,C,1", f"I wonder.,{value},1")
    with pytest.raises(DataError) as exc:
        load_items(path)
    msg = str(exc.value)
    assert "items.csv line 3" in msg and "field 'factor'" in msg and fix in msg
    assert repr(value) in msg


def test_error_empty_cell_in_present_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "text,trait,keyed,facet", "I plan.,C,+,order", "I drift.,C,-,")
    with pytest.raises(DataError, match=r"items\.csv line 3: column 'facet' is missing or empty"):
        load_items(path)


def test_error_duplicate_id(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bank.jsonl",
        "".join(
            json.dumps({"id": i, "trait": "A", "keyed": "+", "text": t}) + "\n"
            for i, t in [("a1", "I share."), ("a2", "I help."), ("a1", "I listen.")]
        ),
    )
    with pytest.raises(DataError) as exc:
        load_items(path)
    msg = str(exc.value)
    assert "bank.jsonl line 3" in msg and "duplicate id 'a1'" in msg and "line 1" in msg


def test_error_duplicate_text_ignoring_case_and_spacing(tmp_path: Path) -> None:
    path = _csv(
        tmp_path, "text,trait,keyed", "I share my food.,A,+", "I help.,A,+", "i share  MY food.,A,-"
    )
    with pytest.raises(DataError) as exc:
        load_items(path)
    msg = str(exc.value)
    assert "items.csv line 4" in msg and "duplicate text" in msg and "same as line 2" in msg


@pytest.mark.parametrize("name", ["items.csv", "items.jsonl", "items.json"])
def test_error_empty_file(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, "text,trait,keyed\n" if name.endswith(".csv") else "")
    with pytest.raises(DataError) as exc:
        load_items(path)
    msg = str(exc.value)
    assert name in msg and "is empty" in msg and "text, trait, keyed" in msg


def test_error_semicolon_csv(tmp_path: Path) -> None:
    path = _csv(tmp_path, "text;trait;keyed", "I plan.;C;+")
    with pytest.raises(DataError, match=r"items\.csv line 1: .*semicolons.*commas"):
        load_items(path)


# ---------------------------------------------------------------- refusals: thin banks


def _item(n: int, trait: str = "E", facet: str = "f") -> ConceptItem:
    return ConceptItem(id=f"{trait}{n}", trait=trait, facet=facet, keyed="+", text=f"I do {n}.")


def test_check_bank_missing_domain() -> None:
    items = [_item(n, facet=f"f{n % 2}") for n in range(6)]
    check_item_bank(items, "E")
    with pytest.raises(DataError) as exc:
        check_item_bank(items, "E,N")
    assert str(exc.value) == (
        "item bank has no items for N (neuroticism); add some or drop N from --traits"
    )


def test_check_bank_one_facet() -> None:
    items = [_item(n) for n in range(6)]
    with pytest.raises(DataError) as exc:
        check_item_bank(items, ["extraversion"], source="my.csv")
    msg = str(exc.value)
    assert msg.startswith("my.csv has 1 distinct facet(s) for E (extraversion) (f)")
    assert "facet-grouped cross-validation" in msg and "at least 2" in msg
    assert "without a facet column gets one facet per item" in msg


def test_check_bank_too_few_items_and_all_problems_listed() -> None:
    items = [_item(0, facet="a"), _item(1, facet="b"), *(_item(n, "O", "x") for n in range(5))]
    with pytest.raises(DataError) as exc:
        check_item_bank(items, "E,O")
    lines = str(exc.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("item bank has only 2 item(s) for E (extraversion)")
    assert "fewer than the 4 needed" in lines[0] and "drop E from --traits" in lines[0]
    assert lines[1].startswith("item bank has 1 distinct facet(s) for O (openness)")
    check_item_bank(items, "E", min_items=2)
