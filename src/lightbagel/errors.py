"""Problems a user can fix, each told in one line: the commands print the message and exit 2.

Library exceptions stop at the CLI boundary; these types are how the code below says "this
is the user's input (data, a checkpoint, a model folder), not a bug".
"""

from __future__ import annotations


class LightBagelError(Exception):
    """A one-line problem with the user's input, naming the file or key and the fix."""


class DataError(LightBagelError, ValueError):
    """The data cannot feed a run: no shard matches a source, no readable sample at all, ..."""


class CheckpointError(LightBagelError, RuntimeError):
    """A checkpoint cannot be written or read."""


class ModelFolderError(LightBagelError, ValueError):
    """A model folder (an export) is incomplete, corrupt, inconsistent or asks to run code."""


def one_line(err: BaseException) -> str:
    """The message of `err` on one line; an error re-raised from a DataLoader worker carries the
    worker's traceback, whose last line holds the original message."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    if len(lines) == 1:
        return lines[0]
    last = lines[-1]
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def first_line(exc: BaseException) -> str:
    """The first line of a library exception's message (or its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
