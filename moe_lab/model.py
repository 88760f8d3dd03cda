"""The course's tiny decoder-only language model, top to bottom, dense or MoE per block.

    token ids (B, T)
      -> token embedding (V, D) + learned position embedding (T_max, D)
      -> n_layers x Block:  x = x + attn(norm1(x));  x = x + ffn(norm2(x))
         where ffn is a DenseFFN of width d_ff, or an MoELayer on every ``moe_every``-th block
      -> final norm -> logits = x @ token_embedding.T   (the LM head is tied: no parameters)

The parameter layout is the one ``moe_lab.config.ModelConfig`` fixes, so the budget calculator
can count it: per block two norms, a fused q/k/v projection (D, 3D) and an output projection
(D, D) without biases, and the FFN. The forward pass returns an ``LMOutput``: logits, the
language-model loss, the summed auxiliary (balancing) losses and every MoE layer's full output
(routing decisions, tokens per expert, dropped assignments), so training and the visualizer
never need hooks.

Three presets make the course's comparison (``PRESETS``):

- ``tiny-moe``: 8 experts of width 128, top-2, an MoE FFN in every block.
- ``tiny-dense``: the same *active* parameters per token: a dense FFN of width 2 x 128 = 256.
- ``tiny-dense-wide``: the same *total* parameters: a dense FFN of width 8 x 128 = 1024.

(The router's D x E weights are the only parameters the MoE has beyond its dense twins.)

Shape alphabet: B batch, T sequence, N = B*T tokens, D model width, F expert width, E experts,
K experts per token, V vocabulary.

Reference: Radford et al. 2019 (GPT-2, pre-norm decoder); Press & Wolf 2017 (tied embeddings);
nanoGPT's ``model.py`` for the layout.

Taught in: notebooks/04_train_tiny_moe.ipynb.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TextIO

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab import budget
from moe_lab.config import ModelConfig, MoEConfig
from moe_lab.experts import StackedExperts
from moe_lab.ffn import DenseFFN
from moe_lab.moe_layer import MoELayer, MoEOutput

# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

_WIDTH, _LAYERS, _HEADS, _SEQ = 64, 3, 4, 64
_EXPERTS, _TOP_K, _EXPERT_WIDTH = 8, 2, 128

PRESETS: dict[str, ModelConfig] = {
    "tiny-moe": ModelConfig(
        d_model=_WIDTH,
        n_layers=_LAYERS,
        n_heads=_HEADS,
        max_seq_len=_SEQ,
        d_ff=_TOP_K * _EXPERT_WIDTH,  # unused by MoE blocks; kept equal to the dense twin's
        moe=MoEConfig(
            d_model=_WIDTH,
            d_expert=_EXPERT_WIDTH,
            n_experts=_EXPERTS,
            top_k=_TOP_K,
            aux_loss_weight=0.01,
            # The training loop checks the loss for NaN once per step; a check in every layer
            # would cost a host sync each.
            validate_inputs=False,
        ),
    ),
    # Same active parameters per token as tiny-moe: the FFN is as wide as the K chosen experts.
    "tiny-dense": ModelConfig(
        d_model=_WIDTH,
        n_layers=_LAYERS,
        n_heads=_HEADS,
        max_seq_len=_SEQ,
        d_ff=_TOP_K * _EXPERT_WIDTH,
    ),
    # Same total parameters as tiny-moe: the FFN is as wide as all E experts together.
    "tiny-dense-wide": ModelConfig(
        d_model=_WIDTH,
        n_layers=_LAYERS,
        n_heads=_HEADS,
        max_seq_len=_SEQ,
        d_ff=_EXPERTS * _EXPERT_WIDTH,
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The ``ModelConfig`` of a preset; an unknown name raises a ValueError listing the choices."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def _norm(config: ModelConfig) -> nn.Module:
    """RMSNorm (D weights) or LayerNorm (D weights + D biases), as ModelConfig.norm says."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model)
    return nn.LayerNorm(config.d_model)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused q/k/v projection and no biases.

    Shape: x (B, T, D) -> (B, T, D)
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).split(D, dim=-1)  # 3 x (B, T, D)
        q = q.view(B, T, H, D // H).transpose(1, 2)  # (B, T, D) -> (B, H, T, D/H)
        k = k.view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, D/H)
        v = v.view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, D/H)
        # is_causal masks position s > t for query t: no token sees its future.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D/H)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, H, T, D/H) -> (B, T, D)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """A pre-norm transformer block whose FFN is dense or an ``MoELayer``.

    Shape: x (B, T, D) -> (B, T, D), plus the ``MoEOutput`` of its FFN (None when dense).
    """

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.is_moe = config.is_moe_layer(layer_index)
        self.norm1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = _norm(config)
        if self.is_moe:
            self.ffn: nn.Module = MoELayer(config.moe)
        else:
            self.ffn = DenseFFN(config.d_model, config.d_ff, config.activation)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, token_ids: torch.Tensor
    ) -> tuple[torch.Tensor, MoEOutput | None]:
        x = x + self.attn(self.norm1(x))
        if self.is_moe:
            moe_out = self.ffn(self.norm2(x), token_ids=token_ids)
            return x + self.resid_dropout(moe_out.y), moe_out
        return x + self.resid_dropout(self.ffn(self.norm2(x))), None


@dataclass
class LMOutput:
    """What ``TinyLM.forward`` returns.

    Attributes:
        logits: (B, T, V) next-token scores.
        loss: the mean next-token cross-entropy if targets were given, else None.
        aux_loss: scalar, the sum over MoE layers of their weighted auxiliary losses (0.0 for a
            dense model); add it to ``loss`` to train.
        aux_losses: the unweighted auxiliary loss parts (``load_balance``, ``z``, ...) summed over
            MoE layers; empty for a dense model.
        moe_outputs: block index -> that block's ``MoEOutput`` (routing, tokens per expert,
            dropped assignments), for every MoE block in order.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None
    aux_loss: torch.Tensor
    aux_losses: dict[str, torch.Tensor]
    moe_outputs: dict[int, MoEOutput]

    @property
    def total_loss(self) -> torch.Tensor:
        """``loss + aux_loss``: the quantity training minimizes."""
        if self.loss is None:
            raise ValueError("no targets were given, so there is no loss to add to")
        return self.loss + self.aux_loss


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of a ``TinyLM``.

    ``active`` counts what one token uses: everything except the (E - K) / E share of the routed
    expert weights it is not sent to. ``embedding`` is the token embedding (reused by the tied
    head) plus the position embedding.
    """

    total: int
    active: int
    embedding: int
    routed_experts: int  # all routed expert weights, summed over MoE blocks

    @property
    def total_non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def active_non_embedding(self) -> int:
        return self.active - self.embedding


class TinyLM(nn.Module):
    """A tiny decoder-only LM whose FFNs are dense or Mixture-of-Experts.

    Args:
        config: a ``ModelConfig`` (see ``PRESETS``).

    Shape:
        idx: (B, T) long token ids with T <= max_seq_len -> ``LMOutput.logits`` (B, T, V).

    Example:
        >>> model = TinyLM(get_preset("tiny-moe"))
        >>> out = model(torch.zeros(2, 8, dtype=torch.long))
        >>> out.logits.shape, sorted(out.moe_outputs)
        (torch.Size([2, 8, 256]), [0, 1, 2])

    Taught in: notebooks/04_train_tiny_moe.ipynb.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_seq_len, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.final_norm = _norm(config)
        # Small embeddings (GPT-2's 0.02): with the tied head, N(0, 1) rows would make the first
        # logits huge. Linear layers and experts keep nn.Linear's default initialization, so a
        # dense FFN and an expert of the same width start alike.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)

    @property
    def moe_layers(self) -> dict[int, MoELayer]:
        """Block index -> MoELayer, for every MoE block."""
        return {i: block.ffn for i, block in enumerate(self.blocks) if block.is_moe}

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> LMOutput:
        B, T = idx.shape
        if T > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {T} > max_seq_len={self.config.max_seq_len}:"
                " crop the input or build the model with a larger max_seq_len"
            )
        positions = torch.arange(T, device=idx.device)  # (T,)
        x = self.token_embedding(idx) + self.position_embedding(positions)  # (B, T, D)
        x = self.dropout(x)
        aux_loss = x.new_zeros(())
        aux_losses: dict[str, torch.Tensor] = {}
        moe_outputs: dict[int, MoEOutput] = {}
        for i, block in enumerate(self.blocks):
            x, moe_out = block(x, token_ids=idx)
            if moe_out is not None:
                moe_outputs[i] = moe_out
                aux_loss = aux_loss + moe_out.aux_loss
                for name, value in moe_out.losses.items():
                    aux_losses[name] = aux_losses.get(name, 0.0) + value
        x = self.final_norm(x)
        logits = x @ self.token_embedding.weight.t()  # (B, T, D) @ (D, V) -> (B, T, V): tied head
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return LMOutput(logits, loss, aux_loss, aux_losses, moe_outputs)

    def parameter_counts(self) -> ParameterCounts:
        """Count parameters from the modules (not from a formula)."""
        total = sum(p.numel() for p in self.parameters())
        embedding = self.token_embedding.weight.numel() + self.position_embedding.weight.numel()
        routed = inactive = 0
        for layer in self.moe_layers.values():
            cfg = layer.config
            for module in layer.modules():
                if isinstance(module, StackedExperts):
                    n = sum(p.numel() for p in module.parameters())
                    routed += n
                    # Each token uses K of the E routed experts.
                    inactive += n * (cfg.routed_experts - cfg.routed_top_k) // cfg.routed_experts
        return ParameterCounts(total, total - inactive, embedding, routed)

    def training_flops_per_token(self, seq_len: int | None = None) -> float:
        """FLOPs to train on one token (forward + backward) at context ``seq_len``.

        Computed by ``moe_lab.budget`` (the course's one FLOP formula, taught in notebook 06):
        3 x forward, where the forward is 2 FLOPs per active matrix weight (the router's and the
        tied head's included) plus the attention-score term, which grows with the number of keys
        a causal token attends ((T + 1) / 2 on average). Elementwise work is left out.
        """
        T = self.config.max_seq_len if seq_len is None else seq_len
        return budget.training_flops_per_token(budget.from_model_config(self.config), T)

    def summary(self, file: TextIO | None = None) -> None:
        """Print the configuration and the total and active parameter counts."""
        c = self.config
        counts = self.parameter_counts()
        kind = "dense"
        if c.moe is not None:
            kind = (
                f"MoE every {c.moe_every} block(s): {c.moe.routed_experts} experts of width"
                f" {c.moe.expert_width}, top-{c.moe.routed_top_k}"
            )
        lines = [
            f"TinyLM: {c.n_layers} blocks, d_model={c.d_model}, {c.n_heads} heads,"
            f" context {c.max_seq_len}, vocab {c.vocab_size}",
            f"  FFN: {kind}" + ("" if c.moe is not None else f", d_ff={c.d_ff}"),
            f"  total parameters:  {counts.total:>10,}  (non-embedding {counts.total_non_embedding:,})",
            f"  active parameters: {counts.active:>10,}  (non-embedding {counts.active_non_embedding:,})",
            f"  training FLOPs per token: {self.training_flops_per_token():,.0f}",
        ]
        print("\n".join(lines), file=file or sys.stdout)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to idx (B, T); returns (B, T + new).

        ``temperature`` 0 means greedy. The context is cropped to the last ``max_seq_len``
        tokens, so generation can run longer than the position embedding.
        """
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.max_seq_len :]  # (B, <=T_max)
            logits = self(context).logits[:, -1, :]  # (B, V)
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, -math.inf)
                probs = F.softmax(logits, dim=-1)  # (B, V)
                next_token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_token], dim=1)  # (B, T+1)
        self.train(was_training)
        return idx
