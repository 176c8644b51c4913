"""Images of every mode a shard may hold decode to the pixels they show, or are skipped and counted."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lightbagel.data.images import UnsupportedMode, to_rgb
from lightbagel.data.samples import BadSample, open_image
from tests.shapes.shards_reader import _rgb

BIG = 10**8


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(open_image(data, BIG, "x"), dtype=np.int64)


def test_sixteen_bit_grey_is_scaled_not_clipped_to_white():
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 .. 63000
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    out = rgb(encoded(image))
    expected = np.rint(values / 257.0).astype(np.int64)
    assert np.array_equal(out, np.stack([expected] * 3, axis=-1))
    assert np.array_equal(np.asarray(_rgb(Image.open(io.BytesIO(encoded(image)))), dtype=np.int64), out)


def test_thirty_two_bit_and_float_grey():
    ints = Image.fromarray(np.array([[0, 65535], [257, 32896]], dtype=np.int32))
    assert ints.mode == "I"
    assert np.asarray(to_rgb(ints))[..., 0].tolist() == [[0, 255], [1, 128]]
    floats = Image.fromarray(np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32))
    assert np.asarray(to_rgb(floats))[..., 1].tolist() == [[0, 255], [128, 64]]
    with pytest.raises(UnsupportedMode, match="mode F: values in"):
        to_rgb(Image.fromarray(np.array([[0.0, 300.0]], dtype=np.float32)))


def test_transparent_pixels_show_white_and_opaque_ones_their_colour():
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[..., 0] = 100
    la[..., 1] = [[0, 255], [128, 255]]
    out = rgb(encoded(Image.fromarray(la, mode="LA")))
    alpha = la[..., 1] / 255.0
    expected = np.rint(100 * alpha + 255 * (1 - alpha))
    assert np.abs(out[..., 0] - expected).max() <= 1 and out[0, 0, 0] == 255 and out[0, 1, 0] == 100

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    out = rgb(encoded(palette, transparency=0))
    assert out[0].tolist() == [[255, 255, 255], [200, 30, 30]]


def test_cmyk_bilevel_and_rgba_opaque():
    cmyk = rgb(encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100))
    assert np.abs(cmyk - np.array([255, 0, 0])).max() <= 3
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    assert rgb(encoded(bits))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    assert rgb(encoded(Image.new("RGBA", (2, 2), (10, 20, 30, 255))))[0, 0].tolist() == [10, 20, 30]


def test_a_mode_without_one_rgb_meaning_is_a_counted_skip(monkeypatch):
    import lightbagel.data.samples as samples

    def refuse(image):
        raise UnsupportedMode("mode F: values in [0, 300], expected [0, 1]")

    monkeypatch.setattr(samples, "to_rgb", refuse)
    with pytest.raises(BadSample) as info:
        open_image(encoded(Image.new("L", (2, 2))), BIG, "k.target")
    assert info.value.reason == "unsupported_mode"


def test_an_inference_source_decodes_like_a_training_one():
    """`source_pixels` (pipeline, CLIs, demo, benchmark runners) sees a 16-bit source's pixels, not white."""
    from lightbagel.data.buckets import ResolutionPolicy
    from lightbagel.recipe.schema import ResolutionConfig

    values = (np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 170)
    policy = ResolutionPolicy(ResolutionConfig(), 8)
    got = policy.source_pixels(Image.fromarray(values))
    want = policy.source_pixels(to_rgb(Image.fromarray(values)))
    for a, b in zip(got, want):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(got[1]).min() < 100  # the dark end stays dark
