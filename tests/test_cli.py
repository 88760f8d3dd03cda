"""Tests for the moe-lab command line: end to end on a tiny run, and clear argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from moe_lab.cli import main

TINY = [
    "--steps",
    "3",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--eval-every",
    "3",
    "--no-progress",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny tiny-moe run shared by the tests that need a checkpoint."""
    out = tmp_path_factory.mktemp("cli") / "moe"
    assert main(["train", "--preset", "tiny-moe", "--out", str(out), *TINY]) == 0
    return out


def test_train_end_to_end(trained_run, capsys):
    assert (trained_run / "checkpoint.pt").is_file()
    config = json.loads((trained_run / "config.json").read_text())
    assert config["step"] == 3 and config["model"]["moe"]["n_experts"] == 8
    history = json.loads((trained_run / "history.json").read_text())
    assert len(history["loss"]) == 3


def test_train_prints_a_final_summary(tmp_path, capsys):
    assert main(["train", "--preset", "tiny-dense", "--out", str(tmp_path / "d"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "trained 3 steps" in out and "validation loss" in out and "checkpoint:" in out


def test_sample_continues_the_prompt(trained_run, capsys):
    argv = ["sample", "--checkpoint", str(trained_run), "--prompt", "12+7="]
    argv += ["--max-new-tokens", "10", "--seed", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("12+7=")
    main(argv)  # same seed, same text
    assert capsys.readouterr().out == text


def test_resuming_a_finished_run_asks_for_more_steps(trained_run, tmp_path, capsys):
    # A finished run has nothing left to train: say how to extend it instead of saving a copy.
    err = run_error(["train", "--resume", str(trained_run), "--out", str(tmp_path / "r")], capsys)
    assert "finished its 3 steps" in err and "--steps N" in err
    assert not (tmp_path / "r").exists()


def test_resume_with_steps_extends_a_finished_run(trained_run, tmp_path, capsys):
    # The README's `moe-lab train --resume runs/moe --steps 640`, in small: a 3-step run
    # extended to 5 steps trains 2 more, and says what happens to the learning rate.
    out = tmp_path / "longer"
    argv = ["train", "--resume", str(trained_run), "--steps", "5", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "now ends at step 5" in printed and "trained 5 steps" in printed
    history = json.loads((out / "history.json").read_text())
    assert history["step"] == [1, 2, 3, 4, 5]
    # Fewer steps than already trained cannot extend anything.
    err = run_error(["train", "--resume", str(out), "--steps", "4"], capsys)
    assert "trained 5 steps already" in err


def test_out_holding_a_checkpoint_needs_overwrite(trained_run, tmp_path, capsys):
    out = tmp_path / "taken"
    assert main(["train", "--preset", "tiny-dense", "--out", str(out), *TINY]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    err = run_error(["train", "--preset", "tiny-moe", "--out", str(out), *TINY], capsys)
    assert "already holds a checkpoint" in err and "--overwrite" in err
    assert (out / "checkpoint.pt").read_bytes() == before  # untouched
    # Resuming another run into it is refused too; resuming it in place is not.
    err = run_error(
        ["train", "--resume", str(trained_run), "--steps", "4", "--out", str(out)], capsys
    )
    assert "already holds a checkpoint" in err
    assert main(["train", "--preset", "tiny-moe", "--out", str(out), "--overwrite", *TINY]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["moe"] is not None


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


def test_unknown_preset_names_the_choices(tmp_path, capsys):
    err = run_error(["train", "--preset", "huge", "--out", str(tmp_path), *TINY], capsys)
    assert "unknown preset 'huge'" in err and "tiny-moe" in err


def test_missing_checkpoint_names_the_path(tmp_path, capsys):
    err = run_error(["sample", "--checkpoint", str(tmp_path / "nope"), "--prompt", "a"], capsys)
    assert "nope" in err and "no checkpoint" in err


def test_output_that_is_a_file_is_rejected(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    err = run_error(["train", "--out", str(tmp_path / "taken"), *TINY], capsys)
    assert "is a file, not a folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_is_rejected(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    err = run_error(["train", "--out", str(locked / "run"), *TINY], capsys)
    assert "cannot write to --out" in err


def test_output_under_a_file_is_rejected(tmp_path, capsys):
    # Works as root too: no folder can be made below a regular file.
    (tmp_path / "file").write_text("")
    err = run_error(["train", "--out", str(tmp_path / "file" / "run"), *TINY], capsys)
    assert "cannot write to --out" in err and "file" in err


def test_missing_text_file_is_named(tmp_path, capsys):
    err = run_error(
        ["train", "--text", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o"), *TINY], capsys
    )
    assert "none.txt does not exist" in err


def test_binary_text_file_is_named(tmp_path, capsys):
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    err = run_error(
        ["train", "--text", str(tmp_path / "blob.bin"), "--out", str(tmp_path / "o"), *TINY], capsys
    )
    assert "blob.bin is not a text file" in err


def test_resume_with_a_preset_is_rejected(trained_run, capsys):
    err = run_error(["train", "--resume", str(trained_run), "--preset", "tiny-dense"], capsys)
    assert "--resume" in err and "--preset" in err


def test_readme_train_commands_parse():
    # Every `moe-lab train` line of the README's command-line section is accepted by the parser
    # (the README once showed `--resume runs/moe --steps 640`, which the CLI rejected).
    import re
    from pathlib import Path

    from moe_lab.cli import _build_parser

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    lines = re.findall(r"^\.venv/bin/moe-lab (train [^#\n]*)", readme, flags=re.MULTILINE)
    assert len(lines) >= 3
    parser = _build_parser()
    for line in lines:
        parser.parse_args(line.split())


def test_bad_numbers_are_argparse_errors(capsys):
    err = run_error(["train", "--steps", "0"], capsys)
    assert "--steps" in err and "positive" in err


@pytest.mark.slow
def test_console_script_and_python_m(tmp_path):
    # The installed entry point and `python -m moe_lab` both reach main().
    result = subprocess.run(
        [sys.executable, "-m", "moe_lab", "sample", "--checkpoint", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"moe-lab sample: error: {tmp_path / 'checkpoint.pt'}: no checkpoint here"
        " (expected checkpoint.pt)"
    ]


def test_readme_learning_rate_numbers_come_from_the_schedule():
    # The README's extension example (320 -> 640 steps) quotes the rates at steps 320 and 321.
    from dataclasses import replace
    from pathlib import Path

    from moe_lab.train import TrainConfig, lr_at

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    config = TrainConfig()
    assert config.steps == 320

    def short(x: float) -> str:
        return f"{x:.1e}".replace("e-0", "e-")  # 6.0e-04 -> 6.0e-4

    before, after = lr_at(319, config), lr_at(320, replace(config, steps=640))
    assert f"from {short(before)} at step 320 back up to {short(after)} at step 321" in readme
