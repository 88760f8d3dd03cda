"""Integrity of the grill's question bank: size, coverage, links to real notebook sections,
the circulating snippet exactly as quoted, seeded selection, and loud errors on bad files."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from moe_lab.grill.bank import BankError, load_bank, load_topic, sample_across_topics, select
from moe_lab.grill.question import TOPICS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
BANK = load_bank()

# The snippet exactly as issue 13 quotes it ("circulates as an interview answer exactly as written").
CIRCULATING_SNIPPET = """class MoELayer(nn.Module):
    def __init__(self, d_model, num_experts, top_k=2):
        self.experts = nn.ModuleList([FFN(d_model) for _ in range(num_experts)])
        self.gate = nn.Linear(d_model, num_experts)
        self.top_k = top_k

    def forward(self, x):
        gate_scores = self.gate(x)
        top_k_scores, top_k_indices = torch.topk(gate_scores, self.top_k)

        output = torch.zeros_like(x)
        for i in range(self.top_k):
            expert_output = self.experts[top_k_indices[i]](x)
            output += top_k_scores[i] * expert_output

        return output
"""

# Every topic issue 13 requires a correct model answer for, and the question(s) that answer it.
REQUIRED_COVERAGE = {
    "what MoE is and its advantages": ["routing-what-is-moe"],
    "total vs active parameters": ["budgets-total-vs-active", "budgets-conventions"],
    "the routing mechanism": ["routing-mechanism", "routing-softmax-order"],
    "load balancing and why it matters": ["balancing-why", "balancing-aux-loss"],
    "training instability and router collapse": ["training-instability", "training-collapse"],
    "how to prevent collapse": ["training-prevent-collapse", "training-three-collapses"],
    "expert parallelism and its communication": [
        "scaling-expert-parallelism",
        "scaling-all-to-all-cost",
    ],
    "why MoE helps less for small models": ["budgets-small-models"],
    "number vs size of experts": ["scaling-number-vs-size", "scaling-shared-experts"],
    "fine-tuning MoEs (ST-MoE)": ["training-finetuning"],
    "when MoE is worth the complexity": ["budgets-worth-it"],
    "multi-tenant MoE serving": ["budgets-multitenant-serving"],
    "load-balancing strategies in production": ["balancing-production-strategies"],
    "hash routing and expert choice": ["routing-hash", "routing-expert-choice"],
    # notebook 07 (GPU and scaling)
    "the dispatch ladder and its costs": [
        "scaling-dispatch-implementations",
        "scaling-dispatch-ladder-costs",
        "scaling-ladder-flops",
    ],
    "host synchronizations on a GPU": ["scaling-host-syncs", "scaling-host-sync-count"],
    "expert parallelism's communication volume": [
        "scaling-all-to-all-backward",
        "scaling-all-to-all-bytes",
        "scaling-ep-rank-bytes",
    ],
    "stragglers under expert parallelism": ["scaling-straggler", "scaling-useful-fraction"],
    "memory per device under expert parallelism": [
        "scaling-ep-memory",
        "scaling-ep-memory-per-device",
    ],
    "capacity and balancing losses under expert parallelism": [
        "scaling-ep-capacity-groups",
        "scaling-bug-per-rank-balancing-loss",
    ],
    "DeepSeek's group-limited routing": ["scaling-group-limited-routing", "scaling-groups-touched"],
    # notebook 05 (specialization and collapse)
    "the domain-expert myth and the published routing analyses": [
        "myth-domain-experts",
        "routing-specialization-findings",
        "routing-measure-specialization",
        "routing-nmi-value",
        "routing-bug-nmi-empty-cells",
    ],
    "the three collapses and their cures": [
        "training-three-collapses",
        "myth-collapse-similar-experts",
        "myth-balanced-load-healthy",
        "training-dead-experts-value",
    ],
    "router saturation": ["training-router-saturation", "training-saturation-value"],
    "consecutive-token routing": ["routing-consecutive-tokens", "routing-consecutive-expected"],
    "co-activation against independence": [
        "routing-coactivation",
        "routing-pair-share",
        "routing-bug-coactivation-product",
    ],
    "expert ablation vs correlational tables": ["routing-expert-ablation"],
    "Switch, GLaM, Mixtral, DeepSeek-V3 facts": [
        "scaling-facts-switch",
        "scaling-facts-glam",
        "scaling-facts-mixtral",
        "scaling-facts-deepseek-v3",
    ],
}
REQUIRED_MYTHS = [
    "myth-domain-experts",
    "myth-mixtral-56b",
    "myth-2x-params-1.2x-cost",
    "myth-glam-third-compute",
    "myth-moe-faster",
    "myth-lower-latency",
    "myth-saves-memory",
    "myth-hash-balanced",
    "myth-switch-200b-active",
    "myth-gpt4-moe-public",
    "myth-palm2-moe-public",
    "myth-gating-bottleneck",
]
# Issue 13's "spot the bug" list, by checker.
REQUIRED_BUGS = {
    "noise_at_inference",
    "dropped_passthrough",
    "aux_loss_on_topk",
    "top1_renormalized",
    "per_expert_indexing",
    "expert_choice_decoder",
    "circulating_snippet",
    "per_rank_balancing_loss",  # notebook 07: a balancing loss averaged over ranks
    "nmi_zero_cells",  # notebook 05: 0 log 0 = nan in an NMI
    "coactivation_product",  # notebook 05: co-activation against the product of the rates
}
# Issue 13's numeric examples, by generator.
REQUIRED_NUMERIC = {
    "capacity",  # capacity ...
    "dropped_tokens",  # ... and dropped assignments
    "aux_loss",  # the Switch auxiliary loss for a given routing
    "model_total",  # total and active parameters of a config
    "model_active",
    "moe_layer_params",
    "experts_touched",  # experts touched by a batch of B tokens
    "all_to_all",  # all-to-all bytes per layer
    "kv_cache",  # KV-cache memory ...
    "weight_memory",  # ... and weight memory
    "flops_per_token",  # FLOPs per token
    # notebook 07
    "ladder_flops",
    "host_syncs",
    "ep_rank_bytes",
    "ep_memory_per_device",
    "groups_touched",
    # notebook 05
    "nmi",
    "consecutive_expected",
    "saturation",
    "dead_experts",
    "pair_share",
}


def headings(notebook: str) -> set[str]:
    """Every Markdown heading of notebooks/<notebook>.py, without its # marks."""
    text = (NOTEBOOKS / f"{notebook}.py").read_text(encoding="utf-8")
    return set(re.findall(r"^# #+ (.+?)\s*$", text, flags=re.M))


def test_bank_has_at_least_60_questions_in_every_topic():
    counts = Counter(q.topic for q in BANK)
    assert len(BANK) >= 60
    assert set(counts) == set(TOPICS)
    assert all(count >= 8 for count in counts.values()), counts


def test_one_file_per_topic():
    files = sorted(
        p.stem for p in (Path(__file__).parents[1] / "moe_lab/grill/questions").glob("*.toml")
    )
    assert files == sorted(TOPICS)


def test_every_question_links_to_an_existing_section():
    # (an empty answer, an unknown difficulty, a duplicate id, an unknown generator or checker:
    # the bank refuses to load them, tested in test_malformed_questions_are_named and below)
    for q in BANK:
        path = NOTEBOOKS / f"{q.link.notebook}.py"
        assert path.is_file(), f"{q.id}: {path} does not exist"
        assert q.link.section in headings(q.link.notebook), (
            f"{q.id}: no heading {q.link.section!r} in {path.name}"
        )


def test_scaling_questions_demonstrated_in_notebook_07_link_there():
    # notebook 07 runs expert parallelism, the dispatch ladder and group-limited routing live
    by_id = {q.id: q for q in BANK}
    for question_id in (
        "scaling-expert-parallelism",
        "scaling-all-to-all-cost",
        "scaling-all-to-all-bytes",
        "scaling-dispatch-implementations",
        "scaling-straggler",
        "scaling-useful-fraction",
        "scaling-bug-per-expert-indexing",
    ):
        assert by_id[question_id].link.notebook == "07_gpu_and_scaling", question_id
    from_07 = [q for q in BANK if q.link.notebook == "07_gpu_and_scaling"]
    assert len(from_07) >= 15 and {q.kind for q in from_07} == {"recall", "numeric", "bug"}


def test_questions_demonstrated_in_notebook_05_link_there():
    # notebook 05 measures specialization, the three collapses and the collapse lab live
    by_id = {q.id: q for q in BANK}
    for question_id in (
        "training-collapse",
        "training-prevent-collapse",
        "training-three-collapses",
        "training-aux-weight",
        "myth-domain-experts",
    ):
        assert by_id[question_id].link.notebook == "05_specialization", question_id
    from_05 = [q for q in BANK if q.link.notebook == "05_specialization"]
    assert len(from_05) >= 15 and {q.kind for q in from_05} == {
        "recall",
        "numeric",
        "bug",
        "verdict",
    }


def test_the_heading_check_would_catch_a_wrong_section():
    # The link check compares exact text: a near-miss is not a heading.
    assert "5. The Switch auxiliary loss, derived" in headings("03_load_balancing")
    assert "5. The Switch auxiliary loss derived" not in headings("03_load_balancing")


def test_ids_are_unique_and_prefixed_by_their_topic():
    prefix = {"myths": "myth-"}
    for q in BANK:
        assert q.id.startswith(prefix.get(q.topic, f"{q.topic}-")), q.id


def test_every_required_topic_is_covered():
    ids = {q.id for q in BANK}
    for topic, needed in REQUIRED_COVERAGE.items():
        missing = [i for i in needed if i not in ids]
        assert not missing, f"{topic}: missing {missing}"


def test_myths_have_a_verdict_and_sources():
    myths = {q.id: q for q in BANK if q.topic == "myths"}
    assert set(REQUIRED_MYTHS) <= set(myths)
    for q in myths.values():
        assert q.kind == "verdict", q.id


def test_factual_questions_cite_their_sources():
    for q in BANK:
        if q.kind in ("recall", "verdict") and q.topic in ("scaling", "myths", "training"):
            assert q.sources, f"{q.id} states facts without a source"


def test_every_required_bug_and_numeric_question_exists():
    checkers = {q.checker for q in BANK if q.kind == "bug"}
    generators = {q.generator for q in BANK if q.kind == "numeric"}
    assert REQUIRED_BUGS <= checkers
    assert REQUIRED_NUMERIC <= generators


def test_the_circulating_snippet_is_stored_exactly_as_quoted():
    (q,) = [q for q in BANK if q.checker == "circulating_snippet"]
    assert q.code == CIRCULATING_SNIPPET


def test_notebook_02_shows_the_circulating_snippet_word_for_word():
    """Notebook 02, section 3 shows the snippet as a Markdown code block (indented by four
    spaces) before it runs the bank's copy; the two must be the same text."""
    lines = (NOTEBOOKS / "02_routing.py").read_text().splitlines()
    start = lines.index("#     class MoELayer(nn.Module):")
    block = []
    for line in lines[start:]:
        if not (line.startswith("#     ") or line == "#"):
            break
        block.append(line[len("#     ") :])  # "#" (a blank line of the snippet) gives ""
    assert "\n".join(block).strip("\n") + "\n" == CIRCULATING_SNIPPET


def test_select_is_seeded_and_filters():
    first = [q.id for q in select(BANK, seed=4)]
    assert first == [q.id for q in select(BANK, seed=4)]
    assert first != [q.id for q in select(BANK, seed=5)]
    assert sorted(first) == sorted(q.id for q in BANK)
    hard = select(BANK, difficulty="hard", n=5, seed=1)
    assert len(hard) == 5 and all(q.difficulty == "hard" for q in hard)
    myths = select(BANK, topic="myths")
    assert {q.topic for q in myths} == {"myths"}
    sample = sample_across_topics(BANK, per_topic=2, seed=0)
    assert [q.topic for q in sample] == [t for t in TOPICS for _ in range(2)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": "gpu"}, "unknown topic 'gpu'"),
        ({"difficulty": "brutal"}, "unknown difficulty 'brutal'"),
        ({"n": 0}, "n=0 must be a positive integer"),
    ],
)
def test_select_rejects_bad_filters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select(BANK, **kwargs)


def _write(tmp_path: Path, topic: str, body: str) -> Path:
    path = tmp_path / f"{topic}.toml"
    path.write_text(body, encoding="utf-8")
    return path


GOOD = """
[[question]]
id = "routing-x"
kind = "recall"
difficulty = "easy"
prompt = "Q?"
answer = "A."
link = { notebook = "02_routing", section = "1. A router from scratch" }
"""


def test_a_well_formed_file_loads(tmp_path):
    (q,) = load_topic(_write(tmp_path, "routing", GOOD))
    assert q.topic == "routing" and q.link.section == "1. A router from scratch"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (GOOD.replace('kind = "recall"', 'kind = "essay"'), "kind 'essay' is not one of"),
        (GOOD + 'colour = "red"\n', r"unknown key\(s\) \['colour'\]"),
        (GOOD.replace('link = { notebook = "02_routing", section', "link = { page"), "link must"),
        (GOOD.replace('kind = "recall"', 'kind = "numeric"\ngenerator = "nope"'), "no numeric"),
        (GOOD.replace('answer = "A."', 'answer = "  "'), "model answer is empty"),
        (GOOD.replace('kind = "recall"', 'kind = "verdict"'), "a verdict is required"),
        ("[[question]\n", "routing.toml"),
    ],
)
def test_malformed_questions_are_named(tmp_path, body, message):
    with pytest.raises(BankError, match=message):
        load_topic(_write(tmp_path, "routing", body))


def test_a_file_must_be_named_after_a_topic(tmp_path):
    with pytest.raises(BankError, match="'sharding' is not a topic"):
        load_topic(_write(tmp_path, "sharding", GOOD))


def test_duplicate_ids_across_files_are_rejected(tmp_path):
    for topic in TOPICS:
        _write(tmp_path, topic, GOOD.replace("routing-x", "same-id") if topic == "routing" else "")
    _write(tmp_path, "myths", GOOD.replace("routing-x", "same-id"))
    with pytest.raises(BankError, match="'same-id' appears twice"):
        load_bank(tmp_path)
