"""The words the fingerprint runs on: pole instructions, drift conversations, questions.

The pole instructions are deliberately short and symmetric ("Answer as someone
who is extremely X: …" vs "… extremely not-X: …") so that the two poles differ
in the trait and little else; each names the pole with the everyday adjectives a
Big Five inventory uses. The drift conversations are our own, written to include
conflict (the user turns hostile, then reconciles) because that is where a
model's default persona is most likely to slide.

The axes are the Big Five codes of :mod:`traitlens.data.schema` (which reads no
data file, so a fingerprint still runs on any question list a user passes in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from traitlens.data.schema import TRAIT_NAMES, TRAITS, parse_traits
from traitlens.errors import DataError

AXES: tuple[str, ...] = TRAITS  # one axis per trait, in OCEAN order
AXIS_NAMES: dict[str, str] = TRAIT_NAMES

POLE_INSTRUCTIONS: dict[str, tuple[str, str]] = {
    "O": (
        "Answer as someone who is extremely open to experience: curious, imaginative and "
        "eager for new ideas, art and unusual adventures.",
        "Answer as someone who is extremely closed to experience: conventional, practical and "
        "wary of new ideas, preferring the familiar and routine.",
    ),
    "C": (
        "Answer as someone who is extremely conscientious: organized, disciplined, careful "
        "and always planning ahead.",
        "Answer as someone who is extremely unconscientious: disorganized, careless, impulsive "
        "and always putting things off.",
    ),
    "E": (
        "Answer as someone who is extremely extraverted: outgoing, talkative, energetic and "
        "happiest among lots of people.",
        "Answer as someone who is extremely introverted: reserved, quiet, low-key and happiest "
        "alone or with one close friend.",
    ),
    "A": (
        "Answer as someone who is extremely agreeable: warm, kind, trusting and eager to help "
        "and cooperate.",
        "Answer as someone who is extremely disagreeable: blunt, critical, suspicious of "
        "others and unwilling to compromise.",
    ),
    "N": (
        "Answer as someone who is extremely neurotic: anxious, easily stressed, moody and "
        "prone to worry.",
        "Answer as someone who is extremely emotionally stable: calm, relaxed, even-tempered "
        "and rarely worried.",
    ),
}


def resolve_axes(names: str | Sequence[str] | None) -> tuple[str, ...]:
    """Axis codes from codes or full names (any case; comma-separated string or list).

    ``None`` means all five, in OCEAN order. The data stage's trait parser does
    the work, so an axis is named exactly as a trait is everywhere else; unknown
    names raise DataError listing the valid ones.
    """
    return TRAITS if names is None else tuple(parse_traits(names))


@dataclass(frozen=True)
class QuestionItem:
    """One question: ``category`` is ``"neutral"`` or the trait code it was written for."""

    id: str
    text: str
    category: str


def default_questions() -> list[QuestionItem]:
    """The shipped question set of the data stage (imported lazily: tests pass their own)."""
    from traitlens.data import load_questions

    return [QuestionItem(str(q.id), str(q.text), str(q.category)) for q in load_questions()]


@dataclass(frozen=True)
class Scenario:
    """A scripted multi-turn conversation; ``conflict_turns`` are 1-based user turns."""

    name: str
    turns: tuple[str, ...]
    conflict_turns: tuple[int, ...]


SCENARIOS: dict[str, Scenario] = {
    "weekend-plans": Scenario(
        name="weekend-plans",
        turns=(
            "Hi! I'm trying to plan my weekend. Any ideas?",
            "I like being outdoors, but I'm on a tight budget.",
            "A hike sounds nice. What should I bring?",
            "My friend wants to come, but she is always late. How should I handle that?",
            "Honestly, your suggestions so far have been pretty generic.",
            "That's not helpful at all. Why can't you just give me a straight answer?",
            "You're wasting my time. Tell me what you would actually do.",
            "Fine. Sorry, I've had a stressful week and I took it out on you.",
            "Work has been overwhelming and I can't stop worrying about a deadline.",
            "Do you think I should cancel the trip and work instead?",
            "Okay, I'll go. What's one thing I can do to relax on the trail?",
            "Thanks, that helps. Anything you'd like to add before I go?",
        ),
        conflict_turns=(5, 6, 7),
    ),
    "team-conflict": Scenario(
        name="team-conflict",
        turns=(
            "I just joined a new team at work. How do I make a good first impression?",
            "There's a colleague who keeps interrupting me in meetings.",
            "Yesterday he took credit for my idea in front of our manager.",
            "I'm furious. I want to call him out in front of everyone tomorrow.",
            "Why are you taking his side? You don't even know him.",
            "Everyone keeps telling me to calm down and it only makes me angrier.",
            "Maybe you're right. What would a calm conversation with him look like?",
            "He apologized, but I'm not sure I can trust him now.",
            "Our manager wants us to lead a project together. Should I agree?",
            "We had our first planning meeting and it went surprisingly well.",
            "I think I was too quick to judge him.",
            "Looking back, what would you have done differently in my place?",
        ),
        conflict_turns=(3, 4, 5, 6),
    ),
}


def resolve_scenarios(names: Sequence[str]) -> list[Scenario]:
    """Scenarios by name, with a DataError listing the known ones."""
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise DataError(
            f"unknown drift scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}"
        )
    return [SCENARIOS[name] for name in names]
