"""``moe-lab grill`` end to end with piped input, its transcript and score, and one-line errors
for bad arguments (as the other subcommands give). The right answers are built here from the
bank and the numeric cases, so a session can be answered perfectly, or wrongly, on purpose."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from moe_lab.cli import main
from moe_lab.grill import load_bank
from moe_lab.grill.bank import select
from moe_lab.grill.bugs import check_answer
from moe_lab.grill.grading import instance_seed, make_instance


def right_answer(question, seed: int) -> str:
    """The input lines that answer ``question`` correctly in a session with ``seed``."""
    if question.kind == "numeric":
        case = make_instance(question, instance_seed(seed, question.id)).case
        return f"{case.value!r}\n"
    if question.kind == "verdict":
        return f"{question.verdict}\n"
    if question.kind == "bug":
        return question.fix.rstrip("\n") + "\nEND\n"
    return "\ny\n"  # recall: reveal, then "I had it"


def session_input(topic, n, seed, answer=right_answer) -> tuple[list, str]:
    questions = select(load_bank(), topic=topic, n=n, seed=seed)
    return questions, "".join(answer(q, seed) for q in questions)


def run_main(argv, stdin_text, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin_text))
    code = main(argv)
    return code, capsys.readouterr().out


def test_piped_session_end_to_end():
    # A real process, input through a pipe: the installed entry point's path (python -m moe_lab).
    questions, text = session_input("balancing", 4, 5)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe_lab",
            "grill",
            "--topic",
            "balancing",
            "--n",
            "4",
            "--seed",
            "5",
        ],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "moe-lab grill: 4 balancing question(s), seed 5" in out
    for position, question in enumerate(questions, start=1):
        assert f"[{position}/4]" in out and f"({question.id})" in out
    assert "score: 4 right of 4 answered (4 questions)" in out
    assert "Traceback" not in result.stderr


def test_wrong_answers_are_explained_and_counted(monkeypatch, capsys):
    def wrong(question, seed):
        if question.kind == "numeric":
            return "0.000001\n"
        if question.kind == "verdict":
            return {"true": "false", "false": "true", "partly": "false"}[question.verdict] + "\n"
        if question.kind == "bug":
            return question.code.rstrip("\n") + "\nEND\n"
        return "\nn\n"

    questions, text = session_input(None, 6, 11, answer=wrong)
    code, out = run_main(["grill", "--n", "6", "--seed", "11"], text, monkeypatch, capsys)
    assert code == 0
    assert "score: 0 right of 6 answered (6 questions)" in out
    graded = sum(q.kind != "recall" for q in questions)
    assert out.count("wrong, because") == graded
    assert out.count("Demonstrated in notebooks/") == 6


def test_same_seed_same_session(monkeypatch, capsys):
    _, text = session_input("budgets", 3, 2)
    first = run_main(
        ["grill", "--topic", "budgets", "--n", "3", "--seed", "2"], text, monkeypatch, capsys
    )
    second = run_main(
        ["grill", "--topic", "budgets", "--n", "3", "--seed", "2"], text, monkeypatch, capsys
    )
    assert first == second and "score: 3 right of 3" in first[1]


def test_unreadable_answers_are_asked_again_and_skip_and_quit_work(monkeypatch, capsys):
    questions = select(load_bank(), topic="balancing", seed=0)
    numeric = next(i for i, q in enumerate(questions) if q.kind == "numeric")
    # answer nothing before the first numeric question: skip recall/bug/verdict ones
    before = "".join("\nn\n" if q.kind == "recall" else "skip\n" for q in questions[:numeric])
    text = before + "a lot\nskip\nquit\n"
    code, out = run_main(["grill", "--topic", "balancing", "--n", "14"], text, monkeypatch, capsys)
    assert code == 0
    assert "'a lot' is not a number" in out
    assert "revealed without an answer (not counted)" in out
    assert "session ended" in out and "score: 0 right of" in out


def test_end_of_input_ends_the_session_with_its_score(monkeypatch, capsys):
    code, out = run_main(["grill", "--n", "3"], "", monkeypatch, capsys)
    assert (
        code == 0 and "session ended" in out and "score: 0 right of 0 answered (3 questions)" in out
    )


def test_code_can_come_from_a_file(tmp_path, monkeypatch, capsys):
    questions = select(load_bank(), topic="scaling", seed=0)
    bug = next(i for i, q in enumerate(questions) if q.kind == "bug")
    answer_file = tmp_path / "fix.py"
    answer_file.write_text(questions[bug].fix)
    skip_before = "".join("\nn\n" if q.kind == "recall" else "skip\n" for q in questions[:bug])
    text = skip_before + f"@{tmp_path / 'missing.py'}\n@{answer_file}\nquit\n"
    code, out = run_main(["grill", "--topic", "scaling", "--n", "15"], text, monkeypatch, capsys)
    assert code == 0
    assert "cannot read" in out and "missing.py" in out
    # the bug question's own fix, read from the file, is graded right
    assert check_answer(questions[bug].checker, questions[bug].fix, 0)[1].split(",")[0] in out


def test_asking_for_more_questions_than_exist_says_so(monkeypatch, capsys):
    code, out = run_main(["grill", "--topic", "training", "--n", "500"], "", monkeypatch, capsys)
    assert code == 0
    available = len(select(load_bank(), topic="training"))
    assert f"{available} training question(s), seed 0 (only {available} match)" in out


def run_error(argv: list[str], capsys) -> str:
    """Run main, expect exit status 2, return the one-line error from stderr."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--topic", "gpu"], "argument --topic: invalid choice: 'gpu' (choose from 'routing',"),
        (["--difficulty", "brutal"], "argument --difficulty: invalid choice: 'brutal'"),
        (["--n", "0"], "argument --n: 0 must be a positive integer"),
        (["--n", "ten"], "argument --n: 'ten' is not an integer"),
        (["--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
        (["--topics", "routing"], "unrecognized arguments: --topics routing"),
    ],
)
def test_bad_arguments_get_one_line_errors(argv, expected, capsys):
    err = run_error(["grill", *argv], capsys)
    assert err.startswith("moe-lab grill: error:") or "unrecognized" in err
    assert expected in err
