"""Keys and values of the clean source slots, kept from the first sampling step for the rest.

A clean source image (t = 0) never sees the noisy target (its order is lower), so its tokens'
states, and the keys and values every DiT and fusion attention computes from them, are the same
at every step of one prompt. `PrefixMask` is an `OrderMask` that, on the first step, records the
source span of each call's keys and values and, on later steps (target queries only), inserts
them back into each call's keys and values at the same place. The attention calls of one forward
come in the same order every step (DiT block i, then fusion block i), so call n replays entry n.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lightbagel.fusion.mask import OrderMask


@dataclass
class PrefixMask(OrderMask):
    store: list = field(default_factory=list)  # per attention call: (k, v) of the source span, (B, H, n, D)
    at: int = 0  # key index where the source span starts (after the und keys in a fusion block)
    length: int = 0  # tokens in the source span
    replay: bool = False
    _calls: int = field(default=0, repr=False, compare=False)

    def attend(self, q, k, v, scale=None, enable_gqa: bool = False) -> torch.Tensor:
        if not self.replay:
            span = slice(self.at, self.at + self.length)
            self.store.append((k[:, :, span], v[:, :, span]))
        else:
            cached_k, cached_v = self.store[self._calls % len(self.store)]
            self._calls += 1
            k = torch.cat([k[:, :, :self.at], cached_k, k[:, :, self.at:]], 2)
            v = torch.cat([v[:, :, :self.at], cached_v, v[:, :, self.at:]], 2)
        return super().attend(q, k, v, scale, enable_gqa)
