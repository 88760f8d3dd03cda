# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · The interview grill: questions graded by the library
#
# **After this notebook you can**
# - answer the MoE questions interviews ask (routing, balancing and capacity, training and collapse, budgets and serving, scaling and parallelism) with answers that hold up to follow-ups, each linked to the cell of the course that demonstrates it;
# - compute the numbers interviews ask for (capacity and drops, the auxiliary loss, total and active parameters, experts touched, all-to-all bytes, KV cache and weight memory, FLOPs per token) and check them against `moe_lab`;
# - find and fix the bugs of MoE code that circulates, with your fix run against the library;
# - give a verdict and the evidence on the myths popular explainers repeat;
# - practise with the `Grill` widget in Jupyter and with `moe-lab grill` in a terminal.
#
# **Time**: about 30 minutes to read, then as long as you like practising. The notebook runs in about 20 seconds on 2 CPU cores.
#
# The MoE "interview grills" that circulate are static lists of questions with model answers, several of them wrong. This one is graded: numeric questions are drawn from a seed and answered by the library's own functions, "spot the bug" answers are run against the library on random inputs, and every answer names the notebook section that demonstrates it. The questions live in `moe_lab/grill/questions/`, one TOML file per topic.

# %%
import contextlib
import io
import math
import platform
import re
import sys
from collections import Counter
from pathlib import Path

import torch
from IPython.display import Markdown, display

import moe_lab
from moe_lab.budget import (
    PRESETS,
    all_to_all_bytes,
    count_parameters,
    decode_step_bytes,
    forward_flops_per_token,
    from_hf_config,
    weight_bytes,
)
from moe_lab.cli import main as moe_lab_cli
from moe_lab.grill import TOPICS, Grill, grade, load_bank, make_instance, select
from moe_lab.grill.bugs import check_answer
from moe_lab.grill.grading import instance_seed

SEED = 8
torch.manual_seed(SEED)
torch.set_num_threads(1)  # small tensors; one thread keeps a shared CPU calm
print(f"python {platform.python_version()} | torch {torch.__version__} | moe_lab {moe_lab.__version__}")

# %% [markdown]
# ## 1. The bank: six topics, four kinds of question
#
# | kind | you answer | graded by |
# |---|---|---|
# | `recall` | in your head, then reveal | you: mark whether you had it |
# | `verdict` | true, partly or false, about a popular claim | the bank's verdict; the evidence follows |
# | `numeric` | a number, drawn from a seed | the library's own computation, within a stated tolerance |
# | `bug` | corrected code | your code run against the library on random inputs |
#
# Every question has a model answer (the reasoning, not only the result), a difficulty, the sources of its facts (paper and section or table, model card) and a link to the notebook section that demonstrates it.
# **Claims**: the bank holds at least 60 questions across the six topics, and every link names a heading that exists in its notebook's source.

# %%
bank = load_bank()
counts = Counter((q.topic, q.kind) for q in bank)
kinds = ("recall", "verdict", "numeric", "bug")
rows = ["| topic | " + " | ".join(kinds) + " | total |", "|---|" + "---|" * (len(kinds) + 1)]
for topic, title in TOPICS.items():
    cells = [counts[(topic, kind)] for kind in kinds]
    rows.append(f"| {title} | " + " | ".join(str(c) for c in cells) + f" | {sum(cells)} |")
rows.append("| **all** | " + " | ".join(str(sum(counts[(t, k)] for t in TOPICS)) for k in kinds) + f" | **{len(bank)}** |")
display(Markdown("\n".join(rows)))

notebook_dir = Path(moe_lab.__file__).resolve().parents[1] / "notebooks"


def headings(stem):
    return set(re.findall(r"^# #+ (.+?)\s*$", (notebook_dir / f"{stem}.py").read_text(), flags=re.M))


missing = [q.id for q in bank if q.link.section not in headings(q.link.notebook)]
print(f"{len(bank)} questions; links checked against {len({q.link.notebook for q in bank})} notebooks; missing: {missing}")
assert len(bank) >= 60 and {q.topic for q in bank} == set(TOPICS) and not missing

# %% [markdown]
# ## 2. A seeded sample, answered and graded
#
# Two questions per topic, in the order seed 8 gives them: the first graded question (numeric, verdict or bug) and the first recall question of each topic (the myths are all verdicts). Each is asked exactly as the widget and the terminal ask it (numeric questions with their drawn numbers), then answered twice, once right and once wrong, through the one grading function both interfaces use, `moe_lab.grill.grade`. Recall questions show their model answer.
# **Claims**: every right answer is graded right, every wrong one wrong with a reason; no answer is graded by anything but the library.

# %%
def right_and_wrong(question, instance):
    """(a right answer, a wrong answer) for a graded question, built from the bank itself."""
    if question.kind == "numeric":
        return f"{instance.case.value:.6g}", f"{instance.case.value * 3 + 1:.6g}"
    if question.kind == "verdict":
        return question.verdict, "true" if question.verdict != "true" else "false"
    return question.fix, question.code  # bug: the fix, and the buggy code as it stands


sample = []
for topic in TOPICS:
    order = select(bank, topic=topic, seed=SEED)
    graded = [q for q in order if q.kind != "recall"]
    recall = [q for q in order if q.kind == "recall"]
    sample += graded[:1] + recall[:1] if recall else graded[:2]
outcomes = []
for question in sample:
    instance = make_instance(question, instance_seed(SEED, question.id))
    display(Markdown(f"---\n**{TOPICS[question.topic]} · {question.difficulty} · {question.kind}** (`{question.id}`)\n\n{instance.prompt}"))
    if question.kind == "recall":
        revealed = grade(instance, None)
        display(Markdown(f"<details><summary>Model answer</summary>\n\n{revealed.explanation}\n</details>"))
        continue
    right, wrong = right_and_wrong(question, instance)
    graded_right, graded_wrong = grade(instance, right), grade(instance, wrong)
    outcomes.append((question.id, graded_right.correct, graded_wrong.correct))
    display(Markdown(f"*answering right:* {graded_right.message}\n\n*answering wrong:* {graded_wrong.message}"
                     f"\n\n<details><summary>Model answer</summary>\n\n{graded_right.explanation}\n</details>"))
print(f"{len(sample)} questions, {len(outcomes)} graded by the library:", outcomes)
assert len(sample) == 2 * len(TOPICS) and len(outcomes) == len(TOPICS) + 1
assert all(right is True and wrong is False for _, right, wrong in outcomes)

# %% [markdown]
# The numeric answers above come from the library; `tests/test_grill_numeric.py` checks every generator against a computation written out by hand, for several seeds. One of them here, the expert capacity, by hand: `C = ceil(cf · N · K / E)`.

# %%
capacity_question = next(q for q in bank if q.generator == "capacity")
case = make_instance(capacity_question, instance_seed(SEED, capacity_question.id)).case
p = case.params
by_hand = math.ceil(p["cf"] * p["N"] * p["K"] / p["E"] - 1e-9)
print(case.prompt)
print(f"by hand: ceil({p['cf']} · {p['N']} · {p['K']} / {p['E']}) = {by_hand}; the library: {case.value}")
assert by_hand == case.value

# %% [markdown]
# ## 3. Spot the bug: the snippet that circulates
#
# This MoE layer circulates as an interview answer, word for word (it is stored in the bank exactly as it circulates). Notebook 02, section 3 takes a tidied-up version apart; here the literal text goes through the grill, and each fix is graded in turn: first as it stands, then with `super().__init__()`, then with the usual "quick fix" of the tensor index, then routing each token by its own choices but still with raw scores, and finally a correct version.

# %%
snippet_question = next(q for q in bank if q.checker == "circulating_snippet")
print(snippet_question.code)

with_init = snippet_question.code.replace(
    "top_k=2):\n", "top_k=2):\n        super().__init__()\n", 1)
quick_fix = with_init.replace("top_k_indices[i]", "top_k_indices[0, i]").replace(
    "top_k_scores[i]", "top_k_scores[:, i : i + 1]")
per_token_raw = with_init.replace(
    """        for i in range(self.top_k):
            expert_output = self.experts[top_k_indices[i]](x)
            output += top_k_scores[i] * expert_output
""",
    """        for n in range(x.shape[0]):
            for i in range(self.top_k):
                expert = self.experts[int(top_k_indices[n, i])]
                output[n] += top_k_scores[n, i] * expert(x[n : n + 1])[0]
""")
attempts = {"as it circulates": snippet_question.code, "+ super().__init__()": with_init,
            "+ the quick fix of the index": quick_fix, "+ per-token routing, raw scores": per_token_raw,
            "the fix in the bank": snippet_question.fix}
verdicts = {}
for label, code in attempts.items():
    verdicts[label], message = check_answer("circulating_snippet", code, seed=SEED)
    print(f"{label:32s} {message}\n")
assert list(verdicts.values()) == [False, False, False, False, True]

# %% [markdown]
# Four bugs, found one after another: no `super().__init__()`; `top_k_indices[i]` indexes the batch dimension (token i's choices) where the k dimension was meant; the quick fix then runs every token through the experts one token chose; and the weights are raw logits, with no softmax. The grader compares with `moe_lab.MoELayer` carrying the same weights, token by token and together, gradients included, and accepts either weighting convention (renormalized as in Mixtral, or not, as in Switch and Qwen1.5-MoE).
#
# ## 4. The myths, with verdicts and evidence
#
# Every myth in the bank, its verdict and where the evidence is. The ones demonstrated in earlier notebooks link there; the rest are measured or sourced in the subsections below.

# %%
myths = [q for q in bank if q.topic == "myths"]
table = ["| claim | verdict | evidence |", "|---|---|---|"]
for q in myths:
    table.append(f"| {q.prompt.strip()} | **{q.verdict}** | `{q.link.notebook}`, {q.link.section} |")
display(Markdown("\n".join(table)))
assert all(q.kind == "verdict" for q in myths) and len(myths) >= 12

# %% [markdown]
# ### Experts specialize by domain
#
# **Verdict: false as stated.** Mixtral's routing analysis (Jiang et al. 2024, section 5) found "no obvious patterns in the assignment of experts based on the topic": ArXiv, PubMed and PhilPapers documents get very similar expert distributions, and only the synthetic DM Mathematics set differs, marginally; what it does find is syntactic structure (`self` in Python, consecutive tokens sharing experts). ST-MoE (Zoph et al. 2022, section 7) found encoder experts for punctuation, verbs, proper names, numbers and sentinel tokens, little specialization in the decoder, and no specialization by language in a multilingual model. OLMoE (Muennighoff et al. 2024) reports more specialization in its model, some of it by data domain. Specialization is mostly by token type. Notebook 05 measures it against ground truth: the course corpus labels every byte with its domain and its character class, and in the course's tiny model the routing follows the character class more than the domain in every block of every seed (section 4, "Specialization, measured"), no expert takes most of the code, english or records text, and removing an expert hurts one character class across all domains (section 5). Given the byte, the domain still adds some information, more in later blocks: context refines token-level routing; it does not make departments.
#
# ### 2x parameters = 1.2x cost
#
# **Verdict: false as a rule**: "cost" is several different quantities, and each moves differently when an MoE's experts are doubled. Mixtral 8x7B against the same model with 16 experts, all computed by `moe_lab.budget`:

# %%
mixtral_config = PRESETS["Mixtral-8x7B"].config
eight, sixteen = from_hf_config(mixtral_config), from_hf_config({**mixtral_config, "num_local_experts": 16})
ratios = {
    "parameters": count_parameters(sixteen).total() / count_parameters(eight).total(),
    "FLOPs per token": forward_flops_per_token(sixteen, 1).total / forward_flops_per_token(eight, 1).total,
    "weight memory (bf16)": weight_bytes(sixteen) / weight_bytes(eight),
    "bytes read per decode step, B=1": decode_step_bytes(sixteen, 1)["total"] / decode_step_bytes(eight, 1)["total"],
    "bytes read per decode step, B=8": decode_step_bytes(sixteen, 8)["total"] / decode_step_bytes(eight, 8)["total"],
    "bytes read per decode step, B=64": decode_step_bytes(sixteen, 64)["total"] / decode_step_bytes(eight, 64)["total"],
    "all-to-all bytes per MoE layer": all_to_all_bytes(sixteen, 4096, 8)["total"] / all_to_all_bytes(eight, 4096, 8)["total"],
}
for name, ratio in ratios.items():
    print(f"{name:34s} x{ratio:.3f}")
display(Markdown(
    f"Doubling the experts multiplies the parameters by {ratios['parameters']:.2f}, the FLOPs per token by"
    f" {ratios['FLOPs per token']:.4f}, the bytes a decoding step reads by {ratios['bytes read per decode step, B=1']:.2f}"
    f" at batch 1 but {ratios['bytes read per decode step, B=64']:.2f} at batch 64, and the all-to-all traffic by"
    f" {ratios['all-to-all bytes per MoE layer']:.2f}. No single ratio, and none of them is 1.2."))
assert ratios["FLOPs per token"] < 1.001 and ratios["all-to-all bytes per MoE layer"] == 1.0
assert ratios["weight memory (bf16)"] > 1.9 and ratios["bytes read per decode step, B=1"] < 1.001
assert ratios["bytes read per decode step, B=64"] > 1.9

# %% [markdown]
# ### GLaM matched GPT-3 with a third of the compute
#
# **Verdict: partly.** The GLaM paper (Du et al. 2022, abstract) claims that its 1.2T-parameter model "consumes only 1/3 of the energy used to train GPT-3 and requires half of the computation flops for inference", with better average zero- and one-shot results over 29 tasks. Energy is not compute. With the usual 6 × (active parameters) × (tokens) for training FLOPs, from the papers' own figures (GLaM: 96.6B activated per token, 600B training tokens; GPT-3: 175B parameters, 300B tokens, Brown et al. 2020, section 2.2; energies 456 MWh and 1287 MWh, the latter from Patterson et al. 2021):

# %%
glam_active, glam_tokens, glam_mwh = 96.6e9, 600e9, 456
gpt3_params, gpt3_tokens, gpt3_mwh = 175e9, 300e9, 1287
training = {"GLaM": 6 * glam_active * glam_tokens, "GPT-3": 6 * gpt3_params * gpt3_tokens}
inference_ratio = glam_active / gpt3_params  # 2 FLOPs per active weight per token, attention aside
energy_ratio = glam_mwh / gpt3_mwh
print(f"training FLOPs: GLaM {training['GLaM']:.2e}, GPT-3 {training['GPT-3']:.2e}"
      f" (GPT-3's Table D.1 reports 3.14e23), ratio {training['GLaM'] / training['GPT-3']:.2f}")
print(f"inference FLOPs per token: ratio {inference_ratio:.2f}; training energy: ratio {energy_ratio:.2f}")
assert 1.0 < training["GLaM"] / training["GPT-3"] < 1.2  # a third of the compute it was not
assert 0.5 < inference_ratio < 0.6 and 0.3 < energy_ratio < 0.4  # the paper's two actual claims

# %% [markdown]
# GLaM trained on twice GPT-3's tokens with about half its active parameters, so its training FLOPs came out slightly *higher*; the energy saving reflects the hardware and data centre as much as the architecture. "Half the inference FLOPs per token" holds.
#
# ### Switch Transformer: 1.6T parameters, 200B active
#
# **Verdict: false on the active count.** Switch-C has 1571B parameters (Fedus et al. 2022, Table 9). Its released configuration (`google/switch-c-2048` on Hugging Face) gives the shapes: width D = 2080, 30 heads of width 64, ReLU experts of width 6144 (two matrices), 2048 experts in each of 15 encoder and 15 decoder layers, top-1 routing, a 32128-token vocabulary. Counting by hand (norms and relative-position biases omitted: they are tiny):

# %%
D, F_EXPERT, HEADS, HEAD_DIM, N_EXPERTS, VOCAB, ENC, DEC = 2080, 6144, 30, 64, 2048, 32128, 15, 15
expert = 2 * D * F_EXPERT  # up and down projections, ReLU
router = N_EXPERTS * D
encoder_attention = 4 * D * HEADS * HEAD_DIM  # q, k, v, o
decoder_attention = 2 * encoder_attention  # self-attention and cross-attention
total = (ENC + DEC) * (N_EXPERTS * expert + router) + ENC * encoder_attention + DEC * decoder_attention + VOCAB * D
active_encoder = ENC * (encoder_attention + expert + router)
active_decoder = DEC * (decoder_attention + expert + router) + VOCAB * D  # the LM head too
print(f"total {total / 1e9:.1f}B (Table 9: 1571B); experts {(ENC + DEC) * N_EXPERTS * expert / total:.2%} of it")
print(f"per token: encoder {active_encoder / 1e9:.2f}B, decoder {active_decoder / 1e9:.2f}B")
print(f"per layer: one expert {expert / 1e6:.1f}M, attention {encoder_attention / 1e6:.0f}M (encoder),"
      f" {decoder_attention / 1e6:.0f}M (decoder)")
assert (round(expert / 1e5), round(encoder_attention / 1e6), round(decoder_attention / 1e6)) == (256, 16, 32)  # Q4's answer
assert abs(total / 1571e9 - 1) < 0.001
assert max(active_encoder, active_decoder) < 1.1e9  # about 1B, not 200B

# %% [markdown]
# ### The gating network is the bottleneck
#
# **Verdict: false.** A router is one D × E matrix: 2·D·E FLOPs per token per MoE layer. Its share of a token's forward FLOPs, for published models, from `moe_lab.budget` (one token of context, so that attention scores do not dilute it):

# %%
router_share = {}
for name in ("Mixtral-8x7B", "DeepSeek-V3", "Qwen3-30B-A3B", "gpt-oss-120b"):
    flops = forward_flops_per_token(PRESETS[name].spec(), 1)
    router_share[name] = flops.router / flops.total
    print(f"{name:15s} router {router_share[name]:.4%} of {flops.total / 1e9:6.1f} GFLOPs per token")
assert all(share < 0.005 for share in router_share.values()) and router_share["Mixtral-8x7B"] < 1e-4

# %% [markdown]
# What costs time in an MoE layer is dispatch (sorting, gathering, scattering: memory traffic), the all-to-all under expert parallelism, waiting for the busiest device, and reading every touched expert's weights (notebooks 03, 06 and 07 measure each). The router matters for quality and stability (its logits, its precision, its balance), not for speed.
#
# ### What is public about GPT-4 and PaLM 2
#
# - **GPT-4.** The GPT-4 Technical Report (OpenAI 2023, section 2) states that "given both the competitive landscape and the safety implications of large-scale models like GPT-4, this report contains no further details about the architecture (including model size), hardware, training compute, dataset construction, training method, or similar". The "1.8T parameters, 16 experts" figures come from unconfirmed third-party reports in 2023: rumours, not facts. OpenAI's open-weight **gpt-oss** models (2025) are MoE, with published sizes, which the calculator reproduces below.
# - **PaLM 2.** The PaLM 2 Technical Report (Anil et al. 2023) describes "a Transformer-based model trained using a mixture of objectives" (a UL2-style mixture of *objectives*, not of experts), says the largest PaLM 2 is significantly smaller than the largest PaLM, and its model card states that "further details of model size and architecture are withheld from external publication". Whether it uses MoE layers is not public.

# %%
for name in ("gpt-oss-20b", "gpt-oss-120b"):
    preset = PRESETS[name]
    c = preset.counts()
    total_, active_ = c.total(preset.convention), c.active(preset.convention)
    print(f"{name}: computed {total_ / 1e9:.1f}B total, {active_ / 1e9:.2f}B active;"
          f" model card {preset.total.value / 1e9:g}B, {preset.active.value / 1e9:g}B")
    assert preset.total.agrees(total_) and preset.active.agrees(active_)

# %% [markdown]
# ## 5. Facts worth having exact
#
# ### Fine-tuning: what ST-MoE found
#
# ST-MoE (Zoph et al. 2022, section 4) compared a sparse ST-MoE-L with a FLOP-matched dense model, both pre-trained on 500B tokens:
# - **sparse models overfit more** (section 4.1): on SuperGLUE's CommitmentBank (250 training examples) the sparse model fits the training set faster but trails the dense one on held-out data; on ReCoRD (over 100,000 examples) it wins by several points;
# - **freeze the experts, not the rest** (section 4.2, Figure 5): updating only the non-MoE parameters works about as well as updating all of them, while updating only the MoE parameters (about 80% of the parameters there) drastically hurts;
# - **different hyperparameters** (section 4.3): sparse models prefer smaller batches and higher learning rates, dense models nearly the opposite;
# - **dropped tokens are tolerable** (section 4.4, Table 5): dropping 10-15% of tokens barely changes SuperGLUE quality; keeping the auxiliary loss helps.
#
# What "freeze the experts" leaves to train in today's models, from `moe_lab.budget`:

# %%
for name in ("Mixtral-8x7B", "Qwen3-30B-A3B", "DeepSeek-V3"):
    c = PRESETS[name].counts()
    expert_share = c.routed_experts / c.total()
    print(f"{name:14s} routed experts {expert_share:.1%} of {c.total() / 1e9:.1f}B;"
          f" freezing them leaves {(c.total() - c.routed_experts) / 1e9:.2f}B to train")
    assert expert_share > 0.8

# %% [markdown]
# ### Published models in numbers
#
# The four models interviews ask about. Published figures carry their source; Switch-C's per-token counts are the ones computed in section 4; for the two open models the calculator reproduces the published figures under their labs' conventions (**claim**, checked below).

# %%
computed = {}
for name in ("Mixtral-8x7B", "DeepSeek-V3"):
    preset = PRESETS[name]
    c = preset.counts()
    computed[name] = (c.total(preset.convention), c.active(preset.convention))
    assert preset.total.agrees(computed[name][0]) and preset.active.agrees(computed[name][1])
mix_total, mix_active = computed["Mixtral-8x7B"]
v3_total, v3_active = computed["DeepSeek-V3"]
display(Markdown("\n".join([
    "| model | total | active per token | experts | routing | source |",
    "|---|---|---|---|---|---|",
    f"| Switch-C | 1571B (counted: {total / 1e9:.0f}B) | {active_encoder / 1e9:.2f}B per encoder token,"
    f" {active_decoder / 1e9:.2f}B per decoder token (counted) | 2048 in each of 15 + 15 layers | top-1 |"
    " Switch Table 9; the released config |",
    "| GLaM | 1.2T | 96.6B | 64 per MoE layer, 32 MoE layers | top-2 | GLaM abstract; Google Research blog, December 2021 |",
    f"| Mixtral 8x7B | 46.7B (counted: {mix_total / 1e9:.1f}B) | 12.9B (counted: {mix_active / 1e9:.1f}B) |"
    " 8 in each of 32 layers | top-2, renormalized | Mistral's announcement; notebook 06 |",
    f"| DeepSeek-V3 | 671B, without the 11.5B MTP module (counted: {v3_total / 1e9:.0f}B) | 37B, head included,"
    f" embedding not (counted: {v3_active / 1e9:.1f}B) | 256 routed + 1 shared, in 58 of 61 layers |"
    " top-8, sigmoid + selection bias | DeepSeek-V3 report; README_WEIGHTS.md; notebook 06 |",
])))

# %% [markdown]
# ## 6. The grill widget
#
# `Grill(topic=None, difficulty=None, seed=0, n=None)` shows one question at a time. Choose a topic and a difficulty; the seed fixes the order and every number. Numeric questions take a number in the box (`640`, `0.85`, `46.7B`, `93 GB` all read as expected), verdicts one of the three buttons, bug questions your corrected code in the text area (it starts with the buggy code); **Check** grades at once and shows why, with the model answer, the demonstrating section and the sources. Recall questions: think, **Reveal answer**, then mark yourself. The score counts the first graded attempt of each question, as an interviewer would.

# %%
grill = Grill(topic="balancing", seed=SEED)
grill.widget

# %% [markdown]
# Every control is a widget the code can drive, exactly as a click does.
# **Claims**: typing the library's answer to the first numeric question and pressing Check grades it right; the score follows; a revealed recall question counts only once marked.

# %%
while grill.session.current.question.kind != "numeric":
    grill.next_button.click()
numeric_instance = grill.session.current
grill.answer_box.value = f"{numeric_instance.case.value:.6g}"
grill.check_button.click()
print(re.sub("<[^>]+>", "", grill.feedback.value).split("Model answer")[0].strip()[:200])
assert "right:" in grill.feedback.value and "<b>1</b> right of 1 answered" in grill.score_label.value

while grill.session.current.question.kind != "recall":
    grill.next_button.click()
grill.reveal_button.click()
assert "of 1 answered" in grill.score_label.value  # revealing is not answering
grill.knew_button.click()
print(re.sub("<[^>]+>", "", grill.score_label.value).strip())
assert "<b>2</b> right of 2 answered" in grill.score_label.value

# %% [markdown]
# ## 7. The grill in a terminal
#
# The same questions and grading, without Jupyter:
#
# ```bash
# .venv/bin/moe-lab grill                                  # 10 questions from every topic, seed 0
# .venv/bin/moe-lab grill --topic balancing --n 5 --seed 3
# .venv/bin/moe-lab grill --difficulty hard
# ```
#
# Type the answer and press Enter; for code, paste it and end with a line `END` (or type `@path/to/fix.py`). `skip` shows an answer without scoring it, `quit` ends the session with its score. Input can be piped. Below, a session of two myths answered from a string instead of a keyboard, then a bad argument, which gets one line, as with the other subcommands.

# %%
chosen = select(load_bank(), topic="myths", n=2, seed=1)
answers = "".join(f"{q.verdict}\n" for q in chosen)
stdin, stdout = sys.stdin, io.StringIO()
sys.stdin = io.StringIO(answers)
try:
    with contextlib.redirect_stdout(stdout):
        status = moe_lab_cli(["grill", "--topic", "myths", "--n", "2", "--seed", "1"])
finally:
    sys.stdin = stdin
transcript = stdout.getvalue()
print("\n".join(line for line in transcript.splitlines() if line.startswith(("moe-lab", "[", "answer", "right", "wrong", "score"))))
assert status == 0 and "score: 2 right of 2 answered" in transcript

errors = io.StringIO()
with contextlib.redirect_stderr(errors), contextlib.suppress(SystemExit):
    moe_lab_cli(["grill", "--topic", "gpu"])
print(errors.getvalue().strip().splitlines()[-1])
assert "invalid choice: 'gpu'" in errors.getvalue()

# %% [markdown]
# ## Check yourself
#
# 1. Why are the numeric answers computed by the library rather than stored with the question?
# <details><summary>Answer</summary>
#
# So that every drawn case is answered by the same code the course teaches and tests (`MoEConfig.capacity`, the capacity queue, `load_balancing_loss`, `moe_lab.budget`), and so that any seed gives a fresh case with a correct answer. The tests redo each generator by hand for several seeds, so the library and the arithmetic check each other.
# </details>
#
# 2. A fix of the circulating snippet applies a softmax but does not renormalize the top-2 weights. Does the grill accept it, and is it a correct MoE layer?
# <details><summary>Answer</summary>
#
# Yes, and yes (`tests/test_grill_bugs.py` checks it): it is the Switch / Qwen1.5-MoE convention (weights are the softmax probabilities of the kept experts, summing to less than 1). With K ≥ 2 both conventions train the router; only K = 1 with renormalization cuts the router's gradient (notebook 02, section 5).
# </details>
#
# 3. GLaM "used a third of GPT-3's compute". What would you answer?
# <details><summary>Answer</summary>
#
# A third of the training *energy*, and about half the inference FLOPs per token, with better average zero- and one-shot results. Its training FLOPs, 6 × 96.6B × 600B ≈ 3.5e23, were slightly above GPT-3's ≈ 3.1e23 (section 4).
# </details>
#
# 4. An interviewer says Switch Transformer has 200B active parameters. How do you check it in two minutes?
# <details><summary>Answer</summary>
#
# One expert per MoE layer per token: 2 × 2080 × 6144 ≈ 25.6M parameters, 30 MoE layers, plus attention (about 16M per encoder layer, 32M per decoder layer) and the routers: well under 1.1B per token, on the order of a billion (section 4).
# </details>
#
# **Next**: practise with `Grill()` or `moe-lab grill`; every answer names the notebook to reread.
