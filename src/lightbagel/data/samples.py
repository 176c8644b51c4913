"""The sample schema of webdataset shards, per task, and raw sample -> record parsing.

A sample is the tar members sharing one key (``<key>.<field>``). Every task may carry
``task.txt`` (else the source's ``task`` from the data card applies) and ``json`` metadata.
Images may be PNG, JPEG or WebP (``.png``, ``.jpg``, ``.jpeg``, ``.webp``).

``t2i``        ``target.<img>`` (or a bare ``<img>``, as img2dataset writes) and
               ``caption.txt`` (or ``txt``).
``edit``       ``source.<img>`` (several: ``source_0.<img>``, ``source_1.<img>``, ...),
               ``instruction.txt`` and ``target.<img>``.
``und``        ``image.<img>`` (several: ``image_0.<img>``, ...) and ``conversation.json``:
               ``[{"role": "user" | "assistant", "content": "... <image> ..."}, ...]``; each
               ``<image>`` marks where the next image goes.
``in_context`` ``source_0.<img>``, ``source_1.<img>``, ... , ``instruction.txt`` (``<image>``
               placeholders allowed) and ``target.<img>``.

Records are dicts with ``key``, ``task``, ``text``, ``target`` (PIL RGB or None), ``source``
(the single source image or None), ``sources`` (all condition images), ``conversation`` (und
only) and ``meta``. Flow matching trains on ``t2i`` and single-source ``edit`` records, the
understanding objective on ``und`` records (docs/data.md).
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any, Callable

from PIL import Image

from lightbagel.data.chat import IMAGE
from lightbagel.data.images import UnsupportedMode, to_rgb

TRAINABLE = ("t2i", "edit")  # the default objective: flow matching alone
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
MAX_IMAGES = 16  # numbered images per sample that the parser looks for


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is the skip-count bucket it is counted in."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _text(sample: dict, *names: str) -> str | None:
    for name in names:
        if name in sample:
            value = sample[name]
            return (value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)).strip()
    return None


def _required_text(sample: dict, *names: str) -> str:
    text = _text(sample, *names)
    if text is None:
        raise BadSample("missing_key", f"{sample.get('__key__')}: needs {' or '.join(names)}")
    return text


def _image_bytes(sample: dict, base: str) -> bytes | None:
    for ext in IMAGE_EXTS:
        key = f"{base}.{ext}" if base else ext
        if key in sample:
            return sample[key]
    return None


def open_image(data: bytes, max_pixels: int, name: str = "") -> Image.Image:
    """Decode to RGB; the size is checked from the header first, so a huge image costs nothing."""
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the size check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
    except Exception as exn:  # PIL raises many types for bad headers (DecompressionBombError too)
        raise BadSample("decode", f"{name}: {exn!r}") from None
    if width * height > max_pixels:
        raise BadSample("oversize", f"{name}: {width}x{height} > {max_pixels} pixels")
    try:
        return to_rgb(image)
    except UnsupportedMode as exn:
        raise BadSample("unsupported_mode", f"{name}: {exn}") from None
    except Exception as exn:  # truncated or corrupt pixel data
        raise BadSample("decode", f"{name}: {exn!r}") from None


def _image(sample: dict, base: str, max_pixels: int, *fallbacks: str) -> Image.Image:
    for name in (base, *fallbacks):
        data = _image_bytes(sample, name)
        if data is not None:
            return open_image(data, max_pixels, f"{sample.get('__key__')}.{name or 'image'}")
    raise BadSample("missing_key", f"{sample.get('__key__')}: needs a {base or 'image'} image")


def _numbered(sample: dict, base: str, max_pixels: int) -> list[Image.Image]:
    if _image_bytes(sample, base) is not None:
        return [_image(sample, base, max_pixels)]
    images = []
    for i in range(MAX_IMAGES):
        if _image_bytes(sample, f"{base}_{i}") is None:
            break
        images.append(_image(sample, f"{base}_{i}", max_pixels))
    return images


def _meta(sample: dict) -> dict:
    if "json" not in sample:
        return {}
    try:
        meta = json.loads(sample["json"])
    except ValueError as exn:
        raise BadSample("decode", f"{sample.get('__key__')}.json: {exn}") from None
    if not isinstance(meta, dict):
        raise BadSample("decode", f"{sample.get('__key__')}.json: not an object")
    return meta


def _record(sample: dict, task: str, text: str, target, sources: list, **extra) -> dict:
    return {"key": sample["__key__"], "task": task, "text": text, "target": target,
            "source": sources[0] if len(sources) == 1 else None, "sources": sources,
            "meta": _meta(sample), **extra}


def _t2i(sample: dict, max_pixels: int) -> dict:
    text = _required_text(sample, "caption.txt", "txt")
    return _record(sample, "t2i", text, _image(sample, "target", max_pixels, ""), [])


def _edit(sample: dict, max_pixels: int, task: str = "edit") -> dict:
    text = _required_text(sample, "instruction.txt")
    sources = _numbered(sample, "source", max_pixels)
    if not sources:
        raise BadSample("missing_key", f"{sample.get('__key__')}: needs source.<img> or source_0.<img>")
    return _record(sample, task, text, _image(sample, "target", max_pixels), sources)


def _in_context(sample: dict, max_pixels: int) -> dict:
    return _edit(sample, max_pixels, task="in_context")


def _und(sample: dict, max_pixels: int) -> dict:
    raw = _required_text(sample, "conversation.json")
    try:
        turns = json.loads(raw)
        ok = isinstance(turns, list) and all(isinstance(t, dict) and {"role", "content"} <= set(t) for t in turns)
    except ValueError:
        ok = False
    if not ok:
        raise BadSample("decode", f"{sample.get('__key__')}.conversation.json: expected [{{role, content}}, ...]")
    images = _numbered(sample, "image", max_pixels)
    marks = sum(str(t["content"]).count(IMAGE) for t in turns)
    if marks > len(images):  # caught here, per sample, not when its batch is collated
        raise BadSample("missing_key", f"{sample.get('__key__')}: conversation has {marks} {IMAGE} marks "
                                       f"but {len(images)} images")
    text = "\n".join(str(t["content"]) for t in turns if t["role"] == "user")
    return _record(sample, "und", text, None, images, conversation=turns)


PARSERS: dict[str, Callable[[dict, int], dict]] = {
    "t2i": _t2i, "edit": _edit, "und": _und, "in_context": _in_context,
}
TASKS = tuple(PARSERS)  # the task names a sample or a data source may give


def to_record(sample: dict[str, Any], default_task: str, max_pixels: int) -> dict:
    """Parse one raw sample (field -> bytes); raises BadSample naming the skip reason."""
    task = _text(sample, "task.txt") or default_task
    if task not in PARSERS:
        raise BadSample("bad_task", f"{sample.get('__key__')}: task {task!r}; known: {', '.join(TASKS)}")
    return PARSERS[task](sample, max_pixels)
