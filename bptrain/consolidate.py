"""``bptrain checkpoint consolidate``: one self-contained file from a sharded checkpoint.

A sharded checkpoint (``trainer.checkpoint.format: sharded``) is a small ``.pt`` file plus
the ``step-N-<hex>.dcp/`` directory of shards it names (``shards.py``). Consolidating reads the
shards in this one process, whatever the number of processes that wrote them, and writes
either a full checkpoint (``pt``: the same keys and format 2 as an unsharded ``last.pt``,
so everything that reads one reads it, ``--resume`` under fsdp included) or the model's
weights alone (``safetensors``). A full checkpoint is copied as it is.

The output defaults to ``<name>.consolidated.<ext>`` beside the source, for a full checkpoint
too: never the source itself, nor the run's own ``last.safetensors`` export. An existing file
is never overwritten: that is a clear error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bptrain.checkpoint import load_checkpoint, model_state, save_checkpoint, save_safetensors
from bptrain.errors import UserError
from bptrain.run_state import FULL_FORMAT_VERSION
from bptrain.version import __version__


def find_checkpoint(target: Path) -> Path:
    """A run directory means its checkpoints/last.pt; a file is itself."""
    if target.is_dir():
        path = target / "checkpoints" / "last.pt"
        if not path.is_file():
            raise UserError(
                f"{target} has no checkpoints/last.pt. Give a run directory or a checkpoint file."
            )
        return path
    if not target.is_file():
        raise UserError(f"{target}: no such run directory or checkpoint file.")
    return target


def _output_path(source: Path, output: Path | None, fmt: str) -> Path:
    """Where to write: `output`, else ``<name>.consolidated.<ext>`` beside `source`; refused
    when that is the source itself or any existing file (a run's last.safetensors, an earlier
    consolidation), which would otherwise be replaced without a word."""
    suffix = ".safetensors" if fmt == "safetensors" else ".pt"
    given = output is not None
    output = output or source.with_name(f"{source.stem}.consolidated{suffix}")
    if output.resolve() == source.resolve():
        raise UserError(f"--output {output} is the checkpoint being read; choose another path.")
    if output.exists():
        what = f"--output {output}" if given else f"{output} (the default output)"
        raise UserError(
            f"{what} already exists; bptrain does not overwrite it. Remove it, or choose "
            "another path with --output."
        )
    return output


def consolidate(target: Path, output: Path | None, fmt: str) -> dict[str, Any]:
    """Write the single-file form of the checkpoint `target` names; returns what was written."""
    source = find_checkpoint(target)
    sharded = load_checkpoint(source, shards=()).get("shards") is not None
    state = load_checkpoint(source, shards=("model", "optimizer"))
    output = _output_path(source, output, fmt)
    if fmt == "safetensors":
        progress = state.get("progress") or {}
        meta = {
            "format": "pt",
            "epoch": str(progress.get("epoch", "")),
            "step": str(progress.get("step", "")),
            "bptrain": __version__,
        }
        save_safetensors(model_state(state, source), output, meta)
    else:
        state.pop("shards", None)
        state["format_version"] = FULL_FORMAT_VERSION
        save_checkpoint(state, output)
    return {
        "source": str(source),
        "sharded": sharded,
        "output": str(output),
        "format": fmt,
        "tensors": len(model_state(state, source)),
    }
