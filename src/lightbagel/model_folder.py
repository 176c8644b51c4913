"""Safetensors export of a trained model, and loading it back.

The file holds every trainable weight plus every weight that no hub id or local directory can
restore (random-initialised parts of tiny cards); `recipe.yaml` beside it rebuilds the model.

In a run's output folder every fit writes its own `exports/step-NNNNNNNN/` (with `export.json`
saying the step) and points `export` at the newest: a resume never rewrites an export that an
eval or a user referred to, and nothing deletes one (retention is the user's: README.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lightbagel.errors import ModelFolderError, first_line
from lightbagel.model import LightBagel, build_model
from lightbagel.recipe.schema import RecipeConfig

log = logging.getLogger(__name__)

WEIGHTS, RECIPE = "model.safetensors", "recipe.yaml"
EXPORT = "export"  # a run's model folder (the newest export), inside its output folder
EXPORTS, INFO = "exports", "export.json"  # one folder per fit's export; what an export is


def random_init_prefixes(recipe: RecipeConfig) -> tuple[str, ...]:
    """Model parts built from a config with random weights: no hub id or directory restores them."""
    parts = {"und.": recipe.understanding.pretrained, "gen.dit.": recipe.generation.pretrained,
             "gen.vae.": recipe.generation.vae.pretrained}
    return tuple(prefix for prefix, pretrained in parts.items() if pretrained is None)


def exported_state(model: LightBagel, recipe: RecipeConfig) -> dict[str, torch.Tensor]:
    keep_frozen = random_init_prefixes(recipe)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if name in trainable or name.startswith(keep_frozen):
            # safetensors refuses tensors sharing storage (tied weights): copy the repeats.
            ptr = tensor.data_ptr()
            state[name] = tensor.detach().clone() if ptr in seen else tensor.detach().contiguous()
            seen.add(ptr)
    return state


def atomic_write(path: Path, write) -> None:
    """Writes through a temp file in the same directory, then renames: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() gives checkpoints (0644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def version_dir(out: Path, step: int) -> Path:
    """Where the export a fit of output folder `out` writes at `step` lives."""
    return Path(out) / EXPORTS / f"step-{step:08d}"


def write_info(model_dir: Path, **info) -> None:
    atomic_write(Path(model_dir) / INFO, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))


def export_info(model_dir: Path) -> dict:
    """What `export.json` says of an export (its step, its MLflow run); {} for an export without one."""
    try:
        return json.loads((Path(model_dir) / INFO).read_text())
    except (OSError, ValueError):
        return {}


def understanding_trained(model_dir: Path, recipe: RecipeConfig) -> bool:
    """Whether the export's VLM was ever trained: its fit's word (export.json), else its recipe's
    (an exported recipe no longer names the init_from or LoRA that trained it)."""
    said = export_info(model_dir).get("understanding_trained")
    return said if isinstance(said, bool) else not recipe.understanding_is_random()


def run_folder(model_dir: Path) -> Path:
    """The output folder an export belongs to: OUT for OUT/export and OUT/exports/step-N alike."""
    real = Path(model_dir).resolve()
    return real.parent.parent if real.parent.name == EXPORTS else real.parent


def point_export(out: Path, version: Path) -> Path:
    """Makes `out/export` name `version` (a relative symlink, swapped atomically). A real folder
    there (a copied run, an older layout) is moved into `exports/`, never deleted."""
    link = Path(out) / EXPORT
    if link.is_dir() and not link.is_symlink():
        step = export_info(link).get("step")
        keep = Path(out) / EXPORTS / (f"step-{step:08d}" if isinstance(step, int) else "previous")
        n = 2
        while keep.exists():
            keep, n = keep.with_name(f"{keep.name.split('-copy')[0]}-copy{n}"), n + 1
        link.rename(keep)
    tmp = link.with_name(f".{EXPORT}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(os.path.relpath(version, link.parent), tmp, target_is_directory=True)
    except OSError:  # no symlinks here (some Windows setups): a copy of the newest instead
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(version, tmp)
    os.replace(tmp, link)
    return link


def export_model(model: LightBagel, recipe: RecipeConfig, recipe_yaml: str, out_dir: Path) -> Path:
    state = exported_state(model, recipe)
    atomic_write(out_dir / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write(out_dir / RECIPE, lambda tmp: Path(tmp).write_text(recipe_yaml))
    return out_dir / WEIGHTS


def resolved_recipe(path: Path) -> RecipeConfig:
    """A fully resolved recipe (as exported) needs no cards: validate it against the schema."""
    try:
        return parse_recipe(path.read_text(), path)
    except UnicodeDecodeError:
        raise ModelFolderError(f"{path}: not a text file; expected the recipe.yaml of an export") from None
    except OSError as exc:
        raise ModelFolderError(f"{path}: cannot read: {exc.strerror}; pass a lightbagel-fit export dir") from None


# Keys a model folder's recipe may hold that the schema has not: storage dtypes come from the
# precision plan (docs/full_size.md, "Precision"), not from the cards. A folder holding them still
# loads; the keys are dropped with a warning.
RETIRED_KEYS = ("understanding.dtype", "generation.dtype")


def parse_recipe(text: str, where: Path) -> RecipeConfig:
    try:
        stored = _without_retired(OmegaConf.create(text), where)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RecipeConfig), stored))
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise ModelFolderError(f"{where}: not a lightbagel recipe ({_what_is_wrong(exc)}); "
                               "pass a lightbagel-fit export dir") from None


def _what_is_wrong(exc: Exception) -> str:
    """Where the stored recipe breaks, without quoting it: a recipe.yaml that is a link to another
    file (a system file, a secret) must not have that file's text echoed by the error."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"YAML syntax error at line {mark.line + 1}"
    key = (getattr(exc, "full_key", None) or "").split("[")[0]
    if not key:
        return "not a mapping of recipe keys"
    if OmegaConf.select(OmegaConf.structured(RecipeConfig), key, default=_UNKNOWN) is _UNKNOWN:
        return "a key the recipe schema does not have"
    return f"{key}: a value of the wrong type"


_UNKNOWN = object()


def _without_retired(stored, where: Path):
    for key in RETIRED_KEYS:
        parent, _, leaf = key.rpartition(".")
        section = OmegaConf.select(stored, parent)
        if isinstance(section, DictConfig) and leaf in section:
            log.warning("%s: %s is retired (the precision plan sets storage dtypes); ignored", where, key)
            section.pop(leaf)
    return stored


def refuse_code_loading(recipe: RecipeConfig, where: Path, trust_remote_code: bool) -> RecipeConfig:
    """A recipe stored in a model folder or checkpoint may not turn on code loading: a folder from
    elsewhere would run its own Python. Only the user's own flag (`trust_remote_code`) may."""
    if recipe.understanding.trust_remote_code and not trust_remote_code:
        raise ModelFolderError(
            f"{where}: understanding.trust_remote_code: true is not honoured from a model folder (it would run "
            "code the folder points to); pass --trust-remote-code if you trust that code")
    return recipe


def read_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file, or a one-line ModelFolderError naming it (missing, truncated, not safetensors)."""
    if not path.is_file():
        raise ModelFolderError(f"{path}: not found; lightbagel-fit writes it under OUTPUT_DIR/export")
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFolderError(f"{path}: not a readable safetensors file ({first_line(exc)}); "
                               "export the model again") from None


def check_weights(path: Path, state: dict[str, torch.Tensor], model: LightBagel, required=()) -> None:
    """Every weight in `state` fits `model`, and every `required` name is there; else one line
    naming the file and the first mismatching key."""
    own = model.state_dict()
    for name, tensor in state.items():
        if name not in own:
            raise ModelFolderError(f"{path}: weight {name!r} is not in the model its recipe builds; "
                                   "the recipe does not match the weights")
        if tensor.shape != own[name].shape:
            raise ModelFolderError(f"{path}: weight {name!r} has shape {tuple(tensor.shape)}, the recipe's "
                                   f"model {tuple(own[name].shape)}; the recipe does not match the weights")
    absent = [name for name in required if name not in state]
    if absent:
        raise ModelFolderError(f"{path}: lacks weight {absent[0]!r} (and {len(absent) - 1} more) that the recipe's "
                               "model needs; the recipe does not match the weights")


def load_exported(out_dir: Path | str, device: str = "cpu", trust_remote_code: bool = False) -> LightBagel:
    """Rebuilds the model from `recipe.yaml` and loads the exported weights into it.

    Code loading (`understanding.trust_remote_code`) is honoured only when the caller passes
    `trust_remote_code=True`, never from the folder's own recipe."""
    out_dir = Path(out_dir)
    recipe = refuse_code_loading(resolved_recipe(out_dir / RECIPE), out_dir / RECIPE, trust_remote_code)
    model = build_model(recipe)
    state = read_weights(out_dir / WEIGHTS, device=device)
    # An export always holds the random-initialised parts and the fusion blocks (exported_state).
    required = [n for n in model.state_dict() if n.startswith(random_init_prefixes(recipe))]
    required += [n for n, _ in model.named_parameters() if n.startswith("fusion.")]
    check_weights(out_dir / WEIGHTS, state, model, required)
    model.load_state_dict(state, strict=False)
    return model.to(device)

