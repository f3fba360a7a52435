"""check_gradients: a custom autograd.Function with a wrong backward is caught, a correct one is not."""

from __future__ import annotations

import torch
from torch import nn

from bptrain.diagnostics import InspectOptions, inspect_gradients


class BrokenSoftplus(torch.autograd.Function):
    """softplus with a backward that forgets the sigmoid: returns grad instead of grad·σ(x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return nn.functional.softplus(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class CorrectSoftplus(BrokenSoftplus):
    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class Net(nn.Module):
    def __init__(self, function: type[torch.autograd.Function]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 3)
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.function.apply(self.fc1(x)))


def _inspect(function: type[torch.autograd.Function]):
    generator = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(16, 5, generator=generator),
        torch.randint(0, 3, (16,), generator=generator),
    )
    return inspect_gradients(
        Net(function),
        nn.functional.cross_entropy,
        [batch],
        options=InspectOptions(check_gradients=True),
    )


def test_wrong_custom_backward_is_flagged_at_the_layers_below_it() -> None:
    report = _inspect(BrokenSoftplus)
    fc1, fc2 = report.layers
    assert fc1.grad_check_error is not None and fc1.grad_check_error > 0.1
    assert fc2.grad_check_error is not None and fc2.grad_check_error < 1e-6
    assert any(f.name == "grad_check" and f.severity == "error" for f in fc1.flags)
    assert report.grad_check_error == {"fc1": fc1.grad_check_error, "fc2": fc2.grad_check_error}
    assert "wrong backward" in report.verdict


def test_correct_custom_backward_passes() -> None:
    report = _inspect(CorrectSoftplus)
    assert max(report.grad_check_error.values()) < 1e-6
    assert "grad_check" not in {f.name for f in report.flags}
