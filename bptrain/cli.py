"""The ``bptrain`` command line: thin commands that load the config and call one function each.

Nothing here imports torch at module level, so ``bptrain --help`` and the help of
every command come up fast; each command imports what it needs when it runs.

Exit codes: 0 success; 1 the run failed; 2 bad config or usage; 3 grad-inspect
found flags at or above ``--fail-on``; 128+N stopped by signal N after saving a
checkpoint (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from bptrain.errors import (
    EXIT_TRAINING_FAILED,
    EXIT_USAGE,
    TrainingError,
    UserError,
    message_of,
)

# Plain (click-style) help: Typer's rich help imports rich and markdown-it on every --help and
# doubles its start-up time (about 0.09 s vs 0.19 s of CPU on a 2-core EPYC); the text is the same.
app = typer.Typer(
    name="bptrain",
    help="Train PyTorch models from YAML configs, and see how backpropagation flows through them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(
    help="Inspect and check config files.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(config_app, name="config")
checkpoint_app = typer.Typer(
    help="Work with checkpoint files (sharded checkpoints: see docs/checkpointing.md).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(checkpoint_app, name="checkpoint")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file.", show_default=False)]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted overrides KEY=VALUE, values parsed as YAML, e.g. optimizer.lr=3e-4 model.hidden=[128,128]; "
        "further config files (x.yaml) merge onto CONFIG left to right, before the overrides.",
        show_default=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        from bptrain.version import __version__

        typer.echo(f"bptrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Train PyTorch models from YAML configs, and see how backpropagation flows through them."""


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _guarded(action: Callable[[], Any]) -> Any:
    """Run a command body; user mistakes become a message and exit 2, failed runs exit 1, no tracebacks."""
    try:
        return action()
    except UserError as err:
        _stderr_console().print(
            f"[bold red]error:[/bold red] {_escape(message_of(err))}", soft_wrap=True
        )
        raise typer.Exit(EXIT_USAGE) from None
    except TrainingError as err:
        _stderr_console().print(
            f"[bold red]training failed:[/bold red] {_escape(message_of(err))}", soft_wrap=True
        )
        raise typer.Exit(EXIT_TRAINING_FAILED) from None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@app.command()
def fit(
    config: ConfigArg,
    overrides: OverridesArg = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue a run: 'auto' (newest run of this config, or start fresh), a run directory, or a last.pt path."
        ),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train with DDP in N processes on this machine (torch's elastic launcher, as torchrun --standalone). "
            "batch_size is per process. See docs/cluster.md.",
        ),
    ] = None,
) -> None:
    """Train a model as CONFIG describes; writes a run directory with metrics, TensorBoard events and checkpoints."""
    from bptrain import collector

    collector.hold()  # until training begins: imports and set-up (bptrain/collector.py)
    try:
        _fit(config, overrides, resume, nproc)
    finally:
        collector.release()


def _fit(config: Path, overrides: list[str] | None, resume: str | None, nproc: int | None) -> None:
    from rich.console import Console

    from bptrain.config import load_config

    if nproc is not None:
        _guarded(lambda: load_config(config, overrides or []))  # a bad config fails once, here
        from bptrain.distributed import launch, launched_world_size

        if launched_world_size() is not None:
            _stderr_console().print(
                "[bold red]error:[/bold red] --nproc starts its own processes; this one was already "
                "started by a launcher (torchrun/srun). Drop --nproc."
            )
            raise typer.Exit(EXIT_USAGE)
        args = ["fit", str(config), *(overrides or []), *(["--resume", resume] if resume else [])]
        code = launch(nproc, args)
        if code:
            raise typer.Exit(code)
        return

    def run() -> None:
        cfg = load_config(config, overrides or [])
        from bptrain.distributed import teardown
        from bptrain.train import Interrupted
        from bptrain.train import fit as run_fit

        stopped: Interrupted | None = None
        agreed = False  # finished or stopped together: every rank gets here
        try:
            run_fit(cfg, Console(), resume=resume)
            agreed = True
        except Interrupted as stop:
            stopped, agreed = stop, True
            # keep no loop frames (and with them DDP) alive past teardown
            stopped.__traceback__ = stopped.__context__ = None
        finally:
            teardown(wait_for_all_ranks=agreed)
        if stopped is not None:
            if os.environ.get("RANK", "0") == "0":  # under DDP, one message is enough
                command = " ".join(["bptrain fit", str(config), *(overrides or [])])
                launched = " (launched the same way)" if "WORLD_SIZE" in os.environ else ""
                _stderr_console().print(_escape(stopped.hint(command) + launched), soft_wrap=True)
            raise typer.Exit(stopped.exit_code)

    _guarded(run)


class SearchKind(str, Enum):
    random = "random"
    tpe = "tpe"


class PrunerKind(str, Enum):
    median = "median"
    halving = "halving"
    none = "none"


_SWEEP_HELP = (
    "A search axis (repeatable), as for bptrain sweep: the job runs an Optuna search "
    "(with --search, --trials, --array)."
)
_ARRAY_HELP = "A job array, e.g. 0-7 or 0-15%4: each task is a worker of the --sweep's study."


@app.command()
def submit(
    config: ConfigArg,
    overrides: OverridesArg = None,
    nodes: Annotated[int, typer.Option(min=1, help="Nodes to run on.")] = 1,
    gpus_per_node: Annotated[
        int, typer.Option(min=0, help="GPUs per node; one bptrain process (DDP rank) per GPU.")
    ] = 0,
    ntasks_per_node: Annotated[
        int | None,
        typer.Option(min=1, help="Processes per node without GPUs (default 1; CPU DDP over gloo)."),
    ] = None,
    cpus_per_task: Annotated[int | None, typer.Option(min=1, help="CPU cores per process.")] = None,
    time: Annotated[
        str | None, typer.Option(help="Time limit per allocation, e.g. 4:00:00.")
    ] = None,
    partition: Annotated[str | None, typer.Option(help="SLURM partition.")] = None,
    account: Annotated[str | None, typer.Option(help="SLURM account.")] = None,
    job_name: Annotated[
        str | None, typer.Option(help="Job name (default: the run name, logging.name).")
    ] = None,
    warn_seconds: Annotated[
        int,
        typer.Option(
            min=1,
            help="Send SIGUSR1 this long before the time limit: save, exit 138, requeue, resume.",
        ),
    ] = 120,
    requeue_on_sigterm: Annotated[
        bool,
        typer.Option(
            help="Also requeue after SIGTERM (exit 143: preemption without PreemptMode=REQUEUE; also scancel)."
        ),
    ] = False,
    python: Annotated[
        str | None,
        typer.Option(help="Python the job runs bptrain with (default: this one)."),
    ] = None,
    output: Annotated[str, typer.Option(help="The job's log file (sbatch --output).")] = (
        "slurm-%x-%j.out"
    ),
    sbatch_arg: Annotated[
        list[str] | None,
        typer.Option(help="Extra #SBATCH line (repeatable), e.g. --sbatch-arg=--mem=32G."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the batch script instead of submitting it.")
    ] = False,
    sweep_axis: Annotated[list[str] | None, typer.Option("--sweep", help=_SWEEP_HELP)] = None,
    search: Annotated[SearchKind, typer.Option(help="Sampler (with --sweep).")] = SearchKind.tpe,
    trials: Annotated[int, typer.Option(min=1, help="Trials in all (with --sweep).")] = 20,
    pruner: Annotated[PrunerKind, typer.Option(help="Pruner (with --sweep).")] = PrunerKind.median,
    seeds: Annotated[str | None, typer.Option(help="Seeds per trial (with --sweep).")] = None,
    array: Annotated[str | None, typer.Option(help=_ARRAY_HELP)] = None,
) -> None:
    """Submit CONFIG as a SLURM batch job (DDP over srun) that checkpoints, requeues and resumes itself.

    With --sweep AXIS ... --array 0-7, an array of 8 tasks that share one Optuna study (see bptrain sweep --search).
    """

    def run() -> None:
        from bptrain.config import load_config
        from bptrain.slurm import JobSpec, default_job_name, render
        from bptrain.slurm import submit as sbatch

        cfg = load_config(config, overrides or [])
        sweep_args = _search_job_args(sweep_axis, search, trials, pruner, seeds)
        spec = JobSpec(
            config=config.resolve(),
            overrides=overrides or [],
            job_name=job_name or default_job_name(cfg.logging.name),
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            ntasks_per_node=ntasks_per_node,
            cpus_per_task=cpus_per_task,
            time=time,
            partition=partition,
            account=account,
            warn_seconds=warn_seconds,
            requeue_on_sigterm=requeue_on_sigterm,
            python=python or sys.executable,
            workdir=Path.cwd(),
            output=output,
            sbatch_args=sbatch_arg or [],
            sweep=sweep_args,
            array=array,
        )
        script = render(spec)  # refuses values a batch script cannot carry safely
        load_config(config, [*(overrides or []), f"logging.name={spec.job_name}-job0"])
        if dry_run:
            sys.stdout.write(script)
            return
        job_id = sbatch(script)
        if sweep_args is not None:
            from bptrain.search import search_dir_for

            where = search_dir_for(cfg)
            typer.echo(f"submitted job {job_id}: the search's study and runs are in {where}/")
            return
        typer.echo(
            f"submitted job {job_id}: runs under {cfg.logging.run_dir}/{spec.job_name}-job{job_id}/; "
            f"log {output.replace('%x', spec.job_name).replace('%j', job_id)}"
        )

    _guarded(run)


def _search_job_args(
    axes: list[str] | None, search: SearchKind, trials: int, pruner: PrunerKind, seeds: str | None
) -> list[str] | None:
    """The `bptrain sweep` arguments of a search job's workers; a malformed axis fails here."""
    if not axes:
        return None
    from bptrain.sweep import parse_seeds, parse_sweep_axes

    parse_sweep_axes(axes)
    parse_seeds(seeds)
    args = [*axes, "--search", search.value, "--trials", str(trials), "--pruner", pruner.value]
    return args + (["--seeds", seeds] if seeds else [])


class Split(str, Enum):
    val = "val"
    test = "test"


class AttackName(str, Enum):
    fgsm = "fgsm"
    pgd = "pgd"


class NormName(str, Enum):
    linf = "linf"
    l2 = "l2"


# bptrain eval --attack
Epsilon = Annotated[
    float | None,
    typer.Option(
        help="Attack budget in raw input units (before data.normalize), e.g. 0.1 for pixels in "
        "[0, 1]. Default: the first positive --epsilons, else the config's trainer.adversarial.epsilon.",
        show_default=False,
    ),
]

Epsilons = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated epsilons for the accuracy-vs-epsilon table, e.g. 0,0.05,0.1,0.2.",
        show_default=False,
    ),
]

PgdSteps = Annotated[int, typer.Option(min=0, help="PGD steps.")]

PgdRestarts = Annotated[
    int, typer.Option(min=1, help="PGD random restarts (per sample, the worst counts).")
]

PgdAlpha = Annotated[
    float | None,
    typer.Option(
        help="PGD step size in raw units (default 2.5 x epsilon / steps).", show_default=False
    ),
]

AttackNorm = Annotated[
    NormName | None,
    typer.Option(
        help="Perturbation norm (default: the config's trainer.adversarial.norm, else linf).",
        show_default=False,
    ),
]

AttackOut = Annotated[
    Path | None,
    typer.Option(
        help="With --attack: write the report as JSON here (default: robustness_<split>.json beside the checkpoint).",
        show_default=False,
    ),
]

AttackPlot = Annotated[
    bool,
    typer.Option(
        "--plot",
        help="With --attack: also write the accuracy-vs-epsilon curve as a PNG (needs matplotlib).",
    ),
]


@app.command(name="eval")
def evaluate(
    config: ConfigArg,
    overrides: OverridesArg = None,
    checkpoint: Annotated[
        Path,
        typer.Option(
            help="A last.pt/best.pt checkpoint or a .safetensors file.", show_default=False
        ),
    ] = ...,  # type: ignore[assignment]
    split: Annotated[Split, typer.Option(help="Which split to evaluate.")] = Split.val,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object to stdout and nothing else.")
    ] = False,
    attack: Annotated[
        AttackName | None,
        typer.Option(
            help="Also attack every sample (FGSM or PGD) and report robust accuracy, with sanity checks "
            "that warn when the attack looks masked. See docs/robustness.md.",
            show_default=False,
        ),
    ] = None,
    epsilon: Epsilon = None,
    epsilons: Epsilons = None,
    steps: PgdSteps = 10,
    restarts: PgdRestarts = 1,
    alpha: PgdAlpha = None,
    norm: AttackNorm = None,
    out: AttackOut = None,
    plot: AttackPlot = False,
) -> None:
    """Evaluate a saved model on the validation or test split of CONFIG's data; --attack adds robust accuracy."""

    def run() -> None:
        from bptrain.config import load_config

        cfg = load_config(config, overrides or [])
        if attack is None:
            if epsilons or epsilon is not None or norm is not None or plot:
                raise UserError(
                    "--epsilon, --epsilons, --norm and --plot need --attack fgsm or --attack pgd."
                )
            from bptrain.inference import evaluate_checkpoint

            metrics = evaluate_checkpoint(cfg, checkpoint, split.value)
            _print_metrics(metrics, as_json, f"{checkpoint} on {split.value}")
            return
        from bptrain.robustness import attack_command

        warnings = attack_command(
            cfg,
            checkpoint,
            split.value,
            attack=attack.value,
            epsilon=epsilon,
            epsilons=epsilons,
            steps=steps,
            restarts=restarts,
            alpha=alpha,
            norm=norm.value if norm is not None else None,
            out=out,
            plot=plot,
            as_json=as_json,
        )
        for warning in warnings:
            _stderr_console().print(
                f"[bold yellow]warning:[/bold yellow] {_escape(warning)}", soft_wrap=True
            )

    _guarded(run)


RunArg = Annotated[
    Path,
    typer.Argument(
        help="A run directory (uses checkpoints/best.pt, else last.pt), a checkpoint file, or a config (its newest run).",
        show_default=False,
        metavar="RUN_DIR|CHECKPOINT|CONFIG",
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(help="Use this checkpoint (.pt or .safetensors) instead of the run's best/last."),
]


def _load_run(target: Path, checkpoint: Path | None, device: str = "cpu") -> Any:
    from bptrain.api import load_run

    return load_run(target, checkpoint, device=device)


@app.command()
def predict(
    run: RunArg,
    input_path: Annotated[
        Path,
        typer.Option(
            "--input",
            help="A .npz (arrays x[, y]), a .csv with the training columns (target optional), or a directory of images.",
            show_default=False,
        ),
    ] = ...,  # type: ignore[assignment]
    output: Annotated[
        Path,
        typer.Option(help="Where to write predictions: .csv, .npz or .jsonl.", show_default=False),
    ] = ...,  # type: ignore[assignment]
    checkpoint: CheckpointOpt = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.")] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per forward pass.")] = 256,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
) -> None:
    """Predict with a trained model, applying the preprocessing fitted on its training data.

    Writes the predicted class in the original labels (and class probabilities), or the regression values; with targets in the input, also the target and whether each prediction is correct.
    """

    def run_command() -> None:
        from bptrain.predict import run_predict

        report = run_predict(_load_run(run, checkpoint, device), input_path, output, batch_size)
        if as_json:
            sys.stdout.write(json.dumps(report) + "\n")
        else:
            line = f"wrote {report['samples']} predictions to {report['output']} (model {report['checkpoint']})"
            for key in ("accuracy", "mse"):
                if key in report:
                    line += f"; {key} {report[key]:.4f}"
            typer.echo(line)

    _guarded(run_command)


class ExportFormat(str, Enum):
    onnx = "onnx"
    torch_export = "torch.export"
    torchscript = "torchscript"
    safetensors = "safetensors"


@app.command()
def export(
    run: RunArg,
    format: Annotated[ExportFormat, typer.Option("--format", help="Artifact format.")] = (
        ExportFormat.onnx
    ),
    output: Annotated[
        Path | None,
        typer.Option(help="Output file (default: <run>/exports/<checkpoint>.<ext>)."),
    ] = None,
    checkpoint: CheckpointOpt = None,
    dynamic_batch: Annotated[
        bool, typer.Option(help="Leave the batch dimension free (onnx, torch.export).")
    ] = True,
    opset: Annotated[
        int | None, typer.Option(min=7, help="ONNX opset version (default: the exporter's).")
    ] = None,
    fold_preprocessing: Annotated[
        bool,
        typer.Option(
            help="Put the training standardisation inside the graph, so it takes raw inputs."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
) -> None:
    """Export a trained model and verify it: the artifact and the eager model must agree to 1e-4 on a real batch.

    Also writes <artifact>.preprocessing.json: the training preprocessing, whether it is folded in, the input and output.
    """

    def run_command() -> None:
        from bptrain.export import ExportOptions, export_run

        report = export_run(
            _load_run(run, checkpoint),
            ExportOptions(format.value, output, dynamic_batch, opset, fold_preprocessing),
        )
        if as_json:
            sys.stdout.write(json.dumps(report) + "\n")
        else:
            typer.echo(
                f"wrote {report['path']} ({report['format']}) and {report['preprocessing']}\n"
                f"verified: max abs difference {report['max_abs_diff']:.3g} vs the eager model "
                f"on {report['verified_on']} (tolerance {report['tolerance']:g})"
            )

    _guarded(run_command)


@app.command()
def summary(
    config: ConfigArg,
    overrides: OverridesArg = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """The model CONFIG builds, layer by layer: output shapes from a real forward pass, parameters, trainable."""

    def run_command() -> None:
        from bptrain.config import load_config
        from bptrain.model_summary import render, summarize_config

        result = summarize_config(load_config(config, overrides or []))
        if as_json:
            sys.stdout.write(json.dumps(result.to_json()) + "\n")
        else:
            from rich.console import Console

            Console(width=max(120, Console().width)).print(render(result))

    _guarded(run_command)


def _print_metrics(metrics: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        from bptrain.runlog import dumps

        sys.stdout.write(dumps(metrics) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


class FailOn(str, Enum):
    warning = "warning"
    error = "error"


@app.command(name="grad-inspect")
def grad_inspect(
    config: ConfigArg,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="KEY=VALUE overrides as in fit; KEY=V1,V2,... (the syntax of `bptrain sweep`) "
            "inspects every value side by side, every combination of several such keys.",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Inspect these weights instead of the initialisation.")
    ] = None,
    batches: Annotated[
        int, typer.Option(min=1, help="Training batches to average the gradients over.")
    ] = 4,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Write the report as JSON to this file ('-' for stdout)."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of the gradient flow (needs matplotlib).")
    ] = None,
    fail_on: Annotated[
        FailOn | None,
        typer.Option(help="Exit with code 3 when flags of this severity or worse are found."),
    ] = None,
    check_gradients: Annotated[
        bool, typer.Option(help="Verify autograd against float64 finite differences per layer.")
    ] = False,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            hidden=True, help="Deprecated: give KEY=V1,V2,... as an argument (as `bptrain sweep`)."
        ),
    ] = None,
    noise: Annotated[
        bool,
        typer.Option(
            help="Gradient-noise tests from per-sample gradients: is the batch too small?"
        ),
    ] = False,
    curvature: Annotated[
        bool,
        typer.Option(help="Top Hessian eigenvalue and trace: is the LR past the stability edge?"),
    ] = False,
) -> None:
    """Show how the error signal backpropagates through each layer, and say what is wrong and how to fix it."""
    from rich.console import Console

    def run() -> int:
        from bptrain.diagnostics.command import run_grad_inspect

        to_stdout = json_path is not None and str(json_path) == "-"
        stream = sys.stderr if to_stdout else sys.stdout

        return run_grad_inspect(
            config,
            overrides or [],
            checkpoint=checkpoint,
            batches=batches,
            json_path=json_path,
            plot_path=plot,
            fail_on=fail_on.value if fail_on else None,
            check_gradients=check_gradients,
            sweep=sweep or [],
            noise=noise,
            curvature=curvature,
            # Wide when writing to a file or pipe: the per-layer table has many columns.
            console=Console(stderr=to_stdout, width=None if stream.isatty() else 160),
        )

    code = _guarded(run)
    if code:
        raise typer.Exit(code)


@app.command()
def sweep(
    config: ConfigArg,
    axes: Annotated[
        list[str] | None,
        typer.Argument(
            help="KEY=V1,V2,... per swept key (values parsed as YAML; commas inside [], {}, () or quotes "
            "stay in the value: model.hidden=[64,64],[128]). Every combination is run.",
            show_default=False,
        ),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Seeds to repeat each variant with, e.g. 0,1,2 (mean ± std).")
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            min=1, help="Variants run at once (>1: as subprocesses sharing the CPU threads)."
        ),
    ] = 1,
    override: Annotated[
        list[str] | None,
        typer.Option("--set", help="A KEY=VALUE override applied to every variant (repeatable)."),
    ] = None,
    search: Annotated[
        SearchKind | None,
        typer.Option(
            help="Search instead of the grid: random or tpe (Optuna), --trials of them. Axes may be "
            "distributions: KEY=loguniform(1e-4,1e-1), uniform(LOW,HIGH), int(LOW,HIGH), choice(V1,V2,...)."
        ),
    ] = None,
    trials: Annotated[
        int, typer.Option(min=1, help="Trials in the study (with --search), all workers together.")
    ] = 20,
    pruner: Annotated[
        PrunerKind,
        typer.Option(
            help="Stop weak trials early on the monitored validation metric (with --search)."
        ),
    ] = PrunerKind.median,
    worker: Annotated[
        bool, typer.Option("--worker", hidden=True, help="Run trials of the study, nothing else.")
    ] = False,
) -> None:
    """Train every combination of the given values (and seeds) and compare them in one table.

    Runs go to <logging.run_dir>/<name>-sweep/ (tensorboard --logdir there overlays them); the table is printed and saved as sweep.csv, sweep.json and sweep.md. Running the same sweep again skips finished variants and resumes interrupted ones. Exit 1 if any variant failed.

    With --search random|tpe, an Optuna study in <logging.run_dir>/<name>-search/ (shared by --jobs workers, a resumed search and SLURM array tasks) runs --trials trials, pruning weak ones, and writes best.yaml (bptrain fit runs it as is).
    """
    from rich.console import Console

    def run() -> int:
        from bptrain.sweep import run_sweep
        from bptrain.train import Interrupted

        try:
            if search is not None:
                return _search(
                    config, axes or [], override or [], seeds, jobs, search, trials, pruner, worker
                )
            rows, _ = run_sweep(config, axes or [], override or [], seeds, jobs, Console())
        except Interrupted as stop:
            _stderr_console().print(
                f"sweep stopped by {stop}; run the same command again to resume it."
            )
            return 128 + int(stop.signum)
        except KeyboardInterrupt:  # --jobs > 1: the runs were stopped by the same Ctrl-C
            _stderr_console().print("sweep interrupted; run the same command again to resume it.")
            return 130
        return EXIT_TRAINING_FAILED if any(row["status"] != "ok" for row in rows) else 0

    code = _guarded(run)
    if code:
        raise typer.Exit(code)


@app.command()
def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories (or folders holding runs, such as a sweep's). Several: overlaid and compared.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The HTML file to write (default: RUN_DIR/report.html for one run, ./report.html for several).",
        ),
    ] = None,
) -> None:
    """Write one self-contained HTML report (curves, LR, gradient-flow heatmaps, events, config, checkpoints).

    It opens offline in any browser: nothing is loaded from the network. Made from the run directory's files only, so it works on a run that crashed or is still going.
    """

    def run() -> None:
        from bptrain.report import write_report

        path = write_report(run_dirs, output)
        typer.echo(f"wrote {path}")

    _guarded(run)


@app.command()
def runs(
    directory: Annotated[
        Path, typer.Argument(help="Where the runs are (a logging.run_dir, a sweep, one run).")
    ] = Path("runs"),
    sort: Annotated[
        str | None,
        typer.Option(
            help="Sort by a column: a metric (val/acc, 'best val/loss'), a config key, status, epochs, run."
        ),
    ] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Sort in descending order.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON list of runs on stdout and nothing else.")
    ] = False,
) -> None:
    """List the runs under DIRECTORY: status, what differs in their configs, final and best metrics."""

    def run() -> None:
        from bptrain.runs import list_runs, print_runs

        table = list_runs(directory, sort, desc)
        if as_json:
            sys.stdout.write(json.dumps(table, default=str) + "\n")
        else:
            from rich.console import Console

            # wide when written to a file or pipe: the table has a column per metric
            print_runs(Console(width=None if sys.stdout.isatty() else 200), table)

    _guarded(run)


def _search(
    config: Path,
    axes: list[str],
    overrides: list[str],
    seeds: str | None,
    jobs: int,
    kind: SearchKind,
    trials: int,
    pruner: PrunerKind,
    worker: bool,
) -> int:
    from rich.console import Console

    from bptrain.search import SearchArgs, run_search
    from bptrain.sweep import parse_seeds, parse_sweep_axes

    args = SearchArgs(
        config,
        parse_sweep_axes(axes),
        overrides,
        parse_seeds(seeds),
        kind.value,
        pruner.value,
        trials,
    )
    if not args.axes:
        raise UserError(
            "--search needs at least one axis, e.g. 'optimizer.lr=loguniform(1e-4,1e-1)'."
        )
    rows, _ = run_search(args, jobs, worker, Console())
    return EXIT_TRAINING_FAILED if any(row["status"] in ("fail", "failed") for row in rows) else 0


@app.command(name="lr-find")
def lr_find(
    config: ConfigArg,
    overrides: OverridesArg = None,
    start_lr: Annotated[float, typer.Option(help="First learning rate.")] = 1e-7,
    end_lr: Annotated[
        float, typer.Option(help="Last learning rate (if the loss has not diverged by then).")
    ] = 10.0,
    steps: Annotated[int, typer.Option(min=2, help="Optimizer steps over the LR range.")] = 200,
    smoothing: Annotated[
        float, typer.Option(help="Exponential smoothing of the loss (0: none).")
    ] = 0.9,
    diverge: Annotated[
        float,
        typer.Option(help="Stop when the smoothed loss exceeds this multiple of its minimum."),
    ] = 4.0,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory for lr_find.json/csv (default: a new <run_dir>/<name>-lr-find/<time>/)."
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also write the curve as a PNG (needs matplotlib).")
    ] = None,
) -> None:
    """The learning-rate range test: raise the LR exponentially, watch the loss, suggest an LR.

    Uses CONFIG's data, model, optimizer, grad clipping and precision (its scheduler is ignored); the trained weights are thrown away.
    """
    from rich.console import Console

    def run() -> None:
        from bptrain.config import load_config
        from bptrain.lr_find import run_lr_find

        cfg = load_config(config, overrides or [])
        run_lr_find(cfg, Console(), start_lr, end_lr, steps, smoothing, diverge, out, plot)

    _guarded(run)


@config_app.command("show")
def config_show(
    config: ConfigArg,
    overrides: OverridesArg = None,
    origins: Annotated[
        bool,
        typer.Option(
            "--origins",
            help="Show where each value came from (file:line, command-line override, or default).",
        ),
    ] = False,
) -> None:
    """Print the fully resolved config (every default spelled out) as YAML.

    Several files merge left to right (bptrain config show base.yaml small.yaml lr=...), after their base: files.
    """

    def run() -> None:
        from bptrain.config import load_config_with_origins, to_dict, to_yaml

        cfg, where, raw = load_config_with_origins(config, overrides or [])
        if not origins:
            sys.stdout.write(to_yaml(cfg))
            return
        from bptrain.config.compose import origin_lines

        sys.stdout.write("\n".join(origin_lines(to_dict(cfg), where, raw)) + "\n")

    _guarded(run)


@config_app.command("validate")
def config_validate(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Check a config without running it: exit 0 if valid, 2 with the problems otherwise."""
    from bptrain.config import load_config

    _guarded(lambda: load_config(config, overrides or []))
    typer.echo(f"{config}: valid")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config (for editor autocompletion and checking)."""
    from bptrain.config import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


class ConsolidateFormat(str, Enum):
    pt = "pt"
    safetensors = "safetensors"


@checkpoint_app.command()
def consolidate(
    target: Annotated[
        Path,
        typer.Argument(
            help="A run directory (its checkpoints/last.pt) or a checkpoint file.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            help="Output file (default: beside the checkpoint, <name>.consolidated.pt/.safetensors); "
            "an existing file is never overwritten."
        ),
    ] = None,
    format: Annotated[
        ConsolidateFormat,
        typer.Option("--format", help="pt: a full checkpoint; safetensors: the weights alone."),
    ] = ConsolidateFormat.pt,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was written as one JSON object.")
    ] = False,
) -> None:
    """Write a sharded checkpoint (trainer.checkpoint.format: sharded) as one file.

    The result loads wherever a last.pt does (eval, predict, export, model.init_from, --resume),
    in one process, whatever the number of processes that wrote the shards.
    """

    def run_command() -> None:
        from bptrain.consolidate import consolidate as write_consolidated

        report = write_consolidated(target, output, format.value)
        if as_json:
            sys.stdout.write(json.dumps(report) + "\n")
        else:
            kind = "sharded" if report["sharded"] else "full"
            typer.echo(
                f"wrote {report['output']} ({report['format']}, {report['tensors']} model tensors) "
                f"from the {kind} checkpoint {report['source']}"
            )

    _guarded(run_command)


def main() -> None:
    app()
