"""What every exercise checker shares: the registry, the attempt-or-reference rule, comparisons.

A checker module defines one function per exercise, decorated with ``@exercise``::

    @exercise("01_dense_ffn", against="moe_lab.DenseFFN: shapes, values and gradients")
    def check_swiglu_ffn(attempt) -> int:
        ...  # run seeded cases through compare helpers; return how many cases passed

The decorator turns it into the public ``check_swiglu_ffn(attempt, reference=None)`` (see
``run_check``) and registers it in ``EXERCISES`` under ``"swiglu_ffn"``. Inside a checker, call
the reader's function through ``call`` and compare with ``expect_*``: each raises
``ExerciseError`` with a message that names the case, the quantity, and, where a known mistake
reproduces the reader's output (``first_match``), the mistake.

Taught in: the exercises at the end of every notebook.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch


class ExerciseError(AssertionError):
    """An attempt disagrees with the library; the message says in which case and what to fix.

    A subclass of ``AssertionError``, so a failing check cell fails the notebook like an
    ``assert`` does.
    """


@dataclass(frozen=True)
class Exercise:
    """One registered exercise.

    Attributes:
        name: ``"swiglu_ffn"``: the notebook's exercise cell defines ``my_swiglu_ffn``, its hidden
            solution cell ``swiglu_ffn_solution``, and the check is ``check_swiglu_ffn``.
        notebook: the notebook's stem, ``"01_dense_ffn"``.
        against: what the check compares with, for the success line.
        run_cases: runs every case on a function; returns the number of cases; raises
            ``ExerciseError``.
    """

    name: str
    notebook: str
    against: str
    run_cases: Callable[[Callable], int]

    @property
    def attempt_name(self) -> str:
        return f"my_{self.name}"

    @property
    def solution_name(self) -> str:
        return f"{self.name}_solution"


EXERCISES: dict[str, Exercise] = {}


def exercises_of(notebook: str) -> list[Exercise]:
    """The exercises registered for a notebook stem (``"02_routing"``), in definition order."""
    return [ex for ex in EXERCISES.values() if ex.notebook == notebook]


def _label(fn: object) -> str:
    return getattr(fn, "__name__", None) or repr(fn)


def run_check(exercise_: Exercise, attempt: Callable, reference: Callable | None = None) -> None:
    """Check ``attempt``; if it is not written yet, check ``reference`` instead and say so.

    "Not written yet" means the attempt raises ``NotImplementedError``, as the exercise cell's
    stub does. A notebook run untouched (CI) thus checks the hidden reference solution, and a
    reader's attempt is never replaced by it: once written, the attempt is what gets checked.
    Prints which function it checked and that it passed; raises ``ExerciseError`` when it fails.
    The cases run on a forked random state: checking does not move the notebook's random stream.
    """
    check_name = f"check_{exercise_.name}"
    if not callable(attempt):
        raise ExerciseError(
            f"{check_name} needs your function itself, got a {type(attempt).__name__}:"
            f" call {check_name}({exercise_.attempt_name}), without parentheses after the name"
        )
    try:
        cases = _run_cases(exercise_, attempt)
    except NotImplementedError:
        if reference is None:
            raise NotImplementedError(
                f"{_label(attempt)} is not written yet (it raises NotImplementedError):"
                f" write it, then run {check_name} again"
            ) from None
        try:
            cases = _run_cases(exercise_, reference)
        except (ExerciseError, NotImplementedError) as failure:
            raise ExerciseError(
                f"the reference solution {_label(reference)} fails {check_name}: {failure}"
            ) from failure
        print(
            f"✓ checked the hidden reference {_label(reference)}: it passes {cases} seeded cases"
            f" ({exercise_.against}).\n  Your {_label(attempt)} is not written yet (it raises"
            " NotImplementedError): write it in the exercise cell, then run this cell again."
        )
        return
    except ExerciseError as failure:
        raise ExerciseError(f"{_label(attempt)} fails {check_name}: {failure}") from (
            failure.__cause__
        )
    print(
        f"✓ checked your {_label(attempt)}: it passes {cases} seeded cases ({exercise_.against})."
    )


class _Progress:
    """Whether the function under check has returned from a call yet, in this check."""

    returned = False


def _run_cases(exercise_: Exercise, fn: Callable) -> int:
    _Progress.returned = False
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        return exercise_.run_cases(fn)


CHECK_ARGS = """Args:
    attempt: your function (the exercise cell's ``my_...``).
    reference: the hidden solution; checked instead, and said so, while ``attempt`` is the stub
        that raises ``NotImplementedError``.

Raises:
    ExerciseError: an ``AssertionError`` naming the case, what differs and, when it is
        recognized, the mistake.
"""


def exercise(notebook: str, against: str) -> Callable[[Callable[[Callable], int]], Callable]:
    """Register a checker and give it the public ``check_x(attempt, reference=None)`` form.

    Args:
        notebook: the notebook's stem, e.g. ``"03_load_balancing"``.
        against: what the check compares with, e.g. ``"moe_lab.expert_capacity"``.
    """

    def register(run_cases: Callable[[Callable], int]) -> Callable:
        name = run_cases.__name__.removeprefix("check_")
        if name in EXERCISES:
            raise ValueError(f"an exercise named {name!r} is already registered: rename one")
        registered = Exercise(name, notebook, against, run_cases)
        EXERCISES[name] = registered

        def check(attempt: Callable, reference: Callable | None = None) -> None:
            run_check(registered, attempt, reference)

        # the public function: the checker's name and docstring, its own signature
        for attribute in ("__module__", "__name__", "__qualname__"):
            setattr(check, attribute, getattr(run_cases, attribute))
        check.__doc__ = inspect.cleandoc(run_cases.__doc__ or "") + "\n\n" + CHECK_ARGS
        check.exercise = registered
        return check

    return register


# ----------------------------------------------------------------------------------------------
# Calling the reader's function and comparing what it returns
# ----------------------------------------------------------------------------------------------


def fail(message: str) -> None:
    raise ExerciseError(message)


def call(fn: Callable, *args, case: str, **kwargs):
    """``fn(*args, **kwargs)``; an exception other than ``NotImplementedError`` becomes a failure
    that names the case (the original stays attached, so its traceback shows where)."""
    try:
        result = fn(*args, **kwargs)
    except NotImplementedError as error:
        if not _Progress.returned:
            raise  # the stub: nothing written yet
        raise ExerciseError(
            f"{case}: it raised NotImplementedError after passing the cases before: {error}"
        ) from error
    except Exception as error:
        raise ExerciseError(f"{case}: it raised {type(error).__name__}: {error}") from error
    _Progress.returned = True
    return result


def expect_tensor(
    got: object,
    what: str,
    shape: Sequence[int],
    dims: str,
    case: str,
    dtype: torch.dtype | None = None,
    shape_hints: Mapping[tuple[int, ...], str] | None = None,
) -> torch.Tensor:
    """``got`` must be a tensor of ``shape`` (named ``dims``, like ``"(N, D)"``; ``()`` for a
    scalar) and ``dtype``.

    ``shape_hints`` maps a wrong shape to the likely cause.
    """
    shape = tuple(shape)
    expected = f"{dims} = {shape}" if shape else "() (a scalar)"
    if not isinstance(got, torch.Tensor):
        fail(f"{case}: {what} is {_describe(got)}, expected a torch.Tensor of shape {expected}")
    if tuple(got.shape) != shape:
        hint = (shape_hints or {}).get(tuple(got.shape))
        fail(
            f"{case}: {what} has shape {tuple(got.shape)}, expected {expected}"
            + (f": {hint}" if hint else "")
        )
    if dtype is not None and got.dtype != dtype:
        fail(f"{case}: {what} has dtype {got.dtype}, expected {dtype}")
    return got


def expect_pair(got: object, what: str, case: str) -> tuple:
    """``got`` must be a tuple or list of two items."""
    if not isinstance(got, tuple | list) or len(got) != 2:
        fail(f"{case}: expected a pair {what}, got {_describe(got)}")
    return tuple(got)


def _describe(value: object) -> str:
    name = type(value).__name__
    article = "an" if name[0] in "aeiou" else "a"
    if isinstance(value, tuple | list):
        return f"{article} {name} of {len(value)} items"
    return f"{article} {name}"


def _index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def _fmt_index(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]"


def mismatch(
    got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4
) -> str | None:
    """None when ``got`` matches ``expected``; else where and by how much it differs."""
    got_d, expected_d = got.detach().double(), expected.detach().double()
    if not bool(torch.isfinite(got_d).all()):
        bad = torch.nonzero(~torch.isfinite(got_d))[0].tolist()
        return f"not finite: {got_d[tuple(bad)].item()} at {_fmt_index(tuple(bad))}"
    if torch.allclose(got_d, expected_d, atol=atol, rtol=rtol):
        return None
    diff = (got_d - expected_d).abs() - rtol * expected_d.abs()
    index = _index(int(diff.argmax()), got_d.shape) if got_d.dim() else ()
    where = f" at {_fmt_index(index)}" if index else ""
    return (
        f"{got_d[index].item():.6g}{where}, expected {expected_d[index].item():.6g}"
        f" (largest difference {(got_d - expected_d).abs().max().item():.3g})"
    )


def first_match(
    got: torch.Tensor, candidates: Mapping[str, torch.Tensor], atol: float = 1e-5
) -> str | None:
    """The description of the first known mistake whose output ``got`` reproduces, or None."""
    for description, candidate in candidates.items():
        if candidate.shape == got.shape and mismatch(got, candidate, atol=atol) is None:
            return description
    return None


def expect_close(
    got: torch.Tensor,
    expected: torch.Tensor,
    what: str,
    case: str,
    mistakes: Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]] | None = None,
    hint: str = "",
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """``got`` must equal ``expected`` (the library's) within tolerance.

    ``mistakes`` maps the description of a known mistake to the output it produces (or is a
    function returning that map, called only on a mismatch); when ``got`` reproduces one, the
    message names it, else it ends with ``hint``.
    """
    problem = mismatch(got, expected, atol, rtol)
    if problem is None:
        return
    if callable(mistakes):
        mistakes = mistakes()
    diagnosis = first_match(got, mistakes or {}, atol)
    advice = (
        f" This is what you get when {diagnosis}." if diagnosis else (f" {hint}" if hint else "")
    )
    fail(f"{case}: {what} is {problem}.{advice}")


def gradients(
    output: torch.Tensor, probe: torch.Tensor, inputs: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor | None]:
    """Gradients of ``(output * probe).sum()`` with respect to each of ``inputs`` (None where
    none reaches it)."""
    if not output.requires_grad:
        return dict.fromkeys(inputs)
    grads = torch.autograd.grad((output * probe).sum(), list(inputs.values()), allow_unused=True)
    return dict(zip(inputs, grads, strict=True))


NO_GRADIENT_CAUSES = (
    "look for .detach(), .item(), .tolist(), torch.no_grad(), .numpy() or a new tensor"
    " filled by hand from values"
)


def expect_gradients(
    got: Mapping[str, torch.Tensor | None],
    expected: Mapping[str, torch.Tensor],
    case: str,
    of: str = "the output",
    atol: float = 1e-5,
    rtol: float = 1e-4,
    hint: str = "",
) -> None:
    """Every gradient in ``expected`` must be matched by ``got`` (compared in float64).

    A missing gradient (None) is accepted only where the library's is zero everywhere; ``hint``
    replaces the generic advice for a gradient that differs.
    """
    for name, reference in expected.items():
        mine = got.get(name)
        if mine is None:
            if float(reference.abs().max()) <= atol:
                continue
            fail(
                f"{case}: no gradient reaches {name} from {of}, so backpropagation could not"
                f" train it: {NO_GRADIENT_CAUSES}"
            )
        problem = mismatch(mine, reference, atol, rtol)
        if problem is not None:
            advice = hint or (
                "the values match, so something between them and the inputs is not"
                " differentiated as the library's is (a detached factor, an in-place edit, a"
                " custom backward)"
            )
            fail(f"{case}: the gradient of {of} with respect to {name} is {problem}: {advice}")


def expect_number(
    got: object,
    expected: float,
    what: str,
    case: str,
    integer: bool = False,
    mistakes: Mapping[str, float] | None = None,
    hint: str = "",
    rel: float = 1e-9,
) -> None:
    """``got`` must be a number equal to ``expected`` (relative tolerance ``rel``), an integer
    value if ``integer``; ``mistakes`` maps a known mistake to the number it gives."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        fail(f"{case}: {what} is {_describe(got)}, expected a number")
    if integer and float(got) != int(got):
        fail(f"{case}: {what} is {got}, expected a whole number")
    if _close(float(got), float(expected), rel):
        return
    diagnosis = next(
        (d for d, value in (mistakes or {}).items() if _close(float(got), float(value), rel)), None
    )
    advice = (
        f" This is what you get when {diagnosis}." if diagnosis else (f" {hint}" if hint else "")
    )
    fail(f"{case}: {what} is {_fmt_number(got)}, expected {_fmt_number(expected)}.{advice}")


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1.0)


def _fmt_number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.6g}"
