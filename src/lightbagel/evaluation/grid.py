"""Image grids with the prompt under each column, for sample grids and eval reports."""

from __future__ import annotations

import textwrap
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont


def image_grid(rows: Sequence[Sequence[Image.Image]], pad: int = 2) -> Image.Image:
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            grid.paste(image, (pad + j * (w + pad), pad + i * (h + pad)))
    return grid


def captioned_grid(rows: Sequence[Sequence[Image.Image]], captions: Sequence[str], scale: int = 4,
                   pad: int = 2) -> Image.Image:
    """`image_grid` with pixels enlarged `scale` times (nearest: no blur hides the detail) and the
    prompt of each column written under it, wrapped to the column's width."""
    big = [[im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in row] for row in rows]
    grid = image_grid(big, pad)
    width = big[0][0].width
    font = ImageFont.load_default()
    chars = max(4, width // max(1, int(font.getlength("m"))))
    lines = [textwrap.wrap(text, chars) or [""] for text in captions]
    line_h = font.getbbox("Ay")[3] + 2
    canvas = Image.new("RGB", (grid.width, grid.height + line_h * max(map(len, lines)) + pad), (255, 255, 255))
    canvas.paste(grid, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, wrapped in enumerate(lines):
        for k, line in enumerate(wrapped):
            draw.text((pad + j * (width + pad), grid.height + k * line_h), line, fill=(0, 0, 0), font=font)
    return canvas
