"""Measure what gradient diagnostics cost, relative to one plain training step.

Run: PYTHONPATH=. python scripts/bench_diagnostics.py
Prints a Markdown table (used in docs/grad-inspect.md). Times are medians of repeats on the current
machine; the ratios, not the absolute times, are what carry over to other machines.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from bptrain.diagnostics import InspectOptions, inspect_gradients
from bptrain.grads import GradFlowMonitor, to_floats


def mlp(n_in: int, width: int, depth: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out))


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], repeats: int) -> None:
    x, y = batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.functional.cross_entropy

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()

    base = median_time(step, repeats)
    monitor = GradFlowMonitor(model)
    step()
    stats_cost = median_time(lambda: to_floats(monitor.grad_stats()), repeats)

    def update() -> None:
        monitor.snapshot_weights()
        optimizer.step()
        to_floats(monitor.update_ratios())

    optimizer_only = median_time(optimizer.step, repeats)
    update_cost = median_time(update, repeats) - optimizer_only

    def inspect(**options: bool) -> Callable[[], object]:
        return lambda: inspect_gradients(model, loss_fn, [batch], options=InspectOptions(**options),
                                         make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))

    # The machine may be shared: the plain step is re-measured right before each row, and the ratio
    # uses that neighbouring measurement.
    few = max(3, repeats // 20)
    rows = [
        ("GradFlowMonitor.grad_stats + to_floats", median_time(step, repeats), stats_cost),
        ("GradFlowMonitor snapshot + update_ratios + to_floats", median_time(step, repeats), update_cost),
        ("grad-inspect, 1 batch (default analysis)", median_time(step, repeats), median_time(inspect(), few)),
        ("grad-inspect --check-gradients", median_time(step, repeats), median_time(inspect(check_gradients=True), 3)),
        ("grad-inspect --noise", median_time(step, repeats), median_time(inspect(noise=True), 3)),
        ("grad-inspect --curvature", median_time(step, repeats), median_time(inspect(curvature=True), 3)),
    ]
    params = sum(p.numel() for p in model.parameters())
    print(f"\n### {name}: {params:,} parameters, batch {x.shape[0]}; one AdamW training step ≈ {base * 1e3:.2f} ms\n")
    print("| what | time | plain step next to it | x one training step |")
    print("|---|---:|---:|---:|")
    for label, step_time, cost in rows:
        print(f"| {label} | {cost * 1e3:.2f} ms | {step_time * 1e3:.2f} ms | {cost / step_time:.2f} |")


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    small = (torch.randn(64, 64), torch.randint(0, 10, (64,)))
    bench("small MLP 64-128-64-10 (the quickstart's shape)", mlp(64, 128, 2, 10), small, repeats=200)
    deep = (torch.randn(256, 128), torch.randint(0, 10, (256,)))
    bench("deep MLP, 20 hidden layers of 128", mlp(128, 128, 20, 10), deep, repeats=20)


if __name__ == "__main__":
    main()
