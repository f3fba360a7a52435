"""User code for the configs in configs/custom/: what your own module next to a config looks like.

The configs name these by class_path (``configs.custom.examples.Name``), which imports from the
current directory: run them from the repository root, as ``bptrain fit configs/custom/....yaml``.
Each piece plugs into one named place (docs/extending.md):

- ``moons_dicts``: a dataset factory (``data.class_path``) returning train/val Datasets of dict samples;
- ``DictClassifier``: a model whose ``training_step`` / ``validation_step`` read those dicts;
- ``VAE``: a variational autoencoder whose ``training_step`` returns two losses, logged separately;
- ``BrierScore``: a custom torchmetrics metric (``metrics: [{class_path: ...}]``);
- ``StopWhenGoodEnough``: a callback that keeps state in checkpoints and asks for a clean stop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import Metric

from bptrain.callbacks import Callback, RunInfo

# ----------------------------------------------------------------- a dataset of dict samples


class TwoMoons(Dataset):
    """Two interleaved half-circles: ``{"features": (2,), "angle": (1,), "label": ()}`` per sample.

    Two inputs (the point and its noisy angle) show that a dict carries as many tensors as the
    model wants; any map-style Dataset works the same way.
    """

    num_classes = 2  # read by bptrain for the metrics, so it never scans the labels

    def __init__(self, n: int, noise: float, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        label = torch.randint(0, 2, (n,), generator=g)
        angle = torch.rand(n, generator=g) * math.pi
        x = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        x[label == 1] = torch.stack([1 - x[label == 1, 0], 0.5 - x[label == 1, 1]], dim=1)
        self.features = x + noise * torch.randn(n, 2, generator=g)
        self.angle = (angle + noise * torch.randn(n, generator=g)).unsqueeze(1)
        self.label = label

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[i], "angle": self.angle[i], "label": self.label[i]}


def moons_dicts(n_train: int = 512, n_val: int = 203, noise: float = 0.1, seed: int = 0):
    """The factory ``data.class_path`` names: returns ``(train, val)``."""
    return TwoMoons(n_train, noise, seed), TwoMoons(n_val, noise, seed + 1)


class DictClassifier(nn.Module):
    """A classifier over dict batches: bptrain calls ``training_step`` instead of ``loss(model(x), y)``."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, features: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([features, angle], dim=1))

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self(batch["features"], batch["angle"])
        loss = F.cross_entropy(logits, batch["label"])
        margin = logits.gather(1, batch["label"][:, None]).mean() - logits.mean()
        return {"loss": loss, "margin": margin}  # margin is logged as train/margin, val/margin

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.training_step(batch)
        logits = self(batch["features"], batch["angle"])
        # preds and target feed the metrics: section (probabilities and class indices)
        return {**out, "preds": logits.softmax(dim=-1), "target": batch["label"]}


# ----------------------------------------------------------------- a model with two losses


class VAE(nn.Module):
    """A small variational autoencoder on 8x8 digits: reconstruction + beta * KL, both logged.

    The batch is the built-in source's ``(x, y)``; the labels are not used.
    """

    def __init__(self, latent: int = 4, hidden: int = 32, beta: float = 0.5, features: int = 64):
        super().__init__()
        self.beta = beta
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU())
        self.mean, self.log_var = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction from the posterior mean (what you would use after training)."""
        return self.decoder(self.mean(self.encoder(x))).view_as(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, _ = batch
        h = self.encoder(x)
        mean, log_var = self.mean(h), self.log_var(h)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()  # the reparameterisation trick
        recon = F.mse_loss(self.decoder(z), x.flatten(1), reduction="none").sum(1).mean()
        kl = (-0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(1)).mean()
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}


# ----------------------------------------------------------------- a custom metric


class BrierScore(Metric):
    """Mean squared error between the predicted class probabilities and the one-hot labels.

    bptrain gives every metric ``update(preds, target)`` with probabilities ``(N, C)`` and class
    indices ``(N,)``; declaring states with ``dist_reduce_fx="sum"`` makes it exact under DDP.
    """

    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        onehot = F.one_hot(target, preds.shape[-1]).double()
        # float64 sums: the total then hardly depends on how samples are split over batches or ranks
        self.total += ((preds.double() - onehot) ** 2).sum()
        self.count += len(target)

    def compute(self) -> torch.Tensor:
        return self.total / self.count


# ----------------------------------------------------------------- a callback


class StopWhenGoodEnough(Callback):
    """Stop once ``monitor`` has been at least ``threshold`` for ``patience`` validations in a row.

    Its count is checkpointed (``state_dict``), so a resumed run continues counting.
    """

    def __init__(self, monitor: str = "val/acc", threshold: float = 0.95, patience: int = 2):
        self.monitor, self.threshold, self.patience = monitor, threshold, patience
        self.streak = 0
        self.run: RunInfo | None = None

    def on_fit_start(self, run: RunInfo) -> None:
        self.run = run

    def on_validation_end(self, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor)
        self.streak = self.streak + 1 if value is not None and value >= self.threshold else 0
        if self.streak >= self.patience and self.run is not None:
            self.run.request_stop(
                f"{self.monitor} >= {self.threshold} for {self.streak} validations"
            )

    def state_dict(self) -> dict[str, int]:
        return {"streak": self.streak}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.streak = state["streak"]
