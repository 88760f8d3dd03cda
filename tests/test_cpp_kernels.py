"""The C++ expert step (moe_lab/csrc) against its Python reference, and how it is built.

tests/test_dispatch.py already runs ``sorted`` (C++ on the CPU) and ``sorted_python`` against the
naive loop on every router; here: float64 agreement to rounding, the gradient of only some
inputs, independence from the thread count, and the build's failure paths.
"""

import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moe_lab import MoEConfig, MoELayer, cpp_kernels
from moe_lab.dispatch import dispatch_sorted
from moe_lab.dispatch.sorted_cpp import SortedExpertsCppFunction, cpp_kernels_apply
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult


def test_kernels_build_and_load_on_this_machine():
    # Machines of this project's kind have a C++ compiler; a broken build must turn CI red rather
    # than leave the sorted dispatch silently on its slower Python version.
    assert cpp_kernels.load_kernels(), cpp_kernels.kernel_status()
    assert "OpenMP" in cpp_kernels.kernel_status()
    assert cpp_kernels_apply(torch.zeros(2, 2))
    assert not cpp_kernels_apply(torch.zeros(2, 2, dtype=torch.bfloat16))


def test_sorted_runs_the_cpp_function_on_cpu_float32():
    layer = MoELayer(MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2))
    out = layer(torch.randn(10, 8))
    names = []
    stack = [out.y.grad_fn]
    while stack:  # every node of the backward graph
        node = stack.pop()
        if node is not None:
            names.append(type(node).__name__)
            stack.extend(next_node for next_node, _ in node.next_functions)
    assert "SortedExpertsCppFunctionBackward" in names
    assert "SortedExpertsFunctionBackward" not in names


def routed_inputs(n_tokens, n_experts, top_k, d_model, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, d_model, dtype=dtype, generator=generator)
    logits = torch.randn(n_tokens, n_experts, dtype=dtype, generator=generator)
    indices = logits.topk(top_k, dim=-1).indices  # (N, K)
    indices[:, 0] = indices[:, 0].clamp(max=n_experts - 2)  # the last expert may get nothing
    return x, logits, indices


def run(engine, experts, x, logits, indices, capacity, need):
    """y and the gradients of the inputs named in ``need`` (the others do not require grad)."""
    x = x.clone().requires_grad_("x" in need)
    logits = logits.clone().requires_grad_("weights" in need)
    for name, weight in (("w_gate", experts.w_gate), ("w_up", experts.w_up)):
        if weight is not None:
            weight.requires_grad_(name in need)
    experts.w_down.requires_grad_("w_down" in need)
    probs = logits.softmax(-1)  # (N, E)
    routing = RoutingResult(indices, probs.gather(-1, indices), probs, logits)
    y = dispatch_sorted(x, routing, experts, capacity, engine=engine).y
    upstream = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    inputs = {"x": x, "weights": logits, "w_gate": experts.w_gate, "w_up": experts.w_up}
    inputs["w_down"] = experts.w_down
    wanted = [name for name in need if inputs[name] is not None]
    grads = torch.autograd.grad((y * upstream).sum(), [inputs[name] for name in wanted])
    return y.detach(), dict(zip(wanted, grads, strict=True))


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize(
    ("n_tokens", "n_experts", "top_k", "capacity"),
    [(64, 5, 2, None), (300, 8, 3, None), (200, 4, 1, None), (120, 6, 2, 25)],
)
@pytest.mark.parametrize(
    "need", [("x", "weights", "w_gate", "w_up", "w_down"), ("w_up",), ("x",), ("weights",)]
)
def test_cpp_equals_python_in_float64(activation, n_tokens, n_experts, top_k, capacity, need):
    # Same arithmetic in a different order of operations: float64 agrees to ~1e-15 relative.
    torch.manual_seed(0)
    experts = StackedExperts(n_experts, 16, 24, activation).double()
    x, logits, indices = routed_inputs(n_tokens, n_experts, top_k, 16, torch.float64, seed=1)
    y_ref, grads_ref = run("python", experts, x, logits, indices, capacity, need)
    y_cpp, grads_cpp = run("auto", experts, x, logits, indices, capacity, need)
    torch.testing.assert_close(y_cpp, y_ref, rtol=1e-12, atol=1e-12)
    assert grads_cpp.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_cpp[name], grad, rtol=1e-12, atol=1e-12, msg=name)


def test_result_does_not_depend_on_the_thread_count():
    # Each expert is one task and each product runs on one thread, so 1 and 2 threads compute
    # every number in the same order: bitwise equal, not just close.
    experts = StackedExperts(8, 32, 48)
    x, logits, indices = routed_inputs(512, 8, 2, 32, torch.float32, seed=2)
    need = ("x", "weights", "w_gate", "w_up", "w_down")
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(run("auto", experts, x, logits, indices, None, need))
    finally:
        torch.set_num_threads(threads)
    (y1, grads1), (y2, grads2) = results
    assert torch.equal(y1, y2)
    for name in need:
        assert torch.equal(grads1[name], grads2[name]), name


def test_function_saves_what_the_python_version_saves():
    # The two Functions are interchangeable: the same 13 saved tensors, in the same order.
    experts = StackedExperts(4, 8, 12)
    x, logits, indices = routed_inputs(20, 4, 2, 8, torch.float32, seed=3)
    probs = logits.softmax(-1)
    routing = RoutingResult(indices, probs.gather(-1, indices), probs, logits)
    python = dispatch_sorted(x.requires_grad_(), routing, experts, engine="python").y.grad_fn
    cpp = dispatch_sorted(x, routing, experts).y.grad_fn
    assert isinstance(cpp, SortedExpertsCppFunction._backward_cls)
    assert len(cpp.saved_tensors) == len(python.saved_tensors) == 13
    for a, b in zip(cpp.saved_tensors, python.saved_tensors, strict=True):
        assert (a is None and b is None) or a.shape == b.shape


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
    """A process state that has not tried to load yet, and an empty cache. (Tests using it
    must not build successfully: a second library cannot register the same operators.)"""
    monkeypatch.setattr(cpp_kernels, "_STATE", cpp_kernels.KernelState())
    monkeypatch.setenv(cpp_kernels.CACHE_VARIABLE, str(tmp_path))
    return tmp_path


def test_turned_off_by_the_environment_without_a_warning(fresh_state, monkeypatch):
    monkeypatch.setenv(cpp_kernels.DISABLE_VARIABLE, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cpp_kernels.load_kernels()
    assert "turned off by MOE_LAB_KERNELS=0" in cpp_kernels.kernel_status()
    assert not cpp_kernels_apply(torch.zeros(2, 2))


def test_missing_compiler_warns_once_and_is_remembered(fresh_state, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-x9")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found.*no-such-compiler-x9"):
        assert not cpp_kernels.load_kernels()
    with warnings.catch_warnings():  # the same process does not warn again
        warnings.simplefilter("error")
        assert not cpp_kernels.load_kernels()
    assert cpp_kernels.kernel_status().startswith("Python version")
    failed = sorted(fresh_state.rglob("*.failed"))
    assert len(failed) == 2  # with and without OpenMP, each remembered for other processes

    # another process (a fresh state) does not call the compiler again, and says how to retry
    monkeypatch.setattr(cpp_kernels, "_STATE", cpp_kernels.KernelState())
    monkeypatch.setattr(cpp_kernels, "_build", None)  # calling it would raise a TypeError
    with pytest.warns(RuntimeWarning, match="an earlier build failed: delete"):
        assert not cpp_kernels.load_kernels()


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize(
    "need", [("x", "weights", "w_gate", "w_up", "w_down"), ("x",), ("w_down",), ("weights",)]
)
def test_flop_counter_counts_every_expert_product(activation, need):
    # Counted by hand, with M = N*K = 180 sorted rows and one product = 2*M*D*F FLOPs. Forward:
    # P products (gate, up, down for SwiGLU: P = 3; up, down for GELU: P = 2). Backward: dL/dh =
    # dL/dout @ w_down^T always; P - 1 more for dL/dx (one per input projection); one per
    # weight gradient asked for. (Not compared with the Python version under the counter:
    # torch 2.13's FlopCounterMode has no formula for the in-place addmm_ that version uses
    # to add the gate's share of dL/dx, so it under-counts it.)
    experts = StackedExperts(6, 16, 24, activation)
    x, logits, indices = routed_inputs(90, 6, 2, 16, torch.float32, seed=4)
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        probs = logits.softmax(-1)
        routing = RoutingResult(indices, probs.gather(-1, indices), probs, logits)
        dispatch_sorted(x, routing, experts)
    with FlopCounterMode(display=False) as training:
        run("auto", experts, x, logits, indices, None, need)
    product = 2 * 180 * 16 * 24
    projections = 3 if activation == "swiglu" else 2
    weight_grads = sum(
        name in need for name in ("w_gate", "w_up", "w_down") if getattr(experts, name) is not None
    )
    backward = 1 + ("x" in need) * (projections - 1) + weight_grads
    if need == ("weights",):  # dL/dw[n, k] = <dL/dy[n], expert output>: no product at all
        backward = 0
    assert forward.get_total_flops() == product * projections
    assert training.get_total_flops() == product * (projections + backward)


def test_unknown_engine_fails_loudly():
    experts = StackedExperts(4, 8, 12)
    x, logits, indices = routed_inputs(10, 4, 2, 8, torch.float32, seed=5)
    probs = logits.softmax(-1)
    routing = RoutingResult(indices, probs.gather(-1, indices), probs, logits)
    with pytest.raises(ValueError, match="engine='cuda' is unknown: choose 'auto' or 'python'"):
        dispatch_sorted(x, routing, experts, engine="cuda")


def test_compile_notice_goes_to_stderr_outside_a_kernel(fresh_state, monkeypatch, capsys, tmp_path):
    # a "compiler" that exists but fails: the notice prints before it runs, then the build fails
    fake = tmp_path / "failing-cxx"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    with pytest.warns(RuntimeWarning, match="could not build"):
        assert not cpp_kernels.load_kernels()
    captured = capsys.readouterr()
    assert "compiling the C++ expert kernels" in captured.err
    assert "compiling" not in captured.out  # stdout stays clean for programs that read it


@pytest.mark.slow
def test_compile_notice_is_not_an_error_box_in_jupyter(monkeypatch, tmp_path):
    # JupyterLab draws a kernel's stderr stream as a pink error box: in a real kernel the
    # first-use notice must arrive on stdout. The failing "compiler" keeps the test fast.
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    fake = tmp_path / "failing-cxx"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv(cpp_kernels.CACHE_VARIABLE, str(tmp_path / "cache"))
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("from moe_lab.cpp_kernels import load_kernels\nload_kernels()")
    ]
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300).execute()
    streams = [o for o in notebook.cells[0].outputs if o.output_type == "stream"]
    stdout = "".join(o.text for o in streams if o.name == "stdout")
    stderr = "".join(o.text for o in streams if o.name == "stderr")
    assert "compiling the C++ expert kernels" in stdout
    assert "compiling" not in stderr
    assert "could not build the C++ kernels" in stderr  # the failure itself is a warning
