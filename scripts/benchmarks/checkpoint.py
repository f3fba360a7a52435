"""Section ``checkpoint``: bptrain's atomic, fsynced checkpoint and its ``evaluate`` against a
plain ``torch.save`` and a hand-written evaluation loop."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import Row, Settings, alternate, median
from benchmarks.workloads import newest_run


def checkpoint_and_eval(settings: Settings, config: Path) -> list[Row]:
    import torch

    from bptrain.checkpoint import save_checkpoint
    from bptrain.config import load_config
    from bptrain.data import build_data
    from bptrain.evaluate import evaluate
    from bptrain.losses import build_objective
    from bptrain.models import build_model
    from bptrain.runtime import Precision

    run = newest_run(settings.work, "mlp")
    saved = run / "checkpoints" / "last.pt"
    hw_saved = settings.work / "hw-mlp" / "last.pt"
    # Our own file, just written: weights_only=False also reads checkpoints from bptrain versions whose
    # `versions.torch` was a TorchVersion object, which weights_only loading refuses.
    state = torch.load(saved, weights_only=False)
    hw_state = {"model": state["model"], "optimizer": state["optimizer"], "epoch": 1}
    target = settings.work / "ckpt"
    target.mkdir(exist_ok=True)

    def save_bptrain(rep: int) -> float:
        start = time.perf_counter()
        save_checkpoint(state, target / "last.pt")
        return (time.perf_counter() - start) * 1000

    def save_plain(rep: int) -> float:
        start = time.perf_counter()
        torch.save(hw_state, target / "plain.pt")
        return (time.perf_counter() - start) * 1000

    saves = alternate(settings.pick(9, 5), {"bptrain": save_bptrain, "plain": save_plain})

    cfg = load_config(config, ["trainer.device=cpu"])
    device = torch.device("cpu")
    data = build_data(cfg.data, seed=cfg.seed, device=device)
    objective = build_objective(cfg.loss, data.spec)
    model = build_model(cfg.model, data.spec, objective.name)
    precision = Precision.create("32", device)
    x_val, y_val = data.val.x, data.val.y  # type: ignore[union-attr]
    passes = settings.pick(20, 8)

    def eval_bptrain(rep: int) -> float:
        start = time.perf_counter()
        for _ in range(passes):
            evaluate(model, data.val, objective, precision, "val")  # type: ignore[arg-type]
        return passes * len(x_val) / (time.perf_counter() - start)

    @torch.inference_mode()
    def eval_plain(rep: int) -> float:
        start = time.perf_counter()
        for _ in range(passes):
            model.eval()
            loss, correct = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
            for i in range(0, len(x_val), 64):
                xb, yb = x_val[i : i + 64], y_val[i : i + 64]
                out = model(xb)
                loss += torch.nn.functional.cross_entropy(out, yb).double() * len(xb)
                correct += (out.argmax(-1) == yb).sum()
            [loss.item(), correct.item()]
            model.train()
        return passes * len(x_val) / (time.perf_counter() - start)

    evals = alternate(settings.pick(7, 3), {"bptrain": eval_bptrain, "plain": eval_plain})
    return [
        Row(
            "checkpoint",
            "save last.pt (bptrain: atomic + fsync) vs torch.save",
            median(saves["bptrain"]),
            median(saves["plain"]),
            "ms",
            note="same model + optimizer state; bptrain adds RNG, config, progress",
        ),
        Row(
            "checkpoint",
            "size of last.pt (MLP, 78k params)",
            saved.stat().st_size / 1024,
            hw_saved.stat().st_size / 1024,
            "KiB",
        ),
        Row(
            "eval",
            "validation throughput (evaluate vs inference loop)",
            median(evals["bptrain"]),
            median(evals["plain"]),
            "samples/s",
            note="higher is better",
        ),
    ]
