"""The fused model cut into the parts a plan talks about, with their parameter counts.

Parts: the VLM's language model, its ViT, the DiT, the VAE and the fusion blocks. Besides the
totals, each part knows its "active" weights, those one token of its stream multiplies through
(2 FLOPs each forward): the VLM's embedding is a lookup and its LM head never runs (no text
loss), and the DiT's umT5 text path (embedder, cross-attention) is skipped by the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from torch import nn

from lightbagel.model import LightBagel

# Sub-modules of a Wan DiT that never run here: umT5 text cross-attention and its norm, the text
# and image embedders (docs/design.md: umT5 is not loaded).
_DIT_NEVER_RUN = ("attn2", "norm2", "text_embedder", "image_embedder")


@dataclass
class Part:
    name: str
    total: int
    trainable: int
    active: int  # weights one token of this part's stream passes through

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def _params(modules: Iterable[nn.Module], skip: set[int] = frozenset()) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            if id(p) not in skip:
                seen.setdefault(id(p), p)
    return list(seen.values())


def _numel(params: list[nn.Parameter], trainable_only: bool = False) -> int:
    return sum(p.numel() for p in params if p.requires_grad or not trainable_only)


def _part(name: str, params: list[nn.Parameter], active: list[nn.Parameter]) -> Part:
    return Part(name, _numel(params), _numel(params, trainable_only=True), _numel(active))


def vision_tower(model: LightBagel) -> Optional[nn.Module]:
    """The VLM's ViT, where the adapter wraps a transformers VLM (`model.model.visual`)."""
    return getattr(getattr(getattr(model.und, "model", None), "model", None), "visual", None)


def dit_active_params(dit: nn.Module) -> list[nn.Parameter]:
    never = {id(p) for name, m in dit.named_modules() if name.split(".")[-1] in _DIT_NEVER_RUN
             for p in m.parameters()}
    return _params([dit], never)


def model_parts(model: LightBagel) -> list[Part]:
    """VLM LLM, ViT, DiT, VAE, fusion: their totals add up to the model's parameter count."""
    vit = vision_tower(model)
    vit_ids = {id(p) for p in vit.parameters()} if vit is not None else set()
    parts = [_part("VLM LLM", _params([model.und], vit_ids), _params(model.und._lm.layers))]
    if vit is not None:
        parts.append(_part("ViT", _params([vit]), _params([vit])))
    dit = model.gen.dit
    parts.append(_part("DiT", _params([dit]), dit_active_params(dit)))
    parts.append(_part("VAE", _params([model.gen.vae]), []))  # convolutions: counted apart
    parts.append(_part("fusion", _params([model.fusion]), _params([model.fusion])))
    return parts


def fusion_split(model: LightBagel) -> tuple[int, int]:
    """Fusion weights on the und side and on the gen side (each stream's norms and projections)."""
    und = _numel(_params(blk.und for blk in model.fusion if hasattr(blk, "und")))
    gen = _numel(_params(blk.gen for blk in model.fusion if hasattr(blk, "gen")))
    return und, gen
