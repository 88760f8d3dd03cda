"""The exercise checkers, both ways: every reference solution (taken from its notebook's hidden
cell) passes, and realistic wrong versions fail with a message that names the mistake.

Also the cell pattern itself: each notebook's exercise section, run untouched, checks every
hidden reference and says so; a written attempt is checked instead of the reference, never
replaced by it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import re
from pathlib import Path

import jupytext
import pytest
import torch
import torch.nn.functional as F

from moe_lab.exercises import EXERCISES, ExerciseError, exercises_of
from moe_lab.exercises.core import call, exercise
from moe_lab.routers import RoutingResult

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
# notebook stem -> its checker module in moe_lab.exercises
NOTEBOOK_MODULES = {
    "01_dense_ffn": "dense_ffn",
    "02_routing": "routing",
    "03_load_balancing": "load_balancing",
    "04_train_tiny_moe": "train_tiny_moe",
    "05_specialization": "specialization",
    "06_compute_budgets": "compute_budgets",
    "07_gpu_and_scaling": "gpu_and_scaling",
}


# ----------------------------------------------------------------------------------------------
# The notebooks' exercise sections
# ----------------------------------------------------------------------------------------------


@functools.cache
def exercise_cells(stem: str) -> tuple:
    """The cells of a notebook's source from its "## Exercises" heading to the end."""
    cells = jupytext.read(NOTEBOOK_DIR / f"{stem}.py", fmt="py:percent").cells
    start = next(
        i
        for i, c in enumerate(cells)
        if c.cell_type == "markdown" and c.source.startswith("## Exercises")
    )
    return tuple(cells[start:])


def code_cells(stem: str) -> list[str]:
    return [c.source for c in exercise_cells(stem) if c.cell_type == "code"]


def run_cells(sources: list[str]) -> tuple[dict, str]:
    """Execute cell sources in order in a fresh namespace; return it and what they printed."""
    namespace: dict = {"__name__": "__exercises__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for source in sources:
            exec(compile(source, "<cell>", "exec"), namespace)
    return namespace, printed.getvalue()


@functools.cache
def solutions(stem: str) -> dict:
    """The namespace of the exercises' setup cell and every hidden solution cell."""
    cells = [c for c in exercise_cells(stem) if c.cell_type == "code"]
    setup = cells[0].source
    hidden = [c.source for c in cells if "solution" in c.metadata.get("tags", [])]
    namespace, _ = run_cells([setup, *hidden])
    return namespace


def solution(name: str):
    return solutions(EXERCISES[name].notebook)[EXERCISES[name].solution_name]


ALL = sorted(EXERCISES)


def test_every_exercise_notebook_has_its_module():
    assert {ex.notebook for ex in EXERCISES.values()} == set(NOTEBOOK_MODULES)
    for stem, module in NOTEBOOK_MODULES.items():
        assert stem.split("_", 1)[1] == module  # 03_load_balancing -> load_balancing
        assert (NOTEBOOK_DIR / f"{stem}.py").exists()
        names = [ex.name for ex in exercises_of(stem)]
        assert 2 <= len(names) <= 4, (stem, names)
        for name in names:
            assert EXERCISES[name].run_cases.__module__ == f"moe_lab.exercises.{module}"


@pytest.mark.parametrize("stem", NOTEBOOK_MODULES)
def test_exercise_section_follows_the_cell_pattern(stem):
    cells = exercise_cells(stem)
    everything = jupytext.read(NOTEBOOK_DIR / f"{stem}.py", fmt="py:percent").cells
    before = [c.source for c in everything[: -len(cells)] if c.cell_type == "markdown"]
    # the exercises come last, after "Check yourself" (so the lead can merge appended cells)
    assert before[-1].startswith("## Check yourself")
    assert not any(c.source.startswith("## ") for c in cells[1:] if c.cell_type == "markdown")
    sources = [c.source for c in cells]
    for ex in exercises_of(stem):
        stubs = [i for i, s in enumerate(sources) if s.startswith(f"def {ex.attempt_name}(")]
        hidden = [i for i, s in enumerate(sources) if s.startswith(f"def {ex.solution_name}(")]
        checks = [
            i
            for i, s in enumerate(sources)
            if s.strip() == f"check_{ex.name}({ex.attempt_name}, reference={ex.solution_name})"
        ]
        assert len(stubs) == len(hidden) == len(checks) == 1, ex.name
        assert stubs[0] < hidden[0] < checks[0], ex.name
        assert (
            sources[stubs[0]]
            .rstrip()
            .endswith("raise NotImplementedError  # replace this line with your code")
        )
        assert cells[hidden[0]].metadata == {
            "tags": ["solution"],
            "jupyter": {"source_hidden": True},
        }
        # the hidden cell must not define the reader's name, or running it would overwrite theirs
        assert not re.search(rf"\b{ex.attempt_name}\b", sources[hidden[0]])
    for cell in cells:
        if "solution" in cell.metadata.get("tags", []):
            assert cell.metadata["jupyter"] == {"source_hidden": True}


@pytest.mark.parametrize("stem", NOTEBOOK_MODULES)
def test_untouched_section_checks_every_hidden_reference(stem):
    _, printed = run_cells(code_cells(stem))
    for ex in exercises_of(stem):
        assert f"✓ checked the hidden reference {ex.solution_name}: it passes" in printed
        assert f"Your {ex.attempt_name} is not written yet" in printed


def cells_of(name: str) -> list[str]:
    """The setup cell and the exercise's own three cells: stub, hidden solution, check."""
    ex = EXERCISES[name]
    sources = code_cells(ex.notebook)
    own = [
        s
        for s in sources
        if s.startswith((f"def {ex.attempt_name}(", f"def {ex.solution_name}(", f"check_{name}("))
    ]
    # a solution may call an earlier one (04's FLOPs reuse its parameter count)
    earlier = [s for s in sources if s.startswith("def ") and "_solution(" in s.split("\n")[0]]
    helpers = [s for s in earlier if s not in own and s.split("(")[0][4:] in "".join(own)]
    return [sources[0], *helpers, *own]


@pytest.mark.parametrize("name", ALL)
def test_a_written_attempt_is_checked_not_replaced(name):
    ex = EXERCISES[name]
    sources = cells_of(name)
    stub = next(i for i, s in enumerate(sources) if s.startswith(f"def {ex.attempt_name}("))

    # a right attempt (it delegates to the hidden solution, defined in a later cell) is checked
    right = sources.copy()
    right[stub] = f"def {ex.attempt_name}(*args):\n    return {ex.solution_name}(*args)\n"
    _, printed = run_cells(right)
    assert f"✓ checked your {ex.attempt_name}: it passes" in printed
    assert "hidden reference" not in printed

    # a wrong one fails its check cell: the reference does not stand in for it
    wrong = sources.copy()
    wrong[stub] = f"def {ex.attempt_name}(*args):\n    return None\n"
    with pytest.raises(ExerciseError, match=rf"^{ex.attempt_name} fails check_{name}: case 1 of"):
        run_cells(wrong)


@pytest.mark.parametrize("name", ALL)
def test_the_notebook_solution_passes_its_checker(name, capsys):
    reference = solution(name)
    EXERCISES_CHECKS[name](reference)
    assert f"✓ checked your {EXERCISES[name].solution_name}: it passes" in capsys.readouterr().out


def _checks() -> dict:
    import moe_lab.exercises as package

    checks = {}
    for module in NOTEBOOK_MODULES.values():
        for attr, value in vars(getattr(package, module)).items():
            if attr.startswith("check_") and hasattr(value, "exercise"):
                checks[value.exercise.name] = value
    return checks


EXERCISES_CHECKS = _checks()


def test_every_registered_exercise_has_a_public_check():
    assert set(EXERCISES_CHECKS) == set(EXERCISES)


# ----------------------------------------------------------------------------------------------
# Realistic wrong versions, and the words their failure must contain
# ----------------------------------------------------------------------------------------------

# 01: the SwiGLU FFN


def swiglu_silu_on_up(x, w_gate, w_up, w_down):
    return ((x @ w_gate) * F.silu(x @ w_up)) @ w_down


def swiglu_geglu(x, w_gate, w_up, w_down):
    return (F.gelu(x @ w_gate) * (x @ w_up)) @ w_down


def swiglu_no_down(x, w_gate, w_up, w_down):
    return F.silu(x @ w_gate) * (x @ w_up)


def swiglu_linear_layout(x, w_gate, w_up, w_down):  # weights used as nn.Linear's (out, in)
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def swiglu_detached_input(x, w_gate, w_up, w_down):
    x = x.detach()
    return (F.silu(x @ w_gate) * (x @ w_up)) @ w_down


def swiglu_no_gate(x, w_gate, w_up, w_down):
    return F.silu(x @ w_up) @ w_down


def ffn_counts_multiply_adds(d_model, d_ff, activation, n_tokens):
    matrices = 3 if activation == "swiglu" else 2
    return matrices * d_model * d_ff, n_tokens * matrices * d_model * d_ff


def ffn_counts_two_matrices(d_model, d_ff, activation, n_tokens):
    return 2 * d_model * d_ff, 4 * n_tokens * d_model * d_ff


def ffn_counts_training(d_model, d_ff, activation, n_tokens):
    matrices = 3 if activation == "swiglu" else 2
    return matrices * d_model * d_ff, 6 * n_tokens * matrices * d_model * d_ff


def ffn_counts_one_number(d_model, d_ff, activation, n_tokens):
    return 3 * d_model * d_ff


def split_plain_reshape(dense, n_experts):
    d, width = dense.d_model, dense.d_ff // n_experts
    return (
        dense.gate.weight.T.reshape(n_experts, d, width),
        dense.up.weight.T.reshape(n_experts, d, width),
        dense.down.weight.T.reshape(n_experts, width, d),
    )


def split_untransposed(dense, n_experts):
    d, width = dense.d_model, dense.d_ff // n_experts
    return (
        dense.gate.weight.reshape(n_experts, d, width),
        dense.up.weight.reshape(n_experts, d, width),
        dense.down.weight.T.reshape(n_experts, width, d),
    )


def split_interleaved(dense, n_experts):
    # expert e takes hidden units e, e+E, e+2E, ...: a valid partition, not contiguous blocks
    d, width = dense.d_model, dense.d_ff // n_experts
    return (
        dense.gate.weight.T.reshape(d, width, n_experts).permute(2, 0, 1),
        dense.up.weight.T.reshape(d, width, n_experts).permute(2, 0, 1),
        dense.down.weight.T.reshape(width, n_experts, d).transpose(0, 1),
    )


def split_linear_layout(dense, n_experts):  # (E, F/E, D) gate and up: nn.Linear's rows
    d, width = dense.d_model, dense.d_ff // n_experts
    return (
        dense.gate.weight.reshape(n_experts, width, d),
        dense.up.weight.reshape(n_experts, width, d),
        dense.down.weight.T.reshape(n_experts, width, d),
    )


# 02: routers and the sorted dispatch


def topk_then_softmax(logits, k, normalize):
    top, indices = logits.topk(k, dim=-1)
    return indices, top.softmax(dim=-1)


def topk_never_renormalized(logits, k, normalize):
    weights, indices = logits.softmax(-1).topk(k, dim=-1)
    return indices, weights


def topk_always_renormalized(logits, k, normalize):
    weights, indices = logits.softmax(-1).topk(k, dim=-1)
    return indices, weights / weights.sum(-1, keepdim=True)


def topk_detached(logits, k, normalize):
    weights, indices = logits.detach().softmax(-1).topk(k, dim=-1)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return indices, weights


def topk_softmax_over_tokens(logits, k, normalize):
    weights, indices = logits.softmax(0).topk(k, dim=-1)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return indices, weights


def topk_swapped_outputs(logits, k, normalize):
    weights, indices = logits.softmax(-1).topk(k, dim=-1)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, indices


def topk_ascending(logits, k, normalize):
    weights, indices = logits.softmax(-1).topk(k, dim=-1)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return indices.flip(-1), weights.flip(-1)


def deepseek_bias_in_weights(logits, bias, k, scaling):
    biased = torch.sigmoid(logits) + bias
    weights, indices = biased.topk(k, dim=-1)
    return indices, weights / weights.sum(-1, keepdim=True) * scaling


def deepseek_bias_ignored(logits, bias, k, scaling):
    weights, indices = torch.sigmoid(logits).topk(k, dim=-1)
    return indices, weights / weights.sum(-1, keepdim=True) * scaling


def deepseek_softmax(logits, bias, k, scaling):
    scores = logits.softmax(-1)
    indices = (scores + bias).topk(k, dim=-1).indices
    weights = scores.gather(-1, indices)
    return indices, weights / weights.sum(-1, keepdim=True) * scaling


def deepseek_no_scaling(logits, bias, k, scaling):
    scores = torch.sigmoid(logits)
    indices = (scores + bias).topk(k, dim=-1).indices
    weights = scores.gather(-1, indices)
    return indices, weights / weights.sum(-1, keepdim=True)


def _sorted_parts(x, routing, experts, token_of_rule="div"):
    k = routing.indices.shape[1]
    flat = routing.indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token_of = order // k if token_of_rule == "div" else order % k
    counts = torch.bincount(flat, minlength=experts.n_experts).tolist()
    rows, outputs, start = x[token_of], [], 0
    for expert, count in enumerate(counts):
        if count:
            outputs.append(experts.expert_forward(rows[start : start + count], expert))
        start += count
    return order, token_of, torch.cat(outputs)


def dispatch_index_assign(x, routing, experts):
    order, token_of, out = _sorted_parts(x, routing, experts)
    y = torch.zeros_like(x)
    y[token_of] += out * routing.weights.reshape(-1)[order, None]  # repeated indices: one write
    return y


def dispatch_unweighted(x, routing, experts):
    _, token_of, out = _sorted_parts(x, routing, experts)
    return torch.zeros_like(x).index_add(0, token_of, out)


def dispatch_modulo_tokens(x, routing, experts):
    order, token_of, out = _sorted_parts(x, routing, experts, token_of_rule="mod")
    return torch.zeros_like(x).index_add(
        0, token_of, out * routing.weights.reshape(-1)[order, None]
    )


def dispatch_unsorted_weights(x, routing, experts):
    _, token_of, out = _sorted_parts(x, routing, experts)
    return torch.zeros_like(x).index_add(0, token_of, out * routing.weights.reshape(-1)[:, None])


def dispatch_detached_weights(x, routing, experts):
    order, token_of, out = _sorted_parts(x, routing, experts)
    weights = routing.weights.detach().reshape(-1)[order, None]
    return torch.zeros_like(x).index_add(0, token_of, out * weights)


def dispatch_token_loop(x, routing, experts):  # right values, one expert call per assignment
    y = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for slot in range(routing.indices.shape[1]):
            expert = int(routing.indices[n, slot])
            out = experts.expert_forward(x[n : n + 1], expert)[0]
            y = y.index_add(0, torch.tensor([n]), (routing.weights[n, slot] * out)[None])
    return y


# 03: capacity, dropping, the auxiliary loss


def capacity_floor(n_tokens, n_experts, top_k, capacity_factor):
    return max(1, math.floor(capacity_factor * n_tokens * top_k / n_experts))


def capacity_without_k(n_tokens, n_experts, top_k, capacity_factor):
    return max(1, math.ceil(capacity_factor * n_tokens / n_experts))


def capacity_plain_ceil(n_tokens, n_experts, top_k, capacity_factor):
    return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_experts))


def capacity_round(n_tokens, n_experts, top_k, capacity_factor):
    return max(1, round(capacity_factor * n_tokens * top_k / n_experts))


def _keep_in_order(indices, n_experts, capacity, order, limit=lambda used, c: used < c):
    keep = torch.zeros(indices.shape, dtype=torch.bool)
    used = [0] * n_experts
    for token, slot in order:
        expert = int(indices[token, slot])
        if limit(used[expert], capacity):
            used[expert] += 1
            keep[token, slot] = True
    return keep


def keep_token_major(indices, n_experts, capacity):
    n, k = indices.shape
    return _keep_in_order(
        indices, n_experts, capacity, [(t, s) for t in range(n) for s in range(k)]
    )


def keep_off_by_one(indices, n_experts, capacity):
    n, k = indices.shape
    order = [(t, s) for s in range(k) for t in range(n)]
    return _keep_in_order(indices, n_experts, capacity, order, limit=lambda used, c: used <= c)


def keep_latest_first(indices, n_experts, capacity):
    n, k = indices.shape
    order = [(t, s) for s in range(k) for t in reversed(range(n))]
    return _keep_in_order(indices, n_experts, capacity, order)


def keep_as_ints(indices, n_experts, capacity):
    n, k = indices.shape
    order = [(t, s) for s in range(k) for t in range(n)]
    return _keep_in_order(indices, n_experts, capacity, order).long()


def _fractions(indices, n_experts):
    return torch.bincount(indices.reshape(-1), minlength=n_experts).float() / indices.numel()


def aux_post_topk(probs, indices):
    n_experts = probs.shape[-1]
    chosen = torch.zeros_like(probs).scatter(1, indices, 1.0)
    return n_experts * (_fractions(indices, n_experts) * (probs * chosen).mean(0)).sum()


def aux_hugging_face_scaling(probs, indices):
    n_experts = probs.shape[-1]
    f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / indices.shape[0]
    return n_experts * (f * probs.mean(0)).sum()


def aux_without_e(probs, indices):
    return (_fractions(indices, probs.shape[-1]) * probs.mean(0)).sum()


def aux_per_expert(probs, indices):
    n_experts = probs.shape[-1]
    return n_experts * _fractions(indices, n_experts) * probs.mean(0)


def aux_f_from_probs(probs, indices):
    return probs.shape[-1] * (probs.mean(0) ** 2).sum()


def aux_straight_through_f(probs, indices):
    # the right value, but f carries the probabilities' gradient
    n_experts = probs.shape[-1]
    soft = probs.mean(0)
    f = (_fractions(indices, n_experts) - soft).detach() + soft
    return n_experts * (f * probs.mean(0)).sum()


# 04: the tiny LM's counts


def _tiny_counts(config, position=True, head=False, router_active=True):
    total, active = solution("tiny_lm_parameters")(config)
    d = config.d_model
    if not position:
        total -= config.max_seq_len * d
        active -= config.max_seq_len * d
    if head:
        total += config.vocab_size * d
        active += config.vocab_size * d
    if not router_active and config.moe is not None:
        active -= config.n_moe_layers * d * config.moe.routed_experts
    return total, active


def tiny_no_position(config):
    return _tiny_counts(config, position=False)


def tiny_head_counted(config):
    return _tiny_counts(config, head=True)


def tiny_router_inactive(config):
    return _tiny_counts(config, router_active=False)


def tiny_scaled_by_k_over_e(config):
    total, _ = _tiny_counts(config)
    if config.moe is None:
        return total, total
    return total, total * config.moe.routed_top_k // config.moe.routed_experts


def flops_forward_only(config, seq_len):
    return solution("training_flops_per_token")(config, seq_len) / 3


def flops_without_scores(config, seq_len):
    scores = config.n_layers * 4 * config.d_model * (seq_len + 1) / 2
    return solution("training_flops_per_token")(config, seq_len) - 3 * scores


def flops_all_keys(config, seq_len):
    d, layers = config.d_model, config.n_layers
    causal, full = layers * 4 * d * (seq_len + 1) / 2, layers * 4 * d * seq_len
    return solution("training_flops_per_token")(config, seq_len) + 3 * (full - causal)


def flops_every_expert(config, seq_len):
    # "6 x parameters" with every expert counted: the total where the active count belongs
    total, active = solution("tiny_lm_parameters")(config)
    return solution("training_flops_per_token")(config, seq_len) + 6 * (total - active)


def flops_without_head(config, seq_len):
    return (
        solution("training_flops_per_token")(config, seq_len)
        - 6 * config.vocab_size * config.d_model
    )


# 06: Mixtral counts, experts touched, all-to-all bytes


def mixtral_times_e(config):  # "8 x 7B": a one-expert model copied E times
    one_expert = {**config, "num_local_experts": 1, "num_experts_per_tok": 1}
    total, active = solution("mixtral_parameters")(one_expert)
    return config["num_local_experts"] * total, config["num_experts_per_tok"] * active


def mixtral_full_width_kv(config):
    no_gqa = {**config, "num_key_value_heads": config["num_attention_heads"]}
    return solution("mixtral_parameters")(no_gqa)


def mixtral_active_without_embedding(config):
    total, active = solution("mixtral_parameters")(config)
    return total, active - config["vocab_size"] * config["hidden_size"]


def mixtral_ignores_head_dim(config):
    return solution("mixtral_parameters")({k: v for k, v in config.items() if k != "head_dim"})


def touched_no_overlap(n_experts, top_k, n_tokens):
    return min(n_experts, top_k * n_tokens)


def touched_with_replacement(n_experts, top_k, n_tokens):
    return n_experts * (1 - (1 - 1 / n_experts) ** (top_k * n_tokens))


def a2a_every_copy(n_tokens, top_k, d_model, world_size, bytes_per_value):
    return 2 * n_tokens * top_k * d_model * bytes_per_value


def a2a_one_way(n_tokens, top_k, d_model, world_size, bytes_per_value):
    return n_tokens * top_k * d_model * bytes_per_value * (world_size - 1) / world_size


def a2a_per_rank(n_tokens, top_k, d_model, world_size, bytes_per_value):
    return 2 * n_tokens * top_k * d_model * bytes_per_value * (world_size - 1) / world_size**2


# notebook 07: group offsets on the device, the all-to-all's split sizes, group-limited top-k


def offsets_by_bincount(sorted_expert_ids, n_experts):  # right values, a host sync on a GPU
    counts = torch.bincount(sorted_expert_ids, minlength=n_experts)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def offsets_from_python(sorted_expert_ids, n_experts):  # right values, E + 1 reads and a copy
    return torch.tensor([int((sorted_expert_ids < e).sum()) for e in range(n_experts + 1)])


def offsets_as_list(sorted_expert_ids, n_experts):
    return torch.searchsorted(sorted_expert_ids, torch.arange(n_experts + 1)).tolist()


def offsets_ends(sorted_expert_ids, n_experts):
    return torch.searchsorted(sorted_expert_ids, torch.arange(n_experts + 1), right=True)


def offsets_counts_only(sorted_expert_ids, n_experts):
    return (sorted_expert_ids[:, None] == torch.arange(n_experts)).sum(0)


def _splits(source, destination, world_size):
    pairs = (source[:, None] * world_size + destination).flatten()
    return torch.bincount(pairs, minlength=world_size**2).view(world_size, world_size)


def splits_round_robin_experts(expert_indices, n_experts, world_size):
    source = torch.arange(len(expert_indices)) // (len(expert_indices) // world_size)
    return _splits(source, expert_indices % world_size, world_size)


def splits_round_robin_tokens(expert_indices, n_experts, world_size):
    source = torch.arange(len(expert_indices)) % world_size
    return _splits(source, expert_indices // (n_experts // world_size), world_size)


def splits_received(expert_indices, n_experts, world_size):  # the transpose
    return solution("all_to_all_splits")(expert_indices, n_experts, world_size).T


def splits_remote_only(expert_indices, n_experts, world_size):
    splits = solution("all_to_all_splits")(expert_indices, n_experts, world_size).clone()
    return splits.fill_diagonal_(0)


def splits_per_token(expert_indices, n_experts, world_size):  # a token's copies to a rank merged
    n_tokens = len(expert_indices)
    splits = torch.zeros(world_size, world_size, dtype=torch.long)
    for n, experts in enumerate(expert_indices.tolist()):
        for destination in {e // (n_experts // world_size) for e in experts}:
            splits[n // (n_tokens // world_size), destination] += 1
    return splits


def _group_limited(scores, top_k, n_group, topk_group, score, fill=float("-inf"), contiguous=True):
    n_tokens, n_experts = scores.shape
    per_group = n_experts // n_group
    if contiguous:
        grouped = scores.view(n_tokens, n_group, per_group)
    else:  # expert e in group e % G
        grouped = scores.view(n_tokens, per_group, n_group).transpose(1, 2)
    best = score(grouped).topk(topk_group, dim=-1).indices
    allowed = torch.zeros(n_tokens, n_group, dtype=torch.bool).scatter(1, best, True)
    if contiguous:
        allowed = allowed.repeat_interleave(per_group, dim=1)
    else:
        allowed = allowed.repeat(1, per_group)
    return scores.masked_fill(~allowed, fill).topk(top_k, dim=-1).indices


def _score_of(method):
    if method == "noaux_tc":
        return lambda g: g.topk(2, dim=-1).values.sum(-1)
    return lambda g: g.amax(-1)


def limited_always_max(scores, top_k, n_group, topk_group, method):
    return _group_limited(scores, top_k, n_group, topk_group, _score_of("group_limited_greedy"))


def limited_always_sum_of_two(scores, top_k, n_group, topk_group, method):
    return _group_limited(scores, top_k, n_group, topk_group, _score_of("noaux_tc"))


def limited_zero_fill(scores, top_k, n_group, topk_group, method):  # Hugging Face's fill
    return _group_limited(scores, top_k, n_group, topk_group, _score_of(method), fill=0.0)


def limited_interleaved(scores, top_k, n_group, topk_group, method):
    return _group_limited(scores, top_k, n_group, topk_group, _score_of(method), contiguous=False)


def limited_ascending(scores, top_k, n_group, topk_group, method):
    chosen = _group_limited(scores, top_k, n_group, topk_group, _score_of(method))
    return chosen.sort(dim=-1).values


def limited_ignored(scores, top_k, n_group, topk_group, method):
    return scores.topk(top_k, dim=-1).indices


# 05: normalized mutual information, router saturation, routing collapse, linear CKA


def _nmi_parts(expert, label, n_experts, n_labels):
    counts = torch.bincount(expert * n_labels + label, minlength=n_experts * n_labels)
    p = counts.view(n_experts, n_labels).double() / expert.numel()  # (E, C)
    h_x = torch.special.entr(p.sum(1)).sum()
    h_y = torch.special.entr(p.sum(0)).sum()
    return p, h_x, h_y, torch.special.entr(p).sum()


def nmi_nan_on_empty_cells(expert, label, n_experts, n_labels):  # -(p * log p) with p = 0
    p, *_ = _nmi_parts(expert, label, n_experts, n_labels)

    def entropy(q):
        return -(q * q.log()).sum()

    h_x, h_y, h_xy = entropy(p.sum(1)), entropy(p.sum(0)), entropy(p)
    return float(2 * (h_x + h_y - h_xy) / (h_x + h_y))


def nmi_unnormalized(expert, label, n_experts, n_labels):
    _, h_x, h_y, h_xy = _nmi_parts(expert, label, n_experts, n_labels)
    return float(h_x + h_y - h_xy)


def nmi_geometric(expert, label, n_experts, n_labels):  # sklearn's old default normalization
    _, h_x, h_y, h_xy = _nmi_parts(expert, label, n_experts, n_labels)
    return float((h_x + h_y - h_xy) / (h_x * h_y).sqrt())


def nmi_by_label_entropy(expert, label, n_experts, n_labels):
    _, h_x, h_y, h_xy = _nmi_parts(expert, label, n_experts, n_labels)
    return float((h_x + h_y - h_xy) / h_y)


def nmi_rows_twice(expert, label, n_experts, n_labels):  # H(Y) summed over the wrong axis
    p, h_x, _, h_xy = _nmi_parts(expert, label, n_experts, n_labels)
    h_y = torch.special.entr(p.sum(1)).sum()
    return float(2 * (h_x + h_y - h_xy) / (h_x + h_y))


def nmi_no_zero_guard(expert, label, n_experts, n_labels):  # 0/0 for one expert, one label
    _, h_x, h_y, h_xy = _nmi_parts(expert, label, n_experts, n_labels)
    return float(2 * (h_x + h_y - h_xy) / (h_x + h_y))


def saturation_positionwise(snapshots):
    return (snapshots == snapshots[-1]).double().mean(dim=(1, 2))


def saturation_against_first(snapshots):
    kept = (snapshots[:, :, :, None] == snapshots[0][None, :, None, :]).any(-1)
    return kept.double().mean(dim=(1, 2))


def saturation_top1(snapshots):
    return (snapshots[:, :, 0] == snapshots[-1][:, 0]).double().mean(dim=1)


def saturation_any_overlap(snapshots):
    kept = (snapshots[:, :, :, None] == snapshots[-1][None, :, None, :]).any(-1)
    return kept.any(-1).double().mean(dim=1)


def saturation_jaccard(snapshots):
    shared = (snapshots[:, :, :, None] == snapshots[-1][None, :, None, :]).any(-1).sum(-1)
    union = 2 * snapshots.shape[-1] - shared
    return (shared / union).double().mean(dim=1)


def collapse_range(load):
    load = load.double()
    return float((load.max() - load.min()) / load.mean()), int((load < 0.01 * load.mean()).sum())


def collapse_max_over_mean(load):
    load = load.double()
    return float(load.max() / load.mean()), int((load < 0.01 * load.mean()).sum())


def collapse_zeros_only(load):
    load = load.double()
    return float((load.max() - load.mean()) / load.mean()), int((load == 0).sum())


def collapse_line_of_total(load):
    load = load.double()
    return float((load.max() - load.mean()) / load.mean()), int((load < 0.01 * load.sum()).sum())


def collapse_line_of_max(load):
    load = load.double()
    return float((load.max() - load.mean()) / load.mean()), int((load < 0.01 * load.max()).sum())


def _cka(x, y, squared=True):
    cross = torch.linalg.matrix_norm(y.T @ x)
    norms = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float((cross**2 if squared else cross) / norms)


def cka_uncentred(x, y):
    return _cka(x.double(), y.double())


def cka_not_squared(x, y):
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    return _cka(x, y, squared=False)


def cka_rows_centred(x, y):  # the mean over each input's features, the wrong dimension
    x, y = x.double(), y.double()
    return _cka(x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True))


def cka_flattened_correlation(x, y):
    return float(torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1])


WRONG = [  # (exercise, wrong version, words the failure message must contain)
    ("swiglu_ffn", swiglu_silu_on_up, "SiLU is applied to the up projection instead of the gate"),
    ("swiglu_ffn", swiglu_geglu, "GELU replaces SiLU"),
    ("swiglu_ffn", swiglu_no_gate, "the gate is left out"),
    (
        "swiglu_ffn",
        swiglu_no_down,
        "has shape (1, 8), expected (N, D) = (1, 4): that is the hidden layer",
    ),
    ("swiglu_ffn", swiglu_linear_layout, "it raised RuntimeError"),
    ("swiglu_ffn", swiglu_detached_input, "no gradient reaches x"),
    ("ffn_counts", ffn_counts_multiply_adds, "a multiply-add counts as 1 FLOP"),
    ("ffn_counts", ffn_counts_two_matrices, "swiglu is counted with 2 matrices"),
    ("ffn_counts", ffn_counts_training, "forward and backward are counted together"),
    (
        "ffn_counts",
        ffn_counts_one_number,
        "expected a pair (parameters, forward_flops), got an int",
    ),
    ("split_into_experts", split_plain_reshape, "a reshape reads the (D, F) matrix row by row"),
    ("split_into_experts", split_untransposed, "without transposing"),
    ("split_into_experts", split_interleaved, "valid partition of the hidden units, but w_gate[0]"),
    (
        "split_into_experts",
        split_linear_layout,
        "w_gate has shape (4, 4, 8), expected (E, D, F/E) = (4, 8, 4): nn.Linear stores",
    ),
    ("topk_router", topk_then_softmax, "softmax came after top-k"),
    (
        "topk_router",
        topk_never_renormalized,
        "not renormalized: with normalize=True they must sum to 1",
    ),
    ("topk_router", topk_always_renormalized, "sum to 1 although normalize=False"),
    ("topk_router", topk_detached, "no gradient reaches logits"),
    ("topk_router", topk_softmax_over_tokens, "softmax runs over the tokens (dim 0)"),
    ("topk_router", topk_swapped_outputs, "indices has dtype torch.float32, expected torch.long"),
    ("topk_router", topk_ascending, "right but in another order"),
    ("deepseek_router", deepseek_bias_in_weights, "the bias is added to the weights as well"),
    ("deepseek_router", deepseek_bias_ignored, "the bias is ignored when choosing"),
    ("deepseek_router", deepseek_softmax, "softmax replaces the sigmoid"),
    ("deepseek_router", deepseek_no_scaling, "not multiplied by the scaling factor"),
    (
        "sorted_dispatch",
        dispatch_index_assign,
        "each token keeps only one of its K weighted expert outputs",
    ),
    ("sorted_dispatch", dispatch_unweighted, "the combine weights are left out"),
    ("sorted_dispatch", dispatch_modulo_tokens, "taken as order[j] % K"),
    ("sorted_dispatch", dispatch_unsorted_weights, "sorted by expert but the weights are not"),
    ("sorted_dispatch", dispatch_detached_weights, "no gradient reaches routing.weights"),
    ("sorted_dispatch", dispatch_token_loop, "runs the expert once"),
    ("expert_capacity", capacity_floor, "it rounds down (math.floor"),
    ("expert_capacity", capacity_without_k, "top_k is left out"),
    ("expert_capacity", capacity_plain_ceil, "float round-off goes through ceil"),
    ("expert_capacity", capacity_round, "round() does too"),
    ("capacity_keep", keep_token_major, "you queue token by token"),
    ("capacity_keep", keep_off_by_one, "keeps 3 assignments, more than its capacity 2"),
    ("capacity_keep", keep_latest_first, "later tokens win"),
    ("capacity_keep", keep_as_ints, "keep has dtype torch.int64, expected torch.bool"),
    (
        "switch_aux_loss",
        aux_post_topk,
        "P is averaged over the chosen experts' probabilities only (post-top-k)",
    ),
    ("switch_aux_loss", aux_hugging_face_scaling, "Hugging Face's Mixtral scaling"),
    ("switch_aux_loss", aux_without_e, "the factor E is left out"),
    ("switch_aux_loss", aux_per_expert, "one value per expert: sum over the experts"),
    ("switch_aux_loss", aux_f_from_probs, "f is computed from the probabilities"),
    ("switch_aux_loss", aux_straight_through_f, "f must be a count that carries no gradient"),
    (
        "tiny_lm_parameters",
        tiny_no_position,
        "the position embedding (max_seq_len x D) is left out",
    ),
    ("tiny_lm_parameters", tiny_head_counted, "the LM head is counted"),
    ("tiny_lm_parameters", tiny_router_inactive, "the routers are left out of the active count"),
    ("tiny_lm_parameters", tiny_scaled_by_k_over_e, "the whole model is scaled by K/E"),
    ("training_flops_per_token", flops_forward_only, "only the forward pass is counted"),
    ("training_flops_per_token", flops_without_scores, "attention's score term is left out"),
    ("training_flops_per_token", flops_all_keys, "attending all T keys"),
    ("training_flops_per_token", flops_every_expert, "all experts are counted"),
    ("training_flops_per_token", flops_without_head, "the tied LM head is left out"),
    ("mixtral_parameters", mixtral_times_e, "the whole model is copied E times"),
    ("mixtral_parameters", mixtral_full_width_kv, "k and v are counted as wide as q"),
    ("mixtral_parameters", mixtral_active_without_embedding, "'head, no embedding' convention"),
    ("mixtral_parameters", mixtral_ignores_head_dim, "head_dim is taken as D / H"),
    ("experts_touched", touched_no_overlap, "no two tokens are assumed to share an expert"),
    ("experts_touched", touched_with_replacement, "independent draws with replacement"),
    ("all_to_all_bytes", a2a_every_copy, "including those whose expert is on the token's own rank"),
    ("all_to_all_bytes", a2a_one_way, "only one direction is counted"),
    ("all_to_all_bytes", a2a_per_rank, "only one rank's bytes are counted"),
    ("expert_offsets", offsets_by_bincount, "right, but computing them would make a GPU wait"),
    ("expert_offsets", offsets_from_python, "a tensor built from host data"),
    ("expert_offsets", offsets_as_list, "the offsets are a Python list"),
    ("expert_offsets", offsets_ends, "each expert's end is returned instead of its start"),
    ("expert_offsets", offsets_counts_only, "one number per expert; the offsets have E + 1"),
    ("all_to_all_splits", splits_round_robin_experts, "the experts are placed round-robin"),
    ("all_to_all_splits", splits_round_robin_tokens, "the tokens are dealt round-robin"),
    ("all_to_all_splits", splits_received, "the matrix is transposed"),
    ("all_to_all_splits", splits_remote_only, "the diagonal is 0"),
    ("all_to_all_splits", splits_per_token, "tokens are counted instead of token copies"),
    ("group_limited_topk", limited_always_max, "the best expert's (DeepSeek-V2's rule)"),
    ("group_limited_topk", limited_always_sum_of_two, "the sum of the two best (DeepSeek-V3's"),
    ("group_limited_topk", limited_zero_fill, "set to 0 (as Hugging Face's DeepSeek code does)"),
    ("group_limited_topk", limited_interleaved, "the groups are interleaved"),
    ("group_limited_topk", limited_ascending, "right but in another order"),
    ("group_limited_topk", limited_ignored, "the group limit is ignored"),
    (
        "normalized_mutual_information",
        nmi_nan_on_empty_cells,
        "An empty cell of the table gives p·log p = 0·(−inf) = nan",
    ),
    ("normalized_mutual_information", nmi_unnormalized, "returned without normalizing it"),
    ("normalized_mutual_information", nmi_geometric, "the geometric mean √(H(X)·H(Y))"),
    ("normalized_mutual_information", nmi_by_label_entropy, "the label's entropy H(Y) alone"),
    ("normalized_mutual_information", nmi_rows_twice, "come from the same axis of the table"),
    ("normalized_mutual_information", nmi_no_zero_guard, "return 0 when H(X) + H(Y) = 0"),
    ("router_saturation", saturation_positionwise, "compared position by position"),
    ("router_saturation", saturation_against_first, "each snapshot is compared with the first"),
    ("router_saturation", saturation_top1, "only the first choices are compared"),
    ("router_saturation", saturation_any_overlap, "a token counts when it shares any expert"),
    ("router_saturation", saturation_jaccard, "(Jaccard)"),
    ("routing_collapse", collapse_range, "MaxVio is (max − min) / mean"),
    ("routing_collapse", collapse_max_over_mean, "max / mean is 1 + MaxVio"),
    ("routing_collapse", collapse_zeros_only, "only experts with no assignment at all"),
    ("routing_collapse", collapse_line_of_total, "the line is 1% of the total load"),
    ("routing_collapse", collapse_line_of_max, "the line is 1% of the largest load"),
    ("linear_cka", cka_uncentred, "the outputs are not centred"),
    ("linear_cka", cka_not_squared, "||Yᵀ X||_F is not squared"),
    ("linear_cka", cka_rows_centred, "each row (input) is centred over its features"),
    ("linear_cka", cka_flattened_correlation, "the flattened outputs are correlated"),
]


def test_every_checker_has_wrong_versions():
    assert {name for name, _, _ in WRONG} == set(EXERCISES)


@pytest.mark.parametrize(
    ("name", "wrong", "words"), WRONG, ids=[f"{n}-{w.__name__}" for n, w, _ in WRONG]
)
def test_a_wrong_version_is_rejected_with_a_message_that_names_the_mistake(name, wrong, words):
    with pytest.raises(ExerciseError) as failure:
        EXERCISES_CHECKS[name](wrong, reference=solution(name))
    message = str(failure.value)
    assert message.startswith(f"{wrong.__name__} fails check_{name}: case ")
    assert words in message, message


# ----------------------------------------------------------------------------------------------
# The machinery
# ----------------------------------------------------------------------------------------------


def _stub(*args):
    raise NotImplementedError


def test_a_stub_without_reference_is_reported_not_written():
    with pytest.raises(NotImplementedError, match="_stub is not written yet"):
        EXERCISES_CHECKS["expert_capacity"](_stub)


def test_a_result_instead_of_the_function_is_refused():
    with pytest.raises(ExerciseError, match=r"without parentheses after the name"):
        EXERCISES_CHECKS["expert_capacity"](3)


def test_a_failing_reference_is_reported_as_such():
    with pytest.raises(ExerciseError, match="the reference solution capacity_floor fails"):
        EXERCISES_CHECKS["expert_capacity"](_stub, reference=capacity_floor)


def test_not_implemented_after_a_passing_case_is_a_failure_not_a_stub():
    def partial(n_tokens, n_experts, top_k, capacity_factor):
        if n_tokens < 100:
            raise NotImplementedError("small batches")
        return solution("expert_capacity")(n_tokens, n_experts, top_k, capacity_factor)

    with pytest.raises(ExerciseError, match=r"case 2 of 7 .* raised NotImplementedError after"):
        EXERCISES_CHECKS["expert_capacity"](partial, reference=solution("expert_capacity"))


def test_an_exception_in_the_attempt_names_the_case_and_keeps_its_traceback():
    def broken(logits, k, normalize):
        return logits.topk(k, dim=2)

    with pytest.raises(ExerciseError, match=r"case 1 of 5 \(N=12, E=8, K=2") as failure:
        EXERCISES_CHECKS["topk_router"](broken)
    assert isinstance(failure.value.__cause__, IndexError)


def test_checking_leaves_the_random_stream_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    EXERCISES_CHECKS["sorted_dispatch"](solution("sorted_dispatch"))
    assert torch.equal(torch.rand(3), expected)


def test_a_nan_output_is_reported_as_not_finite():
    def nan_ffn(x, w_gate, w_up, w_down):
        return swiglu_geglu(x, w_gate, w_up, w_down) / 0 * 0

    with pytest.raises(ExerciseError, match=r"the output is not finite: nan at \[0, 0\]"):
        EXERCISES_CHECKS["swiglu_ffn"](nan_ffn)


def test_the_checks_run_under_no_grad_too():
    with torch.no_grad():
        EXERCISES_CHECKS["switch_aux_loss"](solution("switch_aux_loss"))


def test_a_registered_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="already registered"):

        @exercise("01_dense_ffn", against="nothing")
        def check_swiglu_ffn(attempt):
            return 0


def test_call_passes_the_result_through():
    assert call(lambda a: a + 1, 1, case="case") == 2


def test_the_routing_used_by_the_dispatch_checker_is_well_formed():
    # the wrong-version detection of the dispatch checker assumes K distinct experts per token
    from moe_lab.exercises.routing import _random_routing

    routing = _random_routing(16, 8, 3, unused_expert=5)
    assert isinstance(routing, RoutingResult)
    assert all(len(set(row.tolist())) == 3 for row in routing.indices)
    assert not (routing.indices == 5).any()
