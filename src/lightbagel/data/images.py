"""Any decoded image -> 8-bit RGB with the pixels it shows (docs/data.md, "Image modes").

`Image.convert("RGB")` alone is wrong for some modes: it clips 16-bit and 32-bit grey to 255
(a 16-bit PNG turns white), and drops transparency, showing whatever colour hides under it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

BACKGROUND = (255, 255, 255)  # what transparent pixels show: the page they would be drawn on
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class UnsupportedMode(ValueError):
    """An image whose pixel values have no one meaning as RGB (e.g. floats outside [0, 1])."""


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparent pixels over BACKGROUND. Raises UnsupportedMode."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT or image.mode == "I":
        return _grey(np.asarray(image, dtype=np.float64), 65535.0, image.mode)
    if image.mode == "F":
        return _grey(np.asarray(image, dtype=np.float64), 1.0, image.mode)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exn:  # a mode Pillow cannot map to RGB
        raise UnsupportedMode(f"mode {image.mode}: {exn}") from None


def _grey(values: np.ndarray, full_scale: float, mode: str) -> Image.Image:
    """Grey values in [0, full_scale] -> 8-bit RGB, rounded."""
    if values.size and (values.min() < 0 or values.max() > full_scale):
        raise UnsupportedMode(f"mode {mode}: values in [{values.min()}, {values.max()}], "
                              f"expected [0, {full_scale:g}]")
    grey = np.rint(values * (255.0 / full_scale)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def enlarged(image: Image.Image, side: int) -> Image.Image:
    """`image` scaled up by a whole factor (nearest: the pixels stay sharp) to at least `side`
    pixels on its long side, so a 32 px tiny-model image can be seen; a large one is left alone."""
    longest = max(image.size)
    if longest >= side:
        return image
    scale = -(-side // longest)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
