"""Routing capture: run a trained ``TinyLM`` on labelled text and keep every MoE block's choices.

Everything the rest of ``moe_lab.analysis`` measures starts here. ``TinyLM.forward`` already
returns each MoE block's ``MoEOutput`` (``LMOutput.moe_outputs``), whose ``routing`` holds the
router's decisions for every token, so a capture is a plain forward pass in evaluation mode:
no hooks, no copies of the model.

A split is read as W non-overlapping windows of T consecutive tokens (T = the model's context
``max_seq_len`` unless given), each window a fresh context, in split order, so every token is
routed once, with the labels ``moe_lab.data`` planted on it (its domain and its character
class). Arbitrary text (``capture_text``) is cut the same way; its domain is unknown (-1).

The arrays are flat, one row per token (L = number of tokens read): ``position`` says where a
token sits in its window, so "consecutive tokens" means rows n and n+1 with
``position[n+1] == position[n] + 1``.

Shape alphabet: L tokens captured, W windows, T window length, K experts per token, E experts,
D model width.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_lab.data import CHAR_CLASSES, Split, batch_at, char_class
from moe_lab.model import TinyLM

UNKNOWN = -1  # the label of a token whose domain is not known (typed text)


@dataclass(frozen=True)
class RoutingCapture:
    """Every MoE block's routing of L tokens, with the tokens' labels aligned row by row.

    Attributes:
        tokens: (L,) long byte ids.
        domain: (L,) long index into ``domain_names`` (``UNKNOWN`` = -1 for typed text).
        char_class: (L,) long index into ``char_class_names``.
        position: (L,) long position of the token in its window (0 starts a fresh context).
        indices: block index -> (L, K) long experts chosen, in the router's order: column 0 is
            the first choice (highest selection score), the "top-1 expert".
        weights: block index -> (L, K) float combine weights of those experts.
        probs: block index -> (L, E) float the router's distribution over all experts.
        domain_names, char_class_names: what the labels index into.
    """

    tokens: torch.Tensor
    domain: torch.Tensor
    char_class: torch.Tensor
    position: torch.Tensor
    indices: dict[int, torch.Tensor]
    weights: dict[int, torch.Tensor]
    probs: dict[int, torch.Tensor]
    domain_names: tuple[str, ...]
    char_class_names: tuple[str, ...] = CHAR_CLASSES

    def __len__(self) -> int:
        return self.tokens.numel()

    @property
    def layers(self) -> list[int]:
        """The MoE blocks captured, in order."""
        return sorted(self.indices)

    @property
    def n_experts(self) -> int:
        return next(iter(self.probs.values())).shape[-1]

    @property
    def top_k(self) -> int:
        return next(iter(self.indices.values())).shape[-1]

    def top1(self, layer: int) -> torch.Tensor:
        """(L,) the first-choice expert of every token in block ``layer``."""
        return self.indices[layer][:, 0]

    def labels(self, name: str) -> torch.Tensor:
        """(L,) the labels called ``name``: ``"domain"``, ``"char_class"`` or ``"token"``."""
        if name == "domain":
            return self.domain
        if name == "char_class":
            return self.char_class
        if name == "token":
            return self.tokens
        raise ValueError(f"label {name!r} is unknown: choose 'domain', 'char_class' or 'token'")

    def label_names(self, name: str) -> tuple[str, ...]:
        """Display names of the labels ``name`` (bytes are shown as their characters)."""
        if name == "domain":
            return self.domain_names
        if name == "char_class":
            return self.char_class_names
        if name == "token":
            return tuple(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in range(256))
        raise ValueError(f"label {name!r} is unknown: choose 'domain', 'char_class' or 'token'")

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) row indices of every consecutive pair (n, n+1) inside one window."""
        follows = self.position[1:] == self.position[:-1] + 1  # (L-1,)
        first = torch.nonzero(follows).flatten()  # (P,)
        return first, first + 1


@torch.no_grad()
def route_windows(
    model: TinyLM, x: torch.Tensor, batch_windows: int = 64
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Run ``model`` (in evaluation mode) on windows x (W, T); return the routing per MoE block.

    Returns:
        (indices, weights, probs): block -> (W*T, K), (W*T, K), (W*T, E), rows in window order.
    """
    if not model.moe_layers:
        raise ValueError("the model has no MoE blocks: there is no routing to capture")
    was_training = model.training
    model.eval()  # routing as at inference: no router noise, no dropout
    device = next(model.parameters()).device
    parts: dict[int, list[tuple[torch.Tensor, ...]]] = {i: [] for i in model.moe_layers}
    try:
        for chunk in x.split(batch_windows):
            out = model(chunk.to(device))
            for index, moe_out in out.moe_outputs.items():
                r = moe_out.routing
                parts[index].append((r.indices.cpu(), r.weights.float().cpu(), r.probs.cpu()))
    finally:
        model.train(was_training)
    indices = {i: torch.cat([p[0] for p in v]) for i, v in parts.items()}  # (W*T, K)
    weights = {i: torch.cat([p[1] for p in v]) for i, v in parts.items()}  # (W*T, K)
    probs = {i: torch.cat([p[2] for p in v]) for i, v in parts.items()}  # (W*T, E)
    return indices, weights, probs


def window_starts(split: Split, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """(W,) starts of the non-overlapping windows of ``seq_len`` tokens that cover ``split``.

    Each window also needs the token after it (its last next-token target), so W =
    (len(split) - 1) // seq_len; ``max_windows`` keeps the first ones.
    """
    n_windows = (len(split) - 1) // seq_len
    if n_windows < 1:
        raise ValueError(
            f"the split has {len(split)} tokens, fewer than seq_len + 1 = {seq_len + 1}:"
            " use more text or a shorter seq_len"
        )
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    return torch.arange(n_windows) * seq_len  # (W,)


def capture_routing(
    model: TinyLM,
    split: Split,
    domain_names: tuple[str, ...],
    seq_len: int | None = None,
    max_windows: int | None = None,
    batch_windows: int = 64,
) -> RoutingCapture:
    """Route a labelled split through ``model`` and keep every MoE block's decisions.

    Args:
        model: a trained ``TinyLM`` with at least one MoE block.
        split: a ``moe_lab.data.Split`` (for example ``corpus.val``).
        domain_names: the corpus's ``domain_names``.
        seq_len: T, the window length (default: the model's ``max_seq_len``).
        max_windows: read at most this many windows (default: the whole split).
        batch_windows: windows per forward pass (memory only; the result does not depend on it).

    Returns:
        A ``RoutingCapture`` of W*T tokens.

    Example:
        >>> from moe_lab.data import make_corpus
        >>> from moe_lab.model import get_preset
        >>> corpus = make_corpus(n_chars=20_000)
        >>> capture = capture_routing(TinyLM(get_preset("tiny-moe")), corpus.val, corpus.domain_names)
        >>> capture.indices[0].shape[1], capture.n_experts
        (2, 8)

    Taught in: notebooks/05_specialization.ipynb.
    """
    seq_len = seq_len or model.config.max_seq_len
    batch = batch_at(split, window_starts(split, seq_len, max_windows), seq_len)  # (W, T) each
    indices, weights, probs = route_windows(model, batch.x, batch_windows)
    n_windows = batch.x.shape[0]
    return RoutingCapture(
        tokens=batch.x.reshape(-1),  # (W, T) -> (L,)
        domain=batch.domain.reshape(-1),
        char_class=batch.char_class.reshape(-1),
        position=torch.arange(seq_len).repeat(n_windows),  # (L,)
        indices=indices,
        weights=weights,
        probs=probs,
        domain_names=tuple(domain_names),
    )


def capture_text(model: TinyLM, text: str, domain_names: tuple[str, ...] = ()) -> RoutingCapture:
    """Route any text through ``model``: windows of ``max_seq_len`` bytes, each a fresh context.

    The last window may be shorter. Every token's domain is ``UNKNOWN``; its character class
    is that of its character (a multi-byte character gives each of its bytes its class).

    Raises:
        ValueError: the text is empty.
    """
    if not text:
        raise ValueError("the text is empty: type something to route")
    tokens: list[int] = []
    classes: list[int] = []
    for char in text:
        encoded = char.encode("utf-8")
        tokens.extend(encoded)
        classes.extend([char_class(char)] * len(encoded))
    ids = torch.tensor(tokens, dtype=torch.long)  # (L,)
    seq_len = model.config.max_seq_len
    n_full = ids.numel() // seq_len
    pieces = []
    if n_full:
        pieces.append(route_windows(model, ids[: n_full * seq_len].view(n_full, seq_len)))
    if ids.numel() % seq_len:
        pieces.append(route_windows(model, ids[n_full * seq_len :].view(1, -1)))
    layers = pieces[0][0].keys()
    indices, weights, probs = (
        {i: torch.cat([piece[part][i] for piece in pieces]) for i in layers} for part in range(3)
    )
    return RoutingCapture(
        tokens=ids,
        domain=torch.full_like(ids, UNKNOWN),
        char_class=torch.tensor(classes, dtype=torch.long),
        position=torch.arange(ids.numel()) % seq_len,  # (L,)
        indices=indices,
        weights=weights,
        probs=probs,
        domain_names=tuple(domain_names),
    )


@torch.no_grad()
def moe_inputs(model: TinyLM, idx: torch.Tensor) -> dict[int, torch.Tensor]:
    """The input of every MoE block's FFN (what its router and its experts see) for windows idx.

    ``TinyLM.forward`` returns routing, not hidden states, so this walks the blocks with the
    model's own modules: each block's output comes from ``block.forward`` itself, and the FFN
    input is ``norm2(x + attn(norm1(x)))``, the one line of ``Block.forward`` before its FFN.
    (tests/test_analysis_capture.py checks that routing these inputs reproduces the router
    logits of the forward pass.) Evaluation mode, no gradient.

    Shape: idx (W, T) long -> block index -> (W*T, D)
    """
    was_training = model.training
    model.eval()
    try:
        positions = torch.arange(idx.shape[1], device=idx.device)  # (T,)
        x = model.token_embedding(idx) + model.position_embedding(positions)  # (W, T, D)
        inputs = {}
        for i, block in enumerate(model.blocks):
            if block.is_moe:
                ffn_input = block.norm2(x + block.attn(block.norm1(x)))  # (W, T, D)
                inputs[i] = ffn_input.reshape(-1, ffn_input.shape[-1])  # (W*T, D)
            x, _ = block(x, token_ids=idx)
    finally:
        model.train(was_training)
    return inputs


# The tokenizer is byte-level and stateless; exported for callers that decode a capture.
