"""Robustness evaluation: clean and robust accuracy, the accuracy-vs-epsilon table, and sanity checks.

A robust accuracy is only worth reporting if the attack really worked. Gradient masking
(a model whose input gradient is zero or useless: rounding, saturation, randomness) makes a
weak attack fail and the model *look* robust. So every evaluation also runs the checks from
the adversarial-robustness literature (Carlini et al. 2019, "On Evaluating Adversarial
Robustness") and warns when one is violated:

- PGD accuracy <= FGSM accuracy at the same epsilon (an iterative attack is at least as strong);
- accuracy does not rise as epsilon grows, and reaches about zero once epsilon can turn every
  input into the same grey one (linf: half the data range);
- more PGD steps, or more restarts, never raise accuracy;
- the loss increases along the attack (from its start to its end).

Each comparison allows ``TOLERANCE`` (one percentage point) for the randomness of the start, and
accuracies at or below ``NEAR_ZERO`` (5%) are not compared: such an attack works.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from bptrain.adversarial import (
    Attack,
    attack_batch,
    check_attackable,
    check_epsilon,
    l2_saturation,
    wrong_per_sample,
)
from bptrain.config import Config
from bptrain.data import Batches, InputSpace
from bptrain.errors import UserError
from bptrain.losses import Objective
from bptrain.runtime import Precision

TOLERANCE = (
    0.01  # accuracy a check lets pass (random starts make PGD accuracy vary by a sample or two)
)
NEAR_ZERO = 0.05  # above the majority-class rate at saturation: the attack failed


@dataclass(frozen=True)
class Request:
    """What ``bptrain eval --attack`` asks for."""

    attack: Literal["fgsm", "pgd"]
    epsilons: list[float]  # the table's epsilons (raw input units), ascending
    epsilon: float  # the headline epsilon: robust_acc, and where the steps/restarts checks run
    steps: int = 10
    restarts: int = 1
    alpha: float | None = None
    norm: Literal["linf", "l2"] = "linf"
    seed: int = 0

    def make(self, method: str, epsilon: float, **changes: Any) -> Attack:
        attack = Attack(method, epsilon, self.steps, self.alpha, True, self.norm, self.restarts)  # type: ignore[arg-type]
        return replace(attack, **changes)


@dataclass
class _Totals:
    wrong: float = 0.0
    loss_start: float = 0.0
    loss_end: float = 0.0


def evaluate_robustness(
    model: nn.Module,
    batches: Batches,
    objective: Objective,
    precision: Precision,
    space: InputSpace,
    request: Request,
) -> dict[str, Any]:
    """Clean accuracy, FGSM and PGD accuracy at every epsilon, the checks; one pass over the split
    per attack. Returns the report (also the JSON written by ``bptrain eval``)."""
    variants = _attack_variants(request)
    headline_pgd = variants["pgd@headline"]
    totals = {name: _Totals() for name in variants}
    clean_wrong = clean_loss = 0.0
    samples = targets = 0
    class_counts: torch.Tensor | None = None
    model.eval()
    device = precision.device
    for index, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        with torch.no_grad(), precision.autocast():
            output = model(x)
        clean_wrong += float(wrong_per_sample(objective, output, y).sum())
        clean_loss += float(objective.loss(output.float(), y)) * len(x)
        samples += len(x)
        targets += y.numel()
        counts = torch.bincount(y.reshape(-1).long().cpu(), minlength=2)
        class_counts = counts if class_counts is None else _add_counts(class_counts, counts)
        for name, attack in variants.items():
            # the same noise for every variant of a batch: more restarts extend, not replace, the first
            generator = torch.Generator().manual_seed(request.seed * 1_000_003 + index)
            _attack_and_count(
                model,
                x,
                y,
                objective,
                precision,
                space,
                attack,
                generator,
                totals[name],
                record_losses=name == "pgd@headline",
            )

    def acc(name: str) -> float:
        return 1 - totals[name].wrong / max(targets, 1)

    clean_acc = 1 - clean_wrong / max(targets, 1)
    table = [
        {
            "epsilon": eps,
            "fgsm_acc": acc(f"fgsm@{eps}") if eps > 0 else clean_acc,
            "pgd_acc": acc(f"pgd@{eps}") if eps > 0 else clean_acc,
        }
        for eps in request.epsilons
    ]
    majority = float(class_counts.max()) / max(targets, 1) if class_counts is not None else 0.0
    robust = acc(f"{request.attack}@headline")
    checks = sanity_checks(
        table,
        fgsm=acc("fgsm@headline"),
        pgd=acc("pgd@headline"),
        more_steps=acc("more_steps"),
        more_restarts=acc("more_restarts"),
        loss_start=totals["pgd@headline"].loss_start / max(samples, 1),
        loss_end=totals["pgd@headline"].loss_end / max(samples, 1),
        request=request,
        saturation=space.range / 2
        if request.norm == "linf"
        else l2_saturation(space, int(x[0].numel())),
        majority=majority,
    )
    return {
        "attack": request.attack,
        "norm": request.norm,
        "epsilon": request.epsilon,
        "steps": request.steps if request.attack == "pgd" else 1,
        "restarts": request.restarts if request.attack == "pgd" else 1,
        "alpha": headline_pgd.step_size if request.attack == "pgd" else request.epsilon,
        "input_range": [space.low, space.high],
        "samples": samples,
        "clean_loss": clean_loss / max(samples, 1),
        "clean_acc": clean_acc,
        "robust_acc": robust,
        "fgsm_acc": acc("fgsm@headline"),
        "pgd_acc": acc("pgd@headline"),
        "table": table,
        "checks": [asdict(c) for c in checks],
        "warnings": [c.message for c in checks if c.ok is False],
    }


def _attack_variants(request: Request) -> dict[str, Attack]:
    """Every attack one evaluation runs, by name: FGSM and PGD at each epsilon of the table, and at
    the headline epsilon PGD with twice the steps and with one more restart (for the checks)."""
    headline_pgd = request.make("pgd", request.epsilon)
    variants: dict[str, Attack] = {}
    for eps in request.epsilons:
        if eps > 0:
            variants[f"fgsm@{eps}"] = request.make("fgsm", eps)
            variants[f"pgd@{eps}"] = request.make("pgd", eps)
    variants["fgsm@headline"] = request.make("fgsm", request.epsilon)
    variants["pgd@headline"] = headline_pgd
    variants["more_steps"] = replace(headline_pgd, steps=2 * request.steps)
    variants["more_restarts"] = replace(headline_pgd, restarts=request.restarts + 1)
    return variants


def _attack_and_count(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: Objective,
    precision: Precision,
    space: InputSpace,
    attack: Attack,
    generator: torch.Generator,
    totals: _Totals,
    record_losses: bool,
) -> None:
    """Attack one batch and add its misclassified targets (and with ``record_losses``, the loss at
    the start and end of the attack) to ``totals``."""
    result = attack_batch(
        model,
        x,
        y,
        objective,
        attack,
        space,
        generator,
        precision.autocast,
        record_losses=record_losses,
    )
    with torch.no_grad(), precision.autocast():
        adv_output = model(result.x_adv)
    totals.wrong += float(wrong_per_sample(objective, adv_output, y).sum())
    if result.losses:
        totals.loss_start += result.losses[0] * len(x)
        totals.loss_end += result.losses[-1] * len(x)


def _add_counts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    size = max(len(a), len(b))
    return torch.nn.functional.pad(a, (0, size - len(a))) + torch.nn.functional.pad(
        b, (0, size - len(b))
    )


def _no_higher(accuracy: float, than: float) -> bool:
    """``accuracy`` is not above ``than``, up to TOLERANCE; below NEAR_ZERO nothing is compared:
    an attack that fools 95% of the samples is not masked, and the last few are noise."""
    return accuracy <= than + TOLERANCE or accuracy <= NEAR_ZERO


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not checked (the request did not allow it)
    message: str


def sanity_checks(
    table: list[dict[str, float]],
    fgsm: float,
    pgd: float,
    more_steps: float,
    more_restarts: float,
    loss_start: float,
    loss_end: float,
    request: Request,
    saturation: float,
    majority: float,
) -> list[Check]:
    """The four checks of the module docstring; a failed one says what it suggests."""
    eps = f"epsilon {request.epsilon:g}"
    masked = " The input gradient may be masked: the robust accuracy overstates robustness."
    pairs = [(request.epsilon, pgd, fgsm)] + [
        (r["epsilon"], r["pgd_acc"], r["fgsm_acc"]) for r in table if r["epsilon"] > 0
    ]
    worse = [(e, p, f) for e, p, f in pairs if not _no_higher(p, f)]
    e, p, f = worse[0] if worse else pairs[0]
    checks = [
        Check(
            "pgd_le_fgsm",
            not worse,
            f"PGD accuracy ({p:.3f}) is higher than FGSM accuracy ({f:.3f}) at epsilon {e:g}: an "
            f"iterative attack should be at least as strong.{masked}",
        ),
        Check(
            "more_steps_no_better",
            _no_higher(more_steps, pgd),
            f"PGD with {2 * request.steps} steps leaves accuracy {more_steps:.3f}, higher than "
            f"{request.steps} steps ({pgd:.3f}) at {eps}: the attack is not converging.{masked}",
        ),
        Check(
            "more_restarts_no_better",
            _no_higher(more_restarts, pgd),
            f"PGD with {request.restarts + 1} restarts leaves accuracy {more_restarts:.3f}, higher "
            f"than {request.restarts} ({pgd:.3f}) at {eps}.{masked}",
        ),
        Check(
            "loss_increases",
            loss_end > loss_start + 1e-6 * max(1.0, abs(loss_start)),
            f"The PGD loss did not increase along the attack at {eps} (start {loss_start:.4g}, end "
            f"{loss_end:.4g}): the input gradient carries no signal.{masked}",
        ),
    ]
    accs = [r["pgd_acc"] for r in table]
    rising = [
        (a["epsilon"], b["epsilon"])
        for a, b in itertools.pairwise(table)
        if not _no_higher(b["pgd_acc"], a["pgd_acc"])
    ]
    if len(table) < 2:
        checks.append(
            Check(
                "falls_to_zero",
                None,
                "not checked: give --epsilons (up to "
                f"{saturation:g}) to see accuracy fall as epsilon grows",
            )
        )
    elif rising:
        a, b = rising[0]
        checks.append(
            Check(
                "falls_to_zero",
                False,
                f"PGD accuracy rises from epsilon {a:g} to {b:g}: a larger budget should never help "
                f"the model.{masked}",
            )
        )
    elif table[-1]["epsilon"] >= saturation:
        checks.append(
            Check(
                "falls_to_zero",
                accs[-1] <= majority + NEAR_ZERO,
                f"At epsilon {table[-1]['epsilon']:g} (enough to turn every input into the same one) "
                f"PGD accuracy is still {accs[-1]:.3f}; it should be about the majority-class rate "
                f"({majority:.3f}) or lower.{masked}",
            )
        )
    else:
        checks.append(
            Check(
                "falls_to_zero",
                True,
                f"accuracy falls with epsilon; not checked near zero (the largest epsilon is below "
                f"{saturation:g}, where every input can be turned into the same one)",
            )
        )
    return checks


# --------------------------------------------------------------------------- output


def print_report(report: dict[str, Any], console: Any, title: str) -> None:
    from rich.table import Table

    summary = Table(title=title)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key in ("samples", "clean_acc", "robust_acc", "fgsm_acc", "pgd_acc", "clean_loss"):
        value = report[key]
        summary.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(summary)
    if len(report["table"]) > 1:
        table = Table(title=f"accuracy vs epsilon ({report['norm']}, raw input units)")
        for column in ("epsilon", "fgsm_acc", "pgd_acc"):
            table.add_column(column, justify="right")
        for row in report["table"]:
            table.add_row(f"{row['epsilon']:g}", f"{row['fgsm_acc']:.4f}", f"{row['pgd_acc']:.4f}")
        console.print(table)
    if not report["warnings"]:  # the CLI prints the warnings themselves to stderr
        console.print(
            "sanity checks passed: PGD <= FGSM, more steps/restarts no better, loss rises along "
            "the attack" + ("" if len(report["table"]) < 2 else ", accuracy falls with epsilon")
        )


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from bptrain.runlog import write_json as write_strict_json  # no bare NaN/Infinity

    write_strict_json(path, report)


def write_png(report: dict[str, Any], path: Path) -> None:
    """Accuracy vs epsilon, FGSM and PGD (matplotlib, imported only here)."""
    from bptrain.diagnostics.plot import require_matplotlib, save_figure

    plt = require_matplotlib()
    eps = [r["epsilon"] for r in report["table"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(eps, [r["fgsm_acc"] for r in report["table"]], marker="o", label="FGSM")
    ax.plot(
        eps, [r["pgd_acc"] for r in report["table"]], marker="o", label=f"PGD-{report['steps']}"
    )
    ax.set_xlabel(f"epsilon ({report['norm']}, raw input units)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def parse_epsilons(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(
            f"--epsilons {text!r}: expected comma-separated numbers, e.g. 0,0.05,0.1,0.2"
        ) from None
    if not values or any(v < 0 or not math.isfinite(v) for v in values):
        raise UserError(f"--epsilons {text!r}: expected numbers >= 0, e.g. 0,0.05,0.1,0.2")
    return values


def evaluate_checkpoint_robustness(
    cfg: Config,
    checkpoint: Path,
    split: str,
    attack: Literal["fgsm", "pgd"],
    epsilon: float | None,
    epsilons: list[float] | None,
    steps: int,
    restarts: int,
    alpha: float | None,
    norm: Literal["linf", "l2"] | None,
) -> dict[str, Any]:
    """``bptrain eval --attack``: the checkpoint's model attacked on one split of the config's data.

    Without ``epsilon``, the headline is the first positive value of ``epsilons``, else the
    budget the model was trained against (``trainer.adversarial.epsilon``). Without ``norm``,
    the norm it was trained against, else linf.
    """
    from bptrain.inference import load_model_and_split

    model, batches, objective, precision, data = load_model_and_split(cfg, checkpoint, split)
    space = check_attackable(data.spec, data.input_space, "--attack")
    features = data.spec.in_features
    trained = cfg.trainer.adversarial  # the threat model the model was trained against
    if norm is None:
        norm = trained.norm if trained is not None else "linf"
    if epsilon is None and not epsilons and trained is not None:
        epsilon = trained.epsilon
    table = sorted(set(epsilons or []) | ({epsilon} if epsilon is not None else set()) | {0.0})
    if epsilon is None:
        positive = [e for e in table if e > 0]
        if not positive:
            raise UserError(
                "--attack needs an epsilon (in raw input units): --epsilon 0.1, or --epsilons "
                "0,0.05,0.1 (a config with trainer.adversarial gives its epsilon)"
            )
        epsilon = positive[0]
    for eps in table:
        if eps > 0 or eps == epsilon:
            check_epsilon(eps, space, norm, features, f"epsilon {eps:g}")
    if alpha is not None and not alpha > 0:
        raise UserError(f"--alpha is {alpha:g}; the PGD step size must be > 0.")
    if steps < 1 and attack == "pgd":
        raise UserError("--steps 0 with --attack pgd: PGD needs at least one step (10 is usual).")
    request = Request(attack, table, epsilon, steps, restarts, alpha, norm, cfg.seed)
    report = evaluate_robustness(model, batches, objective, precision, space, request)
    return {"split": split, "checkpoint": str(checkpoint), **report}


def attack_command(
    cfg: Config,
    checkpoint: Path,
    split: str,
    *,
    attack: Literal["fgsm", "pgd"],
    epsilon: float | None,
    epsilons: str | None,
    steps: int,
    restarts: int,
    alpha: float | None,
    norm: Literal["linf", "l2"] | None,
    out: Path | None,
    plot: bool,
    as_json: bool,
) -> list[str]:
    """``bptrain eval --attack``: evaluate, write the JSON report (``out``, default
    ``robustness_<split>.json`` beside the checkpoint) and with ``plot`` its PNG, then print it: one
    JSON object on stdout with ``as_json``, else tables. Returns the failed sanity checks' warnings,
    which the CLI prints on stderr."""
    if plot:
        from bptrain.diagnostics.plot import require_matplotlib

        require_matplotlib()  # before the attacks, not after them
    report = evaluate_checkpoint_robustness(
        cfg,
        checkpoint,
        split,
        attack,
        epsilon,
        parse_epsilons(epsilons) if epsilons else None,
        steps,
        restarts,
        alpha,
        norm,
    )
    path = out or checkpoint.parent / f"robustness_{split}.json"
    write_json(report, path)
    if plot:
        write_png(report, path.with_suffix(".png"))
    if as_json:
        from bptrain.runlog import dumps

        sys.stdout.write(dumps(report) + "\n")
    else:
        from rich.console import Console

        console = Console()
        print_report(report, console, f"{checkpoint} on {split}, {attack} attack")
        console.print(f"report: {path}" + (f", plot: {path.with_suffix('.png')}" if plot else ""))
    return report["warnings"]
