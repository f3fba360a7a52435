"""Making a rename survive a power cut: fsync of the directory that holds the renamed entry.

Shared by checkpoint.py (single-file checkpoints) and shards.py (shard directories); a module of
its own because checkpoint.py imports shards.py (for sharded reads) and not the other way round.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """fsync `directory` (best effort: some file systems cannot open a directory for reading)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
