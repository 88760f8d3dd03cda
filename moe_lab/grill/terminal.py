"""``moe-lab grill``: the interview grill in a terminal, same questions and grading as the widget.

    moe-lab grill                              # 10 questions from every topic, seed 0
    moe-lab grill --topic balancing --n 5 --seed 3
    moe-lab grill --difficulty hard

At each question type the answer and press Enter; for code, paste it and end with a line
``END`` (or type ``@path/to/file.py``). ``skip`` shows the answer without scoring it, ``quit``
ends the session; the score is printed at the end (and on Ctrl-C). Recall questions: think of
your answer, press Enter to reveal, then say whether you had it. Input can be piped.

Taught in: notebooks/08_interview_grill.ipynb.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from moe_lab.grill.bank import load_bank, select
from moe_lab.grill.grading import Grade, GrillSession, Score
from moe_lab.grill.question import TOPICS, Question

SKIP, QUIT, END = ("skip", "s"), ("quit", "q", "exit"), "END"


def plain(markdown: str) -> str:
    """The bank's Markdown for a terminal: bold markers dropped, code fences kept readable."""
    return markdown.replace("**", "").replace("```python\n", "").replace("```", "")


class _SessionEndError(Exception):
    """The reader typed quit, or the input ended."""


class TerminalGrill:
    """A ``GrillSession`` played over text streams (stdin/stdout by default).

    Args:
        questions: the questions, in order.
        seed: the session seed.
        stdin, stdout: the streams to read answers from and write to.
    """

    def __init__(
        self,
        questions: Sequence[Question],
        seed: int = 0,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        self.session = GrillSession(questions, seed)
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout

    def say(self, text: str = "") -> None:
        print(text, file=self.stdout, flush=True)

    def read(self, prompt: str) -> str:
        """One line of input (without its newline); EOF ends the session."""
        self.stdout.write(prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            raise _SessionEndError
        line = line.rstrip("\n")
        if self.stdin is not sys.stdin or not sys.stdin.isatty():
            self.stdout.write(line + "\n")  # echo piped input so the transcript reads well
        if line.strip().lower() in QUIT:
            raise _SessionEndError
        return line

    def read_code(self) -> str | None:
        """Code until a line END (or EOF after some code); ``@file`` reads a file. None: skip."""
        self.say(f"Type or paste your corrected code, then a line {END} (or @path/to/file.py):")
        lines: list[str] = []
        while True:
            try:
                line = self.read("... " if lines else "code> ")
            except _SessionEndError:
                if lines:
                    break
                raise
            if not lines and line.strip().lower() in SKIP:
                return None
            if not lines and line.strip().startswith("@"):
                path = Path(line.strip()[1:]).expanduser()
                try:
                    return path.read_text(encoding="utf-8")
                except OSError as error:
                    self.say(
                        f"cannot read {path}: {error.strerror or error}; paste the code instead"
                    )
                    continue
            if line.strip() == END:
                break
            lines.append(line)
        return "\n".join(lines) + "\n"

    def show_grade(self, result: Grade) -> None:
        self.say(result.message)
        self.say()
        self.say(plain(result.explanation))

    def ask(self) -> None:
        """Ask the current question until it is answered, skipped or the reader quits."""
        instance = self.session.current
        q = instance.question
        self.say()
        self.say(
            f"[{self.session.position + 1}/{len(self.session)}] {TOPICS[q.topic]} · {q.difficulty}"
            f" · {q.kind} ({q.id})"
        )
        self.say(plain(instance.prompt))
        if q.kind == "recall":
            self.read("Think of your answer, then press Enter to reveal: ")
            self.show_grade(self.session.reveal())
            while True:
                reply = self.read("Did you have it? [y/n] ").strip().lower()
                if reply in ("y", "yes", "n", "no"):
                    self.say(self.session.mark(reply.startswith("y")).message)
                    return
                if reply in SKIP:
                    return
        while True:
            if q.kind == "bug":
                text = self.read_code()
            else:
                text = self.read(f"answer ({instance.answer_hint}, or skip)> ")
                if text.strip().lower() in SKIP:
                    text = None
            if text is None:
                self.show_grade(self.session.reveal())
                return
            result = self.session.answer(text)
            if result.correct is None:  # unreadable: say why and ask again
                self.say(result.message)
                continue
            self.show_grade(result)
            return

    def run(self) -> Score:
        """Ask every question in order; returns the final score (also printed)."""
        try:
            for position in range(len(self.session)):
                self.session.go(position)
                self.ask()
        except _SessionEndError:
            self.say()
            self.say("session ended")
        except KeyboardInterrupt:  # Ctrl-C: still report the score, then let the caller exit
            self.say()
            self.say(f"interrupted; score: {self.session.score}")
            raise
        self.say()
        self.say(f"score: {self.session.score}")
        return self.session.score


def run(
    topic: str | None = None,
    difficulty: str | None = None,
    n: int | None = 10,
    seed: int = 0,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> Score:
    """What ``moe-lab grill`` runs: select the questions, play them, return the score.

    Raises:
        ValueError: an unknown topic or difficulty, or n < 1 (one line, naming the choices).
    """
    chosen = select(load_bank(), topic=topic, difficulty=difficulty, n=n, seed=seed)
    if not chosen:
        raise ValueError("no questions match these filters: widen --topic or --difficulty")
    grill = TerminalGrill(chosen, seed, stdin, stdout)
    available = len(select(load_bank(), topic=topic, difficulty=difficulty))
    what = f"{topic} " if topic else ""
    grill.say(
        f"moe-lab grill: {len(chosen)} {what}question(s), seed {seed}"
        + (f" (only {available} match)" if n is not None and n > available else "")
        + ". Type skip to see an answer, quit to stop."
    )
    return grill.run()
