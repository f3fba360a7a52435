"""``bptrain runs``: the table of runs read back from their run directories, through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import only_run_dir


def _fit(cli, write_config, name: str, *overrides: str) -> None:
    result = cli("fit", write_config(name=name), *overrides)
    assert result.exit_code == 0, result.output


def test_runs_lists_status_differences_and_metrics(cli, write_config, tmp_path: Path) -> None:
    _fit(cli, write_config, "a", "optimizer.lr=0.01")
    _fit(cli, write_config, "b", "optimizer.lr=0.05", "model.hidden=[8]")
    result = cli("runs", tmp_path / "runs", "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert len(table) == 2
    by_lr = {row["config"]["optimizer.lr"]: row for row in table}
    assert set(by_lr) == {0.01, 0.05}
    # only what differs is shown; logging.* (name, run_dir) never counts as a difference
    assert set(by_lr[0.01]["config"]) == {"optimizer.lr", "model.hidden"}
    assert by_lr[0.05]["config"]["model.hidden"] == [8]
    for row in table:
        summary = json.loads((Path(row["path"]) / "summary.json").read_text())
        assert row["status"] == "completed"
        assert row["epochs"] == 2
        assert row["final"]["val/acc"] == summary["final"]["val/acc"]
        assert row["best"]["val/loss"] == summary["best"]["val/loss"]

    text = cli("runs", tmp_path / "runs")
    assert text.exit_code == 0
    assert "optimizer.lr=0.05" in text.output and "completed" in text.output


def test_runs_sorts_by_a_metric_either_way(cli, write_config, tmp_path: Path) -> None:
    for i, lr in enumerate(["0.001", "0.03", "0.01"]):
        _fit(cli, write_config, f"r{i}", f"optimizer.lr={lr}")
    up = json.loads(cli("runs", tmp_path / "runs", "--json", "--sort", "val/loss").stdout)
    losses = [r["final"]["val/loss"] for r in up]
    assert losses == sorted(losses)
    down = json.loads(
        cli("runs", tmp_path / "runs", "--json", "--sort", "best val/acc", "--desc").stdout
    )
    accs = [r["best"]["val/acc"] for r in down]
    assert accs == sorted(accs, reverse=True)
    by_lr = json.loads(cli("runs", tmp_path / "runs", "--json", "--sort", "optimizer.lr").stdout)
    assert [r["config"]["optimizer.lr"] for r in by_lr] == [0.001, 0.01, 0.03]

    bad = cli("runs", tmp_path / "runs", "--sort", "val/acc2")
    assert bad.exit_code == 2
    assert "no such column" in bad.output and "val/acc" in bad.output


def test_runs_reads_unfinished_runs(cli, write_config, tmp_path: Path) -> None:
    _fit(cli, write_config, "done")
    done = only_run_dir(tmp_path / "runs")
    # a run that was interrupted: no summary, its last event says so
    stopped = tmp_path / "runs" / "stopped" / "20990101-000000"
    shutil.copytree(done, stopped)
    (stopped / "summary.json").unlink()
    with (stopped / "metrics.jsonl").open("a") as f:
        f.write(
            json.dumps({"type": "event", "step": 9, "event": "interrupted", "signal": "SIGTERM"})
            + "\n"
        )
    # a run still going (or dead without a word), its last line half-written
    going = tmp_path / "runs" / "going" / "20990101-000000"
    shutil.copytree(done, going)
    (going / "summary.json").unlink()
    with (going / "metrics.jsonl").open("a") as f:
        f.write('{"type": "epo')
    table = {
        r["run"].split("/")[0]: r
        for r in json.loads(cli("runs", tmp_path / "runs", "--json").stdout)
    }
    assert table["stopped"]["status"] == "interrupted"
    assert table["going"]["status"] == "running"
    assert table["going"]["epochs"] == 2 and "val/loss" in table["going"]["best"]
    assert table["going"]["final"]["val/acc"] == table["done"]["final"]["val/acc"]


def test_runs_of_a_missing_directory_is_a_usage_error(cli, tmp_path: Path) -> None:
    result = cli("runs", tmp_path / "nope")
    assert result.exit_code == 2
    assert "no such directory" in result.output
