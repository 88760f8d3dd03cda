"""One grading code for every interface: a question becomes a seeded instance, an answer a Grade.

    instance = make_instance(question, seed)       # numeric questions draw their numbers here
    grade(instance, "640")                         # -> Grade(correct, message, explanation)
    session = GrillSession(questions, seed=0)      # an ordered run with a running score

The ``Grill`` widget (``moe_lab.grill.widget``) and ``moe-lab grill`` (``moe_lab.grill.terminal``)
both drive a ``GrillSession``; neither grades anything itself.

Scoring rule: the first graded attempt at a question is the one that counts. Later attempts are
still graded (and a corrected answer says so), but the score keeps the first, as an interviewer
would. Recall questions count once the reader marks themselves after revealing the answer.

Taught in: notebooks/08_interview_grill.ipynb.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from moe_lab.grill.bugs import CHECKERS, check_answer
from moe_lab.grill.numeric import NumericCase, generate, show
from moe_lab.grill.question import Grade, Question

_SCALES = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_NUMBER = re.compile(
    r"^(?P<number>[-+]?(?:\d[\d,_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
    r"(?P<scale>[kKMBGT](?![a-z]))?\s*(?P<unit>[A-Za-z/%]*)$"
)
_VERDICT_WORDS = {
    "true": "true",
    "t": "true",
    "yes": "true",
    "false": "false",
    "f": "false",
    "no": "false",
    "partly": "partly",
    "partly true": "partly",
    "partially": "partly",
    "partially true": "partly",
    "p": "partly",
    "half true": "partly",
}


def parse_number(text: str, scale: float = 1.0) -> float:
    """Read a reader's number, in units of ``scale`` base units.

    Accepts ``640``, ``1,234``, ``1.5e9``, ``0.85``, ``85%`` and a scale letter with an optional
    unit: ``46.7B`` or ``93.4 GB`` (with ``scale=1e9`` both read as 46.7 and 93.4), ``1.2M``.

    Raises:
        ValueError: the text is not a number, naming what was typed.
    """
    cleaned = text.strip().replace("\u2212", "-").replace(" ", "")
    match = _NUMBER.match(cleaned) if cleaned else None
    if match is None:
        raise ValueError(
            f"{text.strip()!r} is not a number: type digits such as 640, 0.85, 1.5e9 or 46.7B"
        )
    number = float(match["number"].replace(",", "").replace("_", ""))
    if match["unit"] == "%":
        return number / 100
    if match["scale"]:
        return number * _SCALES[match["scale"]] / scale
    return number


def parse_verdict(text: str) -> str:
    """``"true"``, ``"partly"`` or ``"false"`` from the reader's words.

    Raises:
        ValueError: anything else, naming the accepted words.
    """
    key = " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())
    if key not in _VERDICT_WORDS:
        raise ValueError(f"{text.strip()!r} is not a verdict: answer true, partly or false")
    return _VERDICT_WORDS[key]


@dataclass(frozen=True)
class Instance:
    """A question as asked: with its seed, and for numeric questions the drawn case."""

    question: Question
    seed: int
    case: NumericCase | None = None

    @property
    def prompt(self) -> str:
        """The full question in Markdown (numeric questions: the drawn numbers)."""
        if self.case is not None:
            return f"{self.case.prompt} Answer {self.case.tolerance_text}."
        if self.question.kind == "bug":
            return f"{self.question.prompt}\n\n```python\n{self.question.code.rstrip()}\n```"
        if self.question.kind == "verdict":
            return f"{self.question.prompt}\n\nTrue, partly or false?"
        return self.question.prompt

    @property
    def starter_code(self) -> str | None:
        """The buggy code the reader edits (bug questions), else None."""
        return self.question.code

    @property
    def answer_hint(self) -> str:
        """What kind of answer is expected, for prompts and placeholders."""
        kind = self.question.kind
        if kind == "numeric":
            unit = f" in {self.case.unit}" if self.case and self.case.unit else ""
            return f"a number{unit}"
        if kind == "verdict":
            return "true, partly or false"
        if kind == "bug":
            return f"corrected code defining `{CHECKERS[self.question.checker].entry}`"
        return "your answer, in your head; then reveal"


def instance_seed(session_seed: int, question_id: str) -> int:
    """A question's seed in a session: stable across runs, platforms and interfaces."""
    return zlib.crc32(f"{session_seed}:{question_id}".encode())


def make_instance(question: Question, seed: int) -> Instance:
    """The question as asked under ``seed`` (numeric questions draw their case)."""
    case = generate(question.generator, seed) if question.kind == "numeric" else None
    return Instance(question, seed, case)


def explanation(instance: Instance) -> str:
    """Model answer, this instance's working, the demonstrating section and the sources."""
    q = instance.question
    title = f"**Verdict: {q.verdict}.**" if q.kind == "verdict" else "**Model answer.**"
    answer = q.answer.strip()
    # a list or a numbered step cannot follow the title on the same line
    separator = "\n\n" if re.match(r"^(-|\d+\.) ", answer) else " "
    parts = [f"{title}{separator}{answer}"]
    if instance.case is not None:
        parts.append(f"**This case.** {instance.case.working}")
    if q.kind == "bug":
        parts.append(f"**A fix.**\n\n```python\n{q.fix.rstrip()}\n```")
    parts.append(f"**Demonstrated in** {q.link}.")
    if q.sources:
        parts.append("**Sources.** " + "; ".join(q.sources) + ".")
    return "\n\n".join(parts)


def grade(instance: Instance, answer: str | None) -> Grade:
    """Grade one answer to one instance; the same call for every interface.

    Numeric answers are compared with the library's value within the case's tolerance; verdicts
    with the bank's verdict; code is run by the question's checker. An answer that cannot be
    read (empty, not a number, not a verdict) gets ``correct=None`` and a message saying what to
    type: it is not counted as wrong. Recall questions return ``correct=None`` with the model
    answer; the reader marks themselves (``self_mark``).
    """
    q = instance.question
    text = explanation(instance)
    if q.kind == "recall":
        return Grade(None, "model answer revealed: did you have it?", text)
    if answer is None or not answer.strip():
        return Grade(None, f"no answer yet: type {instance.answer_hint}", text)
    if q.kind == "numeric":
        case = instance.case
        try:
            number = parse_number(answer, case.scale)
        except ValueError as error:
            return Grade(None, str(error), text)
        if case.accepts(number):
            return Grade(True, f"right: {show(case.value)} {case.unit}".rstrip(), text)
        unit = f" {case.unit}" if case.unit else ""
        return Grade(
            False,
            f"wrong, because the answer is {show(case.value)}{unit} (you gave {show(number)};"
            f" accepted {case.tolerance_text})",
            text,
        )
    if q.kind == "verdict":
        try:
            verdict = parse_verdict(answer)
        except ValueError as error:
            return Grade(None, str(error), text)
        if verdict == q.verdict:
            return Grade(True, f"right: {q.verdict}", text)
        return Grade(False, f"wrong, because the verdict is {q.verdict}, not {verdict}", text)
    correct, message = check_answer(q.checker, answer, instance.seed)
    return Grade(correct, message, text)


def self_mark(instance: Instance, knew: bool) -> Grade:
    """The reader's own mark on a revealed recall question."""
    message = "marked: you had it" if knew else "marked: not yet; worth another look"
    return Grade(knew, message, explanation(instance))


@dataclass(frozen=True)
class Score:
    """Running score: ``right`` of ``answered`` counted, out of ``total`` questions."""

    right: int
    answered: int
    total: int

    def __str__(self) -> str:
        return f"{self.right} right of {self.answered} answered ({self.total} questions)"


class GrillSession:
    """An ordered run of question instances and its running score.

    Args:
        questions: the questions, in the order they will be asked (see ``bank.select``).
        seed: the session seed; each question's own seed is ``instance_seed(seed, id)``.

    Attributes:
        instances: the ``Instance`` of each question, in order.
        position: index of the current question.
        grades: the counted ``Grade`` of each answered position.
        last: the latest ``Grade`` shown for each position (counted or not).
    """

    def __init__(self, questions: Sequence[Question], seed: int = 0) -> None:
        if not questions:
            raise ValueError("no questions match: widen the topic or difficulty filter")
        self.seed = seed
        self.instances = [make_instance(q, instance_seed(seed, q.id)) for q in questions]
        self.position = 0
        self.grades: dict[int, Grade] = {}
        self.last: dict[int, Grade] = {}

    @property
    def current(self) -> Instance:
        return self.instances[self.position]

    def __len__(self) -> int:
        return len(self.instances)

    def _record(self, result: Grade) -> Grade:
        self.last[self.position] = result
        if result.correct is not None and self.position not in self.grades:
            self.grades[self.position] = result
        elif result.correct is not None:
            first = "right" if self.grades[self.position].correct else "wrong"
            result = Grade(
                result.correct,
                f"{result.message} (the score keeps your first attempt: {first})",
                result.explanation,
            )
            self.last[self.position] = result
        return result

    def answer(self, text: str | None) -> Grade:
        """Grade ``text`` as the answer to the current question (recall: reveal it)."""
        return self._record(grade(self.current, text))

    def reveal(self) -> Grade:
        """Show the model answer without answering (recall questions, or giving up).

        A question already graded keeps its grade: revealing shows it again.
        """
        if self.position in self.grades:
            return self.last[self.position]
        result = grade(self.current, None)
        if self.current.question.kind == "recall":
            result = Grade(None, "model answer revealed: did you have it?", result.explanation)
        else:
            result = Grade(None, "revealed without an answer (not counted)", result.explanation)
        self.last[self.position] = result
        return result

    def mark(self, knew: bool) -> Grade:
        """The reader's self-mark on the current (revealed) recall question."""
        if self.current.question.kind != "recall":
            raise ValueError("only recall questions are self-marked; answer the others")
        return self._record(self_mark(self.current, knew))

    def go(self, position: int) -> Instance:
        """Move to question ``position`` (clamped to the session)."""
        self.position = max(0, min(len(self.instances) - 1, position))
        return self.current

    @property
    def score(self) -> Score:
        right = sum(1 for g in self.grades.values() if g.correct)
        return Score(right, len(self.grades), len(self.instances))
