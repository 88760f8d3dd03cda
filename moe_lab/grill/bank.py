"""The question bank: one TOML file per topic in ``moe_lab/grill/questions/``, read and checked.

Each file holds ``[[question]]`` tables; the topic is the file's name. A question's keys are the
fields of ``moe_lab.grill.question.Question`` (``link`` is an inline table ``{ notebook = "...",
section = "..." }``). Loading rejects, with the file and question named: an unknown key, a
duplicate id, a generator or checker that does not exist, and anything ``Question`` validates.
That every ``link`` names an existing notebook section is checked by ``tests/test_grill_bank.py``
(the notebooks are not shipped with the package).

    questions = load_bank()
    select(questions, topic="balancing", difficulty="medium", n=10, seed=3)

Taught in: notebooks/08_interview_grill.ipynb.
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import fields
from functools import lru_cache
from pathlib import Path

from moe_lab.grill.bugs import CHECKERS
from moe_lab.grill.numeric import GENERATORS
from moe_lab.grill.question import DIFFICULTIES, TOPICS, Link, Question

QUESTION_DIR = Path(__file__).resolve().parent / "questions"
_FIELDS = {f.name for f in fields(Question)} - {"topic"}


class BankError(ValueError):
    """A question file is malformed; the message names the file and the question."""


def _question(raw: dict, topic: str, where: str) -> Question:
    unknown = set(raw) - _FIELDS
    if unknown:
        raise BankError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FIELDS)}")
    link = raw.get("link")
    if not isinstance(link, dict) or set(link) != {"notebook", "section"}:
        raise BankError(f"{where}: link must be {{ notebook = ..., section = ... }}")
    values = {**raw, "topic": topic, "link": Link(link["notebook"], link["section"])}
    values["sources"] = tuple(raw.get("sources", ()))
    try:
        question = Question(**values)
    except (TypeError, ValueError) as error:
        raise BankError(f"{where}: {error}") from None
    if question.generator is not None and question.generator not in GENERATORS:
        raise BankError(f"{where}: no numeric generator named {question.generator!r}")
    if question.checker is not None and question.checker not in CHECKERS:
        raise BankError(f"{where}: no bug checker named {question.checker!r}")
    return question


def load_topic(path: Path) -> list[Question]:
    """The questions of one topic file (its stem must be a topic name)."""
    topic = path.stem
    if topic not in TOPICS:
        raise BankError(
            f"{path.name}: {topic!r} is not a topic; name the file after one of {', '.join(TOPICS)}"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise BankError(f"{path.name}: {error}") from None
    entries = data.get("question", [])
    return [
        _question(raw, topic, f"{path.name}, question {raw.get('id', index)!r}")
        for index, raw in enumerate(entries)
    ]


@lru_cache(maxsize=4)
def load_bank(directory: Path = QUESTION_DIR) -> tuple[Question, ...]:
    """Every question, topic by topic in ``TOPICS`` order, ids unique."""
    questions: list[Question] = []
    for topic in TOPICS:
        path = Path(directory) / f"{topic}.toml"
        if not path.is_file():
            raise BankError(f"the bank has no file for topic {topic!r}: expected {path}")
        questions.extend(load_topic(path))
    seen: set[str] = set()
    for question in questions:
        if question.id in seen:
            raise BankError(f"question id {question.id!r} appears twice")
        seen.add(question.id)
    return tuple(questions)


def select(
    questions: Iterable[Question],
    topic: str | None = None,
    difficulty: str | None = None,
    n: int | None = None,
    seed: int = 0,
) -> list[Question]:
    """The matching questions in a seeded random order, at most ``n`` of them.

    Args:
        questions: the bank (or any subset).
        topic: a key of ``TOPICS``, or None for all.
        difficulty: one of ``DIFFICULTIES``, or None for all.
        n: how many to keep; None keeps all.
        seed: the order's seed; the same seed gives the same order.

    Raises:
        ValueError: an unknown topic or difficulty, or ``n`` < 1, naming the choices.
    """
    if topic is not None and topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}: choose one of {', '.join(TOPICS)}")
    if difficulty is not None and difficulty not in DIFFICULTIES:
        raise ValueError(
            f"unknown difficulty {difficulty!r}: choose one of {', '.join(DIFFICULTIES)}"
        )
    if n is not None and n < 1:
        raise ValueError(f"n={n} must be a positive integer")
    chosen = sorted(
        (
            q
            for q in questions
            if (topic is None or q.topic == topic)
            and (difficulty is None or q.difficulty == difficulty)
        ),
        key=lambda q: q.id,
    )
    random.Random(seed).shuffle(chosen)
    return chosen if n is None else chosen[:n]


def sample_across_topics(
    questions: Sequence[Question], per_topic: int, seed: int = 0
) -> list[Question]:
    """``per_topic`` seeded questions from every topic, topic by topic."""
    return [q for topic in TOPICS for q in select(questions, topic=topic, n=per_topic, seed=seed)]
