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
# # 05 · What experts learn, and how routers collapse
#
# **After this notebook you can**
# - measure what an MoE's experts specialize in against labels you know to be true, with a score that has a stated formula, a chance baseline and an interval, and say why "a code expert, a medical expert" is the wrong picture;
# - tell what a label adds to routing once the token itself is known, and why that question separates token-level from domain-level specialization;
# - run the causal test (remove one expert, watch which tokens suffer) beside the correlational one;
# - read consecutive-token locality, co-activation and router saturation, and compare them with what Mixtral, OLMoE and others published;
# - tell apart three failures that explainers merge into "expert collapse": routing collapse, expert homogenization, representation collapse, each with its own measure and cure;
# - say what actually makes a tiny MoE collapse, with three seeds behind every claim;
# - route any text through three trained checkpoints in the explorer.
#
# **Time**: about 75 minutes to read. The notebook runs in about a minute on 2 CPU cores: it
# analyses the trained checkpoints and recorded runs in `assets/` (made by
# `python tools/make_checkpoints.py`: 30 training runs) and trains one short run live.
#
# Every checkable claim is checked by an `assert` in the next cell, and every number in the prose
# is printed by the run. Shapes: `L` tokens, `E` experts, `K` experts per token, `D` model width.

# %%
import math
import platform
import statistics

import plotly
import torch
from IPython.display import Markdown, display

import moe_lab
from moe_lab.analysis import ablation_effects, analyse_checkpoint, dead_experts, moe_inputs, saturation_curves
from moe_lab.analysis.consecutive import MIXTRAL_TABLE5
from moe_lab.analysis.lab import CHECKPOINTS, LAB_SEEDS, LAB_SETTINGS, end_state
from moe_lab.assets import load_checkpoint, load_lab_history, load_lab_summary
from moe_lab.data import CHAR_CLASSES, make_corpus
from moe_lab.model import TinyLM
from moe_lab.train import Trainer, evaluate
from moe_lab.viz.analysis_figures import (
    ablation_figure,
    coactivation_figure,
    lab_curves,
    lab_load_heatmaps,
    lift_heatmaps,
    nmi_figure,
    saturation_figure,
    three_collapses_figure,
)
from moe_lab.viz.text_explorer import TextExplorer
from moe_lab.viz.text_figure import text_routing_figure
from moe_lab.viz.text_routing import TextRoutingState, text_routing_view

SEED = 0
torch.manual_seed(SEED)
torch.set_num_threads(1)  # tiny models: one thread is as fast, and steady on a shared CPU
print(f"python {platform.python_version()} | torch {torch.__version__} | plotly {plotly.__version__}"
      f" | moe_lab {moe_lab.__version__} | torch threads {torch.get_num_threads()}")

# %% [markdown]
# ## 1. The myth, and what has been measured
#
# Almost every MoE explainer says the experts specialize by domain: "a code expert, a math expert,
# a medical expert"; product pitches go further, "one model serves every department, one expert
# each". The published routing analyses mostly say otherwise:
#
# | model | what was measured | what was found | source |
# |---|---|---|---|
# | Mixtral 8x7B (top-2 of 8, upcycled from Mistral 7B) | expert shares per subset of The Pile, layers 0, 15, 31 | "no obvious patterns in the assignment of experts based on the topic"; only the synthetic DM Mathematics differs a little; routing follows syntax (indentation, `self`), and consecutive tokens often share an expert | Jiang et al. 2024, §5, Fig. 7-8, Table 5 |
# | ST-MoE-32B (encoder-decoder) | tokens routed to each expert | encoder experts specialize in punctuation, verbs, proper names, counting and numbers; decoder experts show no meaningful specialization; no language specialization | Zoph et al. 2022, §7.1-7.3, Tables 13-14 |
# | OpenMoE (decoder-only) | routing by domain, language and token id | routing is decided mostly by the token id, whatever the context ("context-independent specialization"), and fixed early in training | Xue et al. 2024, §4 |
# | OLMoE-1B-7B (top-8 of 64, trained from scratch) | domain (their eq. 7), vocabulary, saturation, co-activation | some experts are strongly specialized on distinct domains (arXiv, GitHub), balanced on generic web text; Mixtral measured the same way shows little domain specialization, which they attribute to its upcycling | Muennighoff et al. 2024, §5.1-5.4 |
#
# All four measure real models on real text, where nobody knows the "true" domain of a token or
# what else correlates with it. Our corpus (`moe_lab.data`, notebook 04) plants the answer: every
# byte carries its **domain** (arithmetic, code, english, records) and its **character class**
# (letter, digit, whitespace, punctuation, newline). So we can measure both, on the validation
# split no model trained on, and see which one the routing follows.

# %% [markdown]
# ## 2. The checkpoints
#
# Five trained models from `assets/` (`moe_lab.assets`), all the course model of notebook 04
# (3 MoE blocks, D = 64, the course recipe of 320 steps), made by `tools/make_checkpoints.py` from
# their seeds:
#
# - **balanced**, **balanced-seed1**, **balanced-seed2**: the `tiny-moe` preset (top-2 of 8 experts,
#   Switch loss 0.01) with seeds 0, 1, 2: every claim about specialization is checked on all three;
# - **collapsed**: 32 experts of width 32, no balancing at all (section 8 shows why this one);
# - **hash**: hash routing by byte, top-1 (Roller et al. 2021): no router to learn, the control.
#
# **Claim**: each checkpoint is what it says: loading it and evaluating it on the same validation
# windows the Trainer used reproduces the validation loss recorded when it was made (to 1e-4; on
# the machine that made it, exactly).

# %%
corpus = make_corpus(seed=SEED)
models, metas = {}, {}
for name in CHECKPOINTS:
    models[name], metas[name] = load_checkpoint(name)
    ev = metas[name]["evaluation"]
    loss, _ = evaluate(models[name], corpus.val, ev["batch_size"], ev["seq_len"], ev["eval_batches"],
                       corpus.domain_names)
    moe = models[name].config.moe
    print(f"{name:15s} {metas[name]['setting']:18s} seed {metas[name]['seed']}: E={moe.routed_experts:2d},"
          f" K={moe.routed_top_k}, router {moe.router!r:15s} validation loss {loss:.4f}"
          f" (recorded {metas[name]['val_loss']:.4f})")
    assert abs(loss - metas[name]["val_loss"]) < 1e-4
balanced_names = ["balanced", "balanced-seed1", "balanced-seed2"]
D_MODEL = models["balanced"].config.d_model
assert all(model.config.d_model == D_MODEL for model in models.values())
assert {metas[name]["steps"] for name in CHECKPOINTS} == {320}  # "320 steps" in the prose
assert len(LAB_SETTINGS) * len(LAB_SEEDS) == 30  # the recorded runs of the collapse lab (section 8)

# %% [markdown]
# Note the last line before moving on: the hash-routed model, whose routing nobody trained, has
# the lowest validation loss of all. Roller et al. (2021) report hash layers "either outperform or
# are competitive with" learned routing (Switch, BASE layers); here, with byte tokens and 320
# steps, giving every byte its own expert beats learning where to send it. Section 8 checks it
# over three seeds.

# %%
assert min(metas, key=lambda name: metas[name]["val_loss"]) == "hash"

# %% [markdown]
# ## 3. Look first: one sample per domain, coloured by expert
#
# `moe_lab.analysis.capture_text` runs a checkpoint on any text and reads each MoE block's
# decisions from the `MoEOutput`s that `TinyLM.forward` returns (no hooks). Below, the start of a
# validation `code` document through the balanced model: each character's cell has the colour of
# its first-choice expert; hover for its two experts and weights. (The explorer in section 10 does
# this for any text and checkpoint.)

# %%
view = text_routing_view(TextRoutingState.for_sample("code"))
text_routing_figure(view).show()

# %% [markdown]
# Look at block 0: the colours change with the *kind of character* (letters one colour, digits
# another, spaces and punctuation their own), not with the line or the document. Looking is not
# measuring; the next sections measure.

# %% [markdown]
# ## 4. Specialization, measured
#
# `moe_lab.analysis.capture_routing` routes the whole validation split (windows of 64 bytes, each a
# fresh context) and keeps, per block, every token's K experts with its two labels.
# `specialization` then summarizes each block by the **normalized mutual information** between a
# token's first-choice expert X and a label Y:
#
# `NMI = 2 I(X; Y) / (H(X) + H(Y))`, with `I(X; Y) = H(X) + H(Y) - H(X, Y)` (entropies in nats).
#
# NMI is 1 when each of X and Y determines the other (a router that copied the domain label would
# score 1: `tests/test_analysis_specialization.py` checks it) and 0 when they are independent. Two
# more numbers make it honest: the **shuffled baseline** (the same tokens with labels randomly
# permuted: where chance lies for this many tokens, since the plug-in estimate is biased upward)
# and a **95% bootstrap interval** that resamples whole windows (tokens of one window share a
# context, so they are not independent draws).
#
# First the picture for seed 0: for each expert, how many times its base rate it sees each label
# ("lift": 1.0 = the expert sees the label as often as the split does, 0 = never).

# %%
analyses = {name: analyse_checkpoint(models[name], corpus.val, corpus.domain_names) for name in balanced_names}
seed0 = analyses["balanced"]
capture = seed0.capture
print(f"{len(capture):,} validation tokens captured, {len(capture.layers)} MoE blocks, E={capture.n_experts}, K={capture.top_k}")
shares = torch.bincount(capture.domain, minlength=4) / len(capture)
print("token shares by domain:", {n: f"{s:.0%}" for n, s in zip(corpus.domain_names, shares.tolist())})
lift_heatmaps(seed0.specialization).show()
arithmetic = corpus.domain_names.index("arithmetic")
arithmetic_lift = [float(report["domain"].lift()[:, arithmetic].max()) for report in seed0.specialization.values()]
print("largest arithmetic lift per block:", [round(x, 2) for x in arithmetic_lift])
assert all(x > 3 for x in arithmetic_lift)  # "an expert seeing arithmetic at three times its rate"

# %% [markdown]
# Read the bottom row first: most experts' character-class rows are close to one-hot (one class
# several times its base rate, the others near zero). The domain rows are mixed. Some experts do
# look like domain experts (in every block, an expert seeing arithmetic at more than three times its
# rate: printed above), but arithmetic is
# almost all digits and symbols: is that expert an "arithmetic expert" or a "digit expert"? The
# scores, over all three seeds:

# %%
rows = []
for name in balanced_names:
    seed = metas[name]["seed"]
    for layer, report in analyses[name].specialization.items():
        for label in ("domain", "char_class", "token"):
            score = report[label]
            rows.append({"seed": seed, "layer": layer, "label": label, "nmi": score.nmi,
                         "low": score.interval[0], "high": score.interval[1], "shuffled": score.shuffled_max})
table = ["| seed | block | NMI(expert; domain) | NMI(expert; character class) | NMI(expert; byte) | class - domain (95% interval) |",
         "|---|---|---|---|---|---|"]
for name in balanced_names:
    for layer, report in analyses[name].specialization.items():
        diff, low, high = report.difference("char_class", "domain")
        d, c, b = report["domain"], report["char_class"], report["token"]
        table.append(f"| {metas[name]['seed']} | {layer} | {d.nmi:.3f} [{d.interval[0]:.3f}, {d.interval[1]:.3f}]"
                     f" | {c.nmi:.3f} [{c.interval[0]:.3f}, {c.interval[1]:.3f}] | {b.nmi:.3f}"
                     f" | {diff:+.3f} [{low:+.3f}, {high:+.3f}] |")
display(Markdown("\n".join(table)))
nmi_figure(rows).show()

# %% [markdown]
# **Claims**, each checked on every block of every seed: the routing carries information about both
# labels, far above chance (each NMI more than 20 times the largest shuffled value); and the
# character class explains it better than the domain: NMI(class) > NMI(domain), with the paired
# bootstrap interval of the difference entirely above 0.

# %%
for name in balanced_names:
    for layer, report in analyses[name].specialization.items():
        for label in ("domain", "char_class"):
            assert report[label].nmi > 20 * report[label].shuffled_max, (name, layer, label)
        diff, low, high = report.difference("char_class", "domain")
        assert low > 0, (name, layer, diff, low)
gaps = [analyses[n].specialization[layer].difference("char_class", "domain")[0]
        for n in balanced_names for layer in analyses[n].specialization]
display(Markdown(f"The character class leads by {min(gaps):.3f} to {max(gaps):.3f} NMI over the"
                 f" {len(gaps)} (seed, block) pairs."))

# %% [markdown]
# ### What does the domain add once the byte is known?
#
# A byte fixes its character class, and bytes are unevenly spread over domains (digits are mostly
# arithmetic), so a router that looked only at the byte would already score on both labels: that
# is OpenMoE's "context-independent specialization". The question that separates token-level from
# domain-level routing is the **conditional** mutual information `I(expert; domain | byte)`: for
# the *same byte* (the `e` in `def` and the `e` in `the`), does the expert depend on the domain?
# The baseline permutes the domain labels among tokens of the same byte (`beyond_token`); the share
# reported is the excess over that baseline divided by `H(expert | byte)`, the routing uncertainty
# the byte leaves.

# %%
lines = ["| seed | block | H(expert given byte), nats | I(expert; domain given byte) | within-byte shuffle (max) | share explained by the domain |",
         "|---|---|---|---|---|---|"]
for name in balanced_names:
    for layer, beyond in analyses[name].beyond_token.items():
        lines.append(f"| {metas[name]['seed']} | {layer} | {beyond.remaining:.3f} | {beyond.information:.4f}"
                     f" | {max(beyond.shuffled):.4f} | {beyond.share:.0%} |")
display(Markdown("\n".join(lines)))

# %% [markdown]
# **Claims**: in every block of every seed the domain adds information beyond the byte (more than
# 10 times the within-byte shuffle), so this is not a pure token-id router; and the share grows with
# depth: the last block's is larger than the first's in every seed. Context, which attention mixes
# in block by block, lets later routers tell an `e` in code from an `e` in english.

# %%
for name in balanced_names:
    beyond = analyses[name].beyond_token
    for layer, b in beyond.items():
        assert b.information > 10 * max(b.shuffled), (name, layer)
    first, last = min(beyond), max(beyond)
    assert beyond[last].share > beyond[first].share, name
hash_analysis = analyse_checkpoint(models["hash"], corpus.val, corpus.domain_names)
for layer, b in hash_analysis.beyond_token.items():
    assert b.information == 0.0 and b.remaining == 0.0  # hash: the byte decides everything
print("hash-routed control: I(expert; domain | byte) =",
      [b.information for b in hash_analysis.beyond_token.values()], "(the byte fixes the expert)")

# %% [markdown]
# ### Is there a department expert?
#
# "One expert per department" means an expert that receives most of one domain's tokens. For each
# domain, block and seed, the largest share of the domain's tokens whose first choice is a single
# expert ("coverage"), and what that expert's own tokens are:

# %%
coverage_rows, best = [], {}
for name in balanced_names:
    seed = metas[name]["seed"]
    for layer, report in analyses[name].specialization.items():
        table_counts = report["domain"].table.double()  # (E, 4): first choice x domain
        coverage = table_counts / table_counts.sum(0, keepdim=True)  # P(expert | domain)
        own = table_counts / table_counts.sum(1, keepdim=True)  # P(domain | expert)
        classes = report["char_class"].share_by_expert()  # P(class | expert)
        for d, domain in enumerate(corpus.domain_names):
            e = int(coverage[:, d].argmax())
            c = int(classes[e].argmax())
            best[(seed, layer, domain)] = (float(coverage[e, d]), float(own[e, d]))
            coverage_rows.append(f"| {domain} | {seed} | {layer} | expert {e}: {coverage[e, d]:.0%} |"
                                 f" {own[e, d]:.0%} | {capture.char_class_names[c]} {classes[e, c]:.0%} |")
display(Markdown("| domain | seed | block | the expert with the most of it | that expert's tokens from the domain |"
                 " its top character class |\n|---|---|---|---|---|---|\n" + "\n".join(sorted(coverage_rows))))

# %% [markdown]
# **Claims**, over all three seeds and blocks:
# - no expert receives more than two thirds of the tokens of code, english or records: the text of
#   those "departments" is always spread over several experts;
# - arithmetic, whose text is almost only digits and four symbols, is the exception: in block 0 of
#   every seed one expert receives most of it (more than 60%). That expert is the digit expert the
#   whole corpus uses: more than a tenth of its tokens come from the other domains (dates, ids,
#   scores, numbers in code).

# %%
for (seed, layer, domain), (cover, own_share) in best.items():
    if domain != "arithmetic":
        assert cover < 2 / 3, (seed, layer, domain, cover)
for seed in LAB_SEEDS:
    cover, own_share = best[(seed, 0, "arithmetic")]
    assert cover > 0.6 and own_share < 0.9, (seed, cover, own_share)


# %% [markdown]
# ## 5. The causal test: remove one expert
#
# The tables above are correlational. `moe_lab.analysis.without_experts` returns a copy of the model
# in which one expert can never be chosen: its router's `selection_bias` (a buffer that only changes
# *which* experts are chosen, never their weights) is -inf there, so each of its tokens goes to its
# next choice with the router's own renormalized weights (`tests/test_analysis_ablation.py` checks
# this against a hand computation). `ablation_effects` removes each expert of each block in turn and
# splits the change in next-token loss by the labels of the routed token (seed 0, 64 windows
# evenly spaced over the validation split, 4,096 tokens: 25 forward passes).

# %%
effects = ablation_effects(models["balanced"], corpus.val, corpus.domain_names, max_windows=64)
assert effects.n_tokens == 64 * models["balanced"].config.max_seq_len == 4096
ablation_figure(effects, "char_class").show()
ablation_figure(effects, "domain").show()

# %% [markdown]
# Most removals hurt one character class and leave the others untouched. To compare the two labels
# with one number per block: for each removed expert, the share of its extra loss (in nats, summed
# over tokens) that falls on the single most-affected label value, averaged over the block's experts
# weighted by their total damage. Damage spread over the tokens in proportion to their numbers
# would score the largest token share ("even"), which differs between the labels (letters are a
# larger share of the tokens than any domain), so the comparison uses the concentration beyond
# it: `(concentration - even) / (1 - even)`, 0 for evenly spread damage, 1 for damage entirely on
# one value.

# %%
def concentration(effects, label):
    # (blocks,): damage-weighted share of the extra loss falling on the most affected label value
    damage = effects.delta[label].clamp_min(0) * effects.counts[label].float()  # (blocks, E, C)
    total = damage.sum(-1)  # (blocks, E)
    top_share = damage.max(-1).values / total.clamp_min(1e-12)
    return (top_share * total).sum(-1) / total.sum(-1)


beyond_even = {}
for key in ("char_class", "domain"):
    even = float(effects.counts[key].max() / effects.counts[key].sum())
    raw = concentration(effects, key)
    beyond_even[key] = (raw - even) / (1 - even)
    print(f"{key:10s}: concentration per block {[round(v, 2) for v in raw.tolist()]}, even {even:.2f},"
          f" beyond even {[round(v, 2) for v in beyond_even[key].tolist()]}")

# %% [markdown]
# **Claims** (seed 0 only: ablation costs 25 forward passes per seed): in every block the damage
# concentrates more on one character class than on one domain, beyond what even spreading gives;
# and the domain's concentration grows from the first block to the last. The causal picture
# repeats the correlational one: experts are character-class specialists first, and the domain
# matters more with depth.

# %%
assert bool((beyond_even["char_class"] > beyond_even["domain"]).all())
assert beyond_even["domain"][-1] > beyond_even["domain"][0]


# %% [markdown]
# ## 6. Neighbours, pairs and time: three more regularities
#
# ### Consecutive tokens
#
# Mixtral's Table 5 counts how often token t+1 gets the same first-choice expert as token t (and how
# often their top-2 sets overlap), against uniform routing: 1/8 = 12.5% and 1 - (6/8)(5/7) ~ 46%.
# With uneven loads, chance is higher than that: two *independent* tokens repeat with probability
# sum_e p_e^2, p_e the share of first choices (`consecutive_rates` gives this "expected from the
# loads" too). Two controls make the comparison honest: the hash-routed model (routing fixed by
# the byte) and the balanced model *before training* (the same initial weights, seed 0).

# %%
torch.manual_seed(0)  # the Trainer seeds the initialization the same way: this is seed 0's start
untrained = TinyLM(models["balanced"].config).eval()
untrained_analysis = analyse_checkpoint(untrained, corpus.val, corpus.domain_names, n_bootstrap=2, n_shuffles=1)
lines = ["| model | block | first choice repeats | expected from loads | uniform | top-K sets overlap | expected | uniform |",
         "|---|---|---|---|---|---|---|---|"]
for label, analysis in [("balanced, seed 0", seed0), ("balanced, seed 0, untrained", untrained_analysis),
                        ("hash", hash_analysis)]:
    for layer, r in analysis.consecutive.items():
        lines.append(f"| {label} | {layer} | {r.first_choice:.1%} | {r.first_choice_expected:.1%} | {r.first_choice_uniform:.1%}"
                     f" | {r.any_choice:.1%} | {r.any_choice_expected:.1%} | {r.any_choice_uniform:.1%} |")
mixtral = ", ".join(f"layer {layer}: {lo}-{hi}%" for layer, (lo, hi) in MIXTRAL_TABLE5["first choice"].items())
display(Markdown("\n".join(lines) + f"\n\nMixtral 8x7B, first choice, over eight Pile subsets (Table 5): {mixtral}."))


def neighbour_similarity(model, windows):
    # per MoE block: mean cosine similarity of the router inputs of tokens t and t+1
    inputs = moe_inputs(model, windows)
    result = {}
    for block, h in inputs.items():
        h = h.view(*windows.shape, -1)  # (W*T, D) -> (W, T, D)
        result[block] = float(torch.nn.functional.cosine_similarity(h[:, 1:], h[:, :-1], dim=-1).mean())
    return result


probe = capture.tokens[: 64 * 64].view(64, 64)  # the first 64 validation windows
similar = {"untrained": neighbour_similarity(untrained, probe), "trained": neighbour_similarity(models["balanced"], probe)}
print("mean cosine similarity of neighbouring router inputs:",
      {k: {b: round(v, 2) for b, v in d.items()} for k, d in similar.items()})

# %% [markdown]
# **Claims**: in every block of every balanced seed, neighbours repeat their first choice more than
# 1.5 times as often as independent tokens with the same loads would; the hash model repeats at
# chance (within 2 points of its expected rate: its only "locality" is that bytes repeat). And
# the untrained model repeats *even more*, because its neighbouring router inputs are more alike
# (the cosine similarities printed above, higher before training in every block). Locality, here, is largely inherited from the architecture, not
# learned; training makes the routing *less* sticky and more about the token. (Mixtral's layer-0 rates are close to chance;
# its paper notes that hidden states at the first layer are strongly correlated with the input
# embeddings, §5.)

# %%
for name in balanced_names:
    for layer, r in analyses[name].consecutive.items():
        assert r.first_choice > 1.5 * r.first_choice_expected, (name, layer)
for layer, r in hash_analysis.consecutive.items():
    assert abs(r.first_choice - r.first_choice_expected) < 0.02
for layer, r in untrained_analysis.consecutive.items():
    assert r.first_choice > seed0.consecutive[layer].first_choice, layer
    assert similar["untrained"][layer] > similar["trained"][layer], layer

# %% [markdown]
# ### Co-activation
#
# With top-2, which experts serve the same token? OLMoE's measure is N(i, j) / N(i): of the tokens
# routed to expert i, the share also routed to j (their eq. 6). We compare it with independence
# *given the loads*: each expert included with its own odds, conditioned on exactly K chosen (the
# maximum-entropy distribution of K-sets with the observed inclusion rates; `coactivation`'s
# docstring derives it). Lift 1 = as often together as independence allows.

# %%
coactivation_figure(list(seed0.coactivation.values())).show()
for name in balanced_names:
    lifts = [(layer, c.max_off_diagonal(c.lift()), c.max_off_diagonal(c.conditional()))
             for layer, c in analyses[name].coactivation.items()]
    print(f"{name}: largest lift per block", [(block, round(x, 2)) for block, x, _ in lifts],
          "| largest N(i,j)/N(i):", [round(y, 2) for *_, y in lifts])

# %% [markdown]
# OLMoE found "no strong co-activation among experts in one layer, with only few exceptions"
# (§5.2). Here pairs form: in most blocks the most co-activated pair is two experts that share
# their top character class (printed below: in seed 0's first block, two digit experts), and
# experts of unrelated classes are almost never chosen together. **Claims**: in every block of
# every seed the pairs are far from independent: the largest lift exceeds 1.5 and the smallest is
# below 0.5; and in more than half of the nine blocks the most co-activated pair shares its top
# character class.

# %%
for name in balanced_names:
    for layer, c in analyses[name].coactivation.items():
        lift = c.lift()
        off = ~torch.eye(lift.shape[0], dtype=torch.bool)
        assert float(lift[off].max()) > 1.5 and float(lift[off].min()) < 0.5, (name, layer)
same_class = []
for name in balanced_names:
    for layer, c in analyses[name].coactivation.items():
        top_class = analyses[name].specialization[layer]["char_class"].share_by_expert().argmax(-1)  # (E,)
        lift = c.lift().clone().fill_diagonal_(float("-inf"))
        i, j = divmod(int(lift.argmax()), lift.shape[0])
        same_class.append(bool(top_class[i] == top_class[j]))
        print(f"{name}, block {layer}: most co-activated pair {i}, {j} (lift {float(lift[i, j]):.2f}),"
              f" top classes {CHAR_CLASSES[top_class[i]]}, {CHAR_CLASSES[top_class[j]]}")
print(f"the pair shares its top class in {sum(same_class)} of {len(same_class)} blocks")
assert sum(same_class) > len(same_class) / 2

# %% [markdown]
# ### Router saturation
#
# OLMoE asks how early the router settles: router saturation at step t is the share of a fixed
# probe set's final top-K choices that the router already makes at t (§5.1, their eq. 5). They
# find about 60% of OLMoE's top-8 choices final after 1% of pretraining, about 80% at 40%, later
# layers earlier, and layer 0 much later (Figure 20). The `Trainer` records the top-K experts of 512 fixed
# validation tokens at every evaluation (`History.routing_snapshots`), so the curves come from the
# recorded runs, no weight snapshots needed.

# %%
curves = {f"seed {seed}": saturation_curves(load_lab_history("aux-0.01", seed)) for seed in LAB_SEEDS}
curves["hash"] = saturation_curves(load_lab_history("hash", 0))
saturation_figure(curves).show()
chance = capture.top_k / capture.n_experts  # K / E: a random top-K set keeps this share (OLMoE: 8/64)
lines = ["| seed | block | at step 0 | at step 25 | at step 150 | mean over steps 25-300 |", "|---|---|---|---|---|---|"]
mean_saturation = {}
for seed in LAB_SEEDS:
    for layer, (steps, values) in curves[f"seed {seed}"].items():
        middle = [v for s, v in zip(steps, values) if 25 <= s <= 300]
        mean_saturation[(seed, layer)] = statistics.mean(middle)
        lines.append(f"| {seed} | {layer} | {values[0]:.0%} | {values[steps.index(25)]:.0%} | {values[steps.index(150)]:.0%}"
                     f" | {mean_saturation[(seed, layer)]:.0%} |")
display(Markdown("\n".join(lines) + f"\n\nChance (a random top-{capture.top_k} of {capture.n_experts}): {chance:.0%}."))

# %% [markdown]
# **Claims**: a router that cannot learn (hash) is saturated from step 0. The learned routers start
# near chance (K/E = 25%: at initialization their choices are as good as random with respect to
# the final ones) and settle gradually: by step 150, under half of training, more than 65% of the
# final choices are made in every block of every seed. That is slower than OLMoE's ~60% after 1%
# of pretraining, as expected of a 320-step run that is all "early training". And unlike OLMoE's
# layer 0, our first block is not the slowest to settle in any seed.

# %%
for layer, (steps, values) in curves["hash"].items():
    assert values == [1.0] * len(values)
for seed in LAB_SEEDS:
    for layer, (steps, values) in curves[f"seed {seed}"].items():
        assert abs(values[0] - chance) < 0.15 and values[steps.index(150)] > 0.65, (seed, layer)
    slowest = min(curves[f"seed {seed}"], key=lambda layer: mean_saturation[(seed, layer)])
    assert slowest != 0, seed


# %% [markdown]
# ## 7. Three collapses, told apart
#
# "Expert collapse: all experts learn similar representations" is a sentence that merges two
# different failures, and leaves out a third:
#
# 1. **Routing collapse**: the load concentrates on a few experts, the rest get few tokens or none
#    ("dead") and stop learning. A property of the router's *choices*: MaxVio of the load
#    (`(max - mean) / mean`, Wang et al. 2024), its normalized entropy, dead experts (under 1% of
#    the mean load). Shazeer et al. (2017, §4) describe the loop: favoured experts train faster and
#    are chosen more. Cure: balancing (Switch's auxiliary loss, Fedus et al. 2021, eq. 4-6;
#    DeepSeek-V3's loss-free bias, §2.1.2).
# 2. **Expert homogenization**: the experts compute nearly the same function, however the load is
#    spread. A property of the *experts' weights*: feed every expert the same inputs (the block's
#    real inputs) and compare their outputs with linear CKA (Kornblith et al. 2019):
#    `||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)` on centred outputs, 1 for identical experts
#    (`tests/test_analysis_collapse.py` checks it). An upcycled model starts fully homogenized.
# 3. **Representation collapse** (Chi et al. 2022): the router scores a token by dot products with
#    the E rows of its gate, so the gradient routing sends into the token's representation lies in
#    their span; learning to route pulls representations towards a space of dimension at most E.
#    A property of the *representations*: the effective rank of the router inputs (Roy & Vetterli
#    2007; D = 64 is full rank) and the share of their variance in the span of the gate rows (E/D
#    for a random subspace). The hash model, whose router receives no gradient, is the control.
#
# `moe_lab.analysis.lab.end_state` measures all three on the validation split; the untrained model
# is the reference point.

# %%
states = {}
for name, model in [("untrained", untrained), ("balanced", models["balanced"]),
                    ("collapsed", models["collapsed"]), ("hash", models["hash"])]:
    states[name] = end_state(model, corpus)
experts_of = {name: (untrained if name == "untrained" else models[name]).config.moe.routed_experts for name in states}
averaged = {name: {key: statistics.mean(block[key] for block in state.values()) for key in next(iter(state.values()))}
            for name, state in states.items()}
lines = ["| model | block | MaxVio | dead experts | expert CKA | effective rank of router inputs | variance in gate span (random: E/D) |",
         "|---|---|---|---|---|---|---|"]
for name, state in states.items():
    for block, m in state.items():
        lines.append(f"| {name} | {block} | {m['max_violation']:.2f} | {m['dead']} of {experts_of[name]} | {m['expert_cka']:.2f}"
                     f" | {m['effective_rank']:.1f} of {D_MODEL} | {m['gate_share']:.0%} ({experts_of[name] / D_MODEL:.0%}) |")
display(Markdown("\n".join(lines)))
three_collapses_figure(averaged, experts_of, d_model=D_MODEL).show()
recorded = load_lab_summary("32-experts-none", 0)["end_state"]  # measured when the asset was made
assert all(abs(recorded[b][key] - states["collapsed"][b][key]) < 1e-4 * max(1.0, abs(recorded[b][key]))
           for b in recorded for key in recorded[b])

# %% [markdown]
# **Claims** (checked here, and on the recorded end states of all three seeds of each setting in
# section 8):
# - the collapsed model is routing-collapsed: in every block more than a sixth of its experts are
#   dead and MaxVio exceeds 3, while the balanced model has no dead expert;
# - it is *not* homogenized: its experts are no more alike than the balanced model's (mean CKA at
#   most 0.05 above it, block by block). Routing collapse and homogenization are different
#   failures. Training itself makes experts *less* alike: the untrained experts, fed the same
#   inputs, are the most similar of all;
# - learned routing narrows the representations the router reads: the effective rank of the router
#   inputs is lower with a learned router than with hash routing, in every block;
# - a learned router's inputs put more of their variance in the span of its gate rows than a random
#   E-dimensional subspace would hold (E/D), in every block, while the hash model's untrained gate
#   gets E/D to within 2 points. This fits Chi et al.'s picture, but alone it cannot tell
#   representations pulled towards the router's subspace from a router that learned to look where
#   the variance already was; the rank comparison with the hash control is the cleaner evidence.
#
# (The live measures of the collapsed model equal those recorded when its asset was made.)

# %%
for block in states["collapsed"]:
    c, b, h = states["collapsed"][block], states["balanced"][block], states["hash"][block]
    assert c["dead"] > experts_of["collapsed"] / 6 and c["max_violation"] > 3 and b["dead"] == 0
    assert c["expert_cka"] < b["expert_cka"] + 0.05
    assert states["untrained"][block]["expert_cka"] > max(c["expert_cka"], b["expert_cka"], h["expert_cka"])
    assert b["effective_rank"] < h["effective_rank"] and c["effective_rank"] < h["effective_rank"]
    for model_name, m in (("balanced", b), ("collapsed", c)):
        assert m["gate_share"] > experts_of[model_name] / D_MODEL, (model_name, block)
    assert abs(h["gate_share"] - experts_of["hash"] / D_MODEL) < 0.02

# %% [markdown]
# ## 8. The collapse lab: what makes a tiny MoE collapse?
#
# `tools/make_checkpoints.py` trained ten settings with seeds 0, 1, 2 (`moe_lab.analysis.lab`),
# every one the course recipe with one change, and recorded each run's `History` and end state in
# `assets/collapse_lab/`. The table gives the mean over seeds and the range; the claims below are
# asserted on every seed.

# %%
summaries = {name: [load_lab_summary(s.slug, seed) for seed in LAB_SEEDS] for name, s in LAB_SETTINGS.items()}


def per_seed(name, key, block=0, source="training"):
    return [run[source]["layers"][block][key] if source == "training" else run[source][block][key]
            for run in summaries[name]]


def val_losses(name):
    return [run["training"]["val_loss"] for run in summaries[name]]


def spread(values, fmt="{:.2f}"):
    return f"{fmt.format(statistics.mean(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


lines = ["| setting | validation loss | MaxVio, block 0 | dead experts, block 0 (of E) | router entropy / log E, block 0 |",
         "|---|---|---|---|---|"]
for name, setting in LAB_SETTINGS.items():
    n_experts = setting.model_config().moe.routed_experts
    entropy = [e / math.log(n_experts) for e in per_seed(name, "router_entropy")]
    lines.append(f"| {name} | {spread(val_losses(name), '{:.3f}')} | {spread(per_seed(name, 'max_violation'))}"
                 f" | {spread(per_seed(name, 'dead'), '{:.1f}')} of {n_experts} | {spread(entropy)} |")
display(Markdown("\n".join(lines) + "\n\nEnd of training: the loads of the last 20 training batches summed, "
                 "mean over seeds (min-max)."))

# %%
histories = {name: [load_lab_history(s.slug, seed) for seed in LAB_SEEDS] for name, s in LAB_SETTINGS.items()}
lab_load_heatmaps({name: runs[0] for name, runs in histories.items()}, layer=0).show()
lab_curves(histories, layer=0).show()

# %% [markdown]
# What three seeds say, each asserted below for every seed (block 0 unless said otherwise):
#
# 1. **Without balancing, the course model barely collapses.** With 8 experts at top-2, at most one
#    expert of a block dies (gets under 1% of the mean load), MaxVio stays under 2.5 (the busiest
#    expert under 3.5 times the mean), and the validation loss is within 0.05 of the Switch loss's.
#    The classic warning is about a setup, and this one does not trigger it.
# 2. **More, smaller experts do collapse.** With 32 experts of width 32 (the same expert
#    parameters) and no balancing, more than a quarter of block 0's experts are dead; Switch's loss
#    at 0.01 keeps every expert of every block alive.
# 3. **Too much balancing costs quality, and brings on the other two collapses.** At weight 1 the
#    router is pushed to uniform (entropy above 95% of log E in every block) and the validation loss
#    is worse than at 0.01 by more than 0.3: balance bought with the routing itself. Weight 0.1
#    already costs more than 0.05. And with every expert now seeing much the same tokens, the last
#    block's experts grow alike (mean CKA more than 0.15 above the 0.01 run's) and the router
#    inputs have the lowest effective rank of all ten settings, in every block: the cure for
#    routing collapse, overdosed, causes homogenization and representation collapse.
# 4. **Noise alone is not balancing**: noisy top-k without a loss leaves MaxVio above the Switch
#    loss's (notebook 03's myth, here on a language model). **Nor is the z-loss**: it keeps logits
#    small, not loads even; with it alone MaxVio is above the Switch loss's too.
# 5. **The loss-free bias balances without a loss term**: DeepSeek-V3's sign rule at its rate
#    (0.001) brings MaxVio below no balancing in every block, and the validation loss stays within
#    0.1 of the Switch loss's (the seed-by-seed comparison is printed below the table: one setting
#    is not better than the other on every seed).
# 6. **Hash routing is not automatically balanced**, a popular claim: bytes are not equally
#    frequent, so its load is uneven (MaxVio above the Switch loss's), though no expert dies; and it
#    has the best validation loss of all ten settings.

# %%
def training(name, seed):
    return summaries[name][seed]["training"]


for seed in range(len(LAB_SEEDS)):
    aux, none = training("aux 0.01", seed), training("none", seed)
    aux_vio = aux["layers"][0]["max_violation"]
    assert all(layer["dead"] <= 1 and layer["max_violation"] < 2.5 for layer in none["layers"].values())
    assert abs(none["val_loss"] - aux["val_loss"]) < 0.05
    assert training("32 experts, none", seed)["layers"][0]["dead"] > 32 / 4
    assert all(layer["dead"] == 0 for layer in training("32 experts, aux 0.01", seed)["layers"].values())
    heavy = training("aux 1", seed)
    assert all(layer["router_entropy"] > 0.95 * math.log(8) for layer in heavy["layers"].values())
    assert heavy["val_loss"] > aux["val_loss"] + 0.3
    assert training("aux 0.1", seed)["val_loss"] > aux["val_loss"] + 0.05
    heavy_end, aux_end = summaries["aux 1"][seed]["end_state"], summaries["aux 0.01"][seed]["end_state"]
    last = max(heavy_end)
    assert heavy_end[last]["expert_cka"] > aux_end[last]["expert_cka"] + 0.15
    for block in heavy_end:
        lowest = min(LAB_SETTINGS, key=lambda n: summaries[n][seed]["end_state"][block]["effective_rank"])
        assert lowest == "aux 1", (seed, block, lowest)
    assert training("noise only", seed)["layers"][0]["max_violation"] > aux_vio
    assert training("z-loss", seed)["layers"][0]["max_violation"] > aux_vio
    bias = training("loss-free bias", seed)
    for block, layer in bias["layers"].items():
        assert layer["max_violation"] < none["layers"][block]["max_violation"], (seed, block)
    assert abs(bias["val_loss"] - aux["val_loss"]) < 0.1
    hashed = training("hash", seed)
    assert hashed["layers"][0]["max_violation"] > aux_vio
    assert all(layer["dead"] == 0 for layer in hashed["layers"].values())
    best = min(LAB_SETTINGS, key=lambda n: training(n, seed)["val_loss"])
    assert best == "hash", (seed, best)
lines = [f"| seed {seed} | " + " | ".join(f"{training(n, seed)['val_loss']:.3f}" for n in LAB_SETTINGS) + " |"
         for seed in range(len(LAB_SEEDS))]
header = "| | " + " | ".join(LAB_SETTINGS) + " |\n" + "|---" * (len(LAB_SETTINGS) + 1) + "|\n"
gaps = [training("loss-free bias", seed)["val_loss"] - training("aux 0.01", seed)["val_loss"] for seed in range(len(LAB_SEEDS))]
display(Markdown(header + "\n".join(lines) + "\n\nValidation loss of every run (nats per byte). Loss-free bias"
                 " minus Switch loss 0.01, per seed: " + ", ".join(f"{g:+.3f}" for g in gaps) + "."))
assert max(abs(g) for g in gaps) < 0.1 and min(gaps) < 0 < max(gaps)  # neither is better on every seed


# %% [markdown]
# The three-collapse measures, over the three seeds of the collapsed and balanced settings (from
# the recorded end states): the section 7 claims hold on every seed.

# %%
for seed in range(len(LAB_SEEDS)):
    collapsed_end = summaries["32 experts, none"][seed]["end_state"]
    balanced_end = summaries["aux 0.01"][seed]["end_state"]
    hash_end = summaries["hash"][seed]["end_state"]
    for block in collapsed_end:
        c, b, h = collapsed_end[block], balanced_end[block], hash_end[block]
        assert c["dead"] > 32 / 6 and b["dead"] == 0, (seed, block)
        assert c["expert_cka"] < b["expert_cka"] + 0.05, (seed, block)
        assert b["effective_rank"] < h["effective_rank"] and c["effective_rank"] < h["effective_rank"], (seed, block)

# %% [markdown]
# ### Watch it happen
#
# The heatmaps above show *when* experts die: at the start. The one run the lesson needs live is the
# beginning of the collapsing one: 32 experts, no balancing, seed 0, its first 40 of 320 steps.
# The recorded run of the same setting and seed is printed beside it (on the machine that made the
# assets the two are identical; elsewhere rounding may move them slightly). An expert counts as
# dead in a batch when it gets under 1% of the mean load.

# %%
def dead_in_batch(loads):  # (E,) tokens per expert -> experts under 1% of the mean load
    return dead_experts(torch.tensor(loads, dtype=torch.float64))


setting = LAB_SETTINGS["32 experts, none"]
trainer = Trainer(setting.model_config(), setting.train_config(SEED), corpus)
live = trainer.run(steps=40, description="32 experts, no balancing")
recorded_history = histories["32 experts, none"][0]
for step in (1, 10, 20, 40):
    print(f"step {step:3d}: dead experts per block, live {[dead_in_batch(live.tokens_per_expert[b][step - 1]) for b in live.tokens_per_expert]}"
          f", recorded {[dead_in_batch(recorded_history.tokens_per_expert[b][step - 1]) for b in recorded_history.tokens_per_expert]}")

# %% [markdown]
# **Claims**: the collapse is immediate: by step 20, more than half of the 32 experts of every block
# get under 1% of the mean load (live). And it is partly undone later: in every seed, every block
# ends the run (last 20 batches) with fewer dead experts than it had at its worst in the first 40
# steps. The same happens with 8 experts and no balancing. The early deaths fit what
# section 6 found at initialization: before training, the router's inputs for different tokens are
# nearly alike, so most tokens prefer the same few experts.

# %%
assert all(dead_in_batch(live.tokens_per_expert[b][19]) > 16 for b in live.tokens_per_expert)
for seed in range(len(LAB_SEEDS)):
    for name in ("32 experts, none", "none"):
        history = histories[name][seed]
        for block, loads in history.tokens_per_expert.items():
            worst_early = max(dead_in_batch(batch) for batch in loads[:40])
            end = dead_in_batch([sum(column) for column in zip(*loads[-20:])])
            assert end < worst_early, (name, seed, block, end, worst_early)


# %% [markdown]
# ## 9. What this says about "one expert per department"
#
# - **Experts are not departments.** On a corpus whose domains differ sharply (sums, Python,
#   simple English, personnel records), the routing follows the kind of character more than the
#   domain in every block of every seed, and the text of code, english and records is always
#   spread over several experts. The one domain that gets "its" expert, arithmetic, is nearly one
#   character class, and its expert also serves every other domain's digits. Real text is far less
#   separable than this corpus.
# - **The domain does enter, through context, and more in later blocks.** Given the byte, the
#   domain explains a larger share of the routing in the last block than in the first, in every
#   seed. That is the honest version of "domain specialization": a context-dependent refinement of
#   token-level routing, in line with OpenMoE's token-level picture, Mixtral's syntax-aligned
#   routing and OLMoE's domain effects.
# - **Removing an expert removes a skill, not a department.** One character class's loss rises,
#   across every domain that uses it. Deleting experts "for the legal team" would cut the legal
#   text's digits and punctuation along with everyone else's.
# - **Balancing works against departmental routing by design.** A department that sends more than
#   its 1/E share of tokens is exactly what the Switch loss penalizes; DeepSeek-AI (2024, §4.5.3,
#   Fig. 9) report more domain specialization once the auxiliary loss gives way to the loss-free
#   bias. If you need one model per department, route by request metadata (task-level routing) or
#   train separate models, and expect each to need the whole vocabulary anyway.


# %% [markdown]
# ## 10. The routing-on-text explorer
#
# Type any text (then click outside the box), pick a sample per domain, and switch between the
# balanced, collapsed and hash-routed checkpoints. Each row is one MoE block: every character is
# coloured by its first-choice expert (hover for its K experts and weights), grey cells hold no
# character, and the bars give that block's load for this text. The explorer starts on the code
# sample through the balanced model; the cell after it moves it, so after "Run All" it shows the
# state that cell set. Things to try:
# - the balanced model on `arithmetic`, then `records`: digits keep their colour across domains;
# - the collapsed model: count the colours in block 0, then look at the load bars;
# - the hash model: the same byte has the same colour everywhere, in every block;
# - type a line of code and a sentence, and follow one letter (`e`, `t`) through both.

# %%
explorer = TextExplorer()
explorer.widget

# %% [markdown]
# The explorer's state is a dataclass, so code drives it through the same callbacks as a reader.
# **Claims**, on a short text that starts as code and ends as english: through the hash checkpoint
# every occurrence of a byte has the same first-choice expert in every block; through the balanced
# checkpoint, in every block, some bytes go to different experts at different places (the `e` of
# `return` and the `e` of `sees`: the context decides). The cell ends by putting the explorer back
# on its starting state.

# %%
def experts_per_byte(view, block):
    experts = {}
    for char, expert in zip(view.text, view.indices[block][:, 0].tolist()):
        experts.setdefault(char, set()).add(expert)
    return experts


explorer.controls["checkpoint"].value = "hash"  # what the dropdown does
explorer.controls["text"].value = "def f(x):\n    return x * 7\nThe cat sees 7 birds.\n"  # what typing does
for block in explorer.view.layers:
    assert all(len(e) == 1 for e in experts_per_byte(explorer.view, block).values())
explorer.controls["checkpoint"].value = "balanced"
for block in explorer.view.layers:
    moving = {c: sorted(e) for c, e in experts_per_byte(explorer.view, block).items() if len(e) > 1}
    print(f"balanced, block {block}: bytes with more than one first-choice expert: {moving}")
    assert moving
explorer.set_state(TextRoutingState.for_sample("code"))


# %% [markdown]
# ## Check yourself
#
# 1. An MoE routes 40% of `def` tokens and 5% of english tokens to expert 3. Is expert 3 a code
#    expert?
# <details><summary>Answer</summary>
#
# Not from that number. Ask what else differs between the two sets of tokens: which bytes or
# tokens they are. The test is conditional: among the *same* tokens, does the expert depend on the
# domain (I(expert; domain | token))? In this notebook most of the apparent domain specialization
# is token- or character-class specialization; what the domain adds given the byte is real but
# smaller, and grows with depth.
# </details>
#
# 2. Your NMI between expert and label is 0.02 on 500 tokens. Is that specialization?
# <details><summary>Answer</summary>
#
# Compare with the shuffled baseline first: the plug-in mutual information is biased upward by
# about (|X|-1)(|Y|-1)/(2L) nats, which at 8 experts, 4 labels and 500 tokens is 0.021 nats: chance
# alone gives an NMI near 0.01-0.02. Then put an interval on it that respects the dependence
# between neighbouring tokens (a bootstrap over windows or documents, not tokens).
# </details>
#
# 3. Consecutive tokens share their first-choice expert 40% of the time with 8 experts. Mixtral
#    reports up to 28%. Is your router more "syntactic"?
# <details><summary>Answer</summary>
#
# Check two baselines before reading anything into it: the rate expected from the loads (sum of
# squared shares, above 1/8 when loads are uneven) and the rate of the untrained model. Here the
# untrained model repeats more than the trained one: a causal running average dominates the
# residual stream at initialization, so neighbours look alike to the router before any learning.
# </details>
#
# 4. Your training dashboard shows one expert taking 60% of the tokens. Someone says "the experts
#    have collapsed into the same function". What do you measure to know?
# <details><summary>Answer</summary>
#
# That is routing collapse (a load statistic: MaxVio, load entropy, dead experts). Whether the
# experts compute the same function is a separate question: feed them the same inputs and compare
# outputs (linear CKA). The two can even move in opposite directions: the collapse lab's heaviest
# balancing (weight 1) removes routing collapse and makes the experts more alike. The collapsed checkpoint here has more than a sixth of its experts
# dead in every block, and experts no more alike than the balanced model's (section 7). The cures differ too: balancing
# for the first; for the second, experts that do not start as copies (upcycling starts them as
# copies of one dense FFN) and training that gives them different tokens.
# </details>
#
# 5. Why does a large auxiliary-loss weight hurt quality, if balance is good?
# <details><summary>Answer</summary>
#
# The loss is minimized by uniform routing, so a large weight makes the router's cheapest move
# spreading every token evenly, whatever the token: the router stops choosing. At weight 1 here
# the router entropy sits at log E and the validation loss is much worse than at 0.01.
# </details>
#
# 6. Hash routing needs no balancing loss and won here. Why is it not used everywhere?
# <details><summary>Answer</summary>
#
# It cannot adapt: the expert of a token never depends on context, so it cannot do what the
# learned router does in later blocks (route the same byte differently in different contexts), and
# its load follows the token frequencies (uneven unless the hash is balanced by frequency, which
# Roller et al. found works best). Roller et al. report hash layers competitive with, or better
# than, Switch and BASE layers; whether a fixed partition beats learned routing for a given model,
# tokenizer and budget has to be measured, as here: at 320 steps on bytes, it did.
# </details>
#
# 7. Router saturation reaches 90% by mid-training. Can you stop training the router then?
# <details><summary>Answer</summary>
#
# Saturation counts which experts are chosen, not with what weights: at 100% saturation the router
# can still change every combine weight (OLMoE makes the same point). And the remaining choices
# are the ones still being learned (OLMoE's layer 0 saturates last; here block 0 never does).
# </details>
#
# **Next**: notebook 06 counts what all those experts cost in parameters, FLOPs and memory.

# %% [markdown]
# ## Exercises
#
# Implement it yourself, then let the library grade it. Each exercise comes in three cells:
#
# - **the exercise cell** holds a function `my_...` whose body is `raise NotImplementedError`: replace that line with your code and run the cell;
# - **the hidden solution** (collapsed; tagged `solution`) defines a reference implementation named `..._solution`. Expand it when you are stuck or done; it has its own name, so it never overwrites yours;
# - **the check cell**, `check_...(my_..., reference=..._solution)`, runs your function on seeded random cases against `moe_lab.analysis`'s own implementation and says exactly what differs: the value at a named case, and the mistake when your output is exactly what a common one gives. Until you have written yours, it checks the hidden solution instead and says so. That is what CI runs, so every checker and every solution is tested each time this notebook runs.
#
# The checkers live in `moe_lab.exercises`; the next cell is all the exercises need, so you can start here without running the cells above.

# %%
import torch

from moe_lab.exercises.specialization import (
    check_linear_cka,
    check_normalized_mutual_information,
    check_router_saturation,
    check_routing_collapse,
)


# %% [markdown]
# ### Exercise 1: how much a label explains the routing
#
# Section 4's score, from scratch. Write `my_normalized_mutual_information(expert, label, n_experts, n_labels)`: `expert` (L,) holds each token's first-choice expert, `label` (L,) its label (a domain, a character class). Build the (E, C) table of counts, then return, as a float, `NMI = 2·I(X; Y) / (H(X) + H(Y))` with `I = H(X) + H(Y) − H(X, Y)`: entropies of the row sums, the column sums and the cells, with 0·log 0 = 0, and 0 when `H(X) + H(Y) = 0`.
# The check compares with `normalized_mutual_information(contingency_table(...))` on a router that follows the label for most tokens, one that copies it (1), one that splits every label over two experts, a dead expert, a router independent of the label, and a single expert on a single label (0).

# %%
def my_normalized_mutual_information(expert, label, n_experts, n_labels):
    # expert (L,) long in [0, E), label (L,) long in [0, C) -> NMI, a float
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def normalized_mutual_information_solution(expert, label, n_experts, n_labels):
    counts = torch.bincount(expert * n_labels + label, minlength=n_experts * n_labels)  # (E*C,)
    p = counts.view(n_experts, n_labels).double() / expert.numel()  # (E, C) joint distribution
    # torch.special.entr(p) = -p log p, and 0 where p = 0 (empty cells are the rule, not the exception)
    h_expert = torch.special.entr(p.sum(dim=1)).sum()  # H(X), from the row sums
    h_label = torch.special.entr(p.sum(dim=0)).sum()  # H(Y), from the column sums
    h_joint = torch.special.entr(p).sum()  # H(X, Y)
    total = h_expert + h_label
    if total == 0:
        return 0.0  # one expert, one label: nothing to explain
    return float(2 * (h_expert + h_label - h_joint) / total)


# %%
check_normalized_mutual_information(my_normalized_mutual_information, reference=normalized_mutual_information_solution)


# %% [markdown]
# ### Exercise 2: router saturation
#
# Section 6's saturation curve, from the snapshots the Trainer records. Write `my_router_saturation(snapshots)`: `snapshots` (S, N, K) holds the top-K experts of the same N probe tokens at S evaluations, oldest first. Return S values (a list or an (S,) tensor): at snapshot s, the share of the final top-K choices already made, `(1/N) Σᵢ |Sᵢ(s) ∩ Sᵢ(last)| / K`. A top-K list is a set here: its order does not matter. The last value is 1.
# The check compares with `moe_lab.analysis.saturation` on snapshots that drift and reorder the same experts, a router that never changes, top-1, top-4 of 16, and a single snapshot.

# %%
def my_router_saturation(snapshots):
    # snapshots (S, N, K) long -> S saturation values, the last one 1
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def router_saturation_solution(snapshots):
    final = snapshots[-1]  # (N, K): each probe token's final top-K
    # for each expert chosen at snapshot s: is it among the token's final K? (sets, not positions)
    kept = (snapshots[:, :, :, None] == final[None, :, None, :]).any(dim=-1)  # (S, N, K)
    return kept.double().mean(dim=(1, 2))  # (S,): |S(s) ∩ S(last)| / K, averaged over tokens


# %%
check_router_saturation(my_router_saturation, reference=router_saturation_solution)


# %% [markdown]
# ### Exercise 3: routing collapse from a load vector
#
# The two numbers section 7 and the collapse lab read from every block's load. Write `my_routing_collapse(load)`: `load` (E,) holds the assignments per expert (counts, or shares). Return `(max_violation, dead)`: MaxVio = (max − mean) / mean (Wang et al. 2024) as a float, and the number of dead experts, those with a load under 1% of the mean load, as an int.
# The check compares with `moe_lab.balancing.max_violation` and `moe_lab.analysis.dead_experts` on mildly uneven loads, one hot expert, balanced loads, a collapse onto one expert, experts starved to 0.5% of the mean (dead, though not zero) and to 1.5% (alive), shares instead of counts, and 32 experts.

# %%
def my_routing_collapse(load):
    # load (E,) assignments per expert -> (max_violation: float, dead: int)
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def routing_collapse_solution(load):
    load = load.double()
    mean = load.mean()
    max_violation = float((load.max() - mean) / mean)  # 0 when balanced
    dead = int((load < 0.01 * mean).sum())  # under 1% of the mean load, not only the zeros
    return max_violation, dead


# %%
check_routing_collapse(my_routing_collapse, reference=routing_collapse_solution)


# %% [markdown]
# ### Exercise 4: linear CKA, how alike two experts are
#
# Section 7's homogenization measure. Write `my_linear_cka(x, y)`: `x` (N, p) and `y` (N, q) are two experts' outputs on the same N inputs. Centre every column over the N inputs, then return, as a float, `CKA = ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F)` (Kornblith et al. 2019): 1 for identical outputs, and for outputs equal up to a rotation and a scale.
# The check compares with `moe_lab.analysis.linear_cka` on a noisy linear map, identical, rotated-and-scaled and shifted outputs (all 1), independent outputs, and outputs of different widths.

# %%
def my_linear_cka(x, y):
    # x (N, p), y (N, q): two representations of the same N inputs -> CKA, a float
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def linear_cka_solution(x, y):
    x = x.double() - x.double().mean(dim=0)  # (N, p): centre each column over the inputs
    y = y.double() - y.double().mean(dim=0)  # (N, q)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2  # ||Yᵀ X||²_F: (q, p)
    norms = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norms)


# %%
check_linear_cka(my_linear_cka, reference=linear_cka_solution)
