"""Bring your own: class_path losses/optimizers/schedulers/datasets, training_step, metrics, callbacks.

Every test goes through the CLI (in-process CliRunner, or a subprocess for DDP), as a user would.
The user's code is a module written into the test's directory, imported from the current
directory like a user's own module next to their config.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ckpt_helpers import (
    assert_same_weights,
    metric_lines,
    run_dirs,
    run_fit,
    signal_at_step,
    tiny_config,
)
from safetensors.torch import load_file

from bptrain.faults import Interrupted
from tests.conftest import only_run_dir, read_jsonl

ROOT = Path(__file__).resolve().parents[1]

USER_CODE = textwrap.dedent(
    """
    import json
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import Dataset, TensorDataset

    from bptrain.callbacks import Callback


    class Net(nn.Module):
        def __init__(self, hidden=16):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 3))

        def forward(self, x):
            return self.body(x)


    class StepNet(Net):
        '''The same network, trained through its own training_step with the built-in's loss.'''

        def training_step(self, batch):
            x, y = batch
            logits = self(x)
            return {"loss": F.cross_entropy(logits, y), "mean_logit": logits.mean()}


    class NoLoss(Net):
        def training_step(self, batch):
            x, y = batch
            return {"total": F.cross_entropy(self(x), y)}


    def points(n=96, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 2, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
        return TensorDataset(x, y), TensorDataset(x[:41] + 0.1, y[:41])


    def not_datasets():
        return 42


    class Counter(Callback):
        '''Counts validations (checkpointed) and steps; writes them at the end of the fit.'''

        def __init__(self, out="counter.json", stop_after=None, fail_at=None):
            self.out, self.stop_after, self.fail_at = out, stop_after, fail_at
            self.validations = 0
            self.steps = 0
            self.checkpoints = []

        def on_fit_start(self, run):
            self.run = run

        def on_train_batch_end(self, step, logs):
            self.steps = step

        def on_validation_end(self, metrics):
            self.validations += 1
            if self.fail_at == self.validations:
                raise RuntimeError("boom")
            if self.stop_after == self.validations:
                self.run.request_stop("counted enough")

        def on_checkpoint(self, path):
            import torch  # the file is on disk, whole, and the one just saved (async writes too)
            saved = torch.load(path, weights_only=True)["progress"]
            self.checkpoints.append([path.name, saved["step"], self.steps])

        def on_fit_end(self, summary):
            with open(self.out, "w") as f:
                json.dump({"validations": self.validations, "steps": self.steps,
                           "status": summary["status"], "checkpoints": self.checkpoints}, f)

        def state_dict(self):
            return {"validations": self.validations}

        def load_state_dict(self, state):
            self.validations = state["validations"]


    class Typo(Callback):
        def on_epoch_end(self, metrics):
            pass
    """
)

BASE = {"data": {"source": "blobs", "n_samples": 240, "n_classes": 3, "batch_size": 32}}


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "userext.py").write_text(USER_CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("userext", None)


def _run_dir(root: Path, name: str) -> Path:
    (run,) = [p for p in (root / "runs" / name).iterdir() if p.is_dir()]
    return run


def _fit(cli, write_config, extra, name, *args):
    result = cli("fit", write_config(extra, name=name), *args)
    return result


def _assert_exit_2(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, (needle, result.output)


# ----------------------------------------------------------------- optimizer / scheduler / loss


def test_nadam_by_class_path_trains_and_resumes_bit_exactly(user_dir, cli, write_config):
    opt = {
        "=optimizer": {
            "class_path": "torch.optim.NAdam",
            "lr": 0.01,
            "weight_decay": 0.01,
            "init_args": {"momentum_decay": 0.005},
        },
        "=scheduler": {
            "class_path": "torch.optim.lr_scheduler.StepLR",
            "init_args": {"step_size": 1, "gamma": 0.5},
            "interval": "epoch",
        },
        "model": {"dropout": 0.1},
        "trainer": {"max_epochs": 3},
    }
    straight = _fit(cli, write_config, {**BASE, **opt}, "straight")
    assert straight.exit_code == 0, straight.output
    a = _run_dir(user_dir, "straight")
    first = _fit(
        cli, write_config, {**BASE, **opt, "logging": {"name": "b"}}, "b1", "trainer.max_epochs=1"
    )
    assert first.exit_code == 0, first.output
    b = _run_dir(user_dir, "b")
    resumed = _fit(
        cli, write_config, {**BASE, **opt, "logging": {"name": "b"}}, "b2", "--resume", str(b)
    )
    assert resumed.exit_code == 0, resumed.output
    wa = load_file(a / "checkpoints" / "last.safetensors")
    wb = load_file(b / "checkpoints" / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    lr = [r["lr"] for r in read_jsonl(a / "metrics.jsonl") if r["type"] == "epoch"]
    assert lr == pytest.approx([0.005, 0.0025, 0.00125])  # StepLR stepped once per epoch
    ckpt = torch.load(a / "checkpoints" / "last.pt", weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # none on biases (1-d)
    assert groups[0]["momentum_decay"] == 0.005


def test_loss_by_class_path_function_with_init_args(user_dir, cli, write_config):
    loss = {
        "=loss": {
            "class_path": "torch.nn.functional.cross_entropy",
            "init_args": {"label_smoothing": 0.2},
        }
    }
    result = _fit(cli, write_config, {**BASE, **loss, "trainer": {"max_epochs": 1}}, "loss")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("section", "needles"),
    [
        (
            {"=optimizer": {"class_path": "torch.nn.Linear"}},
            ["optimizer.class_path 'torch.nn.Linear'", "must be a subclass of torch.optim"],
        ),
        (
            {"=optimizer": {"class_path": "torch.optim.NAdm"}},
            ["optimizer.class_path", "Did you mean 'NAdam'?"],
        ),
        (
            {"=optimizer": {"class_path": "torch.optim.NAdam", "init_args": {"betaz": 1}}},
            ["optimizer.init_args do not fit torch.optim.NAdam", "betaz", "NAdam(params, lr="],
        ),
        (
            {"=loss": {"class_path": "torch.pi"}},
            ["loss.class_path 'torch.pi' is a float", "must be a loss"],
        ),
        (
            {"=scheduler": {"class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau"}},
            ["set scheduler.monitor"],
        ),
        (
            {"=data": {"class_path": "userext.not_datasets"}},
            ["data.class_path 'userext.not_datasets' returned a int", "must return a Dataset"],
        ),
        (
            {"=data": {"class_path": "userext.points"}, "=model": {"class_path": "userext.NoLoss"}},
            ["NoLoss.training_step returned a dict without 'loss'", "it has total"],
        ),
        (
            {"callbacks": [{"class_path": "userext.Typo"}]},
            ["callbacks[0].class_path 'userext.Typo' defines on_epoch_end", "bptrain never calls"],
        ),
        (
            {"metrics": ["acuracy"]},
            ["metrics.0.name: unknown metric 'acuracy'", "Did you mean 'accuracy'?"],
        ),
    ],
    ids=[
        "opt-kind",
        "opt-typo",
        "opt-args",
        "loss-kind",
        "plateau",
        "data",
        "step",
        "cb",
        "metric",
    ],
)
def test_bad_class_paths_exit_2_with_what_where_and_how(
    user_dir, cli, write_config, section, needles
):
    _assert_exit_2(_fit(cli, write_config, {**BASE, **section}, "bad"), *needles)


# ----------------------------------------------------------------- training_step


def _step_run(cli, write_config, user_dir, name, model, **trainer):
    extra = {
        "=data": {
            "class_path": "userext.points",
            "batch_size": trainer.pop("batch", 16),
            "shuffle": True,
            "num_workers": 0,
        },
        "=model": {"class_path": f"userext.{model}"},
        "=optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
        "trainer": {"max_epochs": 2, **trainer},
        "logging": {"name": name},
    }
    result = _fit(cli, write_config, {**BASE, **extra}, name)
    assert result.exit_code == 0, result.output
    run = _run_dir(user_dir, name)
    return run, load_file(run / "checkpoints" / "last.safetensors")


def test_adversarial_training_with_a_training_step_exits_2_with_the_fix(
    user_dir, cli, write_config
):
    """trainer.adversarial attacks the built-in loss(model(x), y); a model's own training_step
    computes its loss where no attack can reach: refused before a run directory exists."""
    extra = {**BASE, "=model": {"class_path": "userext.StepNet"}}
    result = _fit(cli, write_config, extra, "adv", "trainer.adversarial={epsilon: 0.1}")
    _assert_exit_2(
        result,
        "trainer.adversarial",
        "defines its own training_step",
        "Remove trainer.adversarial, or attack the inputs in training_step.",
    )
    assert not (user_dir / "runs").exists()


def test_training_step_gets_amp_accumulation_and_clipping_like_a_built_in(
    user_dir, cli, write_config
):
    clip = {"grad_clip": {"max_norm": 0.5}, "precision": "bf16"}
    _, builtin = _step_run(
        cli, write_config, user_dir, "builtin", "Net", accumulate_grad_batches=2, **clip
    )
    run, stepped = _step_run(
        cli, write_config, user_dir, "step", "StepNet", accumulate_grad_batches=2, **clip
    )
    # the same loss through training_step: bit-identical under bf16 autocast, clipping, accumulation
    assert all(torch.equal(builtin[k], stepped[k]) for k in builtin)
    steps = [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "step"]
    assert "train/mean_logit" in steps[0]  # an extra value returned is logged
    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "epoch"]
    assert "val/mean_logit" in epochs[-1] and "val/loss" in epochs[-1]


def test_training_step_accumulation_equals_the_large_batch(user_dir, cli, write_config):
    _, large = _step_run(cli, write_config, user_dir, "large", "StepNet", batch=32)
    _, accumulated = _step_run(
        cli, write_config, user_dir, "acc", "StepNet", batch=16, accumulate_grad_batches=2
    )
    for key in large:
        torch.testing.assert_close(accumulated[key], large[key], atol=1e-6, rtol=0)


# ----------------------------------------------------------------- metrics


def test_monitor_val_f1_selects_best_pt_and_metrics_are_logged(user_dir, cli, write_config):
    extra = {
        "metrics": [
            "accuracy",
            {"name": "f1", "average": "macro"},
            "confusion_matrix",
            {
                "class_path": "torchmetrics.classification.MulticlassCohenKappa",
                "init_args": {"num_classes": 3},
                "log_as": "kappa",
            },
        ],
        "trainer": {"max_epochs": 4, "checkpoint": {"monitor": "val/f1", "mode": "max"}},
        "optimizer": {"lr": 0.003},
        "=scheduler": {
            "class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau",
            "init_args": {
                "mode": "max",
                "patience": 0,
                "factor": 0.5,
                "threshold": 1.0,
                "threshold_mode": "abs",
            },
            "monitor": "val/f1",
        },
    }
    result = _fit(cli, write_config, {**BASE, **extra}, "f1")
    assert result.exit_code == 0, result.output
    run = only_run_dir(user_dir / "runs")
    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "epoch"]
    f1 = [r["val/f1"] for r in epochs]
    # the plateau scheduler reads val/f1: no gain of 1.0 after the first epoch, so it halves
    assert [r["lr"] for r in epochs] == pytest.approx([0.003, 0.0015, 0.00075, 0.000375])
    assert all({"val/acc", "val/kappa"} <= r.keys() for r in epochs)
    best_epoch = epochs[max(range(len(f1)), key=lambda i: (f1[i], -i))]["epoch"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["monitor"] == "val/f1" and summary["best"]["epoch"] == best_epoch
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["progress"]["epoch"] == best_epoch
    matrix = json.loads((run / "confusion_matrix_val.json").read_text())["confusion_matrix"]
    assert sum(map(sum, matrix)) == 48  # rows: true class, columns: predicted; every val sample
    shown = cli(
        "eval", str(run / "config.yaml"), "--checkpoint", str(run / "checkpoints" / "last.pt")
    )
    assert shown.exit_code == 0, shown.output
    assert "val/f1" in shown.output and "val/kappa" in shown.output


def test_regression_gets_mae_by_default(user_dir, cli, write_config):
    extra = {"=data": {"source": "sine", "n_samples": 200}, "trainer": {"max_epochs": 1}}
    assert _fit(cli, write_config, extra, "reg").exit_code == 0
    summary = json.loads((only_run_dir(user_dir / "runs") / "summary.json").read_text())
    assert summary["final"]["val/mae"] > 0


# ----------------------------------------------------------------- callbacks


def test_callback_state_survives_resume_and_sees_every_point(user_dir, cli, write_config):
    extra = {**BASE, "callbacks": [{"class_path": "userext.Counter"}], "logging": {"name": "cb"}}
    assert _fit(cli, write_config, extra, "cb1", "trainer.max_epochs=2").exit_code == 0
    run = only_run_dir(user_dir / "runs")
    resumed = _fit(cli, write_config, extra, "cb2", "trainer.max_epochs=4", "--resume", str(run))
    assert resumed.exit_code == 0, resumed.output
    seen = json.loads((user_dir / "counter.json").read_text())
    assert seen["validations"] == 4  # 2 before the resume (from the checkpoint) + 2 after
    assert seen["steps"] == 4 * 6  # 240 samples - 20% val = 192 / 32 = 6 steps per epoch
    assert seen["status"] == "completed"
    names = [name for name, _, _ in seen["checkpoints"]]
    assert "last.pt" in names and "best.pt" in names
    for name, saved_step, step in seen["checkpoints"]:
        assert saved_step == step, (name, saved_step, step)  # not the previous best.pt


def test_callback_requests_a_clean_stop(user_dir, cli, write_config):
    extra = {
        **BASE,
        "callbacks": [{"class_path": "userext.Counter", "init_args": {"stop_after": 2}}],
    }
    result = _fit(cli, write_config, extra, "stop", "trainer.max_epochs=5")
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run_dir(user_dir / "runs") / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["status"] == "stopped"
    assert "counted enough" in summary["stop_reason"]


def test_callback_exception_exits_1_naming_it_and_keeps_the_last_checkpoint(
    user_dir, cli, write_config
):
    extra = {**BASE, "callbacks": [{"class_path": "userext.Counter", "init_args": {"fail_at": 2}}]}
    result = _fit(cli, write_config, extra, "fail", "trainer.max_epochs=4")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "userext.Counter.on_validation_end raised RuntimeError: boom" in text
    run = only_run_dir(user_dir / "runs")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["progress"]["epoch"] == 1


# ----------------------------------------------------------------- datasets and DDP


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_user_dataset_of_dicts_trains_under_ddp_with_exact_metrics(tmp_path, cli, monkeypatch):
    """configs/custom/dict_data.yaml on 2 CPU processes; its metrics equal a 1-process eval,
    and its weights those of one process with the same global batch (training_step is synced)."""
    config = ROOT / "configs" / "custom" / "dict_data.yaml"
    args = [
        "trainer.max_epochs=2",
        f"logging.run_dir={tmp_path / 'runs'}",
        'logging.progress="off"',
        "logging.tensorboard=false",
        "data.num_workers=1",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "bptrain", "fit", str(config), *args, "--nproc", "2"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run = only_run_dir(tmp_path / "runs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["distributed"]["world_size"] == 2
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "bptrain",
            "eval",
            str(run / "config.yaml"),
            "--checkpoint",
            str(run / "checkpoints" / "last.pt"),
            "--json",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stdout + single.stderr
    evaluated = json.loads(single.stdout)
    assert evaluated["samples"] == 203  # uneven over 2 ranks: every sample once
    for key in ("val/acc", "val/f1", "val/brier_score"):
        assert evaluated[key] == summary["final"][key], key  # exact
    assert evaluated["val/loss"] == pytest.approx(summary["final"]["val/loss"], abs=1e-6)
    monkeypatch.chdir(ROOT)
    single_run = cli("fit", config, *args, "data.batch_size=64", "logging.name=single")
    assert single_run.exit_code == 0, single_run.output
    one = load_file(_run_dir(tmp_path, "single") / "checkpoints" / "last.safetensors")
    two = load_file(run / "checkpoints" / "last.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0)


# ----------------------------------------------------------------- exact resume of user code

EXAMPLES = "configs.custom.examples"
RESUME_VARIANTS = {
    # dict samples from a user Dataset through a DataLoader with a worker (its seed: seed, epoch)
    "dict-dataset-worker": {
        "data": {
            "class_path": f"{EXAMPLES}.moons_dicts",
            "init_args": {"n_train": 160},
            "batch_size": 16,
            "num_workers": 1,
        },
        "model": {"class_path": f"{EXAMPLES}.DictClassifier"},
        "optimizer": {"class_path": "torch.optim.NAdam", "lr": 0.01},
        "metrics": ["accuracy", "f1"],
    },
    # a training_step that draws random numbers (the VAE's reparameterisation): the RNG resumes too
    "vae-training-step": {
        "model": {"class_path": f"{EXAMPLES}.VAE", "init_args": {"hidden": 16, "features": 2}},
        "scheduler": {
            "class_path": "torch.optim.lr_scheduler.ExponentialLR",
            "init_args": {"gamma": 0.99},
            "interval": "step",
        },
    },
}


@pytest.mark.parametrize("variant", list(RESUME_VARIANTS))
def test_user_code_resumes_bit_exactly_mid_epoch(tmp_path, monkeypatch, variant):
    monkeypatch.chdir(ROOT)  # the examples import from the repository root
    sections = {**RESUME_VARIANTS[variant], "trainer": {"max_epochs": 2}}
    run_fit(tiny_config(tmp_path / "a", **sections))
    cfg = tiny_config(tmp_path / "b", **sections)
    signal_at_step(monkeypatch, 13, signal.SIGUSR1)  # mid-epoch 2: 10 steps per epoch
    with pytest.raises(Interrupted):
        run_fit(cfg)
    monkeypatch.undo()
    monkeypatch.chdir(ROOT)
    run_fit(cfg, resume="auto")
    (a,), (b,) = run_dirs(tmp_path / "a"), run_dirs(tmp_path / "b")
    assert_same_weights(
        load_file(a / "checkpoints/last.safetensors"), load_file(b / "checkpoints/last.safetensors")
    )
    assert metric_lines(a) == metric_lines(b)


def test_adversarial_training_with_a_models_own_training_step_exits_2_before_training(
    cli, tmp_path, monkeypatch
):
    """The attack follows the built-in loss's input gradient; a training_step computes its loss
    where no attack reaches it, so the pair is refused at build time instead of training without
    attacks (or failing mid-run)."""
    monkeypatch.chdir(ROOT)  # the examples import from the repository root
    config = ROOT / "configs" / "custom" / "dict_data.yaml"
    result = cli(
        "fit",
        config,
        "trainer.adversarial={epsilon: 0.1}",
        f"logging.run_dir={tmp_path / 'runs'}",
        "trainer.max_epochs=1",
    )
    assert result.exit_code == 2, result.output
    assert "defines its own training_step" in " ".join(result.output.split())
    assert not list((tmp_path / "runs").glob("*/metrics.jsonl"))  # nothing trained
