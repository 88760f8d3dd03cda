"""DenseFFN against the formulas written out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from moe_lab import DenseFFN


def test_swiglu_matches_formula():
    ffn = DenseFFN(d_model=8, d_ff=24, activation="swiglu")
    x = torch.randn(3, 5, 8)
    gate = x @ ffn.gate.weight.T
    up = x @ ffn.up.weight.T
    expected = (gate * torch.sigmoid(gate) * up) @ ffn.down.weight.T  # silu(a) = a * sigmoid(a)
    torch.testing.assert_close(ffn(x), expected)


def test_gelu_matches_formula():
    ffn = DenseFFN(d_model=8, d_ff=24, activation="gelu")
    x = torch.randn(4, 8)
    h = x @ ffn.up.weight.T
    gelu = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU (Hendrycks & Gimpel 2016)
    torch.testing.assert_close(ffn(x), gelu @ ffn.down.weight.T)
    assert ffn.gate is None


def test_parameter_counts():
    # SwiGLU has three D x F matrices, GELU two; no biases.
    assert sum(p.numel() for p in DenseFFN(16, 40).parameters()) == 3 * 16 * 40
    assert sum(p.numel() for p in DenseFFN(16, 40, "gelu").parameters()) == 2 * 16 * 40


def test_unknown_activation():
    with pytest.raises(ValueError, match="activation='relu' is unknown"):
        DenseFFN(8, 16, activation="relu")


def test_matches_functional_gelu():
    ffn = DenseFFN(d_model=4, d_ff=8, activation="gelu")
    x = torch.randn(2, 4)
    torch.testing.assert_close(
        ffn(x), F.linear(F.gelu(F.linear(x, ffn.up.weight)), ffn.down.weight)
    )
