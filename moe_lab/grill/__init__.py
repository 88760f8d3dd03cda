"""The interview grill: a question bank graded by the library, in Jupyter and in a terminal.

    from moe_lab.grill import Grill, GrillSession, load_bank, select
    Grill(topic="balancing", seed=1).widget        # in Jupyter
    moe-lab grill --topic balancing --n 10 --seed 1  # in a terminal

Modules, one job each:

    question.py   Question, Link, Grade; topics, kinds, difficulties
    bank.py       the TOML files in questions/ (one per topic) -> validated Questions; select()
    numeric.py    seeded numeric cases, answered by moe_lab's own functions
    numeric_scaling.py  notebook 07's numeric cases (dispatch ladder, host syncs, expert
                  parallelism, group-limited routing), registered by numeric.py
    bugs.py       "spot the bug" checkers: the reader's code against the library, random inputs
    bugs_scaling.py  notebook 07's checker (a balancing loss averaged over ranks), registered
                  by bugs.py
    sandbox.py    runs the reader's code in its own namespace; exceptions become reasons
    grading.py    Instance, grade(), GrillSession: the one grading code both interfaces use
    widget.py     the Grill ipywidgets widget (imported on first use of ``Grill``)
    terminal.py   ``moe-lab grill``

Taught in: notebooks/08_interview_grill.ipynb.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moe_lab.grill.bank import load_bank, sample_across_topics, select
from moe_lab.grill.grading import GrillSession, Instance, Score, grade, make_instance
from moe_lab.grill.question import DIFFICULTIES, KINDS, TOPICS, Grade, Link, Question

if TYPE_CHECKING:
    from moe_lab.grill.widget import Grill


def __getattr__(name: str) -> Any:
    # The widget needs ipywidgets; the terminal does not. Import it only when asked for.
    if name == "Grill":
        from moe_lab.grill.widget import Grill

        return Grill
    raise AttributeError(f"module 'moe_lab.grill' has no attribute {name!r}")


__all__ = [
    "DIFFICULTIES",
    "KINDS",
    "TOPICS",
    "Grade",
    "Grill",
    "GrillSession",
    "Instance",
    "Link",
    "Question",
    "Score",
    "grade",
    "load_bank",
    "make_instance",
    "sample_across_topics",
    "select",
]
