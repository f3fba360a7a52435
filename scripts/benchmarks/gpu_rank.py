"""One rank of a ``bench.py --gpu`` variant: ``bptrain.api.fit`` on the config with overrides, then
this rank's peak GPU memory in ``OUT/rank<N>.json``. Run as a plain process or under torchrun
(bptrain joins the process group the launcher prepared).

    python scripts/benchmarks/gpu_rank.py OUT CONFIG [KEY=VALUE ...]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from bptrain.api import fit


def main() -> None:
    out, config, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    cuda = torch.cuda.is_available()
    summary = fit(config, overrides, quiet=True)
    rank = int(os.environ.get("RANK", "0"))
    peak = torch.cuda.max_memory_allocated() if cuda else None
    record = {"rank": rank, "peak_bytes": peak, "run_dir": summary["run_dir"]}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
