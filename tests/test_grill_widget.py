"""The Grill widget, driven the way a reader drives it: set a control's ``.value``, ``.click()``
a button, then read what the widget shows. Expected answers come from the bank and the numeric
cases, never from the widget."""

from __future__ import annotations

import pytest

from moe_lab.grill import Grill, load_bank
from moe_lab.grill.bank import select
from moe_lab.grill.grading import instance_seed, make_instance
from moe_lab.grill.widget import markdown_html

BANK = load_bank()


def visible(widget) -> bool:
    return widget.layout.display != "none"


def go_to_kind(grill: Grill, kind: str):
    """Press Next until the current question is of ``kind``; returns the question."""
    for _ in range(len(grill.session)):
        if grill.session.current.question.kind == kind:
            return grill.session.current.question
        grill.next_button.click()
    pytest.fail(f"no {kind} question in this session")


def test_filters_choose_the_questions_in_a_seeded_order():
    grill = Grill(topic="balancing", seed=1)
    expected = [q.id for q in select(BANK, topic="balancing", seed=1)]
    assert [i.question.id for i in grill.session.instances] == expected
    assert f"Question 1 of {len(expected)}" in grill.header.value
    grill.controls["difficulty"].value = "hard"  # exactly what choosing it in the dropdown does
    assert {i.question.difficulty for i in grill.session.instances} == {"hard"}
    assert {i.question.topic for i in grill.session.instances} == {"balancing"}
    grill.controls["topic"].value = None
    grill.controls["seed"].value = 7
    assert [i.question.id for i in grill.session.instances] == [
        q.id for q in select(BANK, difficulty="hard", seed=7)
    ]


def test_a_numeric_question_is_graded_at_once_and_scored():
    grill = Grill(topic="budgets", seed=2)
    question = go_to_kind(grill, "numeric")
    assert visible(grill.answer_box) and not visible(grill.code_box)
    assert not visible(grill.verdict_buttons)
    # the case the widget asks is the one the session seed gives this question
    case = make_instance(question, instance_seed(2, question.id)).case
    assert case.prompt.split(" Reminders")[0][:60] in grill.question.value.replace("&#x27;", "'")
    grill.answer_box.value = f"{case.value * 2:.6g}"
    grill.check_button.click()
    assert "wrong, because the answer is" in grill.feedback.value
    assert "<b>0</b> right of 1 answered" in grill.score_label.value
    grill.answer_box.value = f"{case.value:.6g}"
    grill.check_button.click()
    assert "right:" in grill.feedback.value
    assert "the score keeps your first attempt: wrong" in grill.feedback.value
    assert "<b>0</b> right of 1 answered" in grill.score_label.value


def test_an_unreadable_answer_is_not_scored():
    grill = Grill(topic="balancing", seed=0)
    go_to_kind(grill, "numeric")
    grill.answer_box.value = "lots"
    grill.check_button.click()
    assert "is not a number" in grill.feedback.value
    assert "of 0 answered" in grill.score_label.value


def test_a_bug_question_starts_from_the_buggy_code_and_runs_the_reader_fix():
    grill = Grill(topic="routing", seed=0)
    question = go_to_kind(grill, "bug")
    assert visible(grill.code_box) and not visible(grill.answer_box)
    assert grill.code_box.value == question.code
    grill.check_button.click()  # the buggy code as it stands
    assert "wrong, because" in grill.feedback.value
    grill.next_button.click()
    grill.previous_button.click()  # the graded feedback stays with its question
    assert "wrong, because" in grill.feedback.value
    grill.code_box.value = question.fix
    grill.check_button.click()
    assert "right:" in grill.feedback.value and "A fix." in grill.feedback.value


def test_a_verdict_question_uses_the_three_buttons():
    grill = Grill(topic="myths", seed=3)
    question = go_to_kind(grill, "verdict")
    assert visible(grill.verdict_buttons)
    grill.verdict_buttons.value = question.verdict
    grill.check_button.click()
    assert f"right: {question.verdict}" in grill.feedback.value
    assert "<b>1</b> right of 1 answered" in grill.score_label.value
    assert "Verdict:" in grill.feedback.value


def test_a_recall_question_is_revealed_then_self_marked():
    grill = Grill(topic="training", seed=0)
    question = go_to_kind(grill, "recall")
    assert not visible(grill.check_button) and not visible(grill.knew_button)
    grill.reveal_button.click()
    assert "Model answer." in grill.feedback.value
    assert question.link.section.split(":")[0] in grill.feedback.value
    assert visible(grill.knew_button) and visible(grill.missed_button)
    assert "of 0 answered" in grill.score_label.value  # revealing is not answering
    grill.knew_button.click()
    assert "<b>1</b> right of 1 answered" in grill.score_label.value


def test_navigation_buttons_stop_at_the_ends():
    grill = Grill(topic="scaling", seed=0, n=3)
    assert grill.previous_button.disabled and not grill.next_button.disabled
    grill.next_button.click()
    grill.next_button.click()
    assert grill.next_button.disabled and "Question 3 of 3" in grill.header.value
    grill.next_button.click()
    assert "Question 3 of 3" in grill.header.value


def test_no_matching_question_is_said_not_raised():
    only_easy = [q for q in BANK if q.difficulty == "easy"][:3]
    grill = Grill(questions=only_easy, difficulty="hard")
    assert grill.session is None and "No question matches" in grill.header.value
    assert not visible(grill.check_button)
    grill.check_button.click()  # harmless
    grill.controls["difficulty"].value = None
    assert grill.session is not None and len(grill.session) == 3


def test_markdown_rendering_escapes_and_formats():
    out = markdown_html(
        "A **bold** `x<y` claim.\n\n- one\n- two\n\n```python\nif a < b:\n    pass\n```"
    )
    assert "<b>bold</b>" in out and "<code>x&lt;y</code>" in out
    assert "<ul><li>one</li><li>two</li></ul>" in out
    assert "<pre" in out and "if a &lt; b:" in out
