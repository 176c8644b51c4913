"""One CPU thread policy for every entry point (the CLIs, fit, the benchmarks).

torch starts one OpenMP thread per core. On the tiny models every matrix is too small to split,
and on a machine shared with another job idle OpenMP threads spin against it: an eval that takes
a minute alone took 6-10 beside one other job. So every command pins its threads once, the same
way: the command's `--threads N` flag wins, then `OMP_NUM_THREADS` (the standard variable,
https://pytorch.org/docs/stable/notes/cpu_threading_torchscript_inference.html), then the
model's recipe (`trainer.num_threads`: 1 on the tiny CPU card), then torch's own default.
"""

from __future__ import annotations

import os
from typing import Optional

ENV = "OMP_NUM_THREADS"


def chosen_threads(flag: Optional[int] = None, recipe: Optional[int] = None) -> Optional[int]:
    """The thread count the policy picks; None leaves torch's default."""
    if flag is not None:
        return flag
    env = os.environ.get(ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return recipe


def apply_threads(flag: Optional[int] = None, recipe: Optional[int] = None) -> int:
    """Sets torch's intra-op threads by the policy above; returns the count in effect."""
    import torch

    n = chosen_threads(flag, recipe)
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()
