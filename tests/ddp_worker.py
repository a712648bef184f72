"""Trains tests/ddp_cases.py cases in one process group: ``torchrun --nproc_per_node=2 tests/ddp_worker.py OUT
CASE…`` writes OUT/<case>/ (rank 0). One launch for every case: the processes start once."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ddp_cases import BASE, CASES  # noqa: E402
from tiny_runs import fit  # noqa: E402

from framework._nets import distributed  # noqa: E402

if __name__ == "__main__":
    distributed.init(prefer_cuda=False)
    out = Path(sys.argv[1])
    for name in sys.argv[2:]:
        fit(out / name, *CASES[name], base=BASE)
    distributed.shutdown()
