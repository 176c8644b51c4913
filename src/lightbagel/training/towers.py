"""One trained tower of an export -> a `from_pretrained` folder, as a hub download gives it.

The shipped tiny towers (src/lightbagel/towers/) are made this way from the exports of the
recipes under recipes/pretrain/ (docs/tiny.md, "Rebuilding the towers"). Weights are stored in
16-bit (bf16, what Qwen2.5-VL and Wan2.2 ship in); loading reads them in the dtype the precision
plan asks for.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads PARTS without importing torch
    import torch

    from lightbagel.model import LightBagel

# A tower -> what `save_pretrained` writes for it: the model, then what its card loads beside it.
PARTS = ("understanding", "generation", "vae")


def tower_objects(model: LightBagel, part: str) -> list:
    if part == "understanding":
        processor = model.und.processor
        return [model.und.model, processor.tokenizer, processor.image_processor]
    if part == "generation":
        return [model.gen.dit]
    if part == "vae":
        return [model.gen.vae.vae]
    raise ValueError(f"unknown tower {part!r}; allowed: {', '.join(PARTS)}")


def save_tower(model: LightBagel, part: str, out_dir: Path, dtype: torch.dtype | None = None) -> Path:
    """Writes the folder whole or not at all (a temp folder renamed into place), in `dtype` (bf16
    unless given); an existing folder is never replaced: the caller removes it first."""
    import torch

    dtype = dtype or torch.bfloat16
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; a tower folder is never replaced in place: remove it or pick "
                              "another output folder")
    objects = tower_objects(model, part)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        for obj in objects:
            if isinstance(obj, torch.nn.Module):
                # nn.Module.to itself: diffusers' override warns about fp32-kept modules, and the
                # loader, not the file, decides what is kept in fp32 (precision.py).
                torch.nn.Module.to(copy.deepcopy(obj), dtype).save_pretrained(tmp)
            else:
                obj.save_pretrained(tmp)
        for path in tmp.iterdir():
            path.chmod(0o644)  # as a hub download; some writers leave 0600
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
