"""Where and how numbers are computed: device choice, seeding, mixed precision.

Kept apart from the loop so ``fit``, ``eval`` and ``grad-inspect`` resolve the
device and precision the same way.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bptrain.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"trainer.device is {name} but CUDA is not available here (no GPU, or a CPU-only torch build). "
                "Use trainer.device=auto or trainer.device=cpu."
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"trainer.device is {name} but only {torch.cuda.device_count()} CUDA device(s) exist."
            )
        return device
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise UserError(
            "trainer.device is mps but MPS is not available on this machine. Use trainer.device=auto."
        )
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Every RNG the loop (or user code) may draw from, in a weights_only-loadable form."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sum_dtype(device: torch.device) -> torch.dtype:
    """Running sums of losses and counts: float64, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass
class Precision:
    """Autocast and gradient scaling for one `trainer.precision` setting.

    The GradScaler is always constructed but only enabled for fp16, so the loop
    calls it unconditionally (disabled, its methods are pass-throughs).
    """

    name: str
    device: torch.device
    scaler: torch.amp.GradScaler

    @classmethod
    def create(cls, name: str, device: torch.device) -> Precision:
        scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")
        return cls(name, device, scaler)

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)
