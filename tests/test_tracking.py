"""What a run tells the tools that compare runs, through the CLI: TensorBoard's HParams tab and
separate per-step / per-epoch loss tags, and MLflow (read back from a real local store)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import only_run_dir, read_jsonl


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_hparams_and_separate_step_and_epoch_loss(cli, write_config, tmp_path):
    config = write_config({"logging": {"tensorboard": True}, "optimizer": {"lr": 0.02}})
    result = cli("fit", config)
    assert result.exit_code == 0, result.output
    run = only_run_dir(tmp_path / "runs")
    records = read_jsonl(run / "metrics.jsonl")
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert all("train/loss" in r for r in steps + epochs)  # metrics.jsonl keys unchanged

    acc = _events(run)
    step_tag = acc.Scalars("train/loss")
    epoch_tag = acc.Scalars("train/loss_epoch")
    assert [e.step for e in step_tag] == [r["step"] for r in steps]
    assert [e.value for e in step_tag] == pytest.approx([r["train/loss"] for r in steps])
    assert [e.step for e in epoch_tag] == [r["step"] for r in epochs]
    assert [e.value for e in epoch_tag] == pytest.approx([r["train/loss"] for r in epochs])

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(0.02)
    assert start.hparams["optimizer.name"].string_value == "adam"
    assert start.hparams["model.hidden"].string_value == "[16, 16]"
    assert not any(k.startswith("logging.") for k in start.hparams)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    summary = json.loads((run / "summary.json").read_text())
    assert {"hparams/final/val/acc", "hparams/best/val/loss"} <= metric_tags
    (best,) = acc.Scalars("hparams/best/val/loss")
    assert best.value == pytest.approx(summary["best"]["val/loss"])


def _mlflow_fit(cli, write_config, uri: str) -> tuple[Path, object, object]:
    pytest.importorskip("mlflow", reason="needs mlflow-skinny: bash scripts/install.sh --test")
    from mlflow.tracking import MlflowClient

    config = write_config(
        {
            "logging": {"mlflow": {"tracking_uri": uri, "experiment": "tiny-exp"}},
            "trainer": {"checkpoint": {"save_best": True}},
        }
    )
    result = cli("fit", config, "optimizer.lr=0.03")
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny-exp")
    (run,) = client.search_runs([experiment.experiment_id])
    return config, client, run


@pytest.mark.parametrize(
    "store",
    [
        "file",
        pytest.param(
            "sqlite",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(
                    os.environ.get("BPTRAIN_SLOW") != "1", reason="slow: run with BPTRAIN_SLOW=1"
                ),
            ],
        ),
    ],
)
def test_mlflow_records_params_metrics_and_artifacts(
    cli, write_config, tmp_path, store, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a sqlite store puts its artifacts in ./mlruns (MLflow's default)
    uri = f"file://{tmp_path}/mlruns" if store == "file" else f"sqlite:///{tmp_path}/mlflow.db"
    _, client, run = _mlflow_fit(cli, write_config, uri)
    run_dir = only_run_dir(tmp_path / "runs")
    summary = json.loads((run_dir / "summary.json").read_text())
    records = read_jsonl(run_dir / "metrics.jsonl")

    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.lr"] == "0.03"
    assert run.data.params["model.hidden"] == "[16, 16]"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    expected = sorted(
        (r["step"], r["train/loss"]) for r in records if r["type"] in ("step", "epoch")
    )
    got = sorted((m.step, m.value) for m in history)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected])
    assert run.data.metrics["val/acc"] == pytest.approx(summary["final"]["val/acc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [
        "checkpoints/best.pt"
    ]
    local = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["final"] == summary["final"]
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id
