"""Tolerances for comparing two code paths that compute the same maths with different kernels.

Exact comparisons (`atol=0`) hold only where the same kernels run on the same inputs by
construction. Two paths that run the same maths through different kernels (GEMMs of other shapes,
a masked attention against an unmasked one, per-token against per-sample modulation) sum in
different orders, and which order a kernel picks depends on the CPU (AVX2 and AVX512 builds block
differently): they agree to a few units in the last place of the dtype per layer, never bit for bit.
"""

from __future__ import annotations

import torch

# Ulps allowed between two kernels' results: a tiny model has a few layers of a few sums each, and
# a machine measured 6 ulps of fp32 (7.2e-7); a real bug (a fusion weight off zero, a wrong
# timestep) moves the output by 1e-3 or more.
ULPS = 64


def across_kernels(dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """`assert_close` arguments for values of order 1 computed by two different kernels."""
    eps = torch.finfo(dtype).eps
    return dict(rtol=ULPS * eps, atol=ULPS * eps)
