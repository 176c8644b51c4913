"""What every recipe-taking command shares."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, NoReturn, Optional, Sequence

from lightbagel.errors import LightBagelError, first_line, one_line
from lightbagel.recipe import Recipe, RecipeError, load_recipe


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    """The only switch that lets a model folder's or checkpoint's own recipe load code (model_folder.py)."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="honour understanding.trust_remote_code in the model's recipe (runs code the "
                             "model folder points to: only for folders you trust)")


def recipe_or_none(prog: str, path: str, overrides: Sequence[str]) -> Optional[Recipe]:
    """The validated recipe, or None after printing the one-line error (the caller exits 2)."""
    try:
        return load_recipe(path, overrides)
    except RecipeError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return None


def with_overrides(name: str, overrides: Sequence[str]) -> str:
    """A run's name plus the command-line overrides that make it differ (paths left out)."""
    shown = [o for o in overrides if not o.startswith(("output_dir=", "data.root=", "trainer.mlflow."))]
    return " ".join([name, *shown])[:250]


class DefaultsFormatter(argparse.HelpFormatter):
    """`--help` shows each option's default after its help, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if shown or not (action.option_strings or action.nargs in ("?", "*")):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line that points at --help; every command has
    `--version`, and its `--help` shows the defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)
        from lightbagel import __version__

        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                          help="print the version and exit")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """The thread policy's flag (lightbagel/threads.py), the same on every command."""
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: $OMP_NUM_THREADS, else the model recipe's "
                             "trainer.num_threads, else one per core)")


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device to run on (cpu, cuda, cuda:1, mps)")


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _number(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        wanted = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None


def check_device(device: str) -> None:
    """A device this machine has, before any model is loaded (torch fails late and obscurely)."""
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device {device}: torch sees no Apple MPS device; use --device cpu")
    try:
        torch.device(device)
    except RuntimeError:
        raise CliError(f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1)") from None


class CliError(ValueError):
    """A bad argument found after parsing, in one line."""


def _library_errors() -> tuple[type[BaseException], ...]:
    """Library errors that are about the user's input, not a bug: a refused decompression bomb
    (PIL), a safetensors file that cannot be written (a full disk) or read."""
    from PIL.Image import DecompressionBombError
    from safetensors import SafetensorError

    return DecompressionBombError, SafetensorError


# What a command reports in one line; anything else is a bug and keeps its traceback.
EXPECTED = (LightBagelError, ValueError, OSError, KeyError, RuntimeError, ImportError, *_library_errors())


def at_boundary(prog: str, run: Callable[[], int]) -> int:
    """Runs a command; an expected error becomes one line on stderr and exit status 2.

    LIGHTBAGEL_DEBUG=1 lets the traceback through for a bug report.
    """
    try:
        return run()
    except EXPECTED as err:
        if os.environ.get("LIGHTBAGEL_DEBUG"):
            raise
        # Ours may come back from a DataLoader worker with its traceback: one_line finds the message.
        text = one_line(err) if isinstance(err, LightBagelError) else first_line(err)
        print(f"{prog}: {text}", file=sys.stderr)
        return 2
