"""Specialization: how much does a token's label tell about the expert it is routed to?

The corpus labels every token with its domain (arithmetic, code, english, records) and its
character class (letter, digit, whitespace, punctuation, newline), so "experts specialize by
domain" is a measurable claim. Per MoE block, the routing is summarized by each token's first
choice (its top-1 expert) and compared with a label through their contingency table.

**Score: normalized mutual information (NMI).** With X the top-1 expert and Y the label of a
token drawn from the capture, and H the entropy in nats,

    I(X; Y) = H(X) + H(Y) - H(X, Y)              (mutual information)
    NMI     = 2 I(X; Y) / (H(X) + H(Y))           (0 <= NMI <= 1)

the "arithmetic" normalization of Strehl & Ghosh (2002) and Vinh et al. (2010). Since
I <= min(H(X), H(Y)), NMI = 1 exactly when each of X and Y determines the other (a router that
copies the domain label, expert = domain, scores 1), and 0 when they are independent. The
plug-in estimate of I from counts is biased upward by about (|X|-1)(|Y|-1) / (2L) nats, so a
router independent of the labels does not score exactly 0 on a finite capture: the **shuffled
baseline** (the same table after randomly permuting the labels) shows where chance lies.

**Uncertainty: a bootstrap over windows.** Tokens of one window share a context (and mostly a
document), so they are not independent draws; the interval resamples whole windows with
replacement (a block bootstrap) and reads the 2.5th and 97.5th percentiles. Comparing two labels
on the same resamples gives a paired interval for their difference: "which label explains the
routing more" is answered per block with its uncertainty.

**Beyond token identity.** A router that only looked at the byte would still score high on
character class (a byte determines its class) and a little on domain (digits are rarer in
english). OpenMoE (Xue et al. 2024, section 4) found exactly this: routing follows token ids,
"context-independent". The conditional mutual information I(X; Y | byte), against a baseline that
permutes labels *among tokens of the same byte*, measures what the label adds once the byte is
known: for a domain, that is specialization the context must supply.

References: Jiang et al. 2024 (Mixtral), section 5: no clear domain assignment, syntactic
regularities; Zoph et al. 2022 (ST-MoE), section 7: encoder experts specialize in punctuation,
verbs, proper names, counting; decoder experts lack specialization; Xue et al. 2024 (OpenMoE),
section 4: context-independent, token-id specialization; Muennighoff et al. 2024 (OLMoE),
section 5: domain and vocabulary specialization in a model trained from scratch.

Shape alphabet: L tokens, E experts, C label values, W windows, B bootstrap resamples.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moe_lab.analysis.capture import UNKNOWN, RoutingCapture


def contingency_table(
    first: torch.Tensor, second: torch.Tensor, n_first: int, n_second: int
) -> torch.Tensor:
    """(n_first, n_second) long counts of each (first[n], second[n]) pair.

    Shape: first (L,), second (L,) long -> (n_first, n_second)
    """
    index = first.long() * n_second + second.long()  # (L,)
    return torch.bincount(index, minlength=n_first * n_second).view(n_first, n_second)


def _entropy(counts: torch.Tensor, dim: tuple[int, ...]) -> torch.Tensor:
    """Entropy in nats of count tables along ``dim`` (0 log 0 = 0), one per remaining entry."""
    counts = counts.double()
    total = counts.sum(dim=dim, keepdim=True)
    p = counts / total.clamp_min(1.0)
    return torch.special.entr(p).sum(dim=dim)


def mutual_information(table: torch.Tensor) -> torch.Tensor:
    """I(X; Y) in nats from (..., |X|, |Y|) counts: H(X) + H(Y) - H(X, Y), one per table."""
    joint = _entropy(table, (-2, -1))
    rows = _entropy(table.sum(-1), (-1,))
    cols = _entropy(table.sum(-2), (-1,))
    return (rows + cols - joint).clamp_min(0.0)  # clamp: round-off when I = 0


def normalized_mutual_information(table: torch.Tensor) -> torch.Tensor:
    """NMI = 2 I(X; Y) / (H(X) + H(Y)) from (..., |X|, |Y|) counts; 0 when both are constant.

    Example:
        >>> copy = torch.tensor([[5, 0], [0, 3]])      # expert = label
        >>> float(normalized_mutual_information(copy))
        1.0
    """
    rows = _entropy(table.sum(-1), (-1,))
    cols = _entropy(table.sum(-2), (-1,))
    total = rows + cols
    nmi = 2.0 * mutual_information(table) / total.clamp_min(1e-300)
    return torch.where(total > 0, nmi, torch.zeros_like(nmi))


def conditional_mutual_information(
    x: torch.Tensor, y: torch.Tensor, given: torch.Tensor, n_x: int, n_y: int, n_given: int
) -> float:
    """I(X; Y | G) = sum_g P(g) I(X; Y | G = g) in nats, from L aligned samples.

    Shape: x, y, given (L,) long
    """
    index = (given.long() * n_x + x.long()) * n_y + y.long()  # (L,)
    counts = torch.bincount(index, minlength=n_given * n_x * n_y).view(n_given, n_x, n_y)
    weight = counts.sum((-2, -1)).double()  # (G,)
    per_group = mutual_information(counts)  # (G,)
    return float((weight * per_group).sum() / weight.sum())


def conditional_entropy(x: torch.Tensor, given: torch.Tensor, n_x: int, n_given: int) -> float:
    """H(X | G) in nats: the uncertainty about X left once G is known."""
    counts = contingency_table(given, x, n_given, n_x)  # (G, |X|)
    weight = counts.sum(-1).double()
    return float((weight * _entropy(counts, (-1,))).sum() / weight.sum())


def permute_within_groups(
    values: torch.Tensor, groups: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """``values`` randomly permuted among entries of the same group (a conditional permutation).

    Shape: values, groups (L,) -> (L,)
    """
    shuffle = torch.randperm(values.numel(), generator=generator)  # (L,)
    by_group_random = shuffle[torch.argsort(groups[shuffle], stable=True)]  # random within group
    by_group = torch.argsort(groups, stable=True)  # fixed order within group
    out = torch.empty_like(values)
    out[by_group] = values[by_group_random]
    return out


def window_ids(capture: RoutingCapture) -> torch.Tensor:
    """(L,) index of the window each token belongs to (a new window starts at position 0)."""
    return torch.cumsum((capture.position == 0).long(), 0) - 1


@dataclass(frozen=True)
class Specialization:
    """How much one label tells about one block's top-1 expert.

    Attributes:
        layer: the MoE block.
        label: ``"domain"``, ``"char_class"`` or ``"token"``.
        label_names: names of the label values (columns of ``table``).
        table: (E, C) long counts, top-1 expert x label.
        nmi: the normalized mutual information of ``table``.
        shuffled: NMI of the table after each of several random permutations of the labels
            (where chance lies for this many tokens).
        interval: (low, high) bootstrap percentile interval of ``nmi`` (resampling windows).
        bootstrap: (B,) the bootstrap NMIs (shared resamples across labels: differences pair).
    """

    layer: int
    label: str
    label_names: tuple[str, ...]
    table: torch.Tensor
    nmi: float
    shuffled: tuple[float, ...]
    interval: tuple[float, float]
    bootstrap: torch.Tensor

    @property
    def shuffled_mean(self) -> float:
        return sum(self.shuffled) / len(self.shuffled)

    @property
    def shuffled_max(self) -> float:
        return max(self.shuffled)

    def share_by_expert(self) -> torch.Tensor:
        """(E, C) P(label | expert): each expert's tokens split by label (rows sum to 1)."""
        table = self.table.double()
        return table / table.sum(-1, keepdim=True).clamp_min(1.0)

    def lift(self) -> torch.Tensor:
        """(E, C) P(label | expert) / P(label): 1 = the expert sees the label at its base rate.

        An expert "specializes" in a label when its lift there is far above 1; a
        domain-expert router has one lift of about 1 / P(domain) per expert and zeros elsewhere.
        """
        table = self.table.double()
        base = table.sum(0) / table.sum()  # (C,)
        return self.share_by_expert() / base.clamp_min(1e-300)


@dataclass(frozen=True)
class SpecializationReport:
    """The ``Specialization`` of several labels for one block, on the same bootstrap resamples."""

    layer: int
    scores: dict[str, Specialization]
    confidence: float

    def __getitem__(self, label: str) -> Specialization:
        return self.scores[label]

    def difference(self, a: str, b: str) -> tuple[float, float, float]:
        """NMI(a) - NMI(b) and its paired bootstrap interval (low, high)."""
        diff = self.scores[a].bootstrap - self.scores[b].bootstrap  # (B,)
        low, high = _percentiles(diff, self.confidence)
        return self.scores[a].nmi - self.scores[b].nmi, low, high


def _percentiles(samples: torch.Tensor, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2
    q = torch.tensor([tail, 1.0 - tail], dtype=samples.dtype)
    low, high = torch.quantile(samples, q).tolist()
    return low, high


def _n_values(capture: RoutingCapture, label: str) -> int:
    return 256 if label == "token" else len(capture.label_names(label))


def specialization(
    capture: RoutingCapture,
    layer: int,
    labels: Sequence[str] = ("domain", "char_class"),
    n_shuffles: int = 20,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> SpecializationReport:
    """NMI between block ``layer``'s top-1 expert and each label, with baseline and interval.

    Tokens whose label is ``UNKNOWN`` (typed text has no domain) are left out of that label's
    table.

    Args:
        capture: a ``RoutingCapture``.
        layer: the MoE block.
        labels: which labels (``"domain"``, ``"char_class"``, ``"token"``).
        n_shuffles: random label permutations for the shuffled baseline.
        n_bootstrap: window resamples for the interval.
        confidence: coverage of the interval (0.95: the 2.5th to 97.5th percentile).
        seed: seeds the permutations and the resamples.

    Returns:
        A ``SpecializationReport``.

    Taught in: notebooks/05_specialization.ipynb.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be strictly between 0 and 1")
    if n_shuffles < 1 or n_bootstrap < 2:
        raise ValueError("need n_shuffles >= 1 and n_bootstrap >= 2")
    expert = capture.top1(layer)  # (L,)
    n_experts = capture.n_experts
    windows = window_ids(capture)  # (L,)
    n_windows = int(windows.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    # One multiplicity matrix for every label: resample windows with replacement.
    picks = torch.randint(0, n_windows, (n_bootstrap, n_windows), generator=generator)
    multiplicity = torch.zeros(n_bootstrap, n_windows, dtype=torch.float64)
    multiplicity.scatter_add_(1, picks, torch.ones_like(picks, dtype=torch.float64))  # (B, W)
    scores = {}
    for label in labels:
        values = capture.labels(label)  # (L,)
        n_values = _n_values(capture, label)
        known = values != UNKNOWN
        e, v, w = expert[known], values[known], windows[known]
        table = contingency_table(e, v, n_experts, n_values)  # (E, C)
        shuffled = tuple(
            float(
                normalized_mutual_information(
                    contingency_table(
                        e, v[torch.randperm(v.numel(), generator=generator)], n_experts, n_values
                    )
                )
            )
            for _ in range(n_shuffles)
        )
        per_window = torch.bincount(
            (w * n_experts + e) * n_values + v, minlength=n_windows * n_experts * n_values
        ).view(n_windows, n_experts * n_values)  # (W, E*C)
        resampled = (multiplicity @ per_window.double()).view(-1, n_experts, n_values)  # (B, E, C)
        bootstrap = normalized_mutual_information(resampled)  # (B,)
        scores[label] = Specialization(
            layer=layer,
            label=label,
            label_names=capture.label_names(label),
            table=table,
            nmi=float(normalized_mutual_information(table)),
            shuffled=shuffled,
            interval=_percentiles(bootstrap, confidence),
            bootstrap=bootstrap,
        )
    return SpecializationReport(layer, scores, confidence)


@dataclass(frozen=True)
class BeyondToken:
    """What a label tells about the top-1 expert once the token's byte is known.

    Attributes:
        layer, label: the MoE block and the label (usually ``"domain"``).
        information: I(expert; label | byte) in nats.
        shuffled: the same with the label permuted among tokens of the same byte (chance,
            including the estimator's upward bias), one value per permutation.
        remaining: H(expert | byte) in nats, the routing uncertainty the byte leaves.
    """

    layer: int
    label: str
    information: float
    shuffled: tuple[float, ...]
    remaining: float

    @property
    def excess(self) -> float:
        """``information`` above the largest shuffled value (0 if it is not above)."""
        return max(0.0, self.information - max(self.shuffled))

    @property
    def share(self) -> float:
        """``excess / remaining``: the share of the byte-conditional routing entropy the label
        explains beyond chance (0 when the byte alone fixes the expert)."""
        return self.excess / self.remaining if self.remaining > 0 else 0.0


def beyond_token(
    capture: RoutingCapture, layer: int, label: str = "domain", n_shuffles: int = 10, seed: int = 0
) -> BeyondToken:
    """I(top-1 expert; ``label`` | byte) against a within-byte permutation baseline.

    Taught in: notebooks/05_specialization.ipynb.
    """
    values = capture.labels(label)
    known = values != UNKNOWN
    expert, values, token = capture.top1(layer)[known], values[known], capture.tokens[known]
    n_experts, n_values = capture.n_experts, _n_values(capture, label)
    generator = torch.Generator().manual_seed(seed)

    def cmi(y: torch.Tensor) -> float:
        return conditional_mutual_information(expert, y, token, n_experts, n_values, 256)

    shuffled = tuple(
        cmi(permute_within_groups(values, token, generator)) for _ in range(n_shuffles)
    )
    return BeyondToken(
        layer=layer,
        label=label,
        information=cmi(values),
        shuffled=shuffled,
        remaining=conditional_entropy(expert, token, n_experts, 256),
    )
