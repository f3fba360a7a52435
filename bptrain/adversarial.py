"""Adversarial examples: FGSM and PGD attacks, the TRADES loss, and adversarial training's batch step.

An attack follows the gradient of the loss with respect to the *input* (the same backward pass
that trains the weights, stopped one step later) to find the worst perturbation of size at most
epsilon. Three details decide whether the numbers mean anything, and each is handled here:

- **Raw units.** Epsilon is measured in the units of the raw input (pixels in [0, 1]), not in
  the normalised coordinates the model sees: the attack maps the batch back with
  ``InputSpace.to_raw``, perturbs and clamps to the data's valid range there, and feeds
  ``to_model`` of the result to the model. (Attacking normalised inputs with a raw-unit epsilon
  silently scales the budget by 1/std per channel.)
- **Eval mode.** The model runs in eval mode while the attack searches: batch norm uses its
  running statistics, so (a) the S forward passes of a PGD attack do not each update the running
  mean and variance with adversarial batches, and (b) one sample's perturbation does not depend on
  the other samples of the batch; dropout is off, so the attack climbs a fixed function. The
  training forward pass afterwards runs in train mode as usual. This is the choice of the TRADES
  reference implementation and of robustness benchmarks.
- **No parameter gradients.** ``torch.autograd.grad(loss, x)`` asks for the input gradient only:
  nothing accumulates into ``p.grad``, and autograd skips the weight-gradient products.

Random starts are drawn from a generator seeded by (seed, step, micro-batch), not from the global
RNG: the attack is a pure function of where the loop is, so a resumed run repeats it exactly,
and under DDP each rank draws its rows of the *global* batch's noise, so N processes attack
exactly as one process with the same global batch does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bptrain.data import DataBundle, DataSpec, InputSpace
from bptrain.errors import UserError
from bptrain.losses import Objective
from bptrain.runtime import Precision
from bptrain.steps import has_training_step

Forward = Callable[[torch.Tensor], torch.Tensor]  # model-space input -> output
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> scalar


@dataclass(frozen=True)
class Attack:
    """One attack's settings; epsilon and alpha are in raw input units."""

    method: Literal["fgsm", "pgd"]
    epsilon: float
    steps: int = 10
    alpha: float | None = None  # PGD step size; None: 2.5 * epsilon / steps (Madry et al.)
    random_start: bool = True
    norm: Literal["linf", "l2"] = "linf"
    restarts: int = 1

    @property
    def step_size(self) -> float:
        if self.method == "fgsm":
            return self.epsilon
        return self.alpha if self.alpha is not None else 2.5 * self.epsilon / max(self.steps, 1)

    @property
    def iterations(self) -> int:
        return 1 if self.method == "fgsm" else self.steps

    @property
    def starts_randomly(self) -> bool:
        return self.method == "pgd" and self.random_start


@dataclass
class AttackResult:
    x_adv: torch.Tensor  # model-space adversarial batch
    losses: list[float] | None  # batch loss at the start and after each step (when recorded)


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager:
    """The model in eval mode inside, its previous mode restored after (see the module docstring)."""

    @contextlib.contextmanager
    def switch():
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)

    return switch()


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel: the attack's extra forward/backward passes must not
    touch DDP's gradient all-reduce or buffer broadcast (every rank attacks its own shard)."""
    return getattr(model, "module", model)


def perturb(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    attack: Attack,
    space: InputSpace,
    noise: Callable[[torch.Size], torch.Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scale: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
    record_losses: bool = False,
) -> AttackResult:
    """FGSM or PGD from model-space inputs ``x``; returns the model-space adversarial batch.

    ``noise(shape)`` gives uniform [0, 1) numbers for the random start (``torch.rand`` if None);
    ``scale`` multiplies the loss before differentiating (an fp16 GradScaler's ``scale``, so small
    input gradients do not underflow: the step's direction does not depend on it). The caller
    puts the model in eval mode. Restarts are handled by ``attack_batch``.
    """
    x_raw = space.to_raw(x.detach().float())
    eps, alpha = attack.epsilon, attack.step_size
    delta = torch.zeros_like(x_raw)
    if attack.starts_randomly:
        delta = _random_start(noise or (lambda shape: torch.rand(shape)), x_raw, eps, attack.norm)
    x_adv = _clamp(x_raw + delta, space)
    losses: list[float] | None = [] if record_losses else None
    for _ in range(attack.iterations):
        x_adv.requires_grad_(True)
        with autocast():
            loss = loss_fn(forward(space.to_model(x_adv)), y)
        (grad,) = torch.autograd.grad(scale(loss.float()), x_adv)
        if losses is not None:
            losses.append(float(loss.detach()))
        grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
        with torch.no_grad():
            x_adv = x_adv.detach() + alpha * _direction(grad, attack.norm)
            x_adv = _clamp(x_raw + _project(x_adv - x_raw, eps, attack.norm), space)
    if losses is not None:
        with torch.no_grad(), autocast():
            losses.append(float(loss_fn(forward(space.to_model(x_adv)), y)))
    return AttackResult(space.to_model(x_adv.detach()).to(x.dtype), losses)


def _random_start(
    noise: Callable[[torch.Size], torch.Tensor], like: torch.Tensor, eps: float, norm: str
) -> torch.Tensor:
    """A uniform point of the linf ball, or for l2 a uniform direction at a uniform radius.

    Every random number comes from ``noise`` with the batch on dim 0 (see ``AdversarialTraining.noise``).
    """
    if norm == "linf":
        return ((2 * noise(like.shape) - 1) * eps).to(like.device)
    n, d = len(like), like[0].numel()
    u = noise(torch.Size((n, 2 * d + 1))).double()
    # Box-Muller: two uniform numbers per feature make one standard normal (an isotropic direction)
    z = torch.sqrt(-2 * torch.log1p(-u[:, :d])) * torch.cos(2 * math.pi * u[:, d : 2 * d])
    direction = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (direction * u[:, 2 * d :] * eps).float().view_as(like).to(like.device)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of unit size: sign for linf, the normalised gradient for l2."""
    if norm == "linf":
        return grad.sign()
    flat = grad.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(grad)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Back onto the epsilon ball around the clean input."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1)
    factor = (eps / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    return (flat * factor).view_as(delta)


def _clamp(x_raw: torch.Tensor, space: InputSpace) -> torch.Tensor:
    return x_raw.clamp(space.low, space.high)


def wrong_per_sample(objective: Objective, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Misclassified labels per sample (0 or 1; up to T with per-step labels)."""
    if objective.binary:
        return ((output.reshape(len(y), -1) > 0).long() != y.reshape(len(y), -1).long()).sum(1)
    if y.ndim > 1:
        return (output.argmax(dim=-1).reshape(len(y), -1) != y.reshape(len(y), -1)).sum(1)
    return (output.argmax(dim=-1) != y).long()


def attack_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: Objective,
    attack: Attack,
    space: InputSpace,
    generator: torch.Generator | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    record_losses: bool = False,
) -> AttackResult:
    """The attack with restarts, for evaluation: per sample, keep the restart that misclassifies
    the most labels (ties: the higher loss). Model in eval mode throughout."""

    def noise(shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=generator)

    def per_sample_loss(output: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = output.float()
            if objective.binary:
                return F.binary_cross_entropy_with_logits(
                    out.reshape(len(y), -1), y.reshape(len(y), -1).float(), reduction="none"
                ).mean(1)
            if objective.task == "classification":
                flat = out.reshape(y.numel(), -1)
                return (
                    F.cross_entropy(flat, y.reshape(-1), reduction="none").view(len(y), -1).mean(1)
                )
            return (out.reshape(len(y), -1) - y.reshape(len(y), -1).float()).pow(2).mean(1)

    best: torch.Tensor | None = None
    best_key: torch.Tensor | None = None
    losses: list[float] | None = None
    with eval_mode(model):
        for _ in range(attack.restarts if attack.starts_randomly else 1):
            result = perturb(
                model,
                x,
                y,
                objective.loss,
                attack,
                space,
                noise,
                autocast,
                record_losses=record_losses,
            )
            if losses is None:
                losses = result.losses
            with torch.no_grad(), autocast():
                output = model(result.x_adv)
            key = (
                wrong_per_sample(objective, output, y).double() * 1e6
                + per_sample_loss(output).double()
            )
            if best is None:
                best, best_key = result.x_adv, key
            else:
                better = key > best_key  # type: ignore[operator]
                best = torch.where(better.view(-1, *[1] * (x.ndim - 1)), result.x_adv, best)
                best_key = torch.maximum(key, best_key)  # type: ignore[arg-type]
    return AttackResult(best, losses)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- TRADES


def trades_kl(adv_output: torch.Tensor, clean_output: torch.Tensor, binary: bool) -> torch.Tensor:
    """KL(p_clean || p_adv) per sample, summed over the class dimension (TRADES' robust term)."""
    if binary:  # one logit: the two-class distribution [1 - sigmoid(z), sigmoid(z)]
        adv_output = torch.stack([torch.zeros_like(adv_output), adv_output], -1)
        clean_output = torch.stack([torch.zeros_like(clean_output), clean_output], -1)
    log_adv = F.log_softmax(adv_output.float(), dim=-1)
    log_clean = F.log_softmax(clean_output.float(), dim=-1)
    kl = F.kl_div(log_adv, log_clean, reduction="none", log_target=True).sum(-1)
    return kl.reshape(len(kl), -1).mean(1) if kl.ndim > 1 else kl


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingAttack:
    """What ``trainer.adversarial`` asks of each training batch (the config section, resolved)."""

    method: Literal["fgsm", "pgd", "trades"]
    epsilon: float
    steps: int
    alpha: float | None
    random_start: bool
    norm: Literal["linf", "l2"]
    beta: float
    fraction: float
    warmup_steps: int

    def epsilon_at(self, step: int) -> float:
        """Linear warm-up from epsilon/warmup_steps at step 0 to epsilon at step warmup_steps - 1."""
        if self.warmup_steps <= 0:
            return self.epsilon
        return self.epsilon * min(1.0, (step + 1) / self.warmup_steps)

    def attack_at(self, step: int) -> Attack:
        eps = self.epsilon_at(step)
        if self.method == "fgsm":
            return Attack("fgsm", eps, 1, None, False, self.norm)
        alpha = None if self.alpha is None else self.alpha * eps / self.epsilon
        # pgd, and TRADES' inner maximisation (PGD on the KL to the clean output)
        return Attack("pgd", eps, self.steps, alpha, self.random_start, self.norm)


# (forward, x, y, micro-batch index) -> the loss the step backward()s
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


class AdversarialTraining:
    """Adversarial training's part of the training step: ``for_step`` gives the loss that replaces
    ``objective.loss(forward(x), y)`` for one optimizer step.

    The loss attacks the micro-batch (the plain model in eval mode, no parameter gradients, under
    the step's autocast), then runs the training forward pass as usual (train mode, through DDP):
    on the attacked batch for fgsm/pgd; on the clean and the attacked batch for TRADES
    (the clean loss plus beta x KL(clean output || attacked output)).
    """

    def __init__(
        self,
        settings: TrainingAttack,
        space: InputSpace,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.settings, self.space = settings, space
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def noise(self, step: int, micro: int) -> Callable[[torch.Size], torch.Tensor]:
        """Uniform numbers for the random start: this rank's rows of the global batch's noise.

        Rank r holds samples r, r + W, r + 2W, ... of the global batch (strided shards, see
        ``data.loaders``), so it takes rows r::W of noise drawn for W times its batch.
        """

        def draw(shape: torch.Size) -> torch.Tensor:
            generator = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + step) * 1_009 + micro
            )
            full = torch.rand((shape[0] * self.world_size, *shape[1:]), generator=generator)
            return full[self.rank :: self.world_size]

        return draw

    def attacked_rows(self, n: int, device: torch.device) -> torch.Tensor | None:
        """Which rows of the micro-batch are attacked (None: all): the first ``fraction`` of the
        global batch, counted by global position so DDP matches one process."""
        if self.settings.fraction >= 1.0:
            return None
        cutoff = round(self.settings.fraction * n * self.world_size)
        positions = torch.arange(n, device=device) * self.world_size + self.rank
        return positions < cutoff

    def for_step(
        self, step: int, model: nn.Module, objective: Objective, precision: Precision
    ) -> BatchLoss:
        """The loss for optimizer step ``step``; ``model`` is the plain module (never the DDP or
        compiled wrapper: the attack's passes must not touch DDP's all-reduce)."""
        attack = self.settings.attack_at(step)

        def loss(forward: nn.Module, x: torch.Tensor, y: torch.Tensor, micro: int) -> torch.Tensor:
            x_adv = self.attack(model, x, y, objective, precision, attack, self.noise(step, micro))
            with precision.autocast():
                if self.settings.method != "trades":
                    return objective.loss(forward(x_adv), y)
                clean_output, adv_output = forward(x), forward(x_adv)
                natural = objective.loss(clean_output, y)
            kl = trades_kl(adv_output, clean_output, objective.binary)
            rows = self.attacked_rows(len(x), x.device)
            if rows is not None:
                kl = kl * rows.to(kl.dtype)
            return natural + self.settings.beta * kl.sum() / max(len(x), 1)

        return loss

    def attack(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        objective: Objective,
        precision: Precision,
        attack: Attack,
        noise: Callable[[torch.Size], torch.Tensor],
    ) -> torch.Tensor:
        """The micro-batch with its attacked rows replaced by their adversarial versions."""
        rows = self.attacked_rows(len(x), x.device)
        x_part, y_part = (x, y) if rows is None else (x[rows], y[rows])
        if len(x_part) == 0:
            return x
        loss_fn: LossFn = objective.loss
        with eval_mode(model):
            if self.settings.method == "trades":
                with torch.no_grad(), precision.autocast():
                    target = model(x_part).detach()

                def kl_loss(output: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
                    return trades_kl(output, target, objective.binary).sum()

                loss_fn = kl_loss
            x_adv = perturb(
                model,
                x_part,
                y_part,
                loss_fn,
                attack,
                self.space,
                noise,
                precision.autocast,
                precision.scaler.scale,  # fp16: keep small input gradients from underflowing
            ).x_adv
        if rows is None:
            return x_adv
        out = x.clone()
        out[rows] = x_adv
        return out


def check_attackable(spec: DataSpec, space: InputSpace | None, what: str) -> InputSpace:
    """Attacks need differentiable inputs and class labels; say what to change otherwise."""
    if space is None:
        raise UserError(
            f"{what}: the model's inputs are token ids (integers it embeds), which have no gradient to "
            "attack along. Adversarial attacks need real-valued inputs (images, features)."
        )
    if spec.task != "classification":
        raise UserError(
            f"{what}: the data is a regression task; robust accuracy and these attacks are defined for "
            "classification (integer class labels). Drop the attack, or use class labels."
        )
    if space.range <= 0:
        raise UserError(f"{what}: every training input has the same value; nothing to perturb.")
    return space


def check_epsilon(epsilon: float, space: InputSpace, norm: str, features: int, where: str) -> None:
    """Epsilon must be positive and inside the data's range (raw units)."""
    limit = space.range if norm == "linf" else 2 * l2_saturation(space, features)
    if not epsilon > 0:
        raise UserError(
            f"{where} is {epsilon:g}; it must be > 0 (in raw input units: the data ranges over "
            f"[{space.low:g}, {space.high:g}])."
        )
    if epsilon > limit:
        raise UserError(
            f"{where} is {epsilon:g}, larger than the data's range ({limit:g} in {norm} for values in "
            f"[{space.low:g}, {space.high:g}], before data.normalize): every input could become any "
            f"other. Use an epsilon well below it (for [0, 1] images, 8/255 ~ 0.03 is usual)."
        )


_WITH_TRAINING_STEP = (
    "trainer.adversarial attacks the built-in loss(model(x), y); this model defines its own "
    "training_step. Remove trainer.adversarial, or attack the inputs in training_step."
)


def refuse_with_training_step(cfg: Any, model: nn.Module) -> None:
    """``trainer.adversarial`` with a model's own ``training_step``: exit 2 before anything trains.

    The attack needs the built-in loss to follow its input gradient; a ``training_step`` computes
    its loss where no attack can reach it, so the pair would train without attacks, or fail.
    """
    if cfg is not None and has_training_step(model):
        raise UserError(_WITH_TRAINING_STEP)


def build_adversarial(
    cfg: Any,
    data: DataBundle,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    objective: Any = None,
) -> AdversarialTraining | None:
    """``trainer.adversarial`` checked against the data and the step (exit 2 with what to change), or None."""
    if cfg is None:
        return None
    if objective is not None and not isinstance(objective, Objective):
        raise UserError(_WITH_TRAINING_STEP)
    space = check_attackable(data.spec, data.input_space, "trainer.adversarial")
    check_epsilon(
        cfg.epsilon, space, cfg.norm, data.spec.in_features, "trainer.adversarial.epsilon"
    )
    settings = TrainingAttack(
        cfg.method,
        cfg.epsilon,
        cfg.steps,
        cfg.alpha,
        cfg.random_start,
        cfg.norm,
        cfg.beta,
        cfg.fraction,
        cfg.warmup_steps,
    )
    return AdversarialTraining(settings, space, seed, rank, world_size)


def l2_saturation(space: InputSpace, features: int) -> float:
    """The l2 radius that reaches every point of the valid box from its centre."""
    return space.range / 2 * math.sqrt(features)
