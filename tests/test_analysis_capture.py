"""moe_lab.analysis.capture: routing read from the model's own outputs, labels aligned.

References: the model's forward pass on the same windows (for the routing), the split's own
tensors (for the labels) and ``moe_lab.data.char_class`` (for typed text).
"""

from __future__ import annotations

import pytest
import torch

from moe_lab.analysis import UNKNOWN, capture_routing, capture_text, moe_inputs
from moe_lab.config import ModelConfig, MoEConfig
from moe_lab.data import char_class, make_corpus
from moe_lab.model import TinyLM


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(n_chars=20_000, seed=1)


@pytest.fixture(scope="module")
def model() -> TinyLM:
    torch.manual_seed(0)
    moe = MoEConfig(d_model=32, d_expert=32, n_experts=4, top_k=2, validate_inputs=False)
    config = ModelConfig(
        d_model=32, n_layers=3, n_heads=2, max_seq_len=16, d_ff=64, moe=moe, moe_every=1
    )
    return TinyLM(config)


def test_capture_equals_the_forward_pass_and_keeps_labels(model, corpus) -> None:
    capture = capture_routing(model, corpus.val, corpus.domain_names, batch_windows=7)
    n_windows = (len(corpus.val) - 1) // 16
    assert len(capture) == n_windows * 16 and capture.layers == [0, 1, 2]
    # labels: the split's own, token for token
    assert torch.equal(capture.tokens, corpus.val.tokens[: n_windows * 16].long())
    assert torch.equal(capture.domain, corpus.val.domain[: n_windows * 16].long())
    assert torch.equal(capture.char_class, corpus.val.char_class[: n_windows * 16].long())
    assert capture.position.tolist()[:18] == [*range(16), 0, 1]
    # routing: what the model returns for the same windows in one batch
    windows = capture.tokens.view(n_windows, 16)
    model.eval()
    with torch.no_grad():
        out = model(windows)
    for layer in capture.layers:
        routing = out.moe_outputs[layer].routing
        assert torch.equal(capture.indices[layer], routing.indices)
        assert torch.allclose(capture.weights[layer], routing.weights.float(), atol=1e-6)
        assert torch.allclose(capture.probs[layer], routing.probs, atol=1e-6)
    assert capture.n_experts == 4 and capture.top_k == 2


def test_capture_restores_training_mode(model, corpus) -> None:
    model.train()
    capture_routing(model, corpus.val, corpus.domain_names, max_windows=2)
    assert model.training
    model.eval()


def test_moe_inputs_reproduce_the_router_logits(model, corpus) -> None:
    x = corpus.val.tokens[:64].long().view(4, 16)
    inputs = moe_inputs(model, x)
    with torch.no_grad():
        out = model(x)
        for layer, h in inputs.items():
            logits = model.moe_layers[layer].router.gate(h)  # (N, E)
            assert torch.allclose(logits, out.moe_outputs[layer].routing.logits, atol=1e-5)


def test_capture_text_labels_and_windows(model) -> None:
    text = "def f(x):\n    return 7*8\n" * 2  # 52 bytes: three full windows of 16 and 4 more
    capture = capture_text(model, text)
    assert len(capture) == len(text)
    assert capture.char_class.tolist() == [char_class(c) for c in text]
    assert bool((capture.domain == UNKNOWN).all())
    assert capture.position.tolist()[14:18] == [14, 15, 0, 1]
    # each window is a fresh context: the last, short window routes as it does alone
    tail = capture_text(model, text[48:])
    for layer in capture.layers:
        assert torch.equal(capture.indices[layer][48:], tail.indices[layer])
    with pytest.raises(ValueError, match="empty"):
        capture_text(model, "")


def test_capture_needs_moe_blocks(corpus) -> None:
    dense = TinyLM(ModelConfig(d_model=16, n_layers=1, n_heads=2, max_seq_len=8, d_ff=32))
    with pytest.raises(ValueError, match="no MoE blocks"):
        capture_routing(dense, corpus.val, corpus.domain_names)
