#!/usr/bin/env bash
# End-to-end test on a real SLURM: `bptrain submit --sweep ... --array 0-3` runs one Optuna study
# as a 4-task job array. Every task is a worker of the study on disk; when the array is done the
# study holds exactly --trials trials, each recorded once (one run directory), the pruned ones
# marked pruned in the study, in their summary.json and in the sweep table.
#
#   sudo scripts/slurm/test_search_array.sh            # starts the local one-node cluster if needed
#   BPTRAIN_SLURM_EXISTING=1 scripts/slurm/test_search_array.sh   # use the SLURM already configured
#
# PYTHON (default: .venv/bin/python, else python3) must have bptrain installed with optuna.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-$([[ -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3)}
TRIALS=${TRIALS:-10}
DEADLINE=$((SECONDS + ${BPTRAIN_SLURM_TEST_TIMEOUT:-600}))

say() { echo "[test_search_array] $*"; }
fail() {
    say "FAILED: $*"
    [[ -n ${WORK:-} ]] && { say "task logs:"; tail -n 20 "$WORK"/slurm-*.out 2>/dev/null || true; say "kept $WORK"; }
    exit 1
}

if [[ -z ${BPTRAIN_SLURM_EXISTING:-} ]]; then
    "$ROOT/scripts/slurm/local_cluster.sh" start
    eval "$("$ROOT/scripts/slurm/local_cluster.sh" env)"
fi

WORK=$(mktemp -d /tmp/bptrain-slurm-search.XXXXXX)
chmod 755 "$WORK"
cd "$WORK"
trap '[[ -n ${JOB:-} && ${DONE:-} != 1 ]] && scancel "$JOB" 2>/dev/null; true' EXIT
ARGS=(trainer.max_epochs=4 logging.run_dir="$WORK/runs" logging.name=array logging.tensorboard=false
    'logging.progress="plain"' logging.log_every_n_steps=1000 'model.hidden=[32]')
SWEEP=(--sweep 'optimizer.lr=choice(0.01,0.00001)' --sweep 'data.batch_size=int(32,128)'
    --search random --trials "$TRIALS" --pruner median)

JOB=$("$PYTHON" -m bptrain submit "$ROOT/configs/quickstart.yaml" "${ARGS[@]}" "${SWEEP[@]}" \
    --array 0-3 --job-name=search-test --time=10 --python="$PYTHON" --output="$WORK/slurm-%A_%a.out" \
    | sed -n 's/^submitted job \([0-9]*\).*/\1/p')
[[ -n $JOB ]] || fail "bptrain submit did not print a job id"
say "submitted array job $JOB (4 tasks, $TRIALS trials)"

until [[ -z $(squeue -h -j "$JOB" 2>/dev/null) ]]; do
    ((SECONDS < DEADLINE)) || fail "timed out waiting for the array to finish"
    sleep 1
done
DONE=1
tasks=$(ls "$WORK"/slurm-"$JOB"_*.out 2>/dev/null | wc -l)
[[ $tasks == 4 ]] || fail "expected 4 task logs, found $tasks"
for log in "$WORK"/slurm-"$JOB"_*.out; do
    grep -q "bptrain exited with 0" "$log" || fail "a task did not finish cleanly: $log"
done

"$PYTHON" - "$WORK/runs/array-search" "$TRIALS" <<'EOF' || fail "checks failed"
import json, sys
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage

root, trials = Path(sys.argv[1]), int(sys.argv[2])
storage = JournalStorage(JournalFileBackend(str(root / "study.log")))
study = optuna.load_study(study_name="bptrain", storage=storage)
got = study.get_trials()
assert len(got) == trials, f"{len(got)} trials, expected {trials}"
states = [t.state.name for t in got]
assert set(states) <= {"COMPLETE", "PRUNED"}, states
workers = {t.user_attrs["worker"] for t in got}
assert len(workers) >= 2, f"one array task did all the work: {workers}"
for t in got:  # recorded once: one run directory, one summary, its status = the trial's state
    runs = list((root / f"trial-{t.number:04d}").glob("*/summary.json"))
    assert len(runs) == 1, (t.number, runs)
    status = json.loads(runs[0].read_text())["status"]
    assert (status == "pruned") == (t.state.name == "PRUNED"), (t.number, status, t.state)
rows = json.loads((root / "sweep.json").read_text())["rows"]
assert len(rows) == trials
assert sum(r["status"] == "pruned" for r in rows) == states.count("PRUNED")
assert (root / "best.yaml").exists()
print(f"[test_search_array] {trials} trials by {len(workers)} array tasks: "
      f"{states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, each recorded once")
EOF
rm -rf "$WORK"
say "OK"
