"""Run a reader's code in a namespace of its own, and turn anything it raises into a reason.

A "spot the bug" answer is Python source. ``load_answer`` executes it in a fresh namespace
(holding only ``torch``, ``nn``, ``F``, ``math`` and what the question provides), so it can
neither see nor change the grill's own state, and returns the object the question asks for.
``ReaderError`` carries a one-line reason ("calling your `switch_route` raised IndexError: ...
(your line 4)") that the checkers turn into a graded "wrong, because ..." message: a reader's
exception never crashes the grill. Random number state is saved and restored around every call
(``reader_call``), so a reader's ``torch.manual_seed`` does not change the notebook's.

This is a convenience for honest practice, not a security boundary: the code runs with the
reader's own permissions, like any cell they run.

Taught in: notebooks/08_interview_grill.ipynb.
"""

from __future__ import annotations

import math
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ANSWER_FILENAME = "<your answer>"
TIME_LIMIT_SECONDS = 20.0


class ReaderError(Exception):
    """The reader's code failed; ``str(error)`` says how, in one line."""


def _reader_line(error: BaseException) -> str:
    """' (your line N)' for the deepest frame of the reader's code in the traceback, or ''."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename == ANSWER_FILENAME
    ]
    return f" (your line {lines[-1]})" if lines else ""


def describe(error: BaseException) -> str:
    """``TypeError: message (your line 3)``, trimmed to one line."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    if len(text) > 240:
        text = text[:237] + "..."
    return text + _reader_line(error)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError after ``seconds`` (Unix main thread only; elsewhere no limit)."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum, frame):  # the signal handler's signature
        raise TimeoutError(f"ran longer than {seconds:g} s (an endless loop?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def base_namespace(**provided: Any) -> dict[str, Any]:
    """A fresh namespace for reader code: torch, nn, F, math and the question's extras."""
    return {
        "__name__": "reader_answer",
        "__builtins__": __builtins__,
        "torch": torch,
        "nn": nn,
        "F": F,
        "math": math,
        **provided,
    }


def load_answer(code: str, name: str, **provided: Any) -> Any:
    """Execute ``code`` in a fresh namespace and return the object it defines as ``name``.

    Args:
        code: the reader's Python source.
        name: the function or class the question asks for.
        **provided: names the question gives the code (for example ``FFN``).

    Returns:
        The object bound to ``name``.

    Raises:
        ReaderError: the code does not compile, raises while running, or defines no ``name``.
    """
    if not isinstance(code, str) or not code.strip():
        raise ReaderError(f"the answer is empty: paste your corrected `{name}`")
    try:
        compiled = compile(code, ANSWER_FILENAME, "exec")
    except SyntaxError as error:
        raise ReaderError(
            f"your code does not parse: {error.msg} (your line {error.lineno})"
        ) from None
    namespace = base_namespace(**provided)
    try:
        with torch.random.fork_rng(devices=[]), time_limit(TIME_LIMIT_SECONDS):
            exec(compiled, namespace)
    except Exception as error:  # the reader's code, any failure: a reason, not a crash
        raise ReaderError(f"running your code raised {describe(error)}") from None
    if name not in namespace:
        raise ReaderError(f"your code does not define `{name}`: keep the name the question uses")
    return namespace[name]


def reader_call(what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, with any exception turned into a ``ReaderError``.

    ``what`` names the call in the message (``"calling your `switch_route`"``). The global random
    state is restored afterwards, and the call is stopped after ``TIME_LIMIT_SECONDS``.
    """
    try:
        with torch.random.fork_rng(devices=[]), time_limit(TIME_LIMIT_SECONDS):
            return function(*args, **kwargs)
    except Exception as error:  # the reader's code, any failure
        raise ReaderError(f"{what} raised {describe(error)}") from None
