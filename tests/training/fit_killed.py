"""`lightbagel-fit`, killed with SIGKILL right after checkpoint STEP is complete (as a preempted node).

    python fit_killed.py STEP RECIPE [KEY=VALUE ...]      # or under torchrun, on every rank
"""

from __future__ import annotations

import os
import signal
import sys

from lightbagel.training import checkpointing


def main() -> int:
    kill_step, argv = int(sys.argv[1]), sys.argv[2:]
    save = checkpointing.AtomicCheckpoint.save

    def save_then_die(self, trainer):
        path = save(self, trainer)
        if trainer.global_step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    checkpointing.AtomicCheckpoint.save = save_then_die
    from lightbagel.cli.fit import main as fit_main

    return fit_main(argv)


if __name__ == "__main__":
    sys.exit(main())
