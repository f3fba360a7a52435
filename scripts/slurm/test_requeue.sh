#!/usr/bin/env bash
# End-to-end test on a real SLURM: a 2-process DDP job (CPU, gloo) submitted with `bptrain submit`
# gets the time-limit warning (SIGUSR1) mid-run, saves, requeues itself, resumes in its next
# allocation, and finishes with exactly the configured epochs and the same metrics as an
# uninterrupted run.
#
#   sudo scripts/slurm/test_requeue.sh            # starts the local one-node cluster if needed
#   BPTRAIN_SLURM_EXISTING=1 scripts/slurm/test_requeue.sh   # use the SLURM already configured
#
# PYTHON (default: .venv/bin/python, else python3) must have bptrain installed. Takes about a
# minute on two cores. Re-runnable: each run works in a fresh temporary directory (removed on
# success, kept for inspection on failure) and cancels its job if it fails half-way.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-$([[ -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3)}
EPOCHS=${EPOCHS:-60}
DEADLINE=$((SECONDS + ${BPTRAIN_SLURM_TEST_TIMEOUT:-300}))

say() { echo "[test_requeue] $*"; }
fail() {
    say "FAILED: $*"
    [[ -n ${JOB:-} ]] && { scontrol show job "$JOB" 2>/dev/null | grep -E 'JobState|Restarts' || true; }
    [[ -n ${WORK:-} ]] && { say "job log:"; cat "$WORK"/slurm-*.out 2>/dev/null || true; say "kept $WORK"; }
    exit 1
}
wait_for() {  # wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds or the deadline passes
    local what=$1; shift
    until "$@"; do
        ((SECONDS < DEADLINE)) || fail "timed out waiting for $what"
        sleep 0.5
    done
}
job_field() { scontrol show job "$JOB" 2>/dev/null | grep -o "$1=[^ ]*" | head -n 1 | cut -d= -f2; }

if [[ -z ${BPTRAIN_SLURM_EXISTING:-} ]]; then
    "$ROOT/scripts/slurm/local_cluster.sh" start
    eval "$("$ROOT/scripts/slurm/local_cluster.sh" env)"
fi

WORK=$(mktemp -d /tmp/bptrain-slurm-test.XXXXXX)
chmod 755 "$WORK"
cd "$WORK"
trap '[[ -n ${JOB:-} && ${DONE:-} != 1 ]] && scancel "$JOB" 2>/dev/null; true' EXIT
ARGS=(trainer.max_epochs="$EPOCHS" logging.run_dir="$WORK/runs" logging.tensorboard=false
    'logging.progress="plain"' logging.log_every_n_steps=1000)

# 1. submit: 2 tasks on one node, DDP over gloo
JOB=$("$PYTHON" -m bptrain submit "$ROOT/configs/quickstart.yaml" "${ARGS[@]}" --job-name=requeue-test \
    --ntasks-per-node=2 --time=10 --python="$PYTHON" | sed -n 's/^submitted job \([0-9]*\).*/\1/p')
[[ -n $JOB ]] || fail "bptrain submit did not print a job id"
say "submitted job $JOB"
METRICS_GLOB="$WORK/runs/requeue-test-job$JOB/*/metrics.jsonl"

# 2. mid-run, send what --signal=USR1@T sends before a time limit: SIGUSR1 to the job's steps
has_an_epoch() { grep -qs '"type": "epoch"' $METRICS_GLOB; }
wait_for "the first epoch" has_an_epoch
scancel --signal=USR1 "$JOB"
say "sent SIGUSR1 to the running job"

# 3. the job saves, exits 138 and requeues itself. A requeued job may start again after
#    cred_expire+1 seconds: 11 s on the local cluster, 121 s with SLURM's default.
requeued() { [[ $(job_field Restarts) -ge 1 ]]; }
wait_for "the job to requeue itself" requeued
say "requeued; eligible again at $(job_field EligibleTime)"

# 4. the second allocation resumes and completes
finished() { [[ $(job_field JobState) =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT)$ ]]; }
wait_for "the job to finish" finished
[[ $(job_field JobState) == COMPLETED ]] || fail "job ended $(job_field JobState)"
DONE=1
grep -q "bptrain exited with 138" "$WORK"/slurm-*.out || fail "the first allocation did not stop with 138"
say "$(grep -o 'last.pt at step [0-9]*' "$WORK"/slurm-*.out | head -n 1) before the requeue"
grep -q "bptrain exited with 0" "$WORK"/slurm-*.out || fail "the second allocation did not finish"
say "job completed after $(job_field Restarts) requeue(s)"

# 5. an uninterrupted run of the same config, for comparison
"$PYTHON" -m bptrain fit "$ROOT/configs/quickstart.yaml" "${ARGS[@]}" logging.name=reference \
    --nproc 2 >"$WORK/reference.log" 2>&1 || fail "the reference run failed: $(tail "$WORK/reference.log")"

# 6. checks: one run, every epoch exactly once, an interruption, same result, loadable checkpoint
"$PYTHON" - "$WORK/runs" "$JOB" "$EPOCHS" "$ROOT/configs/quickstart.yaml" <<'EOF' || fail "checks failed"
import json, sys
from pathlib import Path

from bptrain.config import load_config
from bptrain.inference import evaluate_checkpoint

runs, job, epochs, config = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
(run,) = (runs / f"requeue-test-job{job}").iterdir()
(reference,) = (runs / "reference").iterdir()
records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
seen = [r["epoch"] for r in records if r["type"] == "epoch"]
assert seen == list(range(1, epochs + 1)), f"epochs logged: {seen}"
# (the "interrupted" event line went with the rewind to the checkpoint: one line per step)
steps = [r["step"] for r in records if r["type"] == "step"]
assert steps == sorted(set(steps)), "a step was logged twice"
summary = json.loads((run / "summary.json").read_text())
expected = json.loads((reference / "summary.json").read_text())
assert summary["epochs"] == epochs and summary["distributed"]["world_size"] == 2, summary
for key in ("train/loss", "val/loss", "val/acc"):
    assert summary["final"][key] == expected["final"][key], (key, summary["final"], expected["final"])
assert summary["test"] == expected["test"], (summary["test"], expected["test"])
metrics = evaluate_checkpoint(load_config(run / "config.yaml"), run / "checkpoints" / "last.pt", "val")
assert metrics["val/acc"] == summary["final"]["val/acc"], metrics
assert abs(metrics["val/loss"] - summary["final"]["val/loss"]) < 1e-6, metrics
print(f"[test_requeue] interrupted, resumed, {epochs} epochs, "
      f"val/acc {summary['final']['val/acc']:.4f} = uninterrupted run's; last.pt loads and evaluates")
EOF
rm -rf "$WORK"
say "OK"
