"""The hand-written PyTorch loop that ``scripts/bench.py`` measures bptrain against.

It is what a careful user writes by hand for the same job, and does the same work as
``bptrain fit`` with the benchmark's config: the same data file, network, initialisation,
optimizer, batch order, loss, and the same records (a step line with loss, lr and gradient
norm every ``--log-every`` steps, an epoch line after validation, TensorBoard scalars, a
checkpoint every epoch). It copies two of bptrain's *choices* so both runs compute the same
numbers and ``bench.py`` can check the two final losses agree: the per-epoch shuffling seed
(``seed * 1_000_003 + epoch``) and the MLP's Kaiming-normal init with zero biases. What it
leaves out is bptrain's machinery: config validation, the run directory layout, the fsynced
atomic checkpoint, resume state, signal handling and the console summary.

    python scripts/bench_handwritten.py --data data.npz --model mlp --epochs 12 --out /tmp/hw
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def build_model(kind: str, in_shape: tuple[int, ...], num_classes: int, hidden: list[int]):
    if kind == "cnn":
        from bench_models import SmallCNN  # scripts/ is on sys.path when this file runs

        return SmallCNN(in_shape[0], in_shape[1], num_classes)
    if kind == "cnn1d":
        from bench_models import SmallCNN1d

        return SmallCNN1d(in_shape[0], in_shape[1], num_classes)
    layers: list[nn.Module] = []
    width = int(np.prod(in_shape))
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    model = nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, num_classes))
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="npz with x, y, x_val, y_val")
    parser.add_argument("--model", choices=["mlp", "cnn", "cnn1d"], default="mlp")
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--tensorboard", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    with np.load(args.data) as arrays:
        x, y = (torch.as_tensor(arrays[k]).to(device) for k in ("x", "y"))
        x_val, y_val = (torch.as_tensor(arrays[k]).to(device) for k in ("x_val", "y_val"))
    num_classes = int(max(y.max(), y_val.max())) + 1
    hidden = [int(h) for h in args.hidden.split(",") if h]
    model = build_model(args.model, tuple(x.shape[1:]), num_classes, hidden).to(device)
    # The usual two groups (as in nanoGPT and timm): no weight decay on biases and other 1-d parameters.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)

    args.out.mkdir(parents=True, exist_ok=True)
    metrics = (args.out / "metrics.jsonl").open("w")
    writer = None
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(args.out / "tb"))

    def log(record: dict) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        if writer is not None:
            for key, value in record.items():
                if key not in ("type", "step", "epoch"):
                    writer.add_scalar(key, value, record["step"])

    n, batch = len(x), args.batch_size
    step, start = 0, time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).to(device)
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, n, batch):
            index = order[i : i + batch]
            xb, yb = x[index], y[index]
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            log_now = (step + 1) % args.log_every == 0
            if log_now:
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                grad_norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            epoch_loss += loss.detach().double() * len(xb)
            step += 1
            if log_now:
                loss_value, norm_value = torch.stack([loss.detach(), grad_norm]).tolist()
                lr = optimizer.param_groups[0]["lr"]
                log(
                    {
                        "type": "step",
                        "step": step,
                        "train/loss": loss_value,
                        "lr": lr,
                        "grad_norm": norm_value,
                    }
                )
                print(f"epoch {epoch + 1} step {step} loss {loss_value:.4f}", flush=True)

        model.eval()
        val_loss = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        with torch.inference_mode():
            for i in range(0, len(x_val), batch):
                xb, yb = x_val[i : i + batch], y_val[i : i + batch]
                out = model(xb)
                val_loss += F.cross_entropy(out, yb).double() * len(xb)
                correct += (out.argmax(-1) == yb).sum()
        record = {
            "type": "epoch",
            "step": step,
            "epoch": epoch + 1,
            "train/loss": float(epoch_loss) / n,
            "val/loss": float(val_loss) / len(x_val),
            "val/acc": int(correct) / len(x_val),
            "lr": optimizer.param_groups[0]["lr"],
            "time": round(time.perf_counter() - start, 3),
        }
        log(record)
        print(f"epoch {epoch + 1}: {record}", flush=True)
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1},
            args.out / "last.pt",
        )
    metrics.close()
    if writer is not None:
        writer.close()


if __name__ == "__main__":
    main()
