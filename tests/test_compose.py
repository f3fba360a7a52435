"""Config composition through the CLI: base: includes, several files, ${env:...}, variant
shorthands, dropped variant options, config show --origins, and the errors for each."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import TINY


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _show(cli, *args) -> dict:
    result = cli("config", "show", *args)
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def test_base_files_merge_deeply_later_wins_relative_to_the_including_file(cli, tmp_path):
    _write(tmp_path / "common" / "data.yaml", "data:\n  source: digits\n  batch_size: 32\n")
    _write(
        tmp_path / "common" / "base.yaml",
        "base: data.yaml\nmodel:\n  name: mlp\n  hidden: [64, 64]\n  dropout: 0.1\n"
        "optimizer:\n  name: sgd\n  lr: 0.1\n",
    )
    _write(tmp_path / "extra.yaml", "trainer:\n  max_epochs: 3\n")
    small = _write(
        tmp_path / "exp" / "small.yaml",
        "base: [../common/base.yaml, ../extra.yaml]\nmodel:\n  hidden: [16]\ndata:\n  batch_size: 8\n",
    )
    cfg = _show(cli, small)
    assert cfg["data"]["source"] == "digits" and cfg["data"]["batch_size"] == 8
    assert cfg["model"]["hidden"] == [16] and cfg["model"]["dropout"] == 0.1  # lists replace
    assert cfg["optimizer"] == {**cfg["optimizer"], "name": "sgd", "lr": 0.1}
    assert cfg["trainer"]["max_epochs"] == 3
    assert cfg["logging"]["name"] == "small"


def test_several_files_merge_left_to_right_then_overrides(cli, tmp_path):
    base = _write(tmp_path / "base.yaml", "data: digits\noptimizer:\n  name: adam\n  lr: 0.1\n")
    small = _write(tmp_path / "small.yaml", "model:\n  hidden: [8]\noptimizer:\n  lr: 0.01\n")
    lr = _write(tmp_path / "lr.yaml", "optimizer:\n  lr: 0.002\n  weight_decay: 0.1\n")
    cfg = _show(cli, base, small, lr, "optimizer.weight_decay=0.5")
    assert cfg["optimizer"]["lr"] == 0.002 and cfg["optimizer"]["weight_decay"] == 0.5
    assert cfg["model"]["hidden"] == [8]
    assert cfg["logging"]["name"] == "base+small+lr"


def test_fit_runs_a_composed_config(cli, tmp_path):
    _write(
        tmp_path / "base.yaml",
        yaml.safe_dump({**TINY, "logging": {**TINY["logging"], "run_dir": str(tmp_path / "runs")}}),
    )
    short = _write(
        tmp_path / "short.yaml", "base: base.yaml\ntrainer:\n  max_epochs: 1\noptimizer: sgd\n"
    )
    result = cli("fit", short, "optimizer.lr=0.05")
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs" / "short").iterdir()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optimizer"]["name"] == "sgd" and saved["optimizer"]["lr"] == 0.05
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1
    # the saved config is self-contained: it runs as is
    assert cli("config", "validate", run / "config.yaml").exit_code == 0


def test_env_interpolation_with_and_without_default(cli, tmp_path, monkeypatch):
    config = _write(
        tmp_path / "env.yaml",
        "data:\n  source: npz\n  path: ${env:BPT_DATA}/train.npz\n"
        "optimizer:\n  name: adam\n  lr: ${env:BPT_LR,3e-4}\n",
    )
    monkeypatch.setenv("BPT_DATA", "/data/set")
    cfg = _show(cli, config)
    assert cfg["data"]["path"] == "/data/set/train.npz"
    assert cfg["optimizer"]["lr"] == 3e-4  # a whole-value placeholder is read as YAML: a float
    monkeypatch.setenv("BPT_LR", "0.01")
    assert _show(cli, config)["optimizer"]["lr"] == 0.01
    monkeypatch.delenv("BPT_DATA")
    result = cli("config", "show", config)
    assert result.exit_code == 2
    assert "env.yaml, line 3" in result.output and "BPT_DATA is not set" in result.output
    assert "${env:BPT_DATA,VALUE}" in result.output
    plain = _write(tmp_path / "plain.yaml", "data:\n  source: npz\n  path: ${DATA_DIR}/x.npz\n")
    result = cli("config", "show", plain)
    assert result.exit_code == 2 and "${env:DATA_DIR}" in result.output


def test_variant_shorthand_and_a_changed_name_drops_the_old_options(cli, tmp_path):
    config = _write(
        tmp_path / "v.yaml",
        "data: digits\nloss: mse\noptimizer: adam\n"
        "scheduler:\n  name: warmup_cosine\n  warmup_steps: 20\n",
    )
    cfg = _show(cli, config)
    assert cfg["loss"]["name"] == "mse" and cfg["optimizer"]["name"] == "adam"
    assert cfg["data"]["source"] == "digits"
    result = cli("config", "show", config, "scheduler.name=none")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["scheduler"] == {"name": "none"}
    assert "note:" in result.stderr and "scheduler.warmup_steps" in result.stderr
    # a later file switching the variant drops them too; options of the new one are kept
    step = _write(tmp_path / "step.yaml", "scheduler:\n  name: step\n  step_size: 3\n")
    cfg = yaml.safe_load(cli("config", "show", config, step).stdout)
    assert cfg["scheduler"]["name"] == "step" and cfg["scheduler"]["step_size"] == 3
    assert "warmup_steps" not in cfg["scheduler"]
    # a key the new variant lacks, given explicitly, is still an error naming file and line
    bad = _write(tmp_path / "bad.yaml", "scheduler:\n  name: none\n  warmup_steps: 5\n")
    result = cli("config", "show", config, bad)
    assert result.exit_code == 2 and "bad.yaml, line 3" in result.output


def test_errors_name_the_file_and_line_across_files(cli, tmp_path):
    _write(tmp_path / "base.yaml", "data: digits\noptimizer:\n  name: adam\n  lrr: 0.1\n")
    child = _write(tmp_path / "child.yaml", "base: base.yaml\nmodel:\n  hidden: [8]\n")
    result = cli("config", "validate", child)
    assert result.exit_code == 2
    assert (
        "base.yaml, line 4: optimizer.lrr" in result.output and "Did you mean 'lr'" in result.output
    )


def test_circular_and_missing_includes_are_usage_errors(cli, tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\ndata: digits\n")
    _write(tmp_path / "b.yaml", "\nbase: a.yaml\n")
    result = cli("config", "validate", tmp_path / "a.yaml")
    assert result.exit_code == 2
    assert "b.yaml, line 2" in result.output and "a.yaml -> b.yaml -> a.yaml" in result.output
    assert "circular" in result.output
    _write(tmp_path / "ok.yaml", "model:\n  hidden: [8]\n")
    missing = _write(tmp_path / "m.yaml", "data: digits\nbase: [ok.yaml, nope/none.yaml]\n")
    result = cli("config", "validate", missing)
    assert result.exit_code == 2
    assert "m.yaml, line 2: base: nope/none.yaml not found" in result.output


def test_config_show_origins_names_file_line_override_or_default(cli, tmp_path):
    _write(tmp_path / "base.yaml", "data: digits\noptimizer:\n  name: adam\n  lr: 0.1\n")
    child = _write(tmp_path / "child.yaml", "base: base.yaml\noptimizer:\n  lr: 0.01\n")
    result = cli("config", "show", child, "model.hidden=[8]", "--origins")
    assert result.exit_code == 0, result.output
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines()}
    assert lines["data.source"].endswith(f"# {tmp_path / 'base.yaml'}, line 1")
    assert lines["optimizer.name"].endswith("base.yaml, line 3")
    assert lines["optimizer.lr"].endswith(f"# {child}, line 3")
    assert lines["model.hidden"].endswith("# command-line override 'model.hidden=[8]'")
    assert lines["optimizer.weight_decay"].endswith("# default")
