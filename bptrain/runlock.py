"""One process owns a run directory: an OS file lock held for the life of the run.

Two `fit --resume auto` on the same interrupted run would otherwise both train in it, and
metrics.jsonl would end with every epoch twice. The lock is ``flock`` through the `filelock`
package: the operating system releases it when the process dies, so a SIGKILLed run never
blocks its own resume. Next to the lock, ``.bptrain.lock.json`` names the holder (PID, host,
start time) so the refused process can say who owns the directory; it is informative only (the
OS lock decides), and the next owner overwrites a dead holder's record.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from bptrain.errors import UserError

LOCK_FILE = ".bptrain.lock"
OWNER_FILE = ".bptrain.lock.json"


class RunDirLock:
    """Hold `run_dir` for this process: `acquire()` refuses (exit 2) when another process holds it.

    ``RunDirLock(None)`` holds nothing: the DDP ranks other than 0 never write the run directory.
    """

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._lock: Any = None
        if self.run_dir is not None:
            from filelock import FileLock  # a small import, but only fit needs it

            self._lock = FileLock(str(self.run_dir / LOCK_FILE), timeout=0)

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.is_locked

    def acquire(self) -> RunDirLock:
        from filelock import Timeout

        if self._lock is None or self.held:
            return self
        try:
            self._lock.acquire()
        except Timeout:
            raise UserError(
                f"the run directory {self.run_dir} is in use by another bptrain process "
                f"({self._holder()}). Wait for it to finish or stop it; to train anyway, start a new "
                "run (without --resume)."
            ) from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        try:
            (self.run_dir / OWNER_FILE).write_text(json.dumps(owner) + "\n", encoding="utf-8")
        except BaseException:  # a full disk: hand the lock back before failing
            self._lock.release(force=True)
            raise
        return self

    def release(self) -> None:
        """Idempotent: safe to call on every way out of fit."""
        if self.held:
            (self.run_dir / OWNER_FILE).unlink(missing_ok=True)  # type: ignore[operator]
            self._lock.release(force=True)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _holder(self) -> str:
        try:
            owner = json.loads((self.run_dir / OWNER_FILE).read_text(encoding="utf-8"))
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["since"]))
            return f"PID {owner['pid']} on host {owner['host']}, since {started}"
        except (OSError, ValueError, KeyError, TypeError):
            return "its PID is not recorded yet"
