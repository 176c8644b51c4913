"""What every backbone card shares: whether it reads a checkpoint, and that its shipped config
matches the checkpoint it names."""

from __future__ import annotations

from typing import Any


def reads_checkpoint(cfg: Any) -> bool:
    """Whether a card loads a checkpoint (hub id or local directory) rather than building `config`."""
    return cfg.pretrained is not None and cfg.load_weights


def check_card_config(card: dict, loaded: dict, where: str, prefix: str = "") -> None:
    """The architecture a card ships must be the one its checkpoint holds: the plan and the
    meta-device tests are built from the card's numbers."""
    for key, want in card.items():
        name = f"{prefix}{key}"
        if key not in loaded:
            continue  # not an attribute of this config class (e.g. a renamed legacy key)
        got = loaded[key]
        if isinstance(want, dict) and isinstance(got, dict):
            check_card_config(want, got, where, f"{name}.")
        elif _normal(want) != _normal(got):
            raise ValueError(f"{where}: card config {name}={want!r} but the checkpoint has {got!r}; fix the card")


def _normal(value):
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return round(value, 6) if isinstance(value, float) else value
