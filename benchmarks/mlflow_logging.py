"""Training-thread time of one `log_metrics` call: Lightning's MLFlowLogger (a synchronous sqlite
write) vs BackgroundMLFlowLogger (a queue put), alternated in one run, with a 10 ms sleep standing
in for the training step; then checks that every value reached the store.

    .venv/bin/python benchmarks/mlflow_logging.py [--steps 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger

from lightbagel.runs.mlflow_logger import BackgroundMLFlowLogger


def run(cls, root: Path, steps: int, tag: str) -> tuple[float, bool]:
    logger = cls(experiment_name="bench", tracking_uri=f"sqlite:///{root / (tag + '.db')}", run_name=tag)
    logger.log_metrics({"warm_up": 0.0}, step=0)  # creates the run and the tables
    times = []
    for step in range(steps):
        start = time.perf_counter()
        logger.log_metrics({"loss": step * 0.1, "lr": 1e-4, "tokens_per_sec": 1000.0 + step}, step=step)
        times.append(time.perf_counter() - start)
        time.sleep(0.01)
    logger.finalize("success")
    history = logger.experiment.get_metric_history(logger.run_id, "loss")
    complete = sorted((m.step, m.value) for m in history) == [(s, s * 0.1) for s in range(steps)]
    return statistics.median(times), complete


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp())
    for r in range(args.rounds):
        for cls in (MLFlowLogger, BackgroundMLFlowLogger):
            median, complete = run(cls, root, args.steps, f"{cls.__name__}-{r}")
            print(f"{cls.__name__:24s} median {median * 1e3:7.2f} ms per log_metrics call; "
                  f"every value stored: {complete}")


if __name__ == "__main__":
    main()
