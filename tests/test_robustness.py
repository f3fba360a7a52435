"""`bptrain eval --attack`: robust accuracy checked against independent attacks, and sanity checks
that fire on a gradient-masked model and stay quiet on a normal one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from bptrain.adversarial import Attack, perturb
from bptrain.data import InputSpace

DIGITS = {
    "seed": 0,
    # normalize: the model sees standardised pixels, epsilon is in raw [0, 1] pixel units
    "data": {"source": "digits", "batch_size": 64, "normalize": True, "val_fraction": 0.25},
    "model": {"name": "mlp", "hidden": [32]},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "trainer": {"max_epochs": 4},
    "logging": {"tensorboard": False, "progress": "off"},
}

ROUNDED = '''
import torch
from torch import nn


class Rounded(nn.Module):
    """A model that rounds its input: its input gradient is zero everywhere (masked)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(torch.round(x))
'''


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and CI machines are small and shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(root: Path, name: str, model: dict | None = None) -> tuple[Path, Path]:
    from typer.testing import CliRunner

    from bptrain.cli import app

    config = dict(DIGITS, logging={**DIGITS["logging"], "run_dir": str(root / "runs")})
    if model is not None:
        config["model"] = model
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["fit", str(path)])
    assert result.exit_code == 0, result.output
    (checkpoint,) = (root / "runs" / name).glob("*/checkpoints/last.pt")
    return path, checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """A small MLP trained on the shipped digits (once for the module)."""
    return _train(tmp_path_factory.mktemp("digits"), "digits")


@pytest.fixture(scope="module")
def masked(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("masked")
    (root / "rounded_model.py").write_text(ROUNDED)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # model.class_path is imported from the working directory
    try:
        yield _train(root, "masked", {"class_path": "rounded_model.Rounded"})
    finally:
        mp.undo()


def _eval_json(cli, config: Path, checkpoint: Path, *args: str) -> dict:
    result = cli("eval", config, "--checkpoint", checkpoint, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _model_and_val(config: Path, checkpoint: Path):
    from bptrain.config import load_config
    from bptrain.inference import load_model_and_split

    cfg = load_config(config, [])
    model, batches, _, _, data = load_model_and_split(cfg, checkpoint, "val")
    x, y = map(torch.cat, zip(*batches, strict=True))
    return model.eval(), x, y, data.input_space


class _RawModel(torch.nn.Module):
    """The model as a function of raw pixels (what independent attacks expect)."""

    def __init__(self, model: torch.nn.Module, space: InputSpace) -> None:
        super().__init__()
        self.model, self.space = model, space

    def forward(self, x_raw: torch.Tensor) -> torch.Tensor:
        return self.model(self.space.to_model(x_raw))


def _reference_pgd(model, x, y, eps, alpha, steps, generator=None):
    """Madry et al.'s PGD, written out independently of bptrain: raw [0, 1] inputs; a random start
    when given a generator."""
    noise = 0 if generator is None else torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    x_adv = (x + noise).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps)
        x_adv = x_adv.clamp(0, 1)
    return x_adv


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def test_pgd_matches_independent_implementations_within_one_point(cli, trained):
    config, checkpoint = trained
    eps, steps = 0.1, 10
    report = _eval_json(
        cli, config, checkpoint, "--attack", "pgd", "--epsilon", eps, "--steps", steps
    )
    model, x, y, space = _model_and_val(config, checkpoint)
    assert space.low == 0.0 and space.high == 1.0 and space.std is not None  # raw units, normalised
    raw_model = _RawModel(model, space).eval()
    x_raw = space.to_raw(x)
    assert report["samples"] == len(x)
    assert report["clean_acc"] == pytest.approx(_accuracy(raw_model, x_raw, y), abs=1e-6)

    alpha = 2.5 * eps / steps
    reference = _accuracy(
        raw_model,
        _reference_pgd(raw_model, x_raw, y, eps, alpha, steps, torch.Generator().manual_seed(1)),
        y,
    )
    import torchattacks  # installed by scripts/install.sh --test (see there)

    attack = torchattacks.PGD(raw_model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    torch.manual_seed(2)
    independent = _accuracy(raw_model, attack(x_raw, y), y)
    fgsm = _accuracy(raw_model, torchattacks.FGSM(raw_model, eps=eps)(x_raw, y), y)

    # a real attack at this epsilon: far below clean accuracy, so parity means something
    assert report["robust_acc"] < report["clean_acc"] - 0.2
    assert abs(report["robust_acc"] - reference) <= 0.01, (report["robust_acc"], reference)
    assert abs(report["robust_acc"] - independent) <= 0.01, (report["robust_acc"], independent)
    assert abs(report["fgsm_acc"] - fgsm) <= 0.01, (report["fgsm_acc"], fgsm)


def test_pgd_without_random_start_matches_torchattacks_where_accuracy_is_mid_range(trained):
    """At epsilon 0.1 the accuracies above are near zero; at 0.02 about half the digits survive,
    and without the random start (the only source of difference) the attacks agree sample by sample."""
    import torchattacks

    from bptrain.adversarial import attack_batch
    from bptrain.losses import Objective

    config, checkpoint = trained
    model, x, y, space = _model_and_val(config, checkpoint)
    raw_model, x_raw = _RawModel(model, space).eval(), space.to_raw(x)
    eps, steps = 0.02, 10
    objective = Objective("cross_entropy", torch.nn.CrossEntropyLoss(), "classification", False)
    ours = attack_batch(
        model, x, y, objective, Attack("pgd", eps, steps, random_start=False), space
    )
    ours_acc = _accuracy(model, ours.x_adv, y)
    theirs = torchattacks.PGD(raw_model, eps=eps, alpha=eps / 4, steps=steps, random_start=False)
    theirs_acc = _accuracy(raw_model, theirs(x_raw, y), y)
    reference = _accuracy(raw_model, _reference_pgd(raw_model, x_raw, y, eps, eps / 4, steps), y)
    assert 0.1 < ours_acc < 0.9  # mid-range: a real test of agreement
    assert abs(ours_acc - theirs_acc) <= 0.01, (ours_acc, theirs_acc)
    assert abs(ours_acc - reference) <= 0.01, (ours_acc, reference)


def test_sanity_checks_stay_quiet_on_a_normal_model(cli, trained, tmp_path):
    config, checkpoint = trained
    out = tmp_path / "report.json"
    result = cli(
        "eval", config, "--checkpoint", checkpoint, "--attack", "pgd", "--steps", 5,
        "--epsilons", "0,0.05,0.2,0.5", "--out", out, "--plot",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert "sanity checks passed" in result.stdout
    report = json.loads(out.read_text())
    assert report["warnings"] == []
    assert all(check["ok"] for check in report["checks"])
    table = report["table"]
    assert [row["epsilon"] for row in table] == [0, 0.05, 0.2, 0.5]
    assert table[0]["pgd_acc"] == report["clean_acc"] > 0.8
    assert table[-1]["pgd_acc"] <= 0.05  # half the pixel range: everything can be made grey
    assert out.with_suffix(".png").stat().st_size > 1000


def test_attack_defaults_to_the_epsilon_the_model_was_trained_against(cli, trained, tmp_path):
    """Without --epsilon or --epsilons, a config with trainer.adversarial is evaluated at the
    budget it trained against; --epsilon still wins."""
    config, checkpoint = trained
    data = yaml.safe_load(config.read_text())
    threat = {"method": "fgsm", "epsilon": 0.5, "norm": "l2"}
    data.setdefault("trainer", {})["adversarial"] = threat
    adversarial = tmp_path / "adversarial.yaml"
    adversarial.write_text(yaml.safe_dump(data))
    report = _eval_json(cli, adversarial, checkpoint, "--attack", "fgsm")
    assert (report["epsilon"], report["norm"]) == (0.5, "l2"), report
    given = ("--epsilon", "0.05", "--norm", "linf")
    report = _eval_json(cli, adversarial, checkpoint, "--attack", "fgsm", *given)
    assert (report["epsilon"], report["norm"]) == (0.05, "linf")
    report = _eval_json(cli, config, checkpoint, "--attack", "fgsm", "--epsilon", "0.05")
    assert report["norm"] == "linf"  # no trainer.adversarial: linf, as before


def test_sanity_checks_fire_on_a_masked_model(cli, masked, tmp_path):
    config, checkpoint = masked
    out = tmp_path / "report.json"
    result = cli(
        "eval", config, "--checkpoint", checkpoint, "--attack", "pgd", "--steps", 5,
        "--epsilons", "0,0.1,0.5", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    failed = {check["name"] for check in report["checks"] if check["ok"] is False}
    assert "loss_increases" in failed  # a zero input gradient: PGD never moves
    assert "falls_to_zero" in failed  # at epsilon 0.5 the model still looks robust
    assert report["clean_acc"] > 0.5
    assert "warning" in result.output and "masked" in result.output


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attack_stays_in_the_raw_ball_and_range_without_parameter_gradients(norm):
    torch.manual_seed(0)
    mean, std = torch.full((4,), 0.4), torch.tensor([0.1, 0.2, 0.3, 0.4])
    space = InputSpace(0.0, 1.0, mean, std)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x_raw = torch.rand(32, 4)
    y = torch.randint(0, 3, (32,))
    eps = 0.1 if norm == "linf" else 0.3
    result = perturb(
        model, space.to_model(x_raw), y, torch.nn.functional.cross_entropy,
        Attack("pgd", eps, steps=7, norm=norm), space, record_losses=True,
    )  # fmt: skip
    delta = space.to_raw(result.x_adv) - x_raw
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(size.max()) > 0.5 * eps  # the budget is used, measured in raw units
    adv = space.to_raw(result.x_adv)
    assert float(adv.min()) >= -1e-6 and float(adv.max()) <= 1 + 1e-6
    assert all(p.grad is None for p in model.parameters())
    assert result.losses[-1] > result.losses[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epsilon", "0"], "must be > 0"),
        (["--epsilon", "1.5"], "larger than the data's range"),
        (["--epsilon", "0.1", "--steps", "0"], "--steps 0"),
        ([], "needs an epsilon"),
    ],
)
def test_bad_attack_options_exit_2(cli, trained, args, message):
    config, checkpoint = trained
    result = cli("eval", config, "--checkpoint", checkpoint, "--attack", "pgd", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize("option", [["--epsilon", "0.1"], ["--norm", "l2"], ["--plot"]])
def test_attack_options_without_attack_exit_2(cli, trained, option):
    config, checkpoint = trained
    result = cli("eval", config, "--checkpoint", checkpoint, *option)
    assert result.exit_code == 2, result.output
    assert "need --attack" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"data": {"source": "sine", "n_samples": 64}}, "regression"),
        (
            {
                "data": {"source": "majority", "n_samples": 64, "length": 6, "vocab": 4},
                "=model": {
                    "name": "transformer",
                    "vocab_size": 4,
                    "d_model": 8,
                    "num_heads": 2,
                    "num_layers": 1,
                },
            },
            "token ids",
        ),
    ],
)
def test_attack_on_regression_or_token_inputs_exits_2(cli, write_config, tmp_path, extra, message):
    config = write_config(extra)
    assert cli("fit", config, "trainer.max_epochs=1").exit_code == 0
    (checkpoint,) = (tmp_path / "runs").glob("*/*/checkpoints/last.pt")
    result = cli("eval", config, "--checkpoint", checkpoint, "--attack", "fgsm", "--epsilon", "0.1")
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_input_gradient_summary_is_per_sample_in_raw_units():
    from bptrain.input_gradients import input_gradient_summary
    from bptrain.losses import Objective

    torch.manual_seed(0)
    space = InputSpace(0.0, 1.0, torch.zeros(3), torch.tensor([1.0, 2.0, 4.0]))
    model = torch.nn.Linear(3, 2)
    objective = Objective("cross_entropy", torch.nn.CrossEntropyLoss(), "classification", False)
    x, y = torch.rand(10, 3), torch.randint(0, 2, (10,))
    summary = input_gradient_summary(
        model, [(x[:4], y[:4]), (x[4:], y[4:])], objective, space, torch.device("cpu")
    )
    x_raw = space.to_raw(x).requires_grad_(True)
    losses = torch.nn.functional.cross_entropy(model(space.to_model(x_raw)), y, reduction="none")
    expected = torch.stack(
        [torch.autograd.grad(loss, x_raw, retain_graph=True)[0][i] for i, loss in enumerate(losses)]
    )
    assert summary["per_sample_norm"] == pytest.approx(expected.norm(dim=1).tolist(), rel=1e-5)
    mean_abs = expected.abs().mean(0)
    assert summary["top_features"][0]["feature"] == f"x[{int(mean_abs.argmax())}]"
    assert summary["top_features"][0]["mean_abs_grad"] == pytest.approx(
        float(mean_abs.max()), rel=1e-5
    )
    assert all(p.grad is None for p in model.parameters())


def test_grad_inspect_reports_the_input_gradient(cli, trained, tmp_path):
    config, checkpoint = trained
    out = tmp_path / "report.json"
    result = cli("grad-inspect", config, "--checkpoint", checkpoint, "--batches", 2, "--json", out)
    assert result.exit_code in (0, 3), result.output
    assert "input gradient ‖∂L/∂x‖ per sample (raw input units, 128 samples)" in result.output
    assert "largest mean |∂L/∂x|" in result.output
    summary = json.loads(out.read_text())["input_gradient"]
    assert len(summary["per_sample_norm"]) == summary["samples"] == 128
    assert summary["norm_min"] <= summary["norm_median"] <= summary["norm_max"]
    top = summary["top_features"]
    assert len(top) == 10 and top[0]["feature"].startswith("x[")
    assert [f["mean_abs_grad"] for f in top] == sorted(
        (f["mean_abs_grad"] for f in top), reverse=True
    )
