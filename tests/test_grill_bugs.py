"""The "spot the bug" checkers: each rejects the buggy code, with a reason naming the bug, and
accepts a fix, for two seeds; reader code that fails becomes a graded reason, never a crash."""

from __future__ import annotations

import pytest
import torch

from moe_lab.grill import sandbox
from moe_lab.grill.bank import load_bank
from moe_lab.grill.bugs import check_answer
from moe_lab.grill.grading import grade, make_instance

BUGS = {q.checker: q for q in load_bank() if q.kind == "bug"}

# What the rejection of each question's own buggy code must say: the bug, named.
EXPECTED_REASON = {
    "noise_at_inference": "the noise is still on at inference",
    "top1_renormalized": "every combine weight is exactly 1.0",
    "circulating_snippet": "cannot assign module before Module.__init__() call",
    "expert_choice_decoder": "changed when only the tokens after position",
    "dropped_passthrough": "your layer returns p·x for it",
    "aux_loss_on_topk": "no gradient to the logits of the experts a token did",
    "per_expert_indexing": "zero-filled gradients the full size of a stacked weight",
    "per_rank_balancing_loss": "the mean of the ranks' own losses",
    "nmi_zero_cells": "An empty cell gives p·log p = 0·(−inf) = nan",
    "coactivation_product": "you divide by the product of the two experts' inclusion rates",
}


def test_every_bug_question_has_an_expected_reason():
    assert set(BUGS) == set(EXPECTED_REASON)


@pytest.mark.parametrize("checker", sorted(BUGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_buggy_code_is_rejected_for_the_right_reason(checker, seed):
    correct, message = check_answer(checker, BUGS[checker].code, seed)
    assert correct is False
    assert message.startswith("wrong, because ")
    assert EXPECTED_REASON[checker] in message, message


@pytest.mark.parametrize("checker", sorted(BUGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_the_fix_is_accepted(checker, seed):
    correct, message = check_answer(checker, BUGS[checker].fix, seed)
    assert correct is True, message
    assert message.startswith("right: ")


def test_grade_reports_the_bug_question_through_the_common_path():
    question = BUGS["dropped_passthrough"]
    instance = make_instance(question, 5)
    assert instance.starter_code == question.code and "```python" in instance.prompt
    wrong = grade(instance, question.code)
    assert wrong.correct is False and "A fix." in wrong.explanation
    assert grade(instance, question.fix).correct is True


SNIPPET = BUGS["circulating_snippet"].code
WITH_INIT = SNIPPET.replace(
    "def __init__(self, d_model, num_experts, top_k=2):\n",
    "def __init__(self, d_model, num_experts, top_k=2):\n        super().__init__()\n",
)
# The usual "quick fix" of the tensor index: the first token's choice, for the whole batch.
QUICK_FIX = WITH_INIT.replace("top_k_indices[i]", "top_k_indices[0, i]").replace(
    "top_k_scores[i]", "top_k_scores[:, i : i + 1]"
)
PER_TOKEN_RAW_SCORES = WITH_INIT.replace(
    """        output = torch.zeros_like(x)
        for i in range(self.top_k):
            expert_output = self.experts[top_k_indices[i]](x)
            output += top_k_scores[i] * expert_output
""",
    """        output = torch.zeros_like(x)
        for n in range(x.shape[0]):
            for i in range(self.top_k):
                expert = self.experts[int(top_k_indices[n, i])]
                output[n] += top_k_scores[n, i] * expert(x[n : n + 1])[0]
""",
)
SWITCH_STYLE = PER_TOKEN_RAW_SCORES.replace(
    "gate_scores = self.gate(x)", "gate_scores = self.gate(x).softmax(dim=-1)"
)


def test_the_snippet_bugs_are_found_one_after_another():
    # super().__init__() added: the batch-dimension index fails on a batch of tokens
    correct, message = check_answer("circulating_snippet", WITH_INIT, 0)
    assert not correct and "calling your layer raised" in message
    # the "quick fix": every token runs through the experts the first token chose
    correct, message = check_answer("circulating_snippet", QUICK_FIX, 0)
    assert not correct and "changes with its batch-mates" in message
    # per-token routing, but raw logits as weights
    correct, message = check_answer("circulating_snippet", PER_TOKEN_RAW_SCORES, 0)
    assert not correct and "raw gate scores" in message
    # softmax without renormalization (Switch / Qwen1.5 style) is a correct MoE layer too
    correct, message = check_answer("circulating_snippet", SWITCH_STYLE, 0)
    assert correct and "not renormalized" in message, message


PER_RANK = BUGS["per_rank_balancing_loss"]


def test_averaging_f_and_p_over_ranks_is_right_only_for_equal_ranks():
    # the ranks' f and P averaged with equal weights: exact at equal sizes, not at 8, 24, 16, 12
    code = """
def balancing_loss(rank_probs, rank_indices):
    E = rank_probs[0].shape[1]
    f = torch.stack([torch.bincount(i.flatten(), minlength=E) / i.numel() for i in rank_indices])
    P = torch.stack([p.mean(0) for p in rank_probs])
    return E * (f.mean(0) * P.mean(0)).sum()
"""
    correct, message = check_answer("per_rank_balancing_loss", code, 0)
    assert not correct and "4 ranks holding 8, 24, 16 and 12 tokens" in message
    assert "averages f and P over the ranks with equal weights" in message


def test_a_global_loss_without_gradient_is_rejected():
    code = PER_RANK.fix.replace("probs.sum(dim=0) for probs", "probs.detach().sum(dim=0) for probs")
    correct, message = check_answer("per_rank_balancing_loss", code, 1)
    assert not correct and "carries no gradient to the router" in message


def test_gathering_every_rank_s_tokens_is_also_right():
    # concatenating the ranks' tensors (an all-gather) gives the same loss, at more traffic
    code = """
def balancing_loss(rank_probs, rank_indices):
    probs, indices = torch.cat(rank_probs), torch.cat(rank_indices)
    E = probs.shape[1]
    f = torch.bincount(indices.flatten(), minlength=E) / indices.numel()
    return E * (f * probs.mean(0)).sum()
"""
    assert check_answer("per_rank_balancing_loss", code, 0)[0]


def test_a_batched_fix_of_the_indexing_bug_is_accepted():
    padded = """
def moe_forward(x, indices, weights, w_gate, w_up, w_down):
    # every expert on every token, one batched product each; zero weight where not routed
    E = w_up.shape[0]
    combine = torch.zeros(x.shape[0], E).scatter_add(1, indices, weights)   # (N, E)
    xs = x.expand(E, -1, -1)                                                 # (E, N, D)
    hidden = F.silu(torch.bmm(xs, w_gate)) * torch.bmm(xs, w_up)             # (E, N, F)
    return torch.einsum("ne,end->nd", combine, torch.bmm(hidden, w_down))
"""
    correct, message = check_answer("per_expert_indexing", padded, 0)
    assert correct, message


def test_index_select_per_expert_is_the_same_bug():
    code = BUGS["per_expert_indexing"].code.replace(
        "w_gate[e]", "w_gate.index_select(0, torch.tensor([e]))[0]"
    )
    correct, message = check_answer("per_expert_indexing", code, 0)
    assert not correct and "zero-filled" in message


NMI = BUGS["nmi_zero_cells"]


def test_nmi_with_xlogy_is_also_right():
    code = NMI.code
    for p in ("p_expert", "p_label", "p"):
        code = code.replace(f"-({p} * {p}.log()).sum()", f"-torch.xlogy({p}, {p}).sum()")
    assert "log()" not in code
    correct, message = check_answer("nmi_zero_cells", code, 1)
    assert correct, message


def test_nmi_with_another_normalization_is_wrong_with_both_values():
    # the geometric mean sqrt(H(X) H(Y)) is another NMI in the literature, not the one asked for
    code = NMI.fix.replace(
        "float(2 * mutual_information / (h_expert + h_label))",
        "float(mutual_information / (h_expert * h_label).sqrt())",
    )
    correct, message = check_answer("nmi_zero_cells", code, 0)
    assert not correct and "moe_lab's normalized_mutual_information is" in message, message


def test_the_nmi_checker_compares_values_not_only_finiteness():
    # a constant 1 is finite and right for the label-copying table (I = H(X) = H(Y): 2H / 2H),
    # but the first, dense table's NMI is far from 1
    code = "def nmi(table):\n    return 1.0\n"
    correct, message = check_answer("nmi_zero_cells", code, 0)
    assert not correct and "with an 8 x 4 table with no empty cell, your nmi is 1" in message


COACTIVATION = BUGS["coactivation_product"]


def test_the_one_line_fix_of_the_coactivation_reference_is_accepted():
    # only the reference changes; the float32 counts of the buggy code stay
    code = COACTIVATION.code.replace(
        "rates[:, None] * rates[None, :]", "independent_pair_shares(rates, top_k)"
    )
    for seed in (0, 1):
        correct, message = check_answer("coactivation_product", code, seed)
        assert correct, message


def test_uniform_pairs_read_a_lift_of_one_off_the_diagonal():
    # every pair of 8 experts chosen 3 times by 84 tokens: each pair's share is 3/84 = 1/28,
    # the independent uniform share C(6, 0)/C(8, 2) = 1/28, so every off-diagonal lift is 1
    from moe_lab.grill.bugs_specialization import _reference_lift

    indices = torch.combinations(torch.arange(8), 2).repeat(3, 1)  # (84, 2)
    lift = _reference_lift(indices, 8)
    off = ~torch.eye(8, dtype=torch.bool)
    assert torch.allclose(lift[off], torch.ones(56, dtype=torch.float64), atol=1e-9)


def test_a_lift_against_uniform_routing_fails_on_uneven_loads():
    # right at uniform loads, wrong once the loads are uneven: the reference must follow the loads
    code = COACTIVATION.code.replace(
        "rates[:, None] * rates[None, :]",
        "torch.full((n_experts, n_experts), top_k * (top_k - 1) / (n_experts * (n_experts - 1)))",
    )
    correct, message = check_answer("coactivation_product", code, 0)
    assert not correct and "top-2 of 8 with uneven loads" in message, message


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("", "the answer is empty"),
        ("def switch_route(x, w_gate)\n    return x", "does not parse: expected ':' (your line 1)"),
        ("x = 1 / 0", "running your code raised ZeroDivisionError: division by zero (your line 1)"),
        ("def route(x, w_gate):\n    return x", "does not define `switch_route`"),
        (
            "def switch_route(x, w_gate):\n    probs = x @ w_gate\n    return probs",
            "calling your `switch_route` raised RuntimeError",
        ),
        ("def switch_route(x, w_gate):\n    return x.sum(), 3", "is a int, not a torch.Tensor"),
        (
            "def switch_route(x, w_gate):\n    e = torch.zeros(x.shape[0])\n    return e, e[:5]",
            "has shape (5,), expected (48,)",
        ),
    ],
)
def test_reader_failures_become_reasons(code, reason):
    correct, message = check_answer("top1_renormalized", code, 0)
    assert correct is False and message.startswith("wrong, because")
    assert reason in message, message


def test_an_endless_loop_is_stopped(monkeypatch):
    monkeypatch.setattr(sandbox, "TIME_LIMIT_SECONDS", 0.5)
    code = "def switch_route(x, w_gate):\n    while True:\n        pass\n"
    correct, message = check_answer("top1_renormalized", code, 0)
    assert correct is False and "ran longer than 0.5 s" in message


def test_reader_code_leaves_the_random_state_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    code = BUGS["noise_at_inference"].fix + "\ntorch.manual_seed(0)\n_ = torch.randn(100)\n"
    assert check_answer("noise_at_inference", code, 0)[0]
    assert torch.equal(torch.get_rng_state(), before)


def test_reader_code_runs_in_its_own_namespace():
    # the answer sees torch, nn, F, math and what the question provides, not the grill's names
    code = "def switch_route(x, w_gate):\n    return CHECKERS, load_answer\n"
    correct, message = check_answer("top1_renormalized", code, 0)
    assert not correct and "NameError: name 'CHECKERS' is not defined (your line 2)" in message
    # rebinding a name inside the answer breaks only the answer, not the next grading
    code = BUGS["noise_at_inference"].fix + "\ntorch = None\n"
    correct, message = check_answer("noise_at_inference", code, 0)
    assert not correct and "NoneType" in message
    assert check_answer("noise_at_inference", BUGS["noise_at_inference"].fix, 0)[0]


def test_unknown_checker_is_a_programming_error():
    with pytest.raises(ValueError, match="bug checker 'nope' is unknown"):
        check_answer("nope", "x = 1", 0)
