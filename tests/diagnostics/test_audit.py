"""Parameters that do not train are named with the reason; the first NaN is localised; JSON stays valid."""

from __future__ import annotations

import json

import torch
from torch import nn

from bptrain.diagnostics import inspect_gradients, to_json_dict


class Leaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(4, 6)
        self.unused = nn.Linear(4, 6)
        self.detached = nn.Linear(6, 6)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.used(x))
        return self.head(self.frozen(h) + self.detached(h).detach())


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def test_audit_names_every_reason_a_parameter_does_not_train() -> None:
    model = Leaky()

    def make_optimizer(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            [p for n, p in m.named_parameters() if not n.startswith("head.bias")], lr=0.1
        )

    report = inspect_gradients(
        model, nn.functional.cross_entropy, [_batch()], make_optimizer=make_optimizer
    )
    status = {a.name: a.status for layer in report.layers for a in layer.params}
    assert status["unused.weight"] == "grad_none"
    assert status["detached.weight"] == "grad_none"
    assert status["frozen.weight"] == "frozen"
    assert status["head.bias"] == "not_in_optimizer"
    assert status["used.weight"] == "ok"
    severities = {(f.layer, f.severity) for f in report.flags if f.name == "no_grad"}
    assert {
        ("unused", "error"),
        ("detached", "error"),
        ("frozen", "warning"),
        ("head", "error"),
    } <= severities
    assert [x.name for x in report.layers][
        -1
    ] == "unused"  # never called: listed after the forward order


class NaNAt(nn.Module):
    """log of a ReLU output: -inf in the forward pass wherever the unit is off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def test_first_nonfinite_forward_output_is_localised_and_json_is_valid() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), NaNAt(), nn.Linear(8, 3))
    report = inspect_gradients(model, nn.functional.cross_entropy, [_batch()])
    assert report.nonfinite is not None
    assert (report.nonfinite.module, report.nonfinite.pass_) == ("2", "forward")
    assert any(f.name == "nonfinite" and f.severity == "error" for f in report.flags)
    data = to_json_dict(report)
    text = json.dumps(data, allow_nan=False)
    assert '"NaN"' in text or "Infinity" in text
    assert data["nonfinite"]["pass"] == "forward"


class BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x * 1.0

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * float("nan")


class Wrap(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BadBackward.apply(x)


def test_first_nonfinite_gradient_is_localised_to_the_backward_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Wrap(), nn.Tanh(), nn.Linear(8, 3))
    report = inspect_gradients(model, nn.functional.cross_entropy, [_batch()])
    assert report.nonfinite is not None
    assert report.nonfinite.pass_ == "backward"
    assert report.nonfinite.module == "0"  # its output gradient is the first NaN ...
    assert "1" in report.nonfinite.detail  # ... produced by the backward of module 1
    assert any(a.status == "nonfinite" for a in report.layers[0].params)


def test_json_has_the_documented_top_level_and_layer_keys() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = to_json_dict(
        inspect_gradients(
            model,
            nn.functional.cross_entropy,
            [_batch()],
            make_optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
        )
    )
    assert {"layers", "global_grad_norm", "flags", "verdict"} <= set(data)
    assert "gradient_tests" not in data and "hessian_max_eigenvalue" not in data
    for layer in data["layers"]:
        assert {"name", "grad_norm", "weight_norm", "signal_norm", "flags", "update_ratio"} <= set(
            layer
        )
    assert data["layers"][0]["name"] == "0"
    json.dumps(data, allow_nan=False)
