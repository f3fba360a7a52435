"""bptrain: YAML-driven PyTorch training with backpropagation made visible.

Importing this package must stay cheap: the CLI's ``--help`` path imports it, and
torch is imported only by the modules that train, evaluate or inspect.
"""

from typing import Any

from bptrain.version import __version__

__all__ = ["__version__", "fit", "load_run"]


def __getattr__(name: str) -> Any:
    """``from bptrain import load_run, fit`` without importing torch at ``import bptrain``."""
    if name in ("fit", "load_run"):
        from bptrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'bptrain' has no attribute {name!r}")
