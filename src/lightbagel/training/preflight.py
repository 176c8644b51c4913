"""What a run needs from the machine, checked in seconds before anything is built or locked: the
GPUs its trainer card asks for, and every `pretrained:` source as a local folder, a tower shipped
in the package, in the Hugging Face cache, or on a hub this machine can reach. Each missing thing
is one line that says what to type (a full-size recipe on a laptop otherwise retries the network,
then fails deep in a load).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

from lightbagel.backbones.loading import resolve_pretrained
from lightbagel.errors import LightBagelError
from lightbagel.recipe.schema import RecipeConfig

GPU_ACCELERATORS = ("gpu", "cuda")
CONNECT_TIMEOUT_S = 3.0


class PreflightError(LightBagelError, RuntimeError):
    """The machine lacks what the recipe asks for, in one line."""


def preflight(cfg: RecipeConfig) -> None:
    check_devices(cfg)
    check_sources(cfg)


def check_devices(cfg: RecipeConfig) -> None:
    import torch

    tr = cfg.trainer
    if tr.accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise PreflightError(f"trainer.accelerator {tr.accelerator} (trainer card {tr.card}) needs CUDA GPUs and torch "
                             "finds none here; train on this machine with trainer=cpu, or size the run without a GPU "
                             "with lightbagel-plan RECIPE")


def hub_sources(cfg: RecipeConfig) -> Iterator[tuple[str, str, Optional[str], Optional[str]]]:
    """(recipe key, `pretrained` value, revision, subfolder) of every backbone the recipe loads."""
    und, gen = cfg.understanding, cfg.generation
    for key, part in (("understanding", und), ("generation", gen), ("generation.vae", gen.vae)):
        if part.pretrained:
            yield (f"{key}.pretrained", part.pretrained, getattr(part, "revision", None),
                   getattr(part, "subfolder", None))


def check_sources(cfg: RecipeConfig) -> None:
    for key, source, revision, subfolder in hub_sources(cfg):
        if Path(resolve_pretrained(source)).expanduser().is_dir() or _cached(source, revision, subfolder):
            continue
        why = _unreachable()
        if why:
            raise PreflightError(f"{key} {source!r} is not a local folder nor in the Hugging Face cache, and {why}; "
                                 f"download it where the hub is reachable (huggingface-cli download {source}) and set "
                                 f"{key}=/path/to/that/folder")


def _cached(repo: str, revision: Optional[str], subfolder: Optional[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    filename = f"{subfolder}/config.json" if subfolder else "config.json"
    try:
        found = try_to_load_from_cache(repo, filename, revision=revision)
    except ValueError:  # not a valid repo id: nothing a hub could serve either
        return False
    return isinstance(found, str)


def _unreachable() -> Optional[str]:
    """Why the hub cannot be reached from here, or None when it can."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        return f"{host}:{port} cannot be reached ({err.__class__.__name__})"
    return None
