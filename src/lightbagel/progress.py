"""Progress of a long loop, the same for fit and eval: a redrawn `step 97/120` bar in a terminal,
a plain line every tenth of the way in a log file (nohup, SLURM, CI), never a `\r` there."""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")
BAR = "{desc} {n_fmt}/{total_fmt} |{bar:24}| {elapsed}<{remaining}{postfix}"


def interactive(stream: Optional[TextIO] = None) -> bool:
    """Whether `stream` (stderr by default, where bars go) is a terminal that can redraw a line."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def step_bar(total: int, desc: str = "step", initial: int = 0, stream: Optional[TextIO] = None):
    """A tqdm bar reading `step 97/120` (only for a terminal: see `interactive`)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, bar_format=BAR, file=stream or sys.stderr,
                dynamic_ncols=True, leave=True)


def track(items: Iterable[T], total: int, desc: str, enabled: bool = True,
          stream: Optional[TextIO] = None) -> Iterator[T]:
    """Yields `items`, showing `desc n/total`: a bar in a terminal, else about ten plain lines."""
    if not enabled:
        yield from items
        return
    out = stream or sys.stderr
    if interactive(out):
        with step_bar(total, desc, stream=out) as bar:
            for item in items:
                yield item
                bar.update(1)
        return
    every = max(1, total // 10)
    for n, item in enumerate(items, 1):
        yield item
        if n % every == 0 or n == total:
            print(f"{desc} {n}/{total}", file=out, flush=True)
