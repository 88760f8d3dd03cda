"""How published parameter counts are recorded, checked, and which convention each lab uses.

``PublishedFigure`` is a number as its authors printed it, with its source and how precisely it
was given; ``Preset`` ties a model's config to its published total and active counts and to the
``CountConvention`` that reproduces them. The lab conventions below were established from the
labs' own numbers (the presets show the arithmetic); where a lab states its convention, the
source is quoted on the preset.

Taught in: notebooks/06_compute_budgets.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moe_lab.budget.counts import CountConvention, ParameterCounts, count_parameters
from moe_lab.budget.hf_configs import from_hf_config
from moe_lab.budget.spec import ModelSpec


def hf_config_url(repo: str) -> str:
    """Where a Hugging Face repository's config.json, the source of a preset's shape, lives."""
    return f"https://huggingface.co/{repo}/blob/main/config.json"


@dataclass(frozen=True)
class PublishedFigure:
    """A parameter count as its authors published it.

    Args:
        value: the figure, in parameters (``46.7e9`` for "46.7B").
        source: where it is published (URL or paper, with the quoted wording).
        rounded: the figure has only one or two significant digits ("47B", "2.7B"); the check
            tolerance is then 2% instead of 1%.
        truncated_to: the figure appears truncated rather than rounded, to this unit (``0.1e9``
            for "2.4B" when the count is 2.45B): the check is then
            ``value <= computed < value + truncated_to``. Said why wherever it is used.
        rounded_to: the figure is the count rounded to this unit ("32B": ``1e9``): the check is
            then that the count rounds to it, ``|computed - value| <= rounded_to / 2``.
        share_of_routed_experts: the figure is not a count but the share of the routed experts'
            weights one token uses (xAI's "25% of the weights active" for Grok-1): the check is
            then ``K/E == value``.
    """

    value: float
    source: str
    rounded: bool = False
    truncated_to: float | None = None
    rounded_to: float | None = None
    share_of_routed_experts: bool = False

    @property
    def tolerance(self) -> float:
        return 0.02 if self.rounded else 0.01

    def relative_error(self, computed: float) -> float:
        return computed / self.value - 1.0

    def agrees(self, computed: float) -> bool:
        """Whether ``computed`` reproduces this figure (see the class docstring)."""
        if self.truncated_to is not None:
            return self.value <= computed < self.value + self.truncated_to
        if self.rounded_to is not None:
            return abs(computed - self.value) <= self.rounded_to / 2
        return abs(self.relative_error(computed)) <= self.tolerance


# How each lab counts "active" (documented from their own numbers; see the notes on presets).
MISTRAL = CountConvention("Mistral: embedding + head", True, True)
QWEN = CountConvention("Qwen: embedding + head", True, True)
DEEPSEEK = CountConvention("DeepSeek: head, no input embedding, no MTP", False, True, False)
OPENAI = CountConvention("OpenAI: unembedding, no embedding", False, True)
# Phi-3.5-MoE's "6.6B" fits with (6.64B) and without (6.51B) the embedding; no other figure
# tells them apart, so the preset uses the reading that matches most labs.
MICROSOFT = CountConvention("Microsoft: not stated (embedding + head)", True, True)
AI2 = CountConvention("AI2: embedding + head", True, True)
META = CountConvention("Meta: embedding + head", True, True)
DATABRICKS = CountConvention("Databricks: not stated (embedding + head)", True, True)
# DeepSeekMoE 16B's "2.8B" (January 2024) fits only with the embedding; from DeepSeek-V2
# (May 2024) on, DeepSeek's activated counts leave it out (DEEPSEEK above).
DEEPSEEK_MOE = CountConvention("DeepSeek, DeepSeekMoE 16B: embedding + head", True, True)
MOONSHOT = CountConvention("Moonshot AI: head, no input embedding (as DeepSeek)", False, True)
ZHIPU = CountConvention("Zhipu AI: no embedding, no head, no MTP", False, False)
IBM = CountConvention("IBM: no embedding, no head", False, False)
JETMOE = CountConvention("JetMoE: no embedding, no head", False, False)
AI21 = CountConvention("AI21 Labs: not stated (embedding + head)", True, True)
GOOGLE = CountConvention("Google, Switch: embedding + head (the T5 count)", True, True)
SNOWFLAKE = CountConvention("Snowflake: not stated (embedding + head)", True, True)
XAI = CountConvention("xAI: a share of the expert weights, not a count", True, True)

LAB_CONVENTIONS: dict[str, CountConvention] = {
    "Mistral AI": MISTRAL,
    "Qwen (Alibaba)": QWEN,
    "DeepSeek": DEEPSEEK,
    "OpenAI": OPENAI,
    "Microsoft": MICROSOFT,
    "AI2": AI2,
    "Meta": META,
    "Databricks": DATABRICKS,
    "DeepSeek (DeepSeekMoE 16B, 2024-01)": DEEPSEEK_MOE,
    "Moonshot AI": MOONSHOT,
    "Zhipu AI": ZHIPU,
    "IBM": IBM,
    "JetMoE": JETMOE,
    "AI21 Labs": AI21,
    "Google": GOOGLE,
    "Snowflake": SNOWFLAKE,
    "xAI": XAI,
}


@dataclass(frozen=True)
class Preset:
    """One published model.

    Args:
        name: the model's name.
        lab: the lab that published it (a key of ``LAB_CONVENTIONS``).
        config: architecture fields of its ``config.json``.
        config_source: where the config values come from.
        total: the published total parameter count.
        active: the published active parameter count.
        convention: the counting convention that reproduces both.
        notes: anything a reader comparing numbers must know.
        extra: further published figures (e.g. Qwen3's non-embedding total, DeepSeek-V3's MTP
            size), from the same sources as ``total`` and ``active``.
    """

    name: str
    lab: str
    config: dict[str, Any]
    config_source: str
    total: PublishedFigure
    active: PublishedFigure
    convention: CountConvention
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> ModelSpec:
        return from_hf_config(self.config, name=self.name)

    def counts(self) -> ParameterCounts:
        return count_parameters(self.spec())

    def total_agrees(self, counts: ParameterCounts | None = None) -> bool:
        """Whether the calculator's total, under this preset's convention, reproduces the card."""
        counts = counts or self.counts()
        return self.total.agrees(counts.total(self.convention))

    def active_agrees(
        self, counts: ParameterCounts | None = None, convention: CountConvention | None = None
    ) -> bool:
        """Whether the active count under ``convention`` (default: the preset's) reproduces the
        card; for a share-of-experts figure, whether K/E equals it."""
        counts = counts or self.counts()
        if self.active.share_of_routed_experts:
            return abs(counts.routed_active_fraction - self.active.value) < 1e-12
        return self.active.agrees(counts.active(convention or self.convention))
