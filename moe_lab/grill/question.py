"""What a grill question is: its kind, topic, difficulty, model answer and the section that
demonstrates it; and what grading one returns.

Four kinds of question, one grading code (``moe_lab.grill.grading``):

    recall    free recall: the reader answers in their head, reveals the model answer and marks
              themselves (the score counts it only when they do)
    verdict   a popular claim to judge: "true", "partly" or "false", graded; the model answer is
              the evidence
    numeric   generated from a seed (``moe_lab.grill.numeric``), graded against the library's own
              computation with a stated tolerance
    bug       code with a bug to fix (``moe_lab.grill.bugs``), graded by running the reader's code
              against the library on random inputs

Taught in: notebooks/08_interview_grill.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_lab.config import require

TOPICS: dict[str, str] = {
    "routing": "Routing",
    "balancing": "Balancing and capacity",
    "training": "Training and collapse",
    "budgets": "Budgets and serving",
    "scaling": "Scaling and parallelism",
    "myths": "Myths",
}
KINDS = ("recall", "verdict", "numeric", "bug")
DIFFICULTIES = ("easy", "medium", "hard")
VERDICTS = ("true", "partly", "false")


@dataclass(frozen=True)
class Link:
    """Where the course demonstrates an answer: a notebook (its file stem) and a section heading.

    ``section`` is the heading's exact text without the leading ``#`` marks, as it appears in
    ``notebooks/<notebook>.py``; ``tests/test_grill_bank.py`` checks that it is there.
    """

    notebook: str
    section: str

    def __str__(self) -> str:
        return f"notebooks/{self.notebook}.ipynb, section “{self.section}”"


@dataclass(frozen=True)
class Question:
    """One question of the bank, as stored in ``moe_lab/grill/questions/<topic>.toml``.

    Args:
        id: unique, stable name (``"balancing-capacity"``); seeds derive from it.
        topic: a key of ``TOPICS``.
        kind: one of ``KINDS``.
        difficulty: one of ``DIFFICULTIES``.
        prompt: the question, in Markdown. Numeric questions add their generated numbers to it.
        answer: the model answer, in Markdown: the reasoning, not only the result.
        link: the notebook section that demonstrates the answer.
        sources: papers (with section, table or equation) and model cards behind the answer.
        generator: numeric questions: the name of a generator in ``moe_lab.grill.numeric``.
        checker: bug questions: the name of a checker in ``moe_lab.grill.bugs``.
        code: bug questions: the buggy code the reader starts from, exactly as shown.
        fix: bug questions: a corrected version (the tests check the checker accepts it).
        verdict: verdict questions: ``"true"``, ``"partly"`` or ``"false"``.
    """

    id: str
    topic: str
    kind: str
    difficulty: str
    prompt: str
    answer: str
    link: Link
    sources: tuple[str, ...] = ()
    generator: str | None = None
    checker: str | None = None
    code: str | None = None
    fix: str | None = None
    verdict: str | None = None

    def __post_init__(self) -> None:
        where = f"question {self.id!r}"
        require(bool(self.id) and self.id.strip() == self.id, f"{where}: the id must be non-empty")
        require(
            self.topic in TOPICS, f"{where}: topic {self.topic!r} is not one of {', '.join(TOPICS)}"
        )
        require(self.kind in KINDS, f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        require(
            self.difficulty in DIFFICULTIES,
            f"{where}: difficulty {self.difficulty!r} is not one of {', '.join(DIFFICULTIES)}",
        )
        require(bool(self.prompt.strip()), f"{where}: the prompt is empty")
        require(bool(self.answer.strip()), f"{where}: the model answer is empty")
        require(
            (self.generator is not None) == (self.kind == "numeric"),
            f"{where}: a generator is required for numeric questions and only for them",
        )
        require(
            (self.checker is not None) == (self.kind == "bug")
            and (self.code is not None) == (self.kind == "bug")
            and (self.fix is not None) == (self.kind == "bug"),
            f"{where}: checker, code and fix are required for bug questions and only for them",
        )
        require(
            (self.verdict is not None) == (self.kind == "verdict"),
            f"{where}: a verdict is required for verdict questions and only for them",
        )
        if self.verdict is not None:
            require(
                self.verdict in VERDICTS,
                f"{where}: verdict {self.verdict!r} is not one of {', '.join(VERDICTS)}",
            )

    @property
    def graded(self) -> bool:
        """Whether the grill grades the answer itself (recall questions are self-marked)."""
        return self.kind != "recall"


@dataclass(frozen=True)
class Grade:
    """The outcome of one answer.

    Attributes:
        correct: True or False; None for a recall question that was revealed but not marked, or
            an answer that was skipped.
        message: one line or a short paragraph: "right: ..." or "wrong, because ...".
        explanation: the model answer (with this instance's numbers for numeric questions), the
            demonstrating section and the sources, in Markdown.
    """

    correct: bool | None
    message: str
    explanation: str
