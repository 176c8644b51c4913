"""FID with a user-supplied feature model (no InceptionV3 download)."""

from __future__ import annotations

import pytest
from PIL import Image
from torch import nn

from lightbagel.evaluation.metrics import fid, load_feature_model


def colour_means() -> nn.Module:
    """A tiny feature model: mean R, G, B and their spatial spread (6 features)."""

    class Means(nn.Module):
        def forward(self, x):
            import torch

            return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

    return Means()


def _images(base: tuple[int, int, int], n: int = 12):
    out = []
    for i in range(n):
        im = Image.new("RGB", (16, 16), base)
        im.paste(tuple(min(255, c + 9 * i) for c in base), (i % 8, 0, 8 + i % 8, 8))
        out.append(im)
    return out


def test_fid_is_zero_for_the_same_set_and_grows_with_a_shift():
    real = _images((100, 100, 100))
    same = fid(real, real, colour_means())
    near = fid(real, _images((110, 100, 100)), colour_means())
    far = fid(real, _images((200, 40, 40)), colour_means())
    assert same == pytest.approx(0.0, abs=1e-3)
    assert 0.0 < near < far


def test_feature_model_from_import_path():
    assert isinstance(load_feature_model("torch.nn:Flatten"), nn.Flatten)
    with pytest.raises(TypeError, match="nn.Module"):
        load_feature_model("builtins:dict")
    with pytest.raises(ValueError, match="package.module:factory"):
        load_feature_model("no_colon_here")


def test_fid_needs_two_images_per_side():
    with pytest.raises(ValueError, match="at least 2"):
        fid(_images((1, 2, 3), 1), _images((1, 2, 3), 3), colour_means())
