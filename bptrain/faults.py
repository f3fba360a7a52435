"""What the loop does when something goes wrong: stop signals, Ctrl-C, non-finite losses and gradients.

Signals (SIGTERM, SIGUSR1: what SLURM and Kubernetes send before preemption or the
time limit; SIGINT: Ctrl-C) only set a flag. The loop checks it after each optimizer
step, saves last.pt at that step boundary, and exits with 128 + the signal number.
Saving inside a handler could interrupt a write half-way; deferring to the step
boundary also makes the saved state exact (no half-applied optimizer step). A second
Ctrl-C outside a save forces an immediate stop without saving (the previous last.pt
stays); any signal that arrives *during* a save is only recorded.

Non-finite values (``trainer.nan_policy``):

- ``stop``: stop at the first non-finite loss or gradient, write ``nan_report.json``
  naming the step and where the values first went bad (the first layer whose output is
  non-finite, or the parameters whose gradients are), keep the last good checkpoint, exit 1;
- ``skip``: skip that optimizer step (no update), count it, stop as ``stop`` does once
  more than ``max_skipped_steps`` were skipped;
- ``ignore``: no checks.

Overhead: on CPU every step is checked before the optimizer update (a host read of two
scalars costs nothing there). On a GPU, ``stop`` accumulates a device-side flag (the
loss every step, the gradient norm when clipping or logging computes it anyway) and reads
it only at log steps, epoch ends and before every checkpoint write: no extra sync per step,
at the price of detecting a NaN up to ``log_every_n_steps`` steps late. A checkpoint is
never written from a poisoned model: the flag is read first, and the weights themselves
are checked (``weights_finite``), for a NaN gradient with a finite loss that no norm
saw. ``skip`` must decide before each update, so on a GPU it costs one sync per step.

fp16: an overflow in the *scaled* gradients is routine; the GradScaler skips that
update and lowers its scale. Those steps are counted (``amp_skipped_steps`` in the step
lines and summary.json) and are not failures; only a non-finite *loss* is.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bptrain import distributed
from bptrain.errors import TrainingError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Interrupted(Exception):
    """Raised after the checkpoint is saved (or, on a forced second Ctrl-C, without saving)."""

    def __init__(self, signum: int, run_dir: Path, saved: bool = True, step: int = 0) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.run_dir, self.saved, self.step = signum, run_dir, saved, step

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    def hint(self, resume_command: str) -> str:
        last = self.run_dir / "checkpoints" / "last.pt"
        done = (
            f"saved {last} at step {self.step}"
            if self.saved
            else f"forced: not saved; the previous {last} (if any) is intact"
        )
        return f"stopped by {self}; {done}. Resume with: {resume_command} --resume {self.run_dir}"


class StopFlag:
    """Turns SIGTERM/SIGUSR1/SIGINT into a flag the loop reads at step boundaries."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saving = False
        self._previous: dict[int, Any] = {}
        # a checkpoint still being written in the background (checkpoint.BackgroundWriter.busy)
        self.writing: Callable[[], bool] = lambda: False

    def _handler(self, signum: int, frame: object) -> None:
        saving = self._saving or self.writing()
        forced = signum == signal.SIGINT and self.signum is not None and not saving
        if self.signum is None:
            self.signum = signum
        if forced:  # second Ctrl-C while a step hangs: stop now, without saving
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self, drain: Callable[[], None] | None = None) -> Iterator[StopFlag]:
        """The handlers, for the `with` block. `drain` (waiting for background checkpoint writes)
        runs before they are removed, so a signal during the last write is still only recorded."""
        try:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread (e.g. inside some test runners): no handlers
            self._previous = {}
        try:
            yield self
        finally:
            try:
                if drain is not None:
                    drain()
            finally:
                self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """While a checkpoint is written, every signal is only recorded (blocks may nest)."""
        outer, self._saving = self._saving, True
        try:
            yield
        finally:
            self._saving = outer


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """``get_total_norm(grads, 2.0, foreach=True)``, the same numbers, without its per-call grouping
    by device and dtype: for a small model that Python bookkeeping costs more than the norms
    (about 90 vs 35 us on one CPU thread). It runs at every log step, and at every step of
    the CPU non-finite guard."""
    # a sparse gradient (nn.Embedding(sparse=True)): its stored values have the same norm, and
    # no foreach norm takes sparse tensors
    grads = [g.coalesce().values() if g.is_sparse else g for g in grads]
    first = grads[0]
    if any(g.device != first.device or g.dtype != first.dtype or _is_dtensor(g) for g in grads):
        return full(torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True))
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)


class FiniteGrads:
    """Are all of a model's gradients finite? The CPU guard asks at every step, so this is the
    cheapest exact answer: one fused pass over the gradients, the check GradScaler makes
    (``_amp_foreach_non_finite_check_and_unscale_`` with a scale of exactly 1, which leaves
    every value as it is), and one host read; about a third of the cost of a total norm.

    The parameter list and whether the fused check applies (one device and dtype, dense
    gradients, no DTensor) are worked out once per model; otherwise the total norm decides.
    """

    def __init__(self) -> None:
        self._model: nn.Module | None = None
        self._params: list[torch.Tensor] = []
        self._fused = False
        self._found = self._one = torch.zeros(1)

    def check(self, model: nn.Module) -> bool:
        if model is not self._model:
            self._model, self._params = model, list(model.parameters())
            self._fused = self._fused_applies()
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return True
        if not self._fused:
            return math.isfinite(float(total_norm(grads)))
        try:  # the kernel only ever sets the flag: it is zeroed after a hit, not at every step
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found, self._one)
        except (RuntimeError, NotImplementedError):  # a gradient unlike the first step's (a
            self._fused = False  # sparse embedding used later, another device): the total norm
            return math.isfinite(float(total_norm(grads)))
        if not self._found.item():
            return True
        self._found.zero_()
        return False

    def _fused_applies(self) -> bool:
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:  # decide at the first step with gradients
            self._model = None
            return False
        first = grads[0]
        if any(
            g.device != first.device or g.dtype != first.dtype or g.is_sparse or _is_dtensor(g)
            for g in grads
        ):
            return False
        self._found = torch.zeros(1, device=first.device)
        self._one = torch.ones(1, device=first.device)
        try:  # a dtype the kernel does not take on this device: the total norm
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found, self._one)
        except (RuntimeError, NotImplementedError):
            return False
        self._found.zero_()  # check() runs the kernel again and reads the flag
        return True


def _is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "full_tensor")


def full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from an FSDP (DTensor) result such as a total norm; a collective on DTensors."""
    return t.full_tensor() if _is_dtensor(t) else t  # type: ignore[attr-defined]


class NonFinite(TrainingError):
    """A non-finite loss or gradient under nan_policy stop (or too many skips)."""

    def __init__(self, message: str, report: dict[str, Any], here: bool = True) -> None:
        super().__init__(message)
        # here: this rank saw the value itself (distributed, the others stop because it did)
        self.report, self.here = report, here


class NonFiniteGuard:
    """Applies ``trainer.nan_policy`` inside ``train_step``, and counts AMP-skipped steps."""

    def __init__(self, policy: str, max_skips: int, device: torch.device, amp_scaler: bool) -> None:
        self.policy, self.max_skips, self.amp_scaler = policy, max_skips, amp_scaler
        self.eager = device.type == "cpu" or policy == "skip"
        self.skipped = 0  # steps skipped by nan_policy skip
        self.last_skipped = False
        self.amp_skips = torch.zeros((), dtype=torch.int64, device=device)
        self._bad = torch.zeros((), dtype=torch.bool, device=device)  # lazy mode: seen a non-finite
        self._prev_scale: torch.Tensor | None = None
        self._finite_grads = FiniteGrads()
        # Distributed: the stop signal this rank received (build_run wires the StopFlag), agreed
        # with the verdict before the update; ``agreed_signal`` hands it to the loop afterwards.
        self.stop_signal: Callable[[], int | None] = lambda: None
        self._agreed: tuple[int | None] | None = None

    def state_dict(self) -> dict[str, Any]:
        # prev_scale: the AMP-skip detector's reference, so that a resumed run counts a skip at
        # its first step (older checkpoints lack it: then that one step goes uncounted)
        prev = None if self._prev_scale is None else float(self._prev_scale)
        return {"skipped": self.skipped, "amp_skips": int(self.amp_skips), "prev_scale": prev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = state["skipped"]
        self.amp_skips.fill_(state["amp_skips"])
        prev = state.get("prev_scale")
        device = self.amp_skips.device
        self._prev_scale = None if prev is None else torch.tensor(prev, device=device)

    def step_ok(
        self,
        loss: torch.Tensor,
        grad_norm: torch.Tensor | None,
        model: nn.Module,
        locate: Callable[[], dict[str, Any]],
    ) -> bool:
        """Before the optimizer update: True to apply it, False to skip it; raises NonFinite to stop."""
        self.last_skipped = False
        if self.policy == "ignore":
            return True
        check_grads = not self.amp_scaler  # under fp16 the scaler owns gradient overflow
        if not self.eager:
            bad = ~torch.isfinite(loss)
            if check_grads and grad_norm is not None:
                bad = bad | ~torch.isfinite(grad_norm)
            self._bad |= bad
            return True
        finite_here = math.isfinite(float(loss))
        if check_grads:  # also after a bad loss: under FSDP the check is a collective of all ranks
            if grad_norm is None:  # no norm at hand (not clipping, not a log step): one pass
                grads_ok = self._finite_grads.check(model)
            else:
                grads_ok = math.isfinite(float(grad_norm))
            finite_here = finite_here and grads_ok
        if self._agree(finite_here):
            return True
        if check_grads and grad_norm is None:  # the report gives the norm
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = total_norm(grads) if grads else None
        if self.policy == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            self.last_skipped = True
            return False
        report = {"loss": float(loss), "grad_norm": None if grad_norm is None else float(grad_norm)}
        report.update(locate())  # on every rank: under FSDP its forward is a collective
        if self.policy == "skip":
            report["skipped_steps"] = self.skipped
            raise NonFinite(
                f"more than trainer.max_skipped_steps={self.max_skips} steps had a non-finite loss or gradient",
                report,
                here=not finite_here,
            )
        raise NonFinite(
            f"the {report['first_nonfinite']} became non-finite", report, here=not finite_here
        )

    def _agree(self, finite: bool) -> bool:
        """Distributed: True only if the step is finite on every rank, so that every rank applies
        or skips the update (or stops) together; a rank left behind would wait in a collective
        the others never reach. The verdict travels with the stop signal in the one all-reduce
        per step the loop makes anyway (``agreed_signal``): no extra collective."""
        if not torch.distributed.is_initialized():
            return finite
        failed, signum = distributed.agree_at_step(not finite, self.stop_signal())
        self._agreed = (signum,)
        return not failed

    def agreed_signal(self, signum: int | None) -> int | None:
        """After each step: the stop signal any rank received, the same on every rank.

        When ``step_ok`` agreed it with the verdict before the update, that all-reduce served
        both; otherwise (nan_policy ignore, L-BFGS, the lazy GPU check) one all-reduce agrees on
        the signal and on the lazy check's device-side flag: every rank stops at the first step
        end after any rank saw a non-finite value. Single process: the signal, nothing read."""
        if not torch.distributed.is_initialized():
            return signum
        if self._agreed is not None:
            (agreed,), self._agreed = self._agreed, None
            return agreed
        lazy = not self.eager and self.policy != "ignore"
        failed, agreed = distributed.agree_at_step(self._bad if lazy else False, signum)
        if failed:
            raise self._lazy_failure(here=bool(self._bad))
        return agreed

    def after_update(self, scaler: torch.amp.GradScaler, count: bool = True) -> None:
        """Count fp16 steps the GradScaler skipped (it lowers its scale exactly then); no host sync.

        Called after every ``scaler.update()``; ``count=False`` after a step ``nan_policy: skip``
        skipped: the scaler lowered its scale for that step too, which is not an AMP skip of the
        next one."""
        scale = getattr(scaler, "_scale", None)
        if not scaler.is_enabled() or scale is None:
            return
        if self._prev_scale is not None and count:
            self.amp_skips += (scale < self._prev_scale).to(torch.int64)
        self._prev_scale = scale.clone()

    def raise_if_failed(self) -> None:
        """Lazy (GPU) mode: read the device-side flag; call where the host syncs anyway.
        Distributed, ``agreed_signal`` reads it at every step end instead, on every rank."""
        if torch.distributed.is_initialized():
            return
        if not self.eager and self.policy != "ignore" and bool(self._bad):
            raise self._lazy_failure(here=True)

    def weights_finite(self, model: nn.Module) -> bool:
        """Before every checkpoint, in lazy (GPU) mode: are the weights themselves finite?

        The lazy check sees the loss at every step but the gradients only where clipping or
        logging computes their norm, so a non-finite gradient with a finite loss at another
        step is applied unseen. Looking at the weights (this rank's shard under FSDP; one host
        read per checkpoint, never per step) keeps such a model out of every checkpoint file.
        True without looking where every step is checked before its update (CPU, ``skip``)."""
        if self.eager or self.policy == "ignore":
            return True
        weights = [p.detach() for p in model.parameters()]
        weights = [w.to_local() if _is_dtensor(w) else w for w in weights]  # type: ignore[attr-defined]
        flags = [torch.isfinite(w).all() for w in weights if w.numel()]
        return not flags or bool(torch.stack(flags).all())

    def poisoned_weights(self, model: nn.Module, here: bool) -> NonFinite:
        """The failure ``weights_finite`` found, naming this rank's non-finite parameters."""
        bad = [
            name
            for name, p in model.named_parameters()
            if not bool(torch.isfinite(p.to_local() if _is_dtensor(p) else p).all())  # type: ignore[attr-defined]
        ]
        return NonFinite(
            "the model's weights became non-finite (found before writing a checkpoint: on a GPU "
            "bptrain checks gradients without a per-step sync, and a non-finite gradient with a "
            "finite loss was applied unseen)",
            {
                "first_nonfinite": "weights (lazy GPU check: found before a checkpoint)",
                "nonfinite_parameters": bad,
            },
            here=here,
        )

    def _lazy_failure(self, here: bool) -> NonFinite:
        return NonFinite(
            "the loss or gradient norm became non-finite (detected at a log step, step end or "
            "checkpoint; on a GPU bptrain checks without a per-step sync)",
            {"first_nonfinite": "loss or gradient (lazy GPU check: layer not located)"},
            here=here,
        )

    def check_epoch_loss(self, value: float, metric: str = "train/loss") -> None:
        """An epoch's loss (train/loss, val/loss) falls under nan_policy too: stop and skip fail
        (a skipped step cannot undo an epoch), ignore goes on."""
        if self.policy != "ignore" and not math.isfinite(value):
            what = "validation loss" if metric.startswith("val/") else "mean training loss"
            raise NonFinite(
                f"the epoch's {what} is {value}", {"first_nonfinite": f"epoch {metric}"}
            )


def locate_nonfinite(
    model: nn.Module, batch: Any, compute_loss: Callable[[nn.Module, Any], torch.Tensor]
) -> dict[str, Any]:
    """Where did the values first go non-finite? Re-runs one forward pass with hooks (weights untouched).

    ``batch`` is a micro-batch as the data yields it ((x, y) or a dict); ``compute_loss(model, batch)``
    is the step's loss (the built-in ``loss(model(x), y)`` or the model's ``training_step``).
    """
    bad_grads = [
        name
        for name, p in model.named_parameters()
        if p.grad is not None and not bool(torch.isfinite(p.grad).all())
    ]
    bad_params = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    first_layer: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if (
                not first_layer
                and isinstance(output, torch.Tensor)
                and not bool(torch.isfinite(output).all())
            ):
                first_layer.append(f"{name} ({type(module).__name__})")

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if name and not list(module.children())
    ]
    try:
        with torch.no_grad():
            loss = compute_loss(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    inputs = _tensors(batch[0] if isinstance(batch, tuple | list) and len(batch) == 2 else batch)
    if not all(bool(torch.isfinite(t).all()) for t in inputs if t.is_floating_point()):
        where = "input batch (the data contains NaN/inf)"
    elif first_layer:
        where = f"output of layer {first_layer[0]}"
    elif not bool(torch.isfinite(loss).all()):
        where = "loss (the model's outputs are finite: check the targets and the loss)"
    elif bad_grads:
        where = f"gradient of {bad_grads[-1]} (backward reaches the last layers first)"
    else:
        where = "loss"
    return {
        "first_nonfinite": where,
        "nonfinite_gradients": bad_grads,
        "nonfinite_parameters": bad_params,
    }


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) tuple, list or dict."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []
