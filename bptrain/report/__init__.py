"""``bptrain report``: one self-contained HTML page per run, or comparing several runs.

The page opens from a run directory copied off a cluster: figures are inline SVG
and PNG data URIs, the one script is inline, nothing is fetched. It reads only the
run directory's files (metrics.jsonl, grad_norms.jsonl, summary.json, config.yaml,
grad_inspect.json, checkpoints/), never TensorBoard, and imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from bptrain.errors import UserError

REPORT_FILE = "report.html"


def write_report(run_dirs: list[Path], output: Path | None = None) -> Path:
    """Write the report of `run_dirs` (run directories or folders of runs) to `output`; return its path.

    Default output: ``<run>/report.html`` for one run, ``./report.html`` for several.
    """
    from bptrain.report.page import render
    from bptrain.report.rundata import find_runs, label_runs, load_run

    runs = [load_run(path) for path in find_runs(list(run_dirs))]
    label_runs(runs)
    if output is None:
        output = runs[0].path / REPORT_FILE if len(runs) == 1 else Path(REPORT_FILE)
    html = render(runs)
    tmp = output.with_name(output.name + ".tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(output)
    except OSError as err:
        raise UserError(
            f"cannot write the report to {output}: {err}. Pass --output PATH."
        ) from None
    return output
