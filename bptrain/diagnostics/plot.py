"""PNG plot of weight-gradient and error-signal norms per layer (matplotlib, optional extra).

matplotlib is imported only here and only when a plot is asked for, so the CLI
starts fast and ``bptrain[plot]`` stays optional.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bptrain.diagnostics.report import Report
from bptrain.errors import UserError


def _positive(values: list[float | None]) -> list[float]:
    return [v if v is not None and math.isfinite(v) and v > 0 else math.nan for v in values]


def require_matplotlib() -> Any:
    """pyplot with the file-only backend; a clear error when matplotlib is missing.

    Commands call it before their work when --plot is given, so a missing matplotlib fails in a
    second, not after the whole analysis.
    """
    try:  # imported here: matplotlib is an optional extra and slow to import
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "--plot needs matplotlib: pip install matplotlib (or pip install 'bptrain[plot]')"
        ) from None
    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (PNG, 120 dpi, creating the folder) and close a figure; every --plot ends here."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot(report: Report, path: Path | str) -> Path:
    """Write ‖∇W‖ and ‖∂L/∂out‖ per layer (log scale, input to output) to ``path``."""
    plt = require_matplotlib()
    path = Path(path)
    names = [x.name for x in report.layers]
    steps = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4.5))
    ax.plot(
        steps, _positive([x.grad_norm for x in report.layers]), "o-", label="‖∇W‖ (weight gradient)"
    )
    ax.plot(
        steps,
        _positive([x.signal_norm for x in report.layers]),
        "s-",
        label="‖∂L/∂out‖ (error signal)",
    )
    ax.set_yscale("log")
    ax.set_xticks(list(steps), names, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel("norm (log scale)")
    ax.set_title("grad-inspect: gradient flow per layer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
