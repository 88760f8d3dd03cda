"""Exercises with checkers: "implement it" tasks at the end of each notebook, graded by the library.

Each ``check_<name>(attempt, reference=None)`` runs the reader's function on seeded random cases
and compares it with ``moe_lab``'s own implementation: the shape, the value at a named case,
the gradient. It prints one line when it passes and raises ``ExerciseError`` (an
``AssertionError``) when it does not, with a message that names the case, the quantity and the
first difference, and, when the reader's output is exactly what a known mistake produces
(softmax after top-k, no renormalization, floor instead of ceil, the balancing loss on post-top-k
probabilities, ...), that mistake.

One module per notebook, named after it (``notebooks/03_load_balancing.py`` ->
``moe_lab.exercises.load_balancing``):

    dense_ffn         01  check_swiglu_ffn, check_ffn_counts, check_split_into_experts
    routing           02  check_topk_router, check_deepseek_router, check_sorted_dispatch
    load_balancing    03  check_expert_capacity, check_capacity_keep, check_switch_aux_loss
    train_tiny_moe    04  check_tiny_lm_parameters, check_training_flops_per_token
    specialization    05  check_normalized_mutual_information, check_router_saturation,
                          check_routing_collapse, check_linear_cka
    compute_budgets   06  check_mixtral_parameters, check_experts_touched, check_all_to_all_bytes
    gpu_and_scaling   07  check_expert_offsets, check_all_to_all_splits, check_group_limited_topk

The cell pattern, the same in every notebook (Jupytext percent syntax; exercise ``x``):

1. A Markdown cell states the task: signature, shapes, what to return.
2. The exercise cell holds a stub for the reader to replace::

       # %%
       def my_x(...):
           raise NotImplementedError  # replace this line with your code

3. The reference solution, tagged ``solution`` and collapsed (JupyterLab shows one line; the
   course's HTML site renders it folded). It defines ``x_solution``, never ``my_x``, so it
   cannot overwrite the reader's attempt::

       # %% tags=["solution"] jupyter={"source_hidden": true}
       def x_solution(...):
           ...

4. The check cell checks the attempt, or the reference while the attempt is still the stub::

       # %%
       check_x(my_x, reference=x_solution)

   While ``my_x`` raises ``NotImplementedError`` the check runs on ``x_solution`` and says so;
   once the reader has written ``my_x``, it is what gets checked, and a wrong attempt fails
   the cell. A notebook run untouched (CI, nbval) therefore exercises every checker and every
   reference solution; ``tests/test_exercises.py`` also runs each solution cell, taken from the
   notebook's source, through its checker, and every checker against known wrong versions.

Adding exercises for a new notebook:

1. Create ``moe_lab/exercises/<name>.py`` for ``notebooks/NN_<name>.py``, with
   ``NOTEBOOK = "NN_<name>"`` and one ``@exercise(NOTEBOOK, against="...")`` function per
   exercise, named ``check_<exercise>``: it takes the function to check, builds seeded cases
   (``torch.manual_seed`` per case; the decorator forks the random state), calls the function
   through ``core.call`` and compares with ``core.expect_tensor``, ``expect_close`` (with a
   ``mistakes`` map: description -> the output that mistake gives), ``expect_gradients`` and
   ``expect_number``; it returns the number of cases.
2. Import the module below, so that ``EXERCISES`` knows its checkers.
3. Append the cells above to the notebook (after "Check yourself"), with the exercises'
   introduction in Markdown, then run ``python tools/sync_notebooks.py``.
4. In ``tests/test_exercises.py``, add the notebook to ``NOTEBOOK_MODULES`` and, for each new
   checker, at least one realistic wrong version and the words its message must contain.

Taught in: the "Exercises" section at the end of notebooks 01 to 07.
"""

from moe_lab.exercises import (  # noqa: F401  (importing registers the checkers)
    compute_budgets,
    dense_ffn,
    gpu_and_scaling,
    load_balancing,
    routing,
    specialization,
    train_tiny_moe,
)
from moe_lab.exercises.core import EXERCISES, Exercise, ExerciseError, exercises_of

__all__ = ["EXERCISES", "Exercise", "ExerciseError", "exercises_of"]
