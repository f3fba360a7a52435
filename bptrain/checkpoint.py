"""What a checkpoint holds, and writing/reading it so that no crash can lose the last good one.

Saving writes to a temporary file in the same directory, flushes and fsyncs it,
then renames it over the target (atomic on POSIX) and fsyncs the directory: a
kill at any moment leaves either the old file or the new one, never half of one.

Loading uses ``torch.load(weights_only=True)``: only tensors and plain Python
containers are unpickled, so a crafted file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from bptrain.errors import TrainingError, UserError


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically write `state` to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        raise TrainingError(
            f"could not write checkpoint {path}: {err}. The previous checkpoint is intact."
        ) from err
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by bptrain (or any weights-only file); refuse anything that needs code to load."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported content"
        raise UserError(
            f"refusing to load {path}: it contains Python objects that are not plain weights ({first_line}). "
            "bptrain loads checkpoints with weights_only=True so a file cannot run code; only load files you trust, "
            "and re-save them as a plain state_dict."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(state, dict):
        raise UserError(
            f"{path} is not a bptrain checkpoint (expected a dict, found {type(state).__name__})."
        )
    return state


def model_state(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint (key ``model``) or a bare state_dict."""
    if "model" in state and isinstance(state["model"], dict):
        return state["model"]
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise UserError(f"{path} has no model weights (no 'model' key and not a state_dict).")
