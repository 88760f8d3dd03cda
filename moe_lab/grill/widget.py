"""The ``Grill`` widget: the question bank in Jupyter, graded as you answer.

Filters (topic, difficulty, seed) choose the questions and their seeded order; an answer box
(a number, a verdict, or code pre-filled with the bug) is graded at once by
``moe_lab.grill.grading``, the same code ``moe-lab grill`` uses; recall questions are revealed
and self-marked; a running score follows.

Every control is an ipywidgets widget held in ``Grill.controls`` or as an attribute, so code can
drive it exactly as a reader does: set ``grill.answer_box.value = "640"`` and call
``grill.check_button.click()`` (``tests/test_grill_widget.py`` does).

Example:
    >>> grill = Grill(topic="balancing", seed=1)
    >>> grill.widget  # doctest: +SKIP

Taught in: notebooks/08_interview_grill.ipynb.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import ipywidgets as widgets

from moe_lab.grill.bank import load_bank, select
from moe_lab.grill.grading import Grade, GrillSession
from moe_lab.grill.question import DIFFICULTIES, TOPICS, VERDICTS, Question

_STYLE = {"description_width": "initial"}
_FENCE = re.compile(r"```(?:python)?\n(.*?)```", re.S)
_LIST_ITEM = re.compile(r"^(-|\d+\.) ")


def _inline(text: str) -> str:
    """Escape, then `code` and **bold**."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def markdown_html(text: str) -> str:
    """The small Markdown subset the bank uses (paragraphs, lists, code, bold) as HTML."""
    blocks, parts, last = [], [], 0
    for match in _FENCE.finditer(text):
        parts.append(("text", text[last : match.start()]))
        parts.append(("code", match.group(1)))
        last = match.end()
    parts.append(("text", text[last:]))
    for kind, chunk in parts:
        if kind == "code":
            blocks.append(f"<pre style='font-size:90%'>{html.escape(chunk.rstrip())}</pre>")
            continue
        for paragraph in re.split(r"\n\s*\n", chunk.strip()):
            lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
            if not lines:
                continue
            if all(_LIST_ITEM.match(line) for line in lines):
                tag = "ul" if lines[0].startswith("- ") else "ol"
                items = "".join(f"<li>{_inline(_LIST_ITEM.sub('', line))}</li>" for line in lines)
                blocks.append(f"<{tag}>{items}</{tag}>")
            else:
                blocks.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(blocks)


def _show(widget: widgets.DOMWidget, visible: bool) -> None:
    widget.layout.display = None if visible else "none"


class Grill:
    """The interview grill as an ipywidgets widget.

    Args:
        topic: a key of ``TOPICS`` or None for every topic.
        difficulty: one of ``DIFFICULTIES`` or None for any.
        seed: the session seed: the order of the questions and every numeric case.
        n: how many questions (None: every matching one).
        questions: the bank to draw from (default: ``load_bank()``).

    Attributes:
        controls: ``{"topic", "difficulty", "seed"}`` filter widgets; changing one restarts.
        session: the ``GrillSession`` being played (None when no question matches).
        answer_box: Text, for numeric answers; verdict_buttons: ToggleButtons (true, partly,
            false); code_box: Textarea, pre-filled with the buggy code.
        check_button, reveal_button, knew_button, missed_button, previous_button,
        next_button: the buttons; ``.click()`` presses one from code.
        header, question, feedback, score_label: HTML outputs.
        widget: everything in one box, for ``display``.
    """

    def __init__(
        self,
        topic: str | None = None,
        difficulty: str | None = None,
        seed: int = 0,
        n: int | None = None,
        questions: Sequence[Question] | None = None,
    ) -> None:
        self.bank = tuple(questions) if questions is not None else load_bank()
        self.n = n
        self.controls = {
            "topic": widgets.Dropdown(
                options=[("all topics", None), *((title, key) for key, title in TOPICS.items())],
                value=topic,
                description="topic",
                style=_STYLE,
            ),
            "difficulty": widgets.Dropdown(
                options=[("any", None), *((d, d) for d in DIFFICULTIES)],
                value=difficulty,
                description="difficulty",
                style=_STYLE,
            ),
            "seed": widgets.IntText(value=seed, description="seed", style=_STYLE),
        }
        self.header = widgets.HTML()
        self.question = widgets.HTML()
        self.answer_box = widgets.Text(description="answer", style=_STYLE)
        self.verdict_buttons = widgets.ToggleButtons(options=list(VERDICTS), value=None)
        self.code_box = widgets.Textarea(layout={"width": "100%", "height": "260px"})
        self.check_button = widgets.Button(description="Check", button_style="primary")
        self.reveal_button = widgets.Button(description="Reveal answer")
        self.knew_button = widgets.Button(description="I had it", button_style="success")
        self.missed_button = widgets.Button(description="I did not", button_style="warning")
        self.previous_button = widgets.Button(description="◀ Previous")
        self.next_button = widgets.Button(description="Next ▶")
        self.feedback = widgets.HTML()
        self.score_label = widgets.HTML(layout={"margin": "0 0 0 12px"})
        self.session: GrillSession | None = None

        for control in self.controls.values():
            control.observe(lambda change: self.restart(), names="value")
        self.check_button.on_click(lambda _: self.check())
        self.reveal_button.on_click(lambda _: self.reveal())
        self.knew_button.on_click(lambda _: self.mark(True))
        self.missed_button.on_click(lambda _: self.mark(False))
        self.previous_button.on_click(lambda _: self.go(-1))
        self.next_button.on_click(lambda _: self.go(+1))
        self.widget = widgets.VBox(
            [
                widgets.HBox(list(self.controls.values())),
                self.header,
                self.question,
                self.answer_box,
                self.verdict_buttons,
                self.code_box,
                widgets.HBox(
                    [self.check_button, self.reveal_button, self.knew_button, self.missed_button]
                ),
                self.feedback,
                widgets.HBox([self.previous_button, self.next_button, self.score_label]),
            ]
        )
        self.restart()

    # ------------------------------------------------------------------------------------------
    def restart(self) -> None:
        """Draw the questions the filters select, in the seed's order, and show the first."""
        chosen = select(
            self.bank,
            topic=self.controls["topic"].value,
            difficulty=self.controls["difficulty"].value,
            n=self.n,
            seed=self.controls["seed"].value,
        )
        self.session = GrillSession(chosen, self.controls["seed"].value) if chosen else None
        self.show()

    def show(self) -> None:
        """Render the current question, its answer area, its last feedback and the score."""
        session = self.session
        if session is None:
            self.header.value = "<b>No question matches these filters.</b>"
            for w in (self.question, self.feedback, self.score_label):
                w.value = ""
            for w in (
                self.answer_box,
                self.verdict_buttons,
                self.code_box,
                self.check_button,
                self.reveal_button,
                self.knew_button,
                self.missed_button,
            ):
                _show(w, False)
            return
        instance = session.current
        q = instance.question
        self.header.value = (
            f"<b>Question {session.position + 1} of {len(session)}</b> · {TOPICS[q.topic]} ·"
            f" {q.difficulty} · {q.kind} <span style='color:gray'>({q.id})</span>"
        )
        self.question.value = markdown_html(instance.prompt)
        self.answer_box.value = ""
        self.answer_box.placeholder = instance.answer_hint
        self.verdict_buttons.value = None
        self.code_box.value = instance.starter_code or ""
        _show(self.answer_box, q.kind == "numeric")
        _show(self.verdict_buttons, q.kind == "verdict")
        _show(self.code_box, q.kind == "bug")
        _show(self.check_button, q.kind != "recall")
        _show(self.reveal_button, True)
        revealed = session.last.get(session.position)
        self._show_grade(revealed)
        _show(self.knew_button, q.kind == "recall" and revealed is not None)
        _show(self.missed_button, q.kind == "recall" and revealed is not None)
        self.previous_button.disabled = session.position == 0
        self.next_button.disabled = session.position == len(session) - 1
        self._show_score()

    def _show_grade(self, result: Grade | None) -> None:
        if result is None:
            self.feedback.value = ""
            return
        color = {True: "green", False: "firebrick", None: "gray"}[result.correct]
        self.feedback.value = (
            f"<p style='color:{color}'><b>{html.escape(result.message)}</b></p>"
            + markdown_html(result.explanation)
        )

    def _show_score(self) -> None:
        score = self.session.score
        self.score_label.value = (
            f"score: <b>{score.right}</b> right of {score.answered} answered"
            f" ({score.total} questions)"
        )

    # ------------------------------------------------------------------------------------------
    def check(self) -> Grade | None:
        """Grade what the answer area holds (the Check button)."""
        if self.session is None:
            return None
        kind = self.session.current.question.kind
        if kind == "recall":
            return self.reveal()
        text = {
            "numeric": self.answer_box.value,
            "verdict": self.verdict_buttons.value or "",
            "bug": self.code_box.value,
        }[kind]
        result = self.session.answer(text)
        self._show_grade(result)
        self._show_score()
        return result

    def reveal(self) -> Grade | None:
        """Show the model answer (recall: then mark yourself)."""
        if self.session is None:
            return None
        result = self.session.reveal()
        self.show()
        return result

    def mark(self, knew: bool) -> Grade | None:
        """Self-mark a revealed recall question."""
        if self.session is None or self.session.current.question.kind != "recall":
            return None
        result = self.session.mark(knew)
        self._show_grade(result)
        self._show_score()
        return result

    def go(self, step: int) -> None:
        """Move ``step`` questions forward (or back)."""
        if self.session is not None:
            self.session.go(self.session.position + step)
            self.show()
