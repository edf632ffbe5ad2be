"""The answer guard: numbers, negation and names that embeddings blur decide whether a semantic hit may serve."""

from __future__ import annotations

import pytest

from semantic_llm_cache.guard import guard_refusal, prompt_features


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Is SGPA 6.86 good?", "Is SGPA 6.71 good?"),
        ("How many calories are in 2 eggs?", "How many calories are in 3 eggs?"),
        ("Summarise this in three sentences.", "Summarise this in one sentence."),
        ("What happened in 1969?", "What happened in 1970?"),
        ("What is 10% of 250?", "What is 10% of 300?"),
        ("Give me a recipe for two people", "Give me a recipe for four people"),
        ("What is 6,000 in hex?", "What is 6,500 in hex?"),
        ("Is 6.86 good?", "Is it good?"),
    ],
)
def test_different_numbers_are_refused(query: str, candidate: str) -> None:
    assert guard_refusal(query, candidate) == "numbers"
    assert guard_refusal(candidate, query) == "numbers"


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Write one sentence about cats", "Write a sentence about cats"),  # "one" is also a pronoun: not a number
        ("Which one is better?", "Which is better?"),
        ("Is SGPA 6.86 good?", "Is an SGPA of 6.86 good?"),
    ],
)
def test_same_numbers_or_none_are_allowed(query: str, candidate: str) -> None:
    assert guard_refusal(query, candidate) is None


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Why can my app use the camera?", "Why can't my app use the camera?"),
        ("Why can my app use the camera?", "Why can\u2019t my app use the camera?"),
        ("I can swim", "I cannot swim"),
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"),
        ("Does it work without internet?", "Does it work with internet?"),
        ("Do I need a visa?", "Don't I need a visa?"),
        ("I dont know the answer", "I know the answer"),
        ("Should I ever do this?", "Should I never do this?"),
    ],
)
def test_negation_difference_is_refused(query: str, candidate: str) -> None:
    assert guard_refusal(query, candidate) == "negation"
    assert guard_refusal(candidate, query) == "negation"


def test_negation_on_both_sides_is_allowed() -> None:
    assert guard_refusal("Why can't I log in?", "Why cannot I log in?") is None
    assert guard_refusal("Why doesn't it start?", "Why won't it start?") is None


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("What is the population of Mono County?", "What is the population of Merced County?"),
        ("How do I learn Python?", "How do I learn Java?"),
        ("Is the Eiffel Tower in Paris?", "Is the Eiffel Tower in Lyon?"),
        ("What did Alice say?", "What did she say?"),
    ],
)
def test_different_names_are_refused(query: str, candidate: str) -> None:
    assert guard_refusal(query, candidate) == "names"
    assert guard_refusal(candidate, query) == "names"


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("How do I learn Python?", "how do i learn python?"),  # names compare case-insensitively
        ("Where is Paris?", "where is paris"),
        ("Python is great. Is it fast?", "python is great. is it fast?"),  # sentence starts are not names
        ("How do I reset my password?", "What do I do to reset my password?"),
        ("Why do I code", "Why do i code"),  # "I" is not a name
        ("Tell me about Paris. Then Rome!", "Tell me about Rome and Paris"),
    ],
)
def test_matching_names_and_sentence_capitals_are_allowed(query: str, candidate: str) -> None:
    assert guard_refusal(query, candidate) is None


def test_numbers_are_checked_before_negation_and_names() -> None:
    assert guard_refusal("Can't Alice run 5 km?", "Can Bob run 10 km?") == "numbers"
    assert guard_refusal("Can't Alice run?", "Can Bob run?") == "negation"


def test_prompt_features() -> None:
    features = prompt_features("Why can't Mono County pay 6.86 dollars? Ask three people.")
    assert features.numbers == {"6.86", "three"}
    assert features.negated is True
    assert features.names == {"mono", "county"}  # "Why" and "Ask" open sentences
    assert "ask" in features.words and "can't" in features.words
    assert prompt_features("nothing special here").names == frozenset()


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Why is Science Diet bad for dogs?", "Why is Science Diet good for dogs?"),
        ("What are the advantages of remote work?", "What are the disadvantages of remote work?"),
        ("Is it better to buy a house now?", "Is it better to sell a house now?"),
        ("What do men want in a relationship?", "What do women want in a relationship?"),
    ],
)
def test_swapped_opposites_are_refused(query: str, candidate: str) -> None:
    assert guard_refusal(query, candidate) == "opposites"
    assert guard_refusal(candidate, query) == "opposites"


def test_opposites_present_in_both_prompts_are_not_a_swap() -> None:
    assert guard_refusal("What is good and bad about Rust?", "What is bad and good about Rust?") is None
    assert guard_refusal("What is the best laptop for students?", "Which laptop is best for students?") is None
