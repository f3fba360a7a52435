"""The ``trainer.adversarial`` section: adversarial training (FGSM, PGD, TRADES); see docs/robustness.md.

Only what the config alone can tell is checked here (epsilon > 0, steps >= 1 for PGD); what
needs the data (epsilon within the data's range, class labels, real-valued inputs) is checked
when the run is built, before training (``adversarial.build_adversarial``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from bptrain.config.base import Section


class AdversarialConfig(Section):
    """Adversarial training: each training batch is attacked before the forward pass. See docs/robustness.md."""

    method: Literal["fgsm", "pgd", "trades"] = "pgd"
    """fgsm: one signed-gradient step of size epsilon. pgd: Madry et al.'s projected gradient descent (train on the attacked batch). trades: the clean loss plus beta x KL(clean output || attacked output), the attack maximising that KL (Zhang et al. 2019)."""
    epsilon: float
    """Perturbation budget in raw input units (before data.normalize; pixels in [0, 1] for the digits), e.g. 0.1. Must be > 0 and below the data's range."""
    alpha: float | None = None
    """PGD/TRADES step size in raw units; null: 2.5 x epsilon / steps. Scaled with epsilon during the warm-up."""
    steps: int = Field(7, ge=0)
    """PGD/TRADES attack steps per batch (fgsm: ignored, always one). Each costs about one forward and backward pass."""
    random_start: bool = True
    """PGD/TRADES start at a uniformly random point of the epsilon ball (seeded by seed, step and micro-batch: resume and DDP repeat it exactly)."""
    norm: Literal["linf", "l2"] = "linf"
    """The ball the perturbation stays in: linf (max per feature) or l2 (Euclidean)."""
    beta: float = Field(6.0, ge=0.0)
    """TRADES: weight of the robustness (KL) term; larger trades clean accuracy for robustness."""
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    """Fraction of each batch attacked (the first samples of the shuffled batch); the rest trains clean."""
    warmup_steps: int = Field(0, ge=0)
    """Raise epsilon linearly from epsilon/warmup_steps to epsilon over this many optimizer steps (0: full epsilon from the start)."""

    @field_validator("epsilon")
    @classmethod
    def _positive_epsilon(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(
                f"must be > 0 (in raw input units, e.g. 0.1 for pixels in [0, 1]); got {value}"
            )
        return value

    @field_validator("alpha")
    @classmethod
    def _positive_alpha(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"must be > 0 or null (2.5 x epsilon / steps); got {value}")
        return value

    @model_validator(mode="after")
    def _steps_for_pgd(self) -> AdversarialConfig:
        if self.method != "fgsm" and self.steps < 1:
            raise ValueError(
                f"steps: 0 with method {self.method}: PGD needs at least one step (7-10 is usual), or use method: fgsm"
            )
        return self
