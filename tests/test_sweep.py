"""`bptrain sweep`: the grid, the comparison table (mean ± std over seeds), isolated failures,
and resuming a sweep that was cut short."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bptrain.cli import app
from bptrain.errors import UserError
from bptrain.search_space import split_values
from bptrain.sweep import expand, parse_sweep_axes

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {"source": "spirals", "n_samples": 200, "batch_size": 50},
                "model": {"name": "mlp", "hidden": [8]},
                "optimizer": {"name": "adam", "lr": 0.01},
                "trainer": {"max_epochs": 2},
                "logging": {
                    "run_dir": str(tmp_path / "runs"),
                    "tensorboard": False,
                    "progress": "off",
                },
            }
        )
    )
    return path


def sweep(*args: str):
    return CliRunner().invoke(app, ["sweep", *map(str, args)])


def test_values_split_at_top_level_commas_only():
    assert split_values("rnn,lstm,gru") == ["rnn", "lstm", "gru"]
    assert split_values("[64,64],[128],'a,b'") == ["[64,64]", "[128]", "'a,b'"]


def test_grid_is_the_product_of_axes_times_seeds():
    variants = expand(parse_sweep_axes(["a.b=1,2", "c=x,y,z"]), [0, 1])
    assert len(variants) == 12
    assert variants[0].overrides == ["a.b=1", "c=x", "seed=0"]
    assert len({v.slug for v in variants}) == 12


@pytest.mark.parametrize("axis", ["model.cell", "=1,2", "seed=1,2"])
def test_bad_axes_are_usage_errors(axis):
    with pytest.raises(UserError):
        parse_sweep_axes([axis])


def test_sweep_table_reports_mean_and_std_over_seeds(tmp_path):
    result = sweep(tiny_config(tmp_path), "model.hidden=[8],[16,16]", "--seeds", "0,1")
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "tiny-sweep"
    data = json.loads((root / "sweep.json").read_text())
    assert [r["variant"] for r in data["rows"]] == ["model.hidden=[8]", "model.hidden=[16,16]"]
    runs = [r for r in data["runs"] if r["variant"] == "model.hidden=[16,16]"]
    assert sorted(r["seed"] for r in runs) == [0, 1]
    accs = [
        json.loads((Path(r["run_dir"]) / "summary.json").read_text())["final"]["val/acc"]
        for r in runs
    ]
    row = data["rows"][1]
    assert row["val/acc"] == pytest.approx(statistics.fmean(accs))
    assert row["val/acc std"] == pytest.approx(statistics.stdev(accs))
    assert row["best epoch"] >= 1 and row["wall s"] > 0
    # every run is a normal run dir under the common parent (TensorBoard overlays them)
    assert len(list(root.glob("*/*/summary.json"))) == 4
    assert "±" in (root / "sweep.md").read_text()
    assert (root / "sweep.csv").read_text().startswith("variant,runs,ok,status")


def test_a_failing_variant_is_reported_not_fatal(tmp_path):
    result = sweep(tiny_config(tmp_path), "optimizer.lr=0.01,-1")
    assert result.exit_code == 1, result.output
    rows = json.loads((tmp_path / "runs" / "tiny-sweep" / "sweep.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "optimizer.lr" in rows[1]["error"]
    assert "failed" in (tmp_path / "runs" / "tiny-sweep" / "sweep.md").read_text()


def test_a_run_that_raises_is_isolated(tmp_path):
    # mse on class labels passes validation and fails when fit builds the objective.
    result = sweep(tiny_config(tmp_path), "loss.name=auto,mse")
    assert result.exit_code == 1
    rows = json.loads((tmp_path / "runs" / "tiny-sweep" / "sweep.json").read_text())["rows"]
    assert rows[0]["status"] == "ok" and rows[1]["status"] == "failed"
    assert "mse" in rows[1]["error"]


def test_running_a_sweep_again_skips_finished_runs_and_resumes_interrupted_ones(tmp_path):
    config = tiny_config(tmp_path)
    assert sweep(config, "optimizer.lr=0.01,0.02").exit_code == 0
    root = tmp_path / "runs" / "tiny-sweep"
    # Make the second variant look interrupted: a checkpoint but no summary.
    interrupted = next((root / "optimizer.lr=0.02").glob("*"))
    (interrupted / "summary.json").unlink()
    again = sweep(config, "optimizer.lr=0.01,0.02")
    assert again.exit_code == 0, again.output
    runs = {r["variant"]: r for r in json.loads((root / "sweep.json").read_text())["runs"]}
    assert runs["optimizer.lr=0.01"]["status"] == "skipped"
    assert runs["optimizer.lr=0.02"]["status"] == "completed"
    assert runs["optimizer.lr=0.02"]["run_dir"] == str(interrupted)  # resumed in place
    assert len(list((root / "optimizer.lr=0.01").glob("*"))) == 1  # nothing re-run


def test_changed_config_is_not_skipped(tmp_path):
    config = tiny_config(tmp_path)
    assert sweep(config, "optimizer.lr=0.01").exit_code == 0
    assert sweep(config, "optimizer.lr=0.01", "--set", "trainer.max_epochs=1").exit_code == 0
    assert (
        len(list((tmp_path / "runs" / "tiny-sweep" / "optimizer.lr=0.01").glob("*/summary.json")))
        == 2
    )


def test_parallel_jobs_run_subprocesses_on_the_quickstart(tmp_path):
    result = sweep(
        QUICKSTART,
        "optimizer.lr=1e-3,3e-3",
        "--jobs", "2",
        "--set", "trainer.max_epochs=1",
        "--set", f"logging.run_dir={tmp_path}",
        "--set", "logging.tensorboard=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "quickstart-sweep" / "sweep.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(0 < r["val/acc"] <= 1 for r in rows)
    assert (tmp_path / "quickstart-sweep" / "optimizer.lr=1e-3.log").exists()


@pytest.mark.parametrize("width", [60, 80, 160])
def test_sweep_table_fits_the_width_with_variants_cut_to_what_differs(width):
    import io

    from rich.console import Console

    from bptrain.sweep import print_table

    rows = [
        {
            "variant": f"optimizer.name={name} optimizer.lr={lr}",
            "runs": 3,
            "ok": 3,
            "status": "completed",
            "error": None,
            "val/loss": 0.1234,
            "val/loss std": 0.01,
            "val/acc": 0.9712,
            "val/acc std": 0.002,
            "best epoch": 18.0,
            "best epoch std": 1.0,
            "wall s": 12.3,
            "wall s std": 0.4,
        }
        for name in ("sgd", "adamw")
        for lr in ("0.1", "0.003")
    ]
    out = io.StringIO()
    print_table(Console(file=out, width=width), rows)
    text = out.getvalue()
    assert all(len(line) <= width for line in text.splitlines())
    assert "…" not in text
    lines = text.splitlines()
    assert text.count("12.3 ±") == 4 and text.count("0.4") == 4  # the last column, whole
    # labels cut to what differs; a part is never split, whole labels when there is room
    tokens = {token for line in lines for token in line.split()}
    assert {"name=sgd", "name=adamw", "lr=0.1", "lr=0.003"} <= tokens
    assert "optimizer." not in text
    if width >= 160:
        assert sum("name=adamw lr=0.003" in line for line in lines) == 1
