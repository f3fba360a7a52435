"""The benchmark workloads with Lightning's ``Trainer``: the third column of the budget table.

Run by ``scripts/bench.py`` with the Python of a separate benchmark environment that has
Lightning (never a dependency of bptrain; see docs/benchmarks.md):

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install "torch==2.13.0+cpu" lightning numpy tensorboard
    .venv-bench/bin/python scripts/benchmarks/lightning_loop.py --data mlp.npz --model mlp --epochs 12 --out /tmp/pl

It does the work of ``bench_handwritten.py`` the way a Lightning user writes it: a
``LightningModule`` with ``training_step`` / ``validation_step`` / ``configure_optimizers``,
``self.log`` for the loss (every step, averaged per epoch), validation accuracy and loss each
epoch, the gradient norm every 50 steps (``on_before_optimizer_step``), Lightning's default
TensorBoard logger and ``ModelCheckpoint`` (a checkpoint every epoch). Same data, network
(``bench_handwritten.build_model``), initialisation, AdamW groups, batch order and seed, so
the losses match the other two loops. Its DataLoader yields whole batches from the tensors in
memory (``batch_size=None``), as the other loops index them, so per-sample collation does not
count against Lightning. The progress bar is off (the runs write to a pipe).

Written to ``--out``: ``metrics.jsonl`` with one ``epoch`` record per epoch (``time``: seconds
since training started, at the epoch's end, after validation and the checkpoint) and a ``step``
record with the loss every 50 steps (the last one is compared with the other loops').
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # scripts/: bench_handwritten, bench_models

from bench_handwritten import build_model


class BatchOrder(torch.utils.data.Sampler):
    """Index batches of the seeded per-epoch permutation (bptrain's order); Lightning calls set_epoch."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.seed, self.epoch = n, batch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        return iter(order.split(self.batch))


class Batches(torch.utils.data.Dataset):
    """``dataset[index_tensor]`` is that batch, sliced from tensors in memory."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


class Classifier(L.LightningModule):
    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, log_every: int):
        super().__init__()
        self.model, self.lr, self.weight_decay, self.log_every = model, lr, weight_decay, log_every

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(x))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if (self.global_step + 1) % self.log_every == 0:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            self.log("grad_norm", torch.nn.utils.get_total_norm(grads, foreach=True))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self.model(x)
        self.log("val/loss", F.cross_entropy(out, y), batch_size=len(x))
        self.log("val/acc", (out.argmax(-1) == y).float().mean(), batch_size=len(x))

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.lr)


class EpochTimes(L.Callback):
    """metrics.jsonl: an epoch record when each epoch's work (validation, checkpoint) is done."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w")
        self.start = 0.0
        self.epochs = 0

    def _record(self, trainer: L.Trainer) -> None:
        if self.epochs:
            elapsed = round(time.perf_counter() - self.start, 3)
            record = {
                "type": "epoch",
                "epoch": self.epochs,
                "step": trainer.global_step,
                "time": elapsed,
            }
            self.file.write(json.dumps(record) + "\n")
        self.epochs += 1

    def on_train_start(self, trainer, module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_start(self, trainer, module) -> None:
        self._record(trainer)  # the previous epoch ended with its validation and checkpoint

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % module.log_every == 0:  # the other loops' step records
            record = {
                "type": "step",
                "step": trainer.global_step,
                "train/loss": float(outputs["loss"]),
            }
            self.file.write(json.dumps(record) + "\n")

    def on_train_end(self, trainer, module) -> None:
        self._record(trainer)
        self.file.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", choices=["mlp", "cnn", "cnn1d"], default="mlp")
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)  # as the other loops: the model is built right after seeding
    with np.load(args.data) as arrays:
        x, y, x_val, y_val = (torch.as_tensor(arrays[k]) for k in ("x", "y", "x_val", "y_val"))
    num_classes = int(max(y.max(), y_val.max())) + 1
    hidden = [int(h) for h in args.hidden.split(",") if h]
    model = build_model(args.model, tuple(x.shape[1:]), num_classes, hidden)
    module = Classifier(model, args.lr, args.weight_decay, args.log_every)
    train = torch.utils.data.DataLoader(
        Batches(x, y), sampler=BatchOrder(len(x), args.batch_size, args.seed), batch_size=None
    )
    val_order = list(torch.arange(len(x_val)).split(args.batch_size))
    val = torch.utils.data.DataLoader(Batches(x_val, y_val), sampler=val_order, batch_size=None)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        log_every_n_steps=args.log_every,
        num_sanity_val_steps=0,  # the other loops validate only after each epoch
        enable_progress_bar=False,
        default_root_dir=str(args.out),
        callbacks=[EpochTimes(args.out / "metrics.jsonl")],
    )
    trainer.fit(module, train, val)


if __name__ == "__main__":
    main()
