"""Small, seeded inputs for the explorers and notebooks: token vectors with visible structure.

A router only sees vectors, so a routing picture is only readable if the vectors have structure
a reader can name. ``token_batch`` draws a sentence from a 16-word vocabulary in four kinds
(function words, content words, digits, punctuation). A token's vector is

    x = kind_center[kind] + 0.5 * word_vector[word] + context_noise * noise[position]

so tokens of one kind sit close together, the same word in two places is similar but not equal
(like a contextual hidden state), and the last coordinate is a constant 1, a bias unit: the
gate's last column then acts as a per-expert logit offset, which is how ``gate_weight`` skews
a router towards low-numbered experts.

Taught in: notebooks/02_routing.ipynb, notebooks/03_load_balancing.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS: tuple[str, ...] = ("function", "content", "digit", "punct")
VOCAB: tuple[tuple[str, str], ...] = (
    ("the", "function"),
    ("a", "function"),
    ("on", "function"),
    ("of", "function"),
    ("cat", "content"),
    ("dog", "content"),
    ("mat", "content"),
    ("sun", "content"),
    ("1", "digit"),
    ("2", "digit"),
    ("3", "digit"),
    ("7", "digit"),
    (".", "punct"),
    (",", "punct"),
    ("!", "punct"),
    ("?", "punct"),
)
WORD_SCALE = 0.5  # how far a word sits from its kind's center, relative to the center's scale


@dataclass(frozen=True)
class TokenBatch:
    """N token vectors with their words, token ids and kinds.

    Attributes:
        x: (N, D) float token vectors; ``x[:, -1] == 1`` (the bias unit).
        token_ids: (N,) long, index into ``VOCAB`` (what a hash router hashes).
        kinds: (N,) long, index into ``KINDS``.
        words: the N words, for axis labels.
    """

    x: torch.Tensor
    token_ids: torch.Tensor
    kinds: torch.Tensor
    words: tuple[str, ...]

    @property
    def n_tokens(self) -> int:
        return self.x.shape[0]


def token_batch(
    n_tokens: int = 32,
    d_model: int = 16,
    seed: int = 0,
    context_noise: float = 0.3,
    token_ids: torch.Tensor | None = None,
) -> TokenBatch:
    """A seeded sentence of ``n_tokens`` words and their vectors (see the module docstring).

    Args:
        n_tokens: N.
        d_model: D (at least 2: the last coordinate is the bias unit).
        seed: seeds the vocabulary vectors, the sentence and the context noise.
        context_noise: scale of the per-position noise (0 makes equal words equal vectors).
        token_ids: (N,) ids into ``VOCAB`` to use instead of a sampled sentence.

    Returns:
        A ``TokenBatch``; the same arguments always give the same tensors.

    Taught in: notebooks/02_routing.ipynb.
    """
    if d_model < 2:
        raise ValueError(f"d_model={d_model} must be >= 2 (the last coordinate is a bias unit)")
    generator = torch.Generator().manual_seed(seed)
    n_kinds, n_words = len(KINDS), len(VOCAB)
    kind_centers = torch.randn(n_kinds, d_model - 1, generator=generator)  # (4, D-1)
    word_vectors = torch.randn(n_words, d_model - 1, generator=generator)  # (16, D-1)
    word_kind = torch.tensor([KINDS.index(kind) for _, kind in VOCAB])  # (16,)
    if token_ids is None:
        token_ids = torch.randint(0, n_words, (n_tokens,), generator=generator)  # (N,)
    else:
        token_ids = token_ids.reshape(-1).long()
        n_tokens = token_ids.shape[0]
    noise = torch.randn(n_tokens, d_model - 1, generator=generator)  # (N, D-1)
    kinds = word_kind[token_ids]  # (N,)
    features = kind_centers[kinds] + WORD_SCALE * word_vectors[token_ids] + context_noise * noise
    x = torch.cat([features, torch.ones(n_tokens, 1)], dim=-1)  # (N, D-1) -> (N, D)
    words = tuple(VOCAB[int(i)][0] for i in token_ids)
    return TokenBatch(x=x, token_ids=token_ids, kinds=kinds, words=words)


def skew_offsets(n_experts: int, skew: float) -> torch.Tensor:
    """(E,) per-expert logit offsets ``skew * linspace(1, -1, E)``: expert 0 is favoured by
    ``+skew`` logits, the last expert disfavoured by ``-skew``; 0 means no skew."""
    if n_experts == 1:
        return torch.zeros(1)
    return skew * torch.linspace(1.0, -1.0, n_experts)


def gate_weight(
    n_experts: int, d_model: int, seed: int = 0, skew: float = 0.0, scale: float = 1.5
) -> torch.Tensor:
    """A seeded router gate matrix (E, D) for ``token_batch`` inputs.

    Rows are Gaussian with std ``scale / sqrt(D)``, so logits have a standard deviation of about
    ``scale`` on ``token_batch`` vectors; the last column (the bias unit's) holds
    ``skew_offsets(E, skew)``. The first ``n_experts`` rows do not depend on ``n_experts``:
    adding experts keeps the old experts' preferences.

    Args:
        n_experts: E.
        d_model: D.
        seed: seeds the matrix (independently of ``token_batch``'s seed use).
        skew: logit advantage of expert 0 (see ``skew_offsets``).
        scale: typical logit magnitude.

    Returns:
        (E, D) float tensor, ready for ``router.gate.weight.copy_``.

    Taught in: notebooks/02_routing.ipynb, notebooks/03_load_balancing.ipynb.
    """
    generator = torch.Generator().manual_seed(10_000 + seed)
    rows = torch.randn(max(n_experts, 64), d_model - 1, generator=generator)[:n_experts]  # (E, D-1)
    weight = rows * scale / (d_model - 1) ** 0.5
    return torch.cat([weight, skew_offsets(n_experts, skew)[:, None]], dim=-1)  # (E, D)
