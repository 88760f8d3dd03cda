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
# # 07 · GPU and scaling: the dispatch ladder, the GPU path, expert parallelism, group-limited routing
#
# **After this notebook you can**
# - name six ways to compute an MoE layer (the dispatch ladder: naive loop, masked loop, GShard's one-hot einsum, sorted in Python, sorted in C++, grouped GEMM), check them equal (outputs and gradients), and say what each costs in FLOPs, operator calls, memory and host synchronizations, counted rather than guessed;
# - read this CPU's timings of the ladder next to those counts, and say why a timing is shown and a count is asserted;
# - explain what changes on a GPU: bfloat16, and the host synchronizations that stall it (which backend has none, which keeps one, and why);
# - explain why the `sorted` backend reuses its buffers on the CPU, and measure what that saves;
# - run expert parallelism on `torch.distributed` in several processes, check it against one process (outputs, losses, every gradient), count the bytes its all-to-alls move against the formula, and measure what an unbalanced load costs when the busiest rank sets the pace;
# - explain DeepSeek's group-limited routing and count the devices a token's experts live on with and without it.
#
# **Time**: about 45 minutes to read; the notebook runs in half a minute to a minute and a half on 2 CPU cores, by the CPU.
#
# Every checkable claim is checked by an `assert` in the next cell; timings are shown, never asserted (a busy machine can flip them). Shapes: `N` tokens, `D` model width, `F` expert width, `E` experts, `K` experts per token, `C` capacity per expert.

# %%
import math
import platform
import resource
from dataclasses import replace

import plotly
import plotly.graph_objects as go
import torch
from IPython.display import Markdown, display
from torch.utils.flop_counter import FlopCounterMode

import moe_lab
from moe_lab import DenseFFN, MoEConfig, MoELayer
from moe_lab.bench.common import median, time_interleaved
from moe_lab.bench.results import layer_ratio_markdown, layer_results
from moe_lab.budget import PRESETS as PUBLISHED
from moe_lab.budget import count_parameters, from_model_config
from moe_lab.checkpoints import moe_config_from_hf
from moe_lab.cpp_kernels import kernel_status
from moe_lab.dispatch import get_backend
from moe_lab.group_routing import expected_groups_touched, groups_touched, select_experts
from moe_lab.model import get_preset
from moe_lab.parallel import run_parallel
from moe_lab.parallel.demos import (
    EqualityCase,
    exchange_timing,
    exchange_volume,
    layer_equality,
    memory_per_rank,
    run_tasks,
    straggler_step,
)
from moe_lab.profiling import audit_operators, count_full_size_slicing, peak_rss_increase

torch.manual_seed(0)
torch.set_num_threads(1)  # one thread: steadier timings on a shared CPU, and every rung alike
print(f"python {platform.python_version()} | torch {torch.__version__} | plotly {plotly.__version__}"
      f" | moe_lab {moe_lab.__version__} | torch threads {torch.get_num_threads()}")
print("sorted backend:", kernel_status())

# %% [markdown]
# ## 1. The dispatch ladder
#
# Routing decides, for each token, K experts and K weights; dispatch computes `y[n] = Σ_k w[n, k] · expert_{i[n, k]}(x[n])`. Notebook 02 wrote the per-(token, slot) loop and the sorted dispatch from scratch. Here are six library backends, each a `dispatch=` name of `MoELayer`, from the most literal to the fastest:
#
# | rung | backend | what it does | its price |
# |---|---|---|---|
# | naive loop | `naive` | per expert: find its tokens (`torch.where`), gather, compute, `index_add` back | one search over all N·K choices per expert; on a GPU, a host sync per expert |
# | masked loop | `masked` | every expert on **every** token, output × a weight that is 0 where the token did not choose it | E/K times the expert FLOPs |
# | one-hot einsum | `einsum` | GShard: a one-hot (N, E, C) dispatch tensor, `einsum("nec,nd->ecd")`, the experts on their (E, C, D) buffers, `einsum("nec,ecd->nd")` with the combine weights (Lepikhin et al. 2020, Algorithm 1) | (N, E, C) tensors and einsum FLOPs, both ∝ N² ; a capacity C drops tokens |
# | sorted (Python) | `sorted_python` | sort the N·K choices by expert once, one gather, each expert on its contiguous rows, un-sort with one gather (MegaBlocks without its kernels, Gale et al. 2022) | one Python matrix product per expert and projection |
# | sorted (C++) | `sorted` | the same steps in one C++ operator per direction, experts in parallel (`moe_lab/csrc`) | CPU only |
# | grouped | `grouped` | the sorted rows fed to `torch.nn.functional.grouped_mm`: one call per projection for all experts | one fused kernel on Hopper GPUs; on the CPU torch loops inside it |
#
# The layer for the whole ladder: N = 1024 tokens, D = 128, E = 8 experts of width F = 256, top-2. The einsum rung runs with capacity factor 1.0 (C = N·K/E = 256); with that capacity some tokens are dropped, so it is compared with the naive loop under the *same* capacity. The others are dropless.

# %%
N, D, F_, E, K = 1024, 128, 256, 8, 2
CAPACITY_FACTOR = 1.0
RUNGS = {  # label: (backend, capacity factor)
    "naive loop": ("naive", None),
    "masked loop": ("masked", None),
    "one-hot einsum": ("einsum", CAPACITY_FACTOR),
    "sorted (Python)": ("sorted_python", None),
    "sorted (C++)": ("sorted", None),
    "grouped": ("grouped", None),
}


def make_layer(backend, capacity_factor=None):
    torch.manual_seed(1)  # every rung gets the same weights
    config = MoEConfig(d_model=D, d_expert=F_, n_experts=E, top_k=K, dispatch=backend,
                       capacity_factor=capacity_factor, validate_inputs=False)
    return MoELayer(config)


layers = {label: make_layer(*spec) for label, spec in RUNGS.items()}
x = torch.randn(N, D)
upstream = torch.randn(N, D)  # a fixed upstream gradient dL/dy


def forward_backward(layer):
    layer.zero_grad(set_to_none=True)
    x_req = x.clone().requires_grad_(True)
    out = layer(x_req)
    out.y.backward(upstream)
    grads = {"input": x_req.grad, **{name: p.grad for name, p in layer.named_parameters()}}
    return out, grads


capacity = layers["one-hot einsum"].config.capacity(N)
print(f"capacity C = ceil({CAPACITY_FACTOR} * {N} * {K} / {E}) = {capacity}")

# %% [markdown]
# **Claim**: every rung gives the naive loop's output and the same gradients for the input, the router and every expert weight (float32, differences at round-off); the einsum rung equals the naive loop run with the same capacity, dropped tokens included.

# %%
references = {None: forward_backward(make_layer("naive")),
              CAPACITY_FACTOR: forward_backward(make_layer("naive", CAPACITY_FACTOR))}
rows = []
for label, layer in layers.items():
    out, grads = forward_backward(layer)
    ref_out, ref_grads = references[layer.config.capacity_factor]
    assert torch.equal(out.dropped, ref_out.dropped)
    output_gap = (out.y - ref_out.y).abs().max().item()
    grad_gap = max(((g - ref_grads[name]).abs().max() / ref_grads[name].abs().max()).item()
                   for name, g in grads.items())
    rows.append(f"| {label} | {output_gap:.1e} | {grad_gap:.1e} | {out.n_dropped} |")
    assert output_gap < 1e-5 and grad_gap < 1e-5, label
display(Markdown("| rung | max output difference | max gradient difference (relative) | dropped assignments |\n"
                 "|---|---|---|---|\n" + "\n".join(rows)))
n_dropped = references[CAPACITY_FACTOR][0].n_dropped
assert n_dropped > 0  # the capacity binds: the comparison includes drops

# %% [markdown]
# ## 2. What each rung costs, counted
#
# Three deterministic counts for one forward pass of each rung (they do not depend on the machine or its load, so they are asserted):
#
# - **FLOPs**, by `torch.utils.flop_counter.FlopCounterMode` (the C++ operator and `grouped_mm` register their formulas with it);
# - **operator calls and host synchronizations**, by `moe_lab.profiling.audit_operators`: every aten operator the forward calls, and those that would make a GPU wait for the host (`nonzero`, `.item()`, `tolist()` ...);
# - **bytes of new tensors** the forward allocates, and the largest one.
#
# By hand, with the router's `2·N·D·E` FLOPs in every rung: the sparse rungs compute `2·N·K·D·F·3` expert FLOPs (three projections, K experts per token), the masked loop `2·N·E·D·F·3` (every expert on every token), and the einsum rung `2·E·C·D·F·3` for its buffers plus `2·N·E·C·D` for each of its two einsums.

# %%
def forward_counts(layer):
    with torch.no_grad():
        layer(x)  # warm-up: the first call fills the sorted backend's buffer pool
        with FlopCounterMode(display=False) as flop_counter:
            layer(x)
        with audit_operators() as audit:
            layer(x)
    return flop_counter.get_total_flops(), audit


counts = {label: forward_counts(layer) for label, layer in layers.items()}
router_flops = 2 * N * D * E
expected_flops = {label: router_flops + 2 * N * K * D * F_ * 3 for label in RUNGS}
expected_flops["masked loop"] = router_flops + 2 * N * E * D * F_ * 3
expected_flops["one-hot einsum"] = router_flops + 2 * E * capacity * D * F_ * 3 + 2 * (2 * N * E * capacity * D)
rows = []
for label, (flops, audit) in counts.items():
    rows.append(f"| {label} | {flops / 1e6:,.0f} | {flops / counts['naive loop'][0]:.2f} | {audit.total} |"
                f" {audit.n_host_syncs} | {audit.allocated_bytes / 2**20:.2f} | {audit.largest_allocation / 2**20:.2f} |")
    assert flops == expected_flops[label], label
display(Markdown("| rung | forward MFLOPs | × naive | operator calls | host syncs (on a GPU) | MiB allocated | largest tensor, MiB |\n"
                 "|---|---|---|---|---|---|---|\n" + "\n".join(rows)))

# %% [markdown]
# **Claims**, each asserted below:
# - the masked loop does exactly E/K = 4 times the sparse rungs' expert FLOPs;
# - the einsum rung's largest tensor is its (N, E, C) dispatch (or combine) tensor, N·E·C·4 bytes, and its einsums alone cost more FLOPs than all its experts;
# - the naive loop's operator calls grow with E and it makes one host synchronization per expert (a `nonzero` inside `torch.where`), while the sorted C++ rung's calls do not grow with E;
# - `grouped` and `masked` need no host synchronization at all; both sorted rungs need exactly one, a `tolist()` of the expert offsets (section 4 says why).

# %%
expert_flops = 2 * N * K * D * F_ * 3
assert counts["masked loop"][0] - router_flops == E // K * expert_flops
einsum_audit = counts["one-hot einsum"][1]
assert einsum_audit.largest_allocation == N * E * capacity * 4
assert 2 * (2 * N * E * capacity * D) > 2 * E * capacity * D * F_ * 3


def operator_calls(backend, n_experts):
    torch.manual_seed(1)
    layer = MoELayer(MoEConfig(d_model=D, d_expert=F_, n_experts=n_experts, top_k=K, dispatch=backend,
                               validate_inputs=False))
    return forward_counts(layer)[1]


grow = {backend: (operator_calls(backend, 4), operator_calls(backend, 16)) for backend in ("naive", "sorted")}
for backend, (small, large) in grow.items():
    print(f"{backend:7s}: {small.total} operator calls at E=4, {large.total} at E=16;"
          f" host syncs {small.n_host_syncs} -> {large.n_host_syncs}")
assert grow["naive"][1].total > grow["naive"][0].total + 12 * 10  # at least 10 more per extra expert
assert (grow["naive"][0].n_host_syncs, grow["naive"][1].n_host_syncs) == (4, 16)
assert grow["sorted"][1].total == grow["sorted"][0].total
assert counts["grouped"][1].n_host_syncs == 0 and counts["masked loop"][1].n_host_syncs == 0
for label in ("sorted (Python)", "sorted (C++)"):
    assert dict(counts[label][1].host_syncs) == {"tolist(): copies the tensor to the host": 1}

# %% [markdown]
# ## 3. What each rung costs on this CPU: time and memory
#
# Forward, and forward + backward, interleaved repetitions (A B C ... A B C ...), median; with a dense SwiGLU FFN of width K·F = 512 beside them, which has the same FLOPs as the sparse rungs' experts ("routing is free" would mean the same time). Peak memory is how far the process's resident memory rose above its starting point during one forward + backward, after the C allocator returned its free memory to the system (`moe_lab.profiling.peak_rss_increase`, Linux): the memory the step needed beyond what it already held (the sorted backend's pooled buffers are held between calls, so they do not show here; section 5 is about them). These are measurements of this machine under its current load: the numbers move from run to run, so nothing below is asserted. `python -m moe_lab.bench layer` measures the sparse rungs properly, at several sizes.

# %%
dense = DenseFFN(D, K * F_)


def no_grad(fn):
    def run():
        with torch.no_grad():
            fn()
    return run


def dense_step():
    x_req = x.clone().requires_grad_(True)
    dense(x_req).backward(upstream)


forward_times = time_interleaved({**{label: no_grad(lambda layer=layer: layer(x)) for label, layer in layers.items()},
                                  "dense FFN, same FLOPs": no_grad(lambda: dense(x))}, repeats=3, warmup=1)
train_times = time_interleaved({**{label: (lambda layer=layer: forward_backward(layer)) for label, layer in layers.items()},
                                "dense FFN, same FLOPs": dense_step}, repeats=3, warmup=1)
peak_memory = {label: peak_rss_increase(lambda layer=layer: forward_backward(layer)) for label, layer in layers.items()}
peak_memory["dense FFN, same FLOPs"] = peak_rss_increase(dense_step)
forward_ms = {label: median(t) * 1e3 for label, t in forward_times.items()}
train_ms = {label: median(t) * 1e3 for label, t in train_times.items()}
rows = [f"| {label} | {forward_ms[label]:.1f} | {train_ms[label]:.1f} | "
        + (f"{peak_memory[label] / 2**20:.1f}" if peak_memory[label] is not None else "n/a") + " |"
        for label in forward_ms]
display(Markdown("| rung | forward, ms | forward + backward, ms | peak memory rise, MiB |\n|---|---|---|---|\n" + "\n".join(rows)))
figure = go.Figure([go.Bar(name="forward", x=list(forward_ms), y=list(forward_ms.values())),
                    go.Bar(name="forward + backward", x=list(train_ms), y=list(train_ms.values()))])
figure.update_layout(title=f"The dispatch ladder on this CPU (1 thread), N={N}, D={D}, top-{K} of {E} experts of width {F_}",
                     yaxis_title="ms (median of 3)", barmode="group", height=380)
figure.show()

# %% [markdown]
# How to read it. The FLOP counts above predict part of the order: the masked loop does 4 times the arithmetic; the einsum rung spends more FLOPs on its one-hot products than on its experts, and both its tensors and those FLOPs grow as N² at a fixed capacity factor (C ∝ N). What the counts do not see is overhead per operator call and memory traffic: the naive loop searches all N·K choices once per expert, and autograd zero-fills a full (E, D, F) gradient for each expert it indexes; the sorted rungs avoid both. On a single CPU thread, the C++ and Python sorted rungs run the same products, so they differ by call overhead only; with more threads the C++ one runs experts in parallel.
#
# The zero-filled gradients, counted (no timing): the backward nodes in each rung's autograd graph that allocate a whole stacked expert weight's gradient, (E, D, F), to return one expert's slice of it (`moe_lab.profiling.count_full_size_slicing`).

# %%
expert_shapes = {tuple(p.shape) for p in layers["naive loop"].experts.parameters()}  # (E, D, F), (E, F, D)
full_size = {label: count_full_size_slicing(layer(x.clone().requires_grad_(True)).y, expert_shapes)
             for label, layer in layers.items()}
full_size_mib = E * D * F_ * 4 / 2**20  # one float32 (E, D, F) gradient
display(Markdown("| rung | full-size zero-filled gradients per backward | MiB they allocate |\n|---|---|---|\n"
                 + "\n".join(f"| {label} | {n} | {n * full_size_mib:.1f} |" for label, n in full_size.items())))
assert full_size["naive loop"] == 3 * E  # w_gate[e], w_up[e], w_down[e] for each of the E experts
assert all(n == 0 for label, n in full_size.items() if label != "naive loop")

# %% [markdown]
# The naive loop's backward allocates 3·E full-size gradients, E times what the expert gradients need; the other rungs read each expert's weights through one batched product or `unbind`, which allocate none.
#
# The einsum's quadratic growth, counted (no timing): FLOPs of its two einsums at N and 2N with the same capacity factor.

# %%
def einsum_flops(n_tokens):
    torch.manual_seed(1)
    layer = MoELayer(MoEConfig(d_model=D, d_expert=F_, n_experts=E, top_k=K, dispatch="einsum",
                               capacity_factor=CAPACITY_FACTOR, validate_inputs=False))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(torch.randn(n_tokens, D))
    per_op = counter.get_flop_counts()["Global"]
    return sum(v for op, v in per_op.items() if "bmm" in str(op)), layer.config.capacity(n_tokens)


(bmm_small, c_small), (bmm_large, c_large) = einsum_flops(256), einsum_flops(512)
print(f"N=256: C={c_small}; N=512: C={c_large}; batched-matmul FLOPs grew {bmm_large / bmm_small:.2f}x")
# the einsums (2 * 2*N*E*C*D) quadruple when N doubles; the experts' bmm (2*E*C*D*F*3) double
assert c_large == 2 * c_small
expected = (2 * 2 * 512 * E * c_large * D + 2 * E * c_large * D * F_ * 3) / (2 * 2 * 256 * E * c_small * D + 2 * E * c_small * D * F_ * 3)
assert math.isclose(bmm_large / bmm_small, expected) and expected > 2.5

# %% [markdown]
# ## 4. The GPU path
#
# On a GPU, Python queues kernels and moves on; it waits only when it needs a value computed on the device. Every such **host synchronization** empties the GPU's queue, so every kernel launch after it pays its full latency. The count in section 2 is what matters there:
#
# - `grouped`: none, dropless. `sort_by_expert(..., host_offsets=False)` finds each expert's first row with a binary search on the device, and `grouped_mm` takes those offsets as a device tensor: the whole forward is queued without waiting. With a capacity, the kept rows' number depends on the routing: two syncs remain (`keep.all()` and `nonzero`).
# - `sorted`: one. A loop over experts in Python needs each expert's row count *on the host*, to slice its rows and launch its product: one `tolist()` of the E+1 offsets. This is the price of a per-expert loop, and why fused grouped GEMMs exist.
# - `naive`: one per expert (`torch.where` is a `nonzero`), so E stalls per layer.
# - The layer itself adds one when `validate_inputs=True` (the default): its finiteness check `bool(isfinite(x).all())`; `validate_inputs=False` removes it.
#
# On the CPU these counts are structural (which operators *would* synchronize on CUDA); `tests/test_gpu.py` checks them on a GPU with CUDA's own counter (`torch.cuda.set_sync_debug_mode`), and `benchmarks/gpu_check.sh` runs those tests and `python -m moe_lab.bench layer --device cuda --dtype bfloat16`, which records the GPU's name, the ratios to a dense FFN and each backend's synchronizations. The same code runs in bfloat16, the GPU's dtype; on this CPU (slowly), the `grouped` and Python `sorted` rungs in bfloat16 stay within bfloat16's rounding of the float32 naive loop:

# %%
half = {label: make_layer(*RUNGS[label]).to(torch.bfloat16) for label in ("naive loop", "sorted (Python)", "grouped")}
x_small = x[:256]
with torch.no_grad():
    reference_32 = make_layer("naive")(x_small)
    half_outputs = {label: layer(x_small.bfloat16()) for label, layer in half.items()}
for label, out in half_outputs.items():
    same = (out.routing.indices == reference_32.routing.indices).all(-1)  # routed alike
    gap = (out.y.float() - reference_32.y)[same].abs().max().item() / reference_32.y.abs().max().item()
    print(f"{label:16s} bfloat16 vs float32 naive: relative gap {gap:.3f} on the {int(same.sum())}/{len(same)} tokens routed alike")
    assert out.y.dtype == torch.bfloat16 and gap < 0.03 and same.float().mean() > 0.9  # 2**-9 per rounding

# %% [markdown]
# GPU figures: the committed results of that benchmark (`benchmarks/results/layer-cuda-*.json`), if any.

# %%
gpu_results = layer_results("cuda")
if gpu_results:
    display(Markdown(layer_ratio_markdown(*gpu_results[-1])))
else:
    display(Markdown("**No GPU figures were measured**: `benchmarks/results/` holds no `layer-cuda-*.json`."
                     " Run `bash benchmarks/gpu_check.sh` on a machine with a CUDA GPU and commit what it writes."))

# %% [markdown]
# ## 5. Memory on the CPU: why the sorted backend keeps its buffers
#
# An MoE layer's backward writes E times more weight gradient than a dense layer of the same active width: three (E, D, F) tensors. On the CPU, glibc serves every allocation above 32 MB with its own `mmap` and returns it to the operating system on free, and smaller ones go back whenever the free space at the top of the heap passes its trim threshold; the next step's fresh tensors then page-fault all of that memory in again. The `sorted` backend takes its large buffers (weight gradients, saved activations, temporaries) from the experts' `BufferPool` (`moe_lab.buffers`): it hands a buffer out again once nothing else references it, so a training loop that sets `.grad = None` every step reuses the same memory.
#
# The effect needs large gradients, so this section uses its own layer: E = 16 experts, D = 512, F = 1024 (each weight gradient 32 MiB, over glibc's 32 MB `mmap` threshold), N = 256 tokens, top-2.
#
# **Claim**: emptying the pool before each step makes a training step allocate at least the three weight gradients' bytes (3·E·D·F·4) more than keeping it; the page faults and times are shown beside, not asserted.

# %%
torch.manual_seed(3)
pooled_layer = MoELayer(MoEConfig(d_model=512, d_expert=1024, n_experts=16, top_k=2, validate_inputs=False))
x_pool, upstream_pool = torch.randn(256, 512), torch.randn(256, 512)


def train_step(clear_pool):
    def run():
        if clear_pool:
            pooled_layer.experts.scratch.clear()
        pooled_layer.zero_grad(set_to_none=True)
        pooled_layer(x_pool).y.backward(upstream_pool)
    return run


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


weight_grad_bytes = 3 * 16 * 512 * 1024 * 4
report = {}
for clear_pool in (False, True):
    step = train_step(clear_pool)
    step()  # warm-up
    with audit_operators() as audit:
        step()
    faults = minor_faults()
    step()
    report[clear_pool] = (audit.allocated_bytes, minor_faults() - faults)
step_times = time_interleaved({"pool kept": train_step(False), "pool emptied each step": train_step(True)}, repeats=2)
for clear_pool, name in ((False, "pool kept"), (True, "pool emptied each step")):
    allocated, faults = report[clear_pool]
    print(f"{name:24s}: {allocated / 2**20:7.1f} MiB allocated per step, {faults:6d} minor page faults,"
          f" {median(step_times[name]) * 1e3:6.1f} ms (median of 2)")
print(f"the three weight gradients: {weight_grad_bytes / 2**20:.0f} MiB")
assert report[True][0] - report[False][0] >= weight_grad_bytes

# %% [markdown]
# Each page fault maps one 4 KiB page (or a 2 MiB huge page, where the kernel uses them): that is the work the pool saves, and it grows with E, since an MoE layer's weight gradients are E times a dense layer's. At E = 32, D = 512, F = 1024 each gradient is 67 MB; the buffer pool's documentation (`moe_lab.buffers`) measured about 20 ms per 67 MB faulted in on the course's 2-core machine, more than the matrix products at small N. That is also why the benchmark can find the sorted layer *faster* than the dense FFN of the same FLOPs at large N: the dense FFN's (N, 2F) temporaries are fresh allocations every call. The committed CPU results say so:

# %%
cpu_results = layer_results()
name, latest = cpu_results[-1]
headline = latest["rows"][0]
shape = headline["shape"]
ratios = headline["ratio_dense_over_backend"]["forward_backward"]
retained = [(n, r) for n, r in cpu_results if r.get("retain_freed_memory")]
text = (f"In `{name}` ({latest['machine']['cpu']}, {latest['machine']['torch_threads']} threads),"
        f" at N={shape['n_tokens']}, D={shape['d_model']}, top-{shape['top_k']} of {shape['n_experts']},"
        f" forward + backward, time(dense) / time(MoE) was "
        + ", ".join(f"{ratio:.2f} for `{backend}`" for backend, ratio in ratios.items())
        + "; over the benchmark's grid of shapes the geometric mean was "
        + ", ".join(f"{r['forward_backward']:.2f} for `{b}`" for b, r in latest["geomean_ratio"].items()) + ".")
if retained:
    r_name, r_result = retained[-1]
    r_ratio = r_result["rows"][0]["ratio_dense_over_backend"]["forward_backward"]["sorted"]
    text += (f" With `--retain-freed-memory` (glibc keeps freed memory for dense and MoE alike), `{r_name}`"
             f" measured {r_ratio:.2f} for `sorted` at the same shape")
    # runs without a sorted_python column predate the C++ kernels: their sorted was the Python engine
    text += ("." if "sorted_python" in r_result["geomean_ratio"]
             else " (a run from before the C++ kernels, when `sorted` was the Python version).")
display(Markdown(text))
assert shape["n_tokens"] == 4096 and set(ratios) >= {"sorted", "grouped"}

# %% [markdown]
# ## 6. Expert parallelism: the experts on several processes
#
# One device cannot hold every expert of a large MoE (DeepSeek-V3's 256 routed experts per
# layer are most of its 671B parameters, measured below), so the experts are spread over
# devices: with **W ranks**
# (processes, one per device), rank r holds experts `[r E/W, (r+1) E/W)` of every MoE layer and
# a replica of everything else (attention, embeddings, the router). Each rank trains on its own
# slice of the batch. In every MoE layer, on every rank at once:
#
# 1. route its own tokens (the router is replicated);
# 2. tell every other rank how many token copies it will send to each of that rank's experts
#    (an all-to-all of E integers), then send the copies themselves: **all-to-all** with
#    variable sizes (`torch.distributed.all_to_all_single`);
# 3. run its local experts on what arrived, with the same dispatch backends as one process;
# 4. send the outputs back with the reverse all-to-all and combine them with the router weights.
#
# The all-to-all only permutes rows between processes, so its backward is the inverse
# permutation: the same all-to-all with the send and receive sizes swapped. The replicated
# parameters are ordinary data parallelism (torch's `DistributedDataParallel` averages their
# gradients); an expert's gradient already arrives summed over every rank's tokens. This is the
# layout of GShard (Lepikhin et al. 2020) and Switch Transformer (Fedus et al. 2021, section 5.4
# and Figure 9, "expert and data parallelism"); `moe_lab.parallel` implements it on
# `torch.distributed`, gloo on the CPU and NCCL on GPUs, with the same code. The README shows
# how to launch it with `torchrun` on one machine or several; here `run_parallel` starts the
# processes from Python.

# %%
EP_LAYER = MoEConfig(
    d_model=32, d_expert=48, n_experts=8, top_k=2,
    aux_loss_weight=0.01, z_loss_weight=1e-3, seq_aux_loss_weight=1e-3,
)  # fmt: skip

# %% [markdown]
# ### Two processes, checked against one
#
# `run_parallel(fn, W, ...)` starts W processes that join one gloo process group and returns
# what `fn` returned on each rank. The function they run, `layer_equality`, builds on every rank
# an `ExpertParallelMoE` holding its 4 of the 8 experts, and a single-process `MoELayer` with
# the same weights that sees both ranks' tokens concatenated. Each rank's loss is
# `sum(y_r * g_r) + aux_loss / W`, so the ranks' losses add up to the single process's; the
# function compares outputs, every balancing loss, and the gradients of the input, the router
# and every expert.
#
# Three cases: tokens routed as the router likes; a skewed routing where rank 0's tokens only
# choose rank 0's experts and rank 1's only rank 1's (each rank sends the other nothing, and the
# last expert gets no token at all); and the same skew with a capacity of 1.0, where tokens are
# dropped. GShard computes capacity per group of tokens, one group per device (section 2.2), so
# which tokens drop depends on the rank's own batch; the single process reproduces it with
# `capacity_groups=W`.

# %%
cases = [
    EqualityCase(EP_LAYER, "random"),
    EqualityCase(EP_LAYER, "skewed"),
    EqualityCase(replace(EP_LAYER, capacity_factor=1.0), "skewed"),
]
equality = run_parallel(layer_equality, 2, cases)  # [rank][case]
names = ["router's choice", "skewed", "skewed, capacity 1.0"]
quantities = list(equality[0][0]["max_diff"])
print(f"{'largest relative difference':>28} " + " ".join(f"{n:>22}" for n in names))
for q in quantities:
    worst = [max(equality[r][c]["max_diff"][q] for r in range(2)) for c in range(len(cases))]
    print(f"{q:>28} " + " ".join(f"{w:22.1e}" for w in worst))
for c, name in enumerate(names):
    sent = [equality[r][c]["sent_rows"] for r in range(2)]
    rows = [equality[r][c]["expert_rows"] for r in range(2)]
    dropped = sum(equality[r][c]["n_dropped"] for r in range(2))
    print(f"{name}: rows sent to the other rank {sent}, rows per expert {rows}, dropped {dropped}")

# %%
worst_overall = max(max(r["max_diff"].values()) for ranks in equality for r in ranks)
assert worst_overall < 1e-5  # float32 round-off: the ranks add the same numbers in other orders
assert all(r["tokens_per_expert_equal"] and r["dropped_equal"] for ranks in equality for r in ranks)
skewed = [equality[r][1] for r in range(2)]
assert [r["sent_rows"] for r in skewed] == [0, 0] and skewed[1]["expert_rows"][-1] == 0
assert sum(equality[r][2]["n_dropped"] for r in range(2)) > 0
capacity_sent = [equality[r][2]["sent_rows"] for r in range(2)]
assert capacity_sent[0] == capacity_sent[1] > 0  # fixed buffers travel even when nothing must
display(Markdown(
    f"Every output, loss and gradient matches the single process to {worst_overall:.1e}"
    " (relative), and the same assignments are dropped. The dropless skewed case exchanges no row"
    " at all and leaves expert 7 idle; with capacity, the same routing drops"
    f" {sum(equality[r][2]['n_dropped'] for r in range(2))} assignments in both runs, and each"
    f" rank still sends its fixed buffers, {capacity_sent[0]} rows each way, full or empty."
))

# %% [markdown]
# The balancing losses need the whole batch. The Switch loss `E sum_i f_i P_i` is built from the
# fraction f_i of assignments and the mean probability P_i of each expert over *all* tokens, so
# the ranks add up their counts and probability sums (one all-reduce, differentiable for P)
# before forming it; the z-loss and DeepSeek-V3's sequence loss are means too. Many frameworks
# instead average a per-rank loss; Qiu et al. 2025 ("Demons in the Detail", the global-batch
# balancing used in Qwen3-MoE) found that the global statistics let experts specialize more.
# Here they are simply what makes two processes equal one.
#
# The tests (`tests/test_parallel.py`) check more of the same: W = 1, 2 and 4, both router kinds
# (softmax top-k and DeepSeek's sigmoid with a bias), four dispatch backends, dropless and capacity
# modes, shared experts, and 20 steps of `ExpertParallelTrainer` against `Trainer` (losses and
# parameters to float32 round-off, a checkpoint resumed bit for bit).

# %% [markdown]
# ### Communication volume
#
# A token copy whose expert lives on another rank crosses the network twice (dispatch and
# combine), D values each way; a copy whose expert is local never leaves its process. With the
# tokens and experts in equal contiguous blocks and uniform routing, a copy is remote with
# probability (W - 1)/W, so one MoE layer moves `2 N K D (W - 1)/W` values per forward, and as
# much again in the backward (`moe_lab.budget.all_to_all_bytes`). The layer counts the bytes it
# sends; below, for N = 256 tokens split over W ranks, the count against the formula evaluated
# on the same routing, and against its uniform expectation.

# %%
N_TOKENS = 256
volume = {}  # (W, K) -> [per rank]
for world in (1, 2, 4):
    tasks = [
        (exchange_volume, replace(EP_LAYER, top_k=k), N_TOKENS // world)
        for k in (1, 2, 4)
    ]
    for k, per_rank in zip((1, 2, 4), zip(*run_parallel(run_tasks, world, tasks))):
        volume[world, k] = per_rank
print(f"{'W':>2} {'K':>2} {'counted (kB)':>13} {'formula, same routing':>22} {'uniform':>9}")
for (world, k), ranks in volume.items():
    counted = sum(r["counted_payload"] for r in ranks)
    formula = sum(r["formula_rank"] for r in ranks)
    uniform = sum(r["uniform_rank"] for r in ranks)
    print(f"{world:>2} {k:>2} {counted / 1e3:13.1f} {formula / 1e3:22.1f} {uniform / 1e3:9.1f}")

# %%
assert all(r["counted_payload"] == r["formula_rank"] for ranks in volume.values() for r in ranks)
assert all(r["counted_payload"] == 0 for r in volume[1, 2])  # one rank: nothing to send
fig = go.Figure()
for k in (1, 2, 4):
    worlds = (1, 2, 4)
    counted = [sum(r["counted_payload"] for r in volume[w, k]) / 1e3 for w in worlds]
    uniform = [sum(r["uniform_rank"] for r in volume[w, k]) / 1e3 for w in worlds]
    fig.add_trace(go.Scatter(x=worlds, y=counted, mode="markers", name=f"counted, K={k}",
                             marker={"size": 10}))
    fig.add_trace(go.Scatter(x=worlds, y=uniform, mode="lines", line={"dash": "dot"},
                             name=f"uniform routing, K={k}"))
fig.update_layout(title=f"Bytes one MoE layer sends per training step (N={N_TOKENS}, D=32, fp32)",
                  xaxis_title="W (ranks)", yaxis_title="kB, all ranks", height=420)
fig.show()

# %% [markdown]
# The count equals the formula on the same routing to the byte, on every rank. The volume grows
# linearly with K and approaches its ceiling `4 N K D` (forward and backward) as W grows: with
# many ranks almost every copy is remote. The formula has no expert width F in it: the experts
# stay put and only activations move, which is why fine-grained MoEs with large K (DeepSeek-V3:
# K = 8) pay more for communication per FLOP than coarse ones, and why DeepSeek-V3 limits each
# token to 4 nodes (its section 2.1.2). With a capacity factor the buffers are sent whether full
# or not, cf times the dropless expectation whatever the routing.

# %% [markdown]
# ### Where the time goes (loopback on one CPU)
#
# Two ranks on this machine, each on one thread, with a larger layer (D = 128, F = 256, 2048
# tokens per rank). The layer times its own experts and each exchange. These exchanges are gloo
# over loopback TCP between two processes sharing the same CPU and memory: they measure this
# machine, **not a network**. Between GPUs the all-to-all runs over NVLink or InfiniBand, at
# other speeds entirely.

# %%
big = MoEConfig(d_model=128, d_expert=256, n_experts=8, top_k=2, validate_inputs=False)
timing = run_parallel(exchange_timing, 2, big, 2048)
parts = ["experts", "counts", "dispatch", "combine", "dispatch.backward", "combine.backward"]
fig = go.Figure()
for name in parts:
    fig.add_trace(go.Bar(name=name, x=[f"rank {r}" for r in range(2)],
                         y=[timing[r].get(name, 0.0) * 1e3 for r in range(2)]))
rest = [timing[r]["step"] - sum(timing[r].get(n, 0.0) for n in parts) for r in range(2)]
fig.add_trace(go.Bar(name="rest (router, sort, combine, expert backward)",
                     x=[f"rank {r}" for r in range(2)], y=[v * 1e3 for v in rest]))
fig.update_layout(barmode="stack", height=380, yaxis_title="ms (median of 5 steps)",
                  title="One forward + backward, loopback on one CPU: not network figures")
fig.show()
for r in range(2):
    exchange = sum(timing[r].get(n, 0.0) for n in parts[1:])
    print(f"rank {r}: step {timing[r]['step'] * 1e3:.0f} ms, experts (forward) "
          f"{timing[r]['experts'] * 1e3:.0f} ms, exchanges {exchange * 1e3:.0f} ms "
          f"({exchange / timing[r]['step']:.0%} of the step)")

# %% [markdown]
# The exchange times include waiting for the other rank to arrive: an all-to-all finishes only
# when everyone has sent. That wait is the subject of the next measurement. These figures vary
# from run to run and machine to machine; nothing here asserts on them.

# %% [markdown]
# ### Stragglers: the busiest rank sets the pace
#
# Every all-to-all is a barrier, so a step takes as long as its slowest rank. Below, the router's
# selection bias (the knob loss-free balancing turns) is raised for rank 0's experts: 0 routes as
# the router likes, and since probabilities are at most 1, a bias of 1 sends every copy to rank
# 0. The rows each rank's experts compute are deterministic; the times beside them are measured.

# %%
biases = (0.0, 0.1, 1.0)
straggle = list(zip(*run_parallel(
    run_tasks, 2, [(straggler_step, big, 2048, b) for b in biases]
)))  # [bias][rank]
total_rows = 2 * 2048 * big.top_k
print(f"{'bias':>5} {'rows rank 0':>12} {'rows rank 1':>12} {'mean/max':>9}"
      f" {'experts ms (r0, r1)':>22} {'in exchanges ms':>18} {'step ms':>9}")
efficiency = []
for b, ranks in zip(biases, straggle):
    rows = [r["expert_rows"] for r in ranks]
    efficiency.append(sum(rows) / len(rows) / max(rows))
    print(f"{b:5.1f} {rows[0]:12d} {rows[1]:12d} {efficiency[-1]:9.2f}"
          f" {ranks[0]['experts'] * 1e3:10.0f} {ranks[1]['experts'] * 1e3:10.0f}"
          f" {ranks[0]['exchange'] * 1e3:8.0f} {ranks[1]['exchange'] * 1e3:8.0f}"
          f" {max(r['step'] for r in ranks) * 1e3:9.0f}")

# %%
assert all(sum(r["expert_rows"] for r in ranks) == total_rows for ranks in straggle)
assert straggle[-1][1]["expert_rows"] == 0 and straggle[-1][0]["expert_rows"] == total_rows
assert efficiency[0] > efficiency[1] > efficiency[2] == 0.5
display(Markdown(
    f"With the router's own choice the busier rank computes {1 / efficiency[0]:.2f}x the mean;"
    f" with every copy on rank 0 it computes {1 / efficiency[-1]:.0f}x the mean while rank 1"
    " idles, waiting inside the all-to-all (its exchange time above). On separate devices the step"
    " time follows the busiest rank, so the useful fraction of the hardware is mean/max"
    " (`1 / (1 + MaxVio)` in `moe_lab.balancing.max_violation`): this is what load balancing"
    " buys under expert parallelism. On this machine the two ranks also share two cores and the"
    " memory bus, so the measured times move less cleanly than on separate devices."
))

# %% [markdown]
# ### Memory per device
#
# Expert parallelism divides only the experts: each rank holds E/W of them and a full copy of
# everything else. Counted from the modules on each rank of the course's `tiny-moe`, against
# `replicated + experts / W`:

# %%
tiny_counts = count_parameters(from_model_config(get_preset("tiny-moe")))
routed, whole = tiny_counts.routed_experts, tiny_counts.total()
print(f"tiny-moe: {whole:,} parameters, {routed / whole:.0%} of them in routed experts")
for world in (2, 4):
    per_rank = run_parallel(memory_per_rank, world, get_preset("tiny-moe"))
    for r in per_rank:
        assert r["expert"] == routed // world and r["replicated"] == whole - routed
    held = per_rank[0]["expert"] + per_rank[0]["replicated"]
    print(f"W={world}: {held:,} parameters per rank ({held / whole:.0%} of {whole:,});"
          f" AdamW adds 2 float32 values per parameter")

# %% [markdown]
# For a published model the same split, in bf16 weights per device (`moe_lab.budget`):

# %%
print(f"{'model':>14} {'W=1':>9} {'W=8':>9} {'W=E':>9}   (GB of bf16 weights per device)")
for name in ("Mixtral-8x7B", "DeepSeek-V3"):
    c, n_experts = PUBLISHED[name].counts(), PUBLISHED[name].spec().moe.n_experts
    per_device = [(c.total() - c.routed_experts + c.routed_experts / w) * 2 / 1e9
                  for w in (1, 8, n_experts)]
    print(f"{name:>14} " + " ".join(f"{gb:8.1f}G" for gb in per_device) + f"   (E={n_experts})")
v3 = PUBLISHED["DeepSeek-V3"].counts()
assert v3.routed_experts / v3.total() > 0.9  # almost all of DeepSeek-V3 is routed experts
display(Markdown(
    f"DeepSeek-V3's routed experts are {v3.routed_experts / v3.total():.0%} of its parameters, so"
    " expert parallelism is what makes it fit; the replicated rest"
    f" ({(v3.total() - v3.routed_experts) * 2 / 1e9:.0f} GB in bf16) is a floor that more ranks"
    " do not lower (attention and embeddings need other parallelism: tensor or pipeline)."
))

# %% [markdown]
# ## 7. Group-limited routing: how many devices does a token touch?
#
# With expert parallelism each device holds a contiguous block of experts, and a token's activation travels to every device holding one of its K experts. Plain top-K puts a token's experts anywhere. DeepSeek limits it: split the E experts into `n_group` contiguous groups (one per device or node), choose the best `topk_group` groups, then the top-K experts inside them only (`moe_lab.group_routing`).
#
# - DeepSeek-V2 (`topk_method="group_limited_greedy"`): a group's score is its best expert's; 160 routed experts in 8 groups, top 3 (DeepSeek-V2 paper, section 2.2.2, "device-limited routing": "when M ⩾ 3, the device-limited routing can achieve a good performance roughly aligned with the unrestricted top-K routing").
# - DeepSeek-V3 (`topk_method="noaux_tc"`): a group's score is the sum of its two best bias-corrected scores (the V3 report, section 2.1.2: nodes "selected according to the sum of the highest K_r/M affinity scores", K_r/M = 8/4 = 2); 256 routed experts in 8 groups, top 4, K = 8, as in its `config.json`.
#
# `moe_config_from_hf` reads these fields, so a loaded DeepSeek-V3 block routes as the real model does (tests/test_group_routing.py checks it against the transformers library's blocks). The two group scores can disagree, as a hand-sized case shows: experts {0, 1} and {2, 3} with scores 0.9, 0.1 | 0.8, 0.7 and one group allowed.

# %%
scores = torch.tensor([[0.9, 0.1, 0.8, 0.7]])
v2_choice = select_experts(scores, 2, "group_limited_greedy", n_group=2, topk_group=1)
v3_choice = select_experts(scores, 2, "noaux_tc", n_group=2, topk_group=1)
print("plain top-2:", select_experts(scores, 2).tolist(), "| V2 (max):", v2_choice.tolist(), "| V3 (sum of top-2):", v3_choice.tolist())
# V2: group maxima 0.9 vs 0.8 -> group {0, 1}; V3: sums 1.0 vs 1.5 -> group {2, 3}
assert v2_choice.tolist() == [[0, 1]] and v3_choice.tolist() == [[2, 3]]

# %% [markdown]
# Now DeepSeek-V3's routing shape (the released config's routing fields; the width shrunk to D = 64, since only the choice matters here), on 4096 random tokens through a randomly initialized router, with and without the group limit. Without it, if the K experts were a uniformly random K-subset, a token would touch on average `G·(1 − C(E − E/G, K) / C(E, K))` of the G groups (linearity of expectation: a group is missed when all K experts come from the others).
#
# **Claims**: with the limit no token touches more than 4 groups; without it the mean is within 0.2 of that formula and some tokens touch more than 4; and the limit costs little routing quality here: the chosen experts' summed score drops by a small fraction on average.

# %%
v3_routing = {"model_type": "deepseek_v3", "hidden_size": 7168, "moe_intermediate_size": 2048,
              "n_routed_experts": 256, "num_experts_per_tok": 8, "n_shared_experts": 1,
              "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
              "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4}  # deepseek-ai/DeepSeek-V3 config.json
limited_config = moe_config_from_hf(v3_routing, d_model=64, d_expert=16)
torch.manual_seed(2)
limited = MoELayer(limited_config).router
unlimited = MoELayer(MoEConfig(**{**limited_config.__dict__, "topk_method": "greedy", "topk_group": 8})).router
unlimited.load_state_dict(limited.state_dict())
tokens = torch.randn(4096, 64)
with torch.no_grad():
    with_limit, without_limit = limited(tokens), unlimited(tokens)
G, E_v3, K_v3 = limited_config.n_group, limited_config.n_experts, limited_config.top_k
touched = {"with the limit (top 4 of 8 groups)": groups_touched(with_limit.indices, E_v3, G),
           "without": groups_touched(without_limit.indices, E_v3, G)}
formula = expected_groups_touched(E_v3, G, K_v3)
sigmoid_scores = torch.sigmoid(tokens @ limited.gate.weight.T)
kept_score = (sigmoid_scores.gather(-1, with_limit.indices).sum(-1) / sigmoid_scores.gather(-1, without_limit.indices).sum(-1))
changed = (with_limit.indices.sort(-1).values != without_limit.indices.sort(-1).values).any(-1)
for name, t in touched.items():
    print(f"{name:36s} mean {t.float().mean():.2f} groups, max {int(t.max())}, share above 4: {(t > 4).float().mean():.1%}")
print(f"formula for random 8-subsets of 256 in 8 groups: {formula:.2f}")
print(f"tokens whose experts changed: {changed.float().mean():.1%}; chosen score kept: {kept_score.mean():.1%} on average, {kept_score.min():.1%} at worst")
figure = go.Figure([go.Bar(name=name, x=list(range(1, 9)), y=[int((t == g).sum()) for g in range(1, 9)]) for name, t in touched.items()])
figure.update_layout(title="Groups (nodes) a token's 8 experts live on, DeepSeek-V3 routing shape, 4096 random tokens",
                     xaxis_title="groups touched", yaxis_title="tokens", barmode="group", height=360)
figure.show()
limited_touched, free_touched = touched.values()
assert int(limited_touched.max()) <= 4
assert abs(free_touched.float().mean().item() - formula) < 0.2 and (free_touched > 4).any()
assert kept_score.mean() > 0.9

# %% [markdown]
# What it buys: DeepSeek-V3 sends a token across nodes (InfiniBand) once per node it uses and forwards it inside the node over NVLink (V3 report, section 3.2.2), so the cross-node traffic per token is proportional to the nodes touched. For this random router that is the ratio of the two means above; a trained router's choices are not uniformly spread, so its figures differ, and this cell shows the mechanism, not DeepSeek's numbers. The check on quality is DeepSeek's own (V2, section 2.2.2): with at least 3 of 8 groups, routing performs about as well as unrestricted top-K.

# %%
ratio = limited_touched.float().mean() / free_touched.float().mean()
display(Markdown(f"Here the limit cuts the mean nodes per token from {free_touched.float().mean():.2f} to"
                 f" {limited_touched.float().mean():.2f}: cross-node bytes × {ratio:.2f}."))
assert ratio < 1

# %% [markdown]
# ## Check yourself
#
# 1. The masked loop needs no gather, no sort and no host synchronization. What does it pay instead, exactly, at top-2 of 8? When would you still choose it?
# <details><summary>Answer</summary>
#
# E/K = 4 times the expert FLOPs (section 2 counts it: every expert runs on every token, three quarters of the products multiplied by zero). It can pay off when E/K is small and static shapes matter more than FLOPs: a compiler that needs fixed shapes, or a tiny model where launch overhead dominates.
# </details>
#
# 2. GShard's one-hot einsum: how do its dispatch tensor and its einsum FLOPs grow with the number of tokens N at a fixed capacity factor, and why?
# <details><summary>Answer</summary>
#
# Quadratically. C = cf·N·K/E grows with N, so the (N, E, C) tensors hold N·E·C = cf·K·N² entries, and each einsum costs 2·N·E·C·D FLOPs. Section 3 counted the batched-matmul FLOPs growing more than 2.5 times when N doubles (the experts' part doubles, the einsums' part quadruples). GShard bounded it by splitting the batch into groups of tokens.
# </details>
#
# 3. On a GPU, which host synchronization remains in the `sorted` backend's forward, why can't it go, and how does `grouped` avoid it?
# <details><summary>Answer</summary>
#
# One `tolist()` of the expert offsets: a Python loop over experts must know each expert's row count on the host to slice its rows and launch its matrix product. `grouped` passes the offsets, computed on the device by a binary search of the sorted expert ids, straight to `grouped_mm`, which reads them on the device: nothing waits.
# </details>
#
# 4. Why are this notebook's timings shown and its FLOPs, operator counts, bytes and synchronizations asserted?
# <details><summary>Answer</summary>
#
# Counts are deterministic: the same code on the same shapes gives the same numbers on any machine under any load. Timings depend on the machine and on what else runs; an assert on a wall-clock relation fails on a busy laptop or CI runner without anything being wrong.
# </details>
#
# 5. DeepSeek-V2 scores an expert group by its best expert, DeepSeek-V3 by the sum of its two best. Give a case where they choose different groups, and say why V3's score suits K = 8 from 4 nodes.
# <details><summary>Answer</summary>
#
# Scores 0.9, 0.1 | 0.8, 0.7 with one group allowed: V2 takes the first group (0.9 > 0.8), V3 the second (1.5 > 1.0). With K = 8 experts spread over M = 4 nodes a token uses about K/M = 2 experts per node, so the sum of a node's best two estimates what the node would contribute; the single best expert ignores the second one the token would also use.
# </details>
#
# 6. With DeepSeek-V3's limit (top 4 of 8 groups), what is the most nodes a token's 8 experts can use, and what happens to its cross-node traffic?
# <details><summary>Answer</summary>
#
# At most 4 (without the limit up to 8; about 5.3 on average for random choices, section 7). Since V3 sends a token over InfiniBand once per node it uses, the cross-node bytes per token fall in proportion to the nodes touched.
# </details>
#
# 7. Why is the backward of the dispatch all-to-all another all-to-all, and which one?
# <details><summary>Answer</summary>The all-to-all moves each row from one rank to another
# without changing it: a permutation of the rows of all ranks together. The gradient of a
# permutation is its inverse, so each gradient row is sent back to where its row came from:
# the all-to-all with the send and receive sizes swapped.</details>
#
# 8. With W = 2 and a skewed routing, can one rank send more bytes than the other?
# <details><summary>Answer</summary>No. A rank sends its remote copies (dispatch) and the
# outputs for the copies it received (combine). With two ranks, what rank 0 receives is what
# rank 1 sent, so both send s0 + s1 rows. From W = 3 on the per-rank volumes differ
# (`all_to_all_bytes(..., expert_indices=...)["by_rank"]`).</details>
#
# 9. With a capacity factor, does expert parallelism drop the same tokens as one process with
# the same capacity factor?
# <details><summary>Answer</summary>Not in general: each rank fills its own share of every
# expert's capacity from its own tokens (GShard's local groups, section 2.2), so which tokens
# drop depends on the rank's batch. One process drops the same tokens when it counts capacity
# per group too: `capacity_groups=W`.</details>
#
# **Next**: notebook 08, the interview grill.

# %% [markdown]
# ## Exercises
#
# Implement it yourself, then let the library grade it. Each exercise comes in three cells:
#
# - **the exercise cell** holds a function `my_...` whose body is `raise NotImplementedError`: replace that line with your code and run the cell;
# - **the hidden solution** (collapsed; tagged `solution`) defines a reference implementation named `..._solution`. Expand it when you are stuck or done; it has its own name, so it never overwrites yours;
# - **the check cell**, `check_...(my_..., reference=..._solution)`, runs your function on seeded random cases against `moe_lab`'s own implementation and says exactly what differs: the shape, the value at a named case, the host synchronization, and the mistake when your output is exactly what a common one gives. Until you have written yours, it checks the hidden solution instead and says so. That is what CI runs, so every checker and every solution is tested each time this notebook runs.
#
# The checkers live in `moe_lab.exercises`; the next cell is all the exercises need, so you can start here without running the cells above.

# %%
import torch

from moe_lab.exercises.gpu_and_scaling import check_all_to_all_splits, check_expert_offsets, check_group_limited_topk


# %% [markdown]
# ### Exercise 1: the group offsets, without a host synchronization
#
# After the sort, the rows of a sorted dispatch are grouped by expert: `sorted_expert_ids` (M,) is ascending, and expert e's rows are `[offsets[e], offsets[e + 1])`. `grouped` hands these offsets to `grouped_mm` as a device tensor (section 4), so they must be computed without reading any value back to the host.
# Write `my_expert_offsets(sorted_expert_ids, n_experts)` returning the (E + 1,) integer tensor of offsets: `offsets[e]` is the first row of expert e, `offsets[E] = M`; an expert with no row has an empty range.
# The check compares with `sort_by_expert(..., host_offsets=False).device_offsets`, with empty experts (the first, the last, most of them), and runs your function under `audit_operators`: a `bincount`, `.item()`, `.tolist()`, `nonzero` or a tensor built from Python numbers fails it, as it would stall a GPU.

# %%
def my_expert_offsets(sorted_expert_ids, n_experts):
    # sorted_expert_ids (M,) long, ascending -> offsets (E + 1,) long, on the same device
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def expert_offsets_solution(sorted_expert_ids, n_experts):
    # the first row of each expert e = 0 .. E: a binary search on the device, no value read back
    expert_ids = torch.arange(n_experts + 1, device=sorted_expert_ids.device)  # (E+1,)
    return torch.searchsorted(sorted_expert_ids, expert_ids)  # (E+1,), offsets[E] = M


# %%
check_expert_offsets(my_expert_offsets, reference=expert_offsets_solution)


# %% [markdown]
# ### Exercise 2: the all-to-all's split sizes
#
# Before its dispatch all-to-all, every rank of section 6 must know how many token copies it sends to each rank (`all_to_all_single`'s `input_split_sizes`) and receives from each (`output_split_sizes`). Rank r holds tokens `[r·N/W, (r+1)·N/W)` and experts `[r·E/W, (r+1)·E/W)`; a token sends one copy per chosen expert, and a copy whose expert is on its own rank still counts in its own chunk (`all_to_all_single` copies it in memory).
# Write `my_all_to_all_splits(expert_indices, n_experts, world_size)`: from the routing `expert_indices` (N, K) of all ranks' tokens in rank order, return the (W, W) integer matrix `splits[r, s]`, the copies rank r sends to rank s. Row r is rank r's send sizes, column r its receive sizes, and the combine all-to-all uses the transpose.
# The check compares with the split sizes `ExpertParallelMoE` builds from the same routing (each rank sorts its copies by expert and adds up each rank's block), for W = 1, 2 and 4 and a routing that sends everything to rank 0, and the bytes your off-diagonal entries imply with `moe_lab.budget.all_to_all_bytes`.

# %%
def my_all_to_all_splits(expert_indices, n_experts, world_size):
    # expert_indices (N, K) long, tokens in rank order -> splits (W, W) long
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def all_to_all_splits_solution(expert_indices, n_experts, world_size):
    n_tokens = expert_indices.shape[0]
    source = torch.arange(n_tokens) // (n_tokens // world_size)  # (N,): rank of each token
    destination = expert_indices // (n_experts // world_size)  # (N, K): rank of each copy's expert
    pairs = source[:, None] * world_size + destination  # (N, K): flat (source, destination)
    counts = torch.bincount(pairs.flatten(), minlength=world_size**2)  # (W*W,)
    return counts.view(world_size, world_size)  # [r, s]: copies rank r sends to rank s


# %%
check_all_to_all_splits(my_all_to_all_splits, reference=all_to_all_splits_solution)


# %% [markdown]
# ### Exercise 3: DeepSeek's group-limited top-k
#
# Write `my_group_limited_topk(scores, top_k, n_group, topk_group, method)` as section 7 describes it: the E experts form `n_group` contiguous groups of E/G; each token keeps its best `topk_group` groups by a group score, then its `top_k` experts inside those groups only. `method` is `"group_limited_greedy"` (DeepSeek-V2: a group's best score) or `"noaux_tc"` (DeepSeek-V3: the sum of its two best). Return the (N, K) indices, largest score first, as `torch.topk` returns them.
# The check compares with `moe_lab.group_routing.select_experts`, on section 7's hand case, on DeepSeek-V3's shape (256 experts, 8 groups, top 4, K = 8) and on scores below 0 (a sigmoid plus a negative selection bias), where an excluded expert must lose to every allowed one.

# %%
def my_group_limited_topk(scores, top_k, n_group, topk_group, method):
    # scores (N, E) -> indices (N, K) long, largest first
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def group_limited_topk_solution(scores, top_k, n_group, topk_group, method):
    n_tokens, n_experts = scores.shape
    grouped = scores.view(n_tokens, n_group, n_experts // n_group)  # (N, G, E/G): contiguous
    if method == "group_limited_greedy":  # DeepSeek-V2: a group's best expert
        group_score = grouped.amax(dim=-1)  # (N, G)
    else:  # "noaux_tc", DeepSeek-V3: the sum of a group's two best
        group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (N, G)
    best = group_score.topk(topk_group, dim=-1).indices  # (N, M)
    allowed = torch.zeros_like(group_score, dtype=torch.bool).scatter(1, best, True)  # (N, G)
    allowed = allowed.repeat_interleave(n_experts // n_group, dim=1)  # (N, G) -> (N, E)
    limited = scores.masked_fill(~allowed, float("-inf"))  # excluded experts can never win
    return limited.topk(top_k, dim=-1).indices  # (N, K), largest first


# %%
check_group_limited_topk(my_group_limited_topk, reference=group_limited_topk_solution)
