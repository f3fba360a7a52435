"""Checkpoint files: best/top-k ranking, cadence, exported weights, transfer learning, real stop signals."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from ckpt_helpers import assert_same_weights, run_dirs, run_fit, tiny_config, weights

import bptrain.checkpoint as checkpoint
import bptrain.train as train
from bptrain.checkpoint import CheckpointTracker, load_checkpoint, save_checkpoint
from bptrain.errors import UserError
from bptrain.inference import load_weights
from bptrain.transfer import freeze, init_from

# --------------------------------------------------------------------------- tracker, no training


def rank(tracker: CheckpointTracker, values: list[float]) -> list[bool]:
    return [
        tracker.update({"val/loss": v}, epoch, epoch * 10, lambda e=epoch: {"epoch": e})
        for epoch, v in enumerate(values, start=1)
    ]


def test_top_k_keeps_the_k_best_files_and_best_pt_links_the_best(tmp_path):
    tracker = CheckpointTracker(tmp_path, "val/loss", "min", save_top_k=2)
    assert rank(tracker, [0.5, 0.4, 0.45, 0.3, math.nan, 0.6]) == [
        True,
        True,
        False,
        True,
        False,
        False,
    ]
    files = sorted(p.name for p in tmp_path.glob("epoch=*.pt"))
    assert files == [
        "epoch=002-step=000020-val_loss=0.4.pt",
        "epoch=004-step=000040-val_loss=0.3.pt",
    ]
    assert load_checkpoint(tmp_path / "best.pt") == {"epoch": 4}
    assert os.path.samefile(
        tmp_path / "best.pt", tmp_path / files[1]
    )  # a hard link, no second copy
    assert tracker.summary()["epoch"] == 4 and tracker.summary()["value"] == 0.3
    # the state survives a resume; files that vanished are forgotten
    (tmp_path / files[0]).unlink()
    again = CheckpointTracker(tmp_path, "val/loss", "min", save_top_k=2)
    again.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert [e["epoch"] for e in again.top_k] == [4] and again.best_epoch == 4


def test_max_mode_save_all_and_no_best(tmp_path):
    tracker = CheckpointTracker(tmp_path, "val/acc", "max", save_top_k=-1, save_best=False)
    for epoch, acc in enumerate([0.5, 0.7, 0.6], start=1):
        tracker.update({"val/acc": acc}, epoch, epoch, dict)
    assert len(list(tmp_path.glob("epoch=*-val_acc=*.pt"))) == 3
    assert not (tmp_path / "best.pt").exists() and tracker.best_epoch == 2


def test_a_changed_monitor_starts_ranking_afresh(tmp_path):
    old = CheckpointTracker(tmp_path, "val/loss", "min")
    rank(old, [0.5])
    new = CheckpointTracker(tmp_path, "val/acc", "max")
    new.load_state_dict(old.state_dict())
    assert new.best_epoch is None


# --------------------------------------------------------------------------- in a run


def test_checkpoint_files_and_summary_follow_the_monitor(tmp_path):
    cfg = tiny_config(
        tmp_path,
        trainer={
            "max_epochs": 4,
            "checkpoint": {"monitor": "val/acc", "mode": "max", "save_top_k": 2},
        },
    )
    summary = run_fit(cfg)
    (run,) = run_dirs(tmp_path)
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    accs = [e["val/acc"] for e in epochs if e["type"] == "epoch"]
    best_epoch = accs.index(max(accs)) + 1  # the first of equal values wins (strictly better only)
    assert summary["best"]["monitor"] == "val/acc" and summary["best"]["mode"] == "max"
    assert summary["best"]["epoch"] == best_epoch and summary["best"]["val/acc"] == max(accs)
    assert load_checkpoint(run / "checkpoints/best.pt")["progress"]["epoch"] == best_epoch
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"last.pt", "best.pt", "last.safetensors", "best.safetensors"} <= names
    assert len([n for n in names if n.startswith("epoch=") and "-val_acc=" in n]) == 2
    assert not [n for n in names if n.endswith(".tmp")]
    # best.safetensors holds best.pt's weights
    assert_same_weights(
        load_weights(run / "checkpoints/best.safetensors"), weights(run / "checkpoints/best.pt")
    )


def test_checkpoint_cadence_every_n_epochs_and_every_n_steps(tmp_path, monkeypatch):
    written: list[tuple[int, int]] = []
    real, real_link = train.save_checkpoint, train.link_or_copy

    def record(state, path):
        if path.name == "last.pt":
            written.append((state["progress"]["epoch"], state["progress"]["step"]))
        real(state, path)

    def record_link(source, path):  # last.pt as a link of the epoch's best.pt (Run.one_state)
        if path.name == "last.pt":
            state = load_checkpoint(source)
            written.append((state["progress"]["epoch"], state["progress"]["step"]))
        real_link(source, path)

    monkeypatch.setattr(train, "save_checkpoint", record)
    monkeypatch.setattr(train, "link_or_copy", record_link)
    run_fit(
        tiny_config(tmp_path / "a", trainer={"max_epochs": 5, "checkpoint": {"every_n_epochs": 2}})
    )
    assert written == [(2, 20), (4, 40), (5, 50)]  # and always after the last epoch
    written.clear()
    run_fit(
        tiny_config(tmp_path / "b", trainer={"max_epochs": 2, "checkpoint": {"every_n_steps": 4}})
    )
    # mid-epoch saves at steps 4 and 8 (epoch 0 not finished), the epoch-end saves at 10 and 20
    assert written == [(0, 4), (0, 8), (1, 10), (1, 12), (1, 16), (2, 20)]


@pytest.mark.parametrize("mode", ["min", "max"])  # one of the two ends on a non-best epoch
def test_an_epoch_end_copies_and_writes_its_state_once_for_best_pt_and_last_pt(
    tmp_path, monkeypatch, mode
):
    """best.pt and last.pt of the same epoch end hold the same state: one host copy, one write,
    and last.pt is a hard link of best.pt (Run.one_state). A later epoch that is not the best
    replaces last.pt and leaves best.pt as it was."""
    saves: list[tuple[str, int]] = []
    links: list[tuple[str, str]] = []
    copies: list[int] = []
    real_save, real_link, real_copy = train.save_checkpoint, train.link_or_copy, train.host_copy

    def save(state, path):
        saves.append((path.name, state["progress"]["epoch"]))
        real_save(state, path)

    def link(source, path):
        links.append((source.name, path.name))
        real_link(source, path)

    def copy(state):
        copies.append(state["progress"]["epoch"])
        return real_copy(state)

    for module in (train, checkpoint):  # last.pt's writes (train), best.pt's (the tracker)
        monkeypatch.setattr(module, "save_checkpoint", save)
        monkeypatch.setattr(module, "link_or_copy", link)
    monkeypatch.setattr(train, "host_copy", copy)
    epochs = 4
    summary = run_fit(
        tiny_config(
            tmp_path,
            trainer={"max_epochs": epochs, "checkpoint": {"monitor": "val/loss", "mode": mode}},
        )
    )
    (run,) = run_dirs(tmp_path)
    best_epochs = [epoch for name, epoch in saves if name == "best.pt"]
    assert best_epochs and best_epochs[-1] == summary["best"]["epoch"]
    assert copies == list(range(1, epochs + 1))  # one host copy per epoch end, best or not
    assert len(saves) == epochs  # best.pt at a new best (last.pt links it), else last.pt
    assert links == [("best.pt", "last.pt")] * len(best_epochs)
    assert [e for name, e in saves if name == "last.pt"] == [
        e for e in range(1, epochs + 1) if e not in best_epochs
    ]
    best, last = run / "checkpoints/best.pt", run / "checkpoints/last.pt"
    assert load_checkpoint(last)["progress"]["epoch"] == epochs
    assert load_checkpoint(best)["progress"]["epoch"] == best_epochs[-1]
    assert os.path.samefile(best, last) == (best_epochs[-1] == epochs)
    assert_same_weights(
        load_weights(run / "checkpoints/best.safetensors"), weights(best)
    )  # best.safetensors comes from the same copy


def test_a_weights_only_file_cannot_be_resumed_but_can_init(tmp_path):
    run_fit(tiny_config(tmp_path, trainer={"max_epochs": 1}))
    (run,) = run_dirs(tmp_path)
    with pytest.raises(UserError, match=r"use model\.init_from"):
        run_fit(tiny_config(tmp_path), resume=str(run / "checkpoints" / "last.safetensors"))


# --------------------------------------------------------------------------- transfer learning


def test_init_from_and_freeze(tmp_path):
    run_fit(tiny_config(tmp_path / "src", trainer={"max_epochs": 1}))
    (src,) = run_dirs(tmp_path / "src")
    source = weights(src / "checkpoints/last.pt")
    for file in ("last.pt", "last.safetensors"):
        cfg = tiny_config(
            tmp_path / file,
            model={"init_from": str(src / "checkpoints" / file), "freeze": ["net.0.*"]},
            trainer={"max_epochs": 1},
        )
        summary = run_fit(cfg)
        assert summary["params"]["frozen"] == 16 * 2 + 16
        (run,) = run_dirs(tmp_path / file)
        tuned = weights(run / "checkpoints/last.pt")
        assert torch.equal(tuned["net.0.weight"], source["net.0.weight"])  # frozen: untouched
        assert torch.equal(tuned["net.0.bias"], source["net.0.bias"])
        assert not torch.equal(tuned["net.3.weight"], source["net.3.weight"])  # trained on


def test_init_from_strict_and_not_strict(tmp_path):
    from bptrain.data import build_data
    from bptrain.models import build_model

    cfg = tiny_config(tmp_path)
    data = build_data(cfg.data, seed=0, device=torch.device("cpu"))
    model = build_model(cfg.model, data.spec, "cross_entropy")
    partial = {k: v.clone() for k, v in model.state_dict().items() if k != "net.3.bias"}
    partial["extra.weight"] = torch.zeros(1)
    save_checkpoint({"model": partial}, tmp_path / "partial.pt")
    with pytest.raises(UserError, match=r"missing \['net.3.bias'\].*unexpected \['extra.weight'\]"):
        init_from(model, tmp_path / "partial.pt", strict=True)
    report = init_from(model, tmp_path / "partial.pt", strict=False)
    assert report["missing"] == ["net.3.bias"] and report["unexpected"] == ["extra.weight"]
    with pytest.raises(UserError, match=r"matches no parameter.*net\.0\.weight"):
        freeze(model, ["encoder.*"])


# --------------------------------------------------------------------------- real signals, real process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_saves_exits_128_plus_n_and_resumes_at_the_exact_step(tmp_path, signum):
    """A real signal to `python -m bptrain fit` once metrics.jsonl shows progress."""
    sections = {"trainer": {"max_epochs": 100}, "scheduler": {"name": "none"}}
    cfg_dict = json.loads(tiny_config(tmp_path, **sections).model_dump_json())
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg_dict))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bptrain", "fit", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = list((tmp_path / "runs" / "tiny").glob("*/metrics.jsonl"))
        if metrics and metrics[0].read_text().count('"type": "step"') >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    assert "Resume with: bptrain fit" in " ".join(stderr.split())
    (run,) = run_dirs(tmp_path)
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert events[-1] == {
        "type": "event",
        "step": events[-1]["step"],
        "event": "interrupted",
        "signal": signal.Signals(signum).name,
    }
    stopped_at = load_checkpoint(run / "checkpoints/last.pt")["progress"]
    assert stopped_at["step"] == events[-1]["step"] >= 3
    # resume to the end of the next epoch; compare with an uninterrupted run of that length
    epochs = stopped_at["epoch"] + 1
    until = {**sections, "trainer": {"max_epochs": epochs}}
    resumed = run_fit(tiny_config(tmp_path, **until), resume="auto")
    steps = [
        e["step"]
        for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if e["type"] == "step"
    ]
    assert steps == list(range(1, steps[-1] + 1))  # every step once: continued at stopped + 1
    run_fit(tiny_config(tmp_path / "straight", **until))
    (straight,) = run_dirs(tmp_path / "straight")
    assert resumed["steps"] == epochs * 10
    assert_same_weights(
        weights(run / "checkpoints/last.pt"), weights(straight / "checkpoints/last.pt")
    )


def test_async_writes_equal_synchronous_ones_and_exit_waits_for_the_last(tmp_path):
    """trainer.checkpoint.async_write (the default) writes the same last.pt, complete when fit returns."""
    for mode in (True, False):
        run_fit(tiny_config(tmp_path / str(mode), trainer={"checkpoint": {"async_write": mode}}))
    (a,), (b,) = run_dirs(tmp_path / "True"), run_dirs(tmp_path / "False")
    assert_same_weights(weights(a / "checkpoints/last.pt"), weights(b / "checkpoints/last.pt"))
    assert load_checkpoint(a / "checkpoints/last.pt")["progress"]["step"] == 30


def test_a_failed_background_write_is_raised_at_close_after_the_earlier_writes(tmp_path):
    from bptrain.checkpoint import BackgroundWriter
    from bptrain.errors import TrainingError

    def full_disk(state, path):
        raise TrainingError(f"could not write {path}: No space left on device")

    path = tmp_path / "last.pt"
    writer = BackgroundWriter()
    writer.submit(save_checkpoint, {"step": torch.tensor(1)}, path)
    writer.submit(full_disk, {"step": torch.tensor(2)}, path)
    with pytest.raises(TrainingError, match="No space left"):
        writer.close()
    assert int(load_checkpoint(path)["step"]) == 1  # the earlier write completed, in order
