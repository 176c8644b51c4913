"""What every backbone card shares: whether it reads a checkpoint, and that its shipped config
matches the checkpoint it names."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

TOWERS_PACKAGE = "lightbagel.towers"  # the shipped pretrained towers (src/lightbagel/towers/)


def reads_checkpoint(cfg: Any) -> bool:
    """Whether a card loads a checkpoint (hub id or local directory) rather than building `config`."""
    return cfg.pretrained is not None and cfg.load_weights


def resolve_pretrained(pretrained: str) -> str:
    """Where `from_pretrained` reads a card's `pretrained:` from: a local folder of that name wins,
    then a tower shipped inside the package (found wherever lightbagel is installed), else it is
    a hub id, passed on as written."""
    if Path(pretrained).expanduser().exists():
        return pretrained
    shipped = files(TOWERS_PACKAGE) / pretrained
    return str(shipped) if shipped.is_dir() else pretrained


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


def load_diffusers_model(model_cls, cfg: Any, dtype=None, statistics: tuple[str, ...] = ()):
    """A diffusers model from a card (DiT or VAE): random from `config` (fp32; the precision plan
    casts it later, so fp32-kept tables are never rounded), or `from_pretrained` (safetensors
    only) in `dtype` (precision.Precision.read_dtype) with the card's shipped config checked
    against the checkpoint's. `statistics` are config keys measured on data, not architecture
    (a VAE's latent mean and std): a card's value replaces the checkpoint's, as an export of a
    continued VAE run carries the statistics it measured beside the weights it started from."""
    if not reads_checkpoint(cfg):
        return model_cls(**dict(cfg.config))
    kwargs = {"subfolder": cfg.subfolder} if cfg.subfolder else {}
    if getattr(cfg, "revision", None):
        kwargs["revision"] = cfg.revision
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    model = model_cls.from_pretrained(resolve_pretrained(cfg.pretrained), use_safetensors=True, **kwargs)
    where = f"card {getattr(cfg, 'card', None) or cfg.pretrained}"
    card = dict(cfg.config)
    measured = {key: card.pop(key) for key in statistics if key in card}
    check_card_config(card, dict(model.config), where)
    if measured:
        model.register_to_config(**measured)
    return model
