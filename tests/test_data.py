"""Tests for the data stage: shipped content quality, loaders' error messages, prompt sets.

Fast and model-free: everything here reads small text files.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from traitlens.data import (
    NEUTRAL_SYSTEM,
    POLES,
    TRAIT_NAMES,
    TRAITS,
    ContrastivePrompt,
    Persona,
    Question,
    Statement,
    build_contrastive_set,
    load_forced_choices,
    load_personas,
    load_prompts,
    load_questions,
    load_statements,
    load_traits,
    normalize_trait,
    parse_traits,
    save_jsonl,
    save_prompts,
)
from traitlens.errors import DataError

# Word stems that would give the trait away if a persona just named it.
TRAIT_WORD_STEMS = {
    "O": ("open",),
    "C": ("conscientious",),
    "E": ("extraver", "extrover"),
    "A": ("agreeab",),
    "N": ("neurotic",),
}


# ---------------------------------------------------------------- shipped content


@pytest.fixture(scope="module")
def personas() -> list[Persona]:
    return load_personas()


@pytest.fixture(scope="module")
def questions() -> list[Question]:
    return load_questions()


def test_traits_cover_big_five() -> None:
    infos = load_traits()
    assert [i.code for i in infos] == list(TRAITS)
    for info in infos:
        assert info.name == TRAIT_NAMES[info.code]
        assert len(info.facets) == 6
        assert len(set(info.facets)) == 6
        assert info.high_label and info.low_label and info.high_label != info.low_label
        assert info.description_high.endswith(".") and info.description_low.endswith(".")


def test_personas_counts_and_intensity_mix(personas: list[Persona]) -> None:
    assert len({p.id for p in personas}) == len(personas)
    for trait in TRAITS:
        for pole in POLES:
            group = [p for p in personas if p.trait == trait and p.pole == pole]
            assert len(group) >= 12, (trait, pole)
            levels = Counter(p.intensity for p in group)
            allowed = {4, 5} if pole == "high" else {1, 2}
            assert set(levels) == allowed, (trait, pole, levels)
            # roughly half at each level
            assert min(levels.values()) >= len(group) * 0.35, (trait, pole, levels)
            for p in group:
                assert p.id.startswith(f"{trait}-{pole}-")
                assert re.search(r"\byou\b", p.text, re.IGNORECASE), p.id  # second person


def test_persona_lengths_vary(personas: list[Persona]) -> None:
    for trait in TRAITS:
        counts = [len(p.text.split()) for p in personas if p.trait == trait]
        assert max(counts) / min(counts) > 3, trait
        assert min(counts) <= 12 and max(counts) >= 40, trait


def test_personas_mostly_avoid_trait_names(personas: list[Persona]) -> None:
    for trait in TRAITS:
        group = [p for p in personas if p.trait == trait]
        named = [
            p for p in group if any(stem in p.text.lower() for stem in TRAIT_WORD_STEMS[trait])
        ]
        assert len(named) < 0.25 * len(group), (trait, [p.id for p in named])


def test_questions_counts(questions: list[Question]) -> None:
    assert len(questions) >= 72
    assert len({q.id for q in questions}) == len(questions)
    assert len({q.text for q in questions}) == len(questions)
    by_cat = Counter(q.category for q in questions)
    assert by_cat["neutral"] >= 20
    assert set(by_cat) == {*TRAITS, "neutral"}
    relevant = len(questions) - by_cat["neutral"]
    assert 0.55 <= relevant / len(questions) <= 0.75
    assert all(q.text.endswith(("?", ".")) for q in questions)


def test_statements_counts_and_keying() -> None:
    statements = load_statements()
    assert len({s.id for s in statements}) == len(statements)
    for trait in TRAITS:
        group = [s for s in statements if s.trait == trait]
        assert len(group) >= 14, trait
        reverse = sum(s.keyed == "-" for s in group) / len(group)
        assert 0.35 <= reverse <= 0.65, (trait, reverse)
        for s in group:
            # first person, one sentence
            assert re.search(r"\b(I|me|my)\b", s.text, re.IGNORECASE), s.id
            assert s.text.endswith(".") and s.text.count(".") == 1, s.id


def test_forced_choices_counts_and_balance() -> None:
    items = load_forced_choices()
    assert len({f.id for f in items}) == len(items)
    for trait in TRAITS:
        group = [f for f in items if f.trait == trait]
        assert len(group) >= 12, trait
        for f in group:
            assert f.situation.endswith("?")
            assert f.high_option != f.low_option
            hi, lo = len(f.high_option.split()), len(f.low_option.split())
            # options of similar length, so length cannot give the answer away
            assert max(hi, lo) / min(hi, lo) <= 1.35, f.id
        mean_hi = sum(len(f.high_option) for f in group) / len(group)
        mean_lo = sum(len(f.low_option) for f in group) / len(group)
        assert abs(mean_hi - mean_lo) / mean_lo < 0.1, trait


# ---------------------------------------------------------------- user files


def _write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _persona(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "id": "x1",
        "trait": "E",
        "pole": "high",
        "intensity": 5,
        "text": "You love a crowd.",
    }
    record.update(overrides)
    return record


def test_csv_personas_load(tmp_path: Path) -> None:
    path = tmp_path / "personas.csv"
    path.write_text(
        "id,trait,pole,intensity,text\n"
        'e1,Extraversion,HIGH,5,"You love parties, crowds and noise."\n'
        "e2,e,low,1,You prefer being alone.\n"
        "\n"
        "n1,neuroticism,high,4,You fret a lot.\n",
        encoding="utf-8",
    )
    loaded = load_personas(path)
    assert [p.id for p in loaded] == ["e1", "e2", "n1"]
    assert loaded[0].trait == "E" and loaded[0].pole == "high"
    assert loaded[0].text == "You love parties, crowds and noise."
    assert loaded[2].trait == "N" and loaded[2].intensity == 4


def test_jsonl_and_json_load(tmp_path: Path) -> None:
    jl = _write_jsonl(
        tmp_path / "p.jsonl", [_persona(), _persona(id="x2", pole="low", intensity=2)]
    )
    assert [p.pole for p in load_personas(jl)] == ["high", "low"]
    js = tmp_path / "q.json"
    js.write_text(
        json.dumps(
            [{"id": "a", "text": "Hi?"}, {"id": "b", "text": "Yo?", "category": "o"}], indent=2
        ),
        encoding="utf-8",
    )
    qs = load_questions(js)
    assert [(q.id, q.category) for q in qs] == [("a", "neutral"), ("b", "O")]


def test_csv_statements_keying_aliases(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "id,trait,text,keyed\n"
        "s1,A,I help.,1\ns2,A,I argue.,R\ns3,A,I fight.,reversed\ns4,A,I share.,+1\n"
        "s5,A,I sulk.,-1\n",
        encoding="utf-8",
    )
    assert [s.keyed for s in load_statements(path)] == ["+", "-", "-", "+", "-"]


def _error(exc_info: pytest.ExceptionInfo[DataError]) -> str:
    return str(exc_info.value)


def test_error_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "personas.csv"
    path.write_text("id,trait,pole,intensity\ne1,E,high,5\ne2,E,low,1\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_personas(path)
    msg = _error(exc)
    assert "personas.csv" in msg and "line 2" in msg and "'text'" in msg and "missing" in msg


def test_error_unknown_trait_csv_line_counts_header(tmp_path: Path) -> None:
    path = tmp_path / "personas.csv"
    rows = "".join(f"e{i},E,high,5,You are loud.\n" for i in range(5))
    path.write_text(
        "id,trait,pole,intensity,text\n" + rows + "bad,X,high,5,Hi.\n", encoding="utf-8"
    )
    with pytest.raises(DataError) as exc:
        load_personas(path)
    msg = _error(exc)
    assert "personas.csv line 7" in msg
    assert "'trait'" in msg and "unknown trait 'X'" in msg
    assert "O, C, E, A, N" in msg and "openness" in msg


def test_error_intensity_incoherent(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [_persona(), _persona(id="x2", intensity=2)])
    with pytest.raises(DataError) as exc:
        load_personas(path)
    msg = _error(exc)
    assert "p.jsonl line 2" in msg and "intensity" in msg and "4 or 5" in msg


def test_error_unknown_pole(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [_persona(pole="middle")])
    with pytest.raises(DataError, match=r"p\.jsonl line 1: field 'pole'.*'high' or 'low'"):
        load_personas(path)


@pytest.mark.parametrize("name", ["personas.jsonl", "personas.csv", "personas.json"])
def test_error_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(
        "id,trait,pole,intensity,text\n" if name.endswith(".csv") else "\n", encoding="utf-8"
    )
    with pytest.raises(DataError) as exc:
        load_personas(path)
    msg = _error(exc)
    assert name in msg and "is empty" in msg and "line 1" in msg
    assert "id, trait, pole, intensity, text" in msg


def test_error_bad_keying(tmp_path: Path) -> None:
    path = tmp_path / "statements.jsonl"
    _write_jsonl(
        path,
        [
            {"id": "s1", "trait": "C", "text": "I plan.", "keyed": "+"},
            {"id": "s2", "trait": "C", "text": "I drift.", "keyed": "maybe"},
        ],
    )
    with pytest.raises(DataError) as exc:
        load_statements(path)
    msg = _error(exc)
    assert "statements.jsonl line 2" in msg and "'keyed'" in msg and "'maybe'" in msg
    assert "'+'" in msg and "'-'" in msg


def test_error_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "questions.jsonl"
    path.write_text('{"id": "a", "text": "Hi?"}\n\n{"id": "b", "text": "Oops?"\n', encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_questions(path)
    msg = _error(exc)
    assert "questions.jsonl line 3" in msg and "malformed JSON" in msg and "fix" in msg


def test_error_malformed_json_file(tmp_path: Path) -> None:
    path = tmp_path / "questions.json"
    path.write_text(
        '[\n  {"id": "a", "text": "Hi?"},\n  {"id": "b" "text": "x"}\n]\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"questions\.json line 3: malformed JSON"):
        load_questions(path)


def test_json_list_reports_element_line(tmp_path: Path) -> None:
    path = tmp_path / "questions.json"
    path.write_text(
        '[\n  {"id": "a", "text": "Hi?"},\n\n  {"id": "b", "text": "  "}\n]\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"questions\.json line 4: field 'text': is empty"):
        load_questions(path)


def test_error_duplicate_id(tmp_path: Path) -> None:
    path = tmp_path / "personas.jsonl"
    _write_jsonl(path, [_persona(), _persona(id="x2"), _persona(id="x1")])
    with pytest.raises(DataError) as exc:
        load_personas(path)
    msg = _error(exc)
    assert "personas.jsonl line 3" in msg and "duplicate id 'x1'" in msg
    assert "line 1" in msg and "unique" in msg


def test_error_wrong_extension(tmp_path: Path) -> None:
    path = tmp_path / "personas.txt"
    path.write_text("whatever\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_personas(path)
    msg = _error(exc)
    assert "personas.txt" in msg and "'.txt'" in msg and ".jsonl, .json or .csv" in msg


def test_error_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as exc:
        load_personas(path)
    msg = _error(exc)
    assert "nope.jsonl" in msg and "not found" in msg and "check the path" in msg


def test_error_csv_too_many_cells(tmp_path: Path) -> None:
    path = tmp_path / "personas.csv"
    path.write_text(
        "id,trait,pole,intensity,text\ne1,E,high,5,You are loud, brash.\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"personas\.csv line 2: .*quote cells"):
        load_personas(path)


def test_data_error_is_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_personas(tmp_path / "missing.csv")


def test_prompts_round_trip(tmp_path: Path) -> None:
    prompts = build_contrastive_set("E", n_personas_per_pole=2, n_questions=3)
    path = save_prompts(prompts, tmp_path / "out" / "prompts.jsonl")
    assert path.exists()
    assert load_prompts(path) == prompts
    with pytest.raises(DataError, match=r"\.jsonl"):
        save_jsonl(prompts, tmp_path / "prompts.csv")


# ---------------------------------------------------------------- trait names


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("O", "O"),
        ("o", "O"),
        (" Openness ", "O"),
        ("CONSCIENTIOUSNESS", "C"),
        ("extraversion", "E"),
        ("extroversion", "E"),
        ("a", "A"),
        ("Neuroticism", "N"),
    ],
)
def test_normalize_trait(value: str, code: str) -> None:
    assert normalize_trait(value) == code


@pytest.mark.parametrize("value", ["X", "", "openess", "honesty"])
def test_normalize_trait_unknown(value: str) -> None:
    with pytest.raises(ValueError, match="use one of O, C, E, A, N"):
        normalize_trait(value)


def test_parse_traits() -> None:
    assert parse_traits(None) == list(TRAITS)
    assert parse_traits("O,C,E") == ["O", "C", "E"]
    assert parse_traits(" n , openness ") == ["N", "O"]
    assert parse_traits(["openness", "C"]) == ["O", "C"]
    assert parse_traits("E,extraversion,e") == ["E"]


@pytest.mark.parametrize("spec", ["", " , ", []])
def test_parse_traits_empty(spec: str | list[str]) -> None:
    with pytest.raises(DataError, match="at least one trait"):
        parse_traits(spec)


def test_parse_traits_unknown() -> None:
    with pytest.raises(DataError, match=r"unknown trait 'Q'.*O, C, E, A, N"):
        parse_traits("O,Q")


def test_models_validate_directly() -> None:
    s = Statement(id="s", trait="agreeableness", text="  I help.  ", keyed="reverse")
    assert (s.trait, s.text, s.keyed) == ("A", "I help.", "-")
    with pytest.raises(ValueError):
        ContrastivePrompt(
            id="p",
            trait="E",
            pole="neutral",
            intensity=5,
            persona_id="n",
            question_id="q",
            system="s",
            user="u",
        )


# ---------------------------------------------------------------- contrastive sets


def test_contrastive_labels_and_fields(personas: list[Persona], questions: list[Question]) -> None:
    prompts = build_contrastive_set(["E", "neuroticism"], personas, questions)
    by_persona = {p.id: p for p in personas}
    by_question = {q.id: q for q in questions}
    assert {p.trait for p in prompts} == {"E", "N"}
    n_e = sum(1 for p in personas if p.trait == "E")
    assert sum(p.trait == "E" for p in prompts) == n_e * len(questions)
    assert len({p.id for p in prompts}) == len(prompts)
    for prompt in prompts:
        persona = by_persona[prompt.persona_id]
        question = by_question[prompt.question_id]
        assert prompt.id == f"{prompt.trait}|{prompt.pole}|{persona.id}|{question.id}"
        assert (prompt.trait, prompt.pole, prompt.intensity) == (
            persona.trait,
            persona.pole,
            persona.intensity,
        )
        assert prompt.system == persona.text and prompt.user == question.text
        assert question.text not in prompt.system
        assert persona.text not in prompt.user


def test_contrastive_deterministic_and_seeded() -> None:
    kwargs = {"n_personas_per_pole": 3, "n_questions": 5}
    a = build_contrastive_set("O,C", seed=1, **kwargs)
    b = build_contrastive_set("O,C", seed=1, **kwargs)
    c = build_contrastive_set("O,C", seed=2, **kwargs)
    assert a == b
    assert [p.id for p in a] != [p.id for p in c]


def test_contrastive_limits(personas: list[Persona]) -> None:
    prompts = build_contrastive_set("A", n_personas_per_pole=4, n_questions=6, seed=3)
    assert len(prompts) == 2 * 4 * 6
    for pole in POLES:
        side = [p for p in prompts if p.pole == pole]
        assert len({p.persona_id for p in side}) == 4
        assert len({p.question_id for p in side}) == 6
    # the same questions on both sides keeps the contrast paired
    assert {p.question_id for p in prompts if p.pole == "high"} == {
        p.question_id for p in prompts if p.pole == "low"
    }
    # a limit larger than available keeps everything
    big = build_contrastive_set("A", n_personas_per_pole=10_000, n_questions=2)
    assert len({p.persona_id for p in big}) == sum(p.trait == "A" for p in personas)


def test_contrastive_trait_subsample_is_stable() -> None:
    alone = build_contrastive_set("E", n_personas_per_pole=3, n_questions=4, seed=5)
    both = build_contrastive_set("O,E", n_personas_per_pole=3, n_questions=4, seed=5)
    assert alone == [p for p in both if p.trait == "E"]


def test_contrastive_question_category(questions: list[Question]) -> None:
    neutral = build_contrastive_set("C", question_category="neutral", n_personas_per_pole=1)
    ids = {q.id for q in questions if q.category == "neutral"}
    assert {p.question_id for p in neutral} == ids
    own = build_contrastive_set("C", question_category="conscientiousness", n_personas_per_pole=1)
    assert {p.question_id for p in own} == {q.id for q in questions if q.category == "C"}
    with pytest.raises(DataError, match="question_category 'bogus'"):
        build_contrastive_set("C", question_category="bogus")
    with pytest.raises(DataError, match="no questions with category 'O'"):
        build_contrastive_set("C", questions=[Question(id="q", text="Hi?")], question_category="O")


def test_contrastive_include_neutral() -> None:
    prompts = build_contrastive_set(
        "N,A", n_personas_per_pole=2, n_questions=3, include_neutral=True
    )
    neutral = [p for p in prompts if p.pole == "neutral"]
    assert len(neutral) == 2 * 3
    assert len(prompts) == 2 * (2 * 2 * 3 + 3)
    for p in neutral:
        assert p.system == NEUTRAL_SYSTEM and p.intensity == 3 and p.persona_id == "neutral"
        assert p.id == f"{p.trait}|neutral|neutral|{p.question_id}"
    assert not any(p.pole == "neutral" for p in build_contrastive_set("N", n_questions=1))


def test_contrastive_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown trait 'Z'"):
        build_contrastive_set("Z")
    only_high = [Persona(id="h", trait="E", pole="high", intensity=5, text="You are loud.")]
    with pytest.raises(DataError, match=r"no 'low' personas for trait E \(extraversion\)"):
        build_contrastive_set("E", only_high)
    with pytest.raises(DataError, match="n_questions"):
        build_contrastive_set("E", n_questions=0)


def test_contrastive_accepts_paths(tmp_path: Path) -> None:
    personas = _write_jsonl(
        tmp_path / "p.jsonl",
        [_persona(), _persona(id="x2", pole="low", intensity=1, text="You keep quiet.")],
    )
    qpath = tmp_path / "q.csv"
    qpath.write_text("id,text\nq1,What do you do on Sundays?\n", encoding="utf-8")
    prompts = build_contrastive_set("E", personas, qpath)
    assert [(p.pole, p.system, p.user) for p in prompts] == [
        ("high", "You love a crowd.", "What do you do on Sundays?"),
        ("low", "You keep quiet.", "What do you do on Sundays?"),
    ]
