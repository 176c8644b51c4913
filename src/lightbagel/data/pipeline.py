"""The mixture pipeline: each DataLoader worker draws samples from the weighted sources, buckets
them by image size and yields whole collated batches, each carrying the worker's resumable state.

Step-exact stages: the DataLoader takes batches from workers round-robin, so the per-rank batch
index of every batch is known inside its worker (``first + k * workers``) and so is its
optimizer step (``index // batches_per_step``). Samples are drawn with the weights of that step;
when a new stage starts, samples still waiting in buckets from the old stage are dropped.

Exact resume: the state of a worker "role" (``batch index % workers``) after a batch is the draw
counter, the cursors of every source at the oldest sample still waiting in a bucket, and which
later draws are still waiting. Restoring replays those draws from the cursors (decoding only the
waiting ones), which rebuilds the buckets exactly; everything else is a pure function of counters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from torch.utils.data import IterableDataset, get_worker_info

from lightbagel.data.buckets import Bucketer, Pending, ResolutionPolicy, Size, resized
from lightbagel.data.collate import Collator, MixedBatch, TrainBatch, by_target_size
from lightbagel.data.mixture import Schedule
from lightbagel.data.samples import TRAINABLE, BadSample, to_record
from lightbagel.data.skips import SkipCounter
from lightbagel.data.streams import Slot, SourceStream
from lightbagel.errors import DataError

log = logging.getLogger(__name__)

# Skip reasons, in a fixed order so that ranks can sum their counts as one tensor.
REASONS = ("unreadable_shard", "truncated_shard", "missing_key", "bad_task", "decode", "oversize",
           "unsupported_task", "stage_switch", "unsupported_mode", "too_long")
MAX_CONSECUTIVE_BAD = 10_000


@dataclass(frozen=True)
class SourceSpec:
    name: str
    urls: tuple[str, ...]
    task: str


@dataclass
class MixturePlan:
    """Everything a worker needs; picklable, so it travels to spawned workers."""

    sources: list[SourceSpec]
    schedule: Schedule
    policy: ResolutionPolicy
    collator: Collator
    batch_size: int
    token_budget: Optional[int]
    max_wait: int
    block_size: int
    seed: int = 0
    max_tokens: Optional[int] = None  # data.packing.max_tokens
    mix_sizes: bool = False  # packed rows: images of every size in one batch
    # Tasks the objective trains (`und` only with objective.und_weight > 0); others are skipped.
    tasks: tuple[str, ...] = TRAINABLE
    rank: int = 0
    world_size: int = 1
    batches_per_step: int = 1
    # Resume: batches this rank already consumed, and the state of each worker role.
    consumed: int = 0
    roles: dict[int, dict] = field(default_factory=dict)


class SlotWorker:
    """Produces the batches of one worker role, in order."""

    def __init__(self, plan: MixturePlan, role: int, workers: int):
        self.plan, self.role = plan, role
        self.slot = Slot(plan.rank * workers + role, plan.world_size * workers)
        self.counters = {s.name: SkipCounter() for s in plan.sources}
        self.streams = [SourceStream(s.name, list(s.urls), self.slot, plan.seed, plan.block_size,
                                     self.counters[s.name]) for s in plan.sources]
        limit = plan.batch_size if plan.token_budget is not None or plan.batch_size > 0 else 1
        self.buckets = Bucketer(limit, plan.token_budget, plan.max_tokens, plan.mix_sizes)
        self.draw, self.stage = 0, 0

    # ------------------------------------------------------------------ producing
    def next_batch(self, step: int) -> TrainBatch:
        stage = self.plan.schedule.stage_at(step)
        if stage != self.stage:
            self._count_dropped(self.buckets.clear())
            self.stage = stage
        bad = 0
        while True:
            oldest = self.buckets.oldest()
            if oldest is not None and self.draw - oldest.draw > self.plan.max_wait:
                return self._emit(self.buckets.pop_oldest())
            draw, cursors = self.draw, self._cursors()
            self.draw += 1
            prepared = self._prepare(self._next_raw(draw))
            if prepared is None:
                bad += 1
                if bad >= MAX_CONSECUTIVE_BAD:
                    raise DataError(f"{bad} bad samples in a row; skipped: {self.skipped()}")
                continue
            bad = 0
            size, item = prepared
            full = self.buckets.add(size, Pending(draw, item["tokens"], {**item, "cursors": cursors}))
            if full is not None:
                return self._emit(full)

    def _count_dropped(self, dropped: list[Pending]) -> None:
        # Not bad data, but drawn samples that never reach the model: shown with the skip counts.
        for item in dropped:
            self.counters[item.sample["source_name"]].add("stage_switch", item.sample["key"])

    def _next_raw(self, draw: int) -> tuple[int, dict]:
        index = self.plan.schedule.choose(self.stage, self.plan.seed, self.slot.index, draw)
        return index, self.streams[index].next()

    def _cursors(self) -> list[list[int]]:
        return [s.cursor for s in self.streams]

    def _prepare(self, picked: tuple[int, dict]) -> tuple[Size, dict] | None:
        index, raw = picked
        spec = self.plan.sources[index]
        counter = self.counters[spec.name]
        try:
            record = to_record(raw, spec.task, self.plan.policy.cfg.max_image_pixels)
        except BadSample as exn:
            counter.add(exn.reason, str(exn))
            return None
        multi_source = record["task"] != "und" and len(record["sources"]) > 1
        if record["task"] not in self.plan.tasks or multi_source:
            counter.add("unsupported_task", f"{record['key']}: {record['task']} with {len(record['sources'])} images")
            return None
        # A sample's text may not exceed the token budget (a whole batch's size), nor the VLM's limit
        # (the processor's max_tokens): one 100k-character caption would otherwise be trained whole.
        processor = self.plan.collator.processor
        if processor.too_long(_all_text(record), self.plan.token_budget):
            limit = min(x for x in (self.plan.token_budget, processor.max_tokens) if x is not None)
            counter.add("too_long", f"{record['key']}: text over {limit} tokens")
            return None
        if record["task"] == "und":
            return self._resize_und(record, spec.name)
        return self._resize(record, spec.name)

    def _resize_und(self, record: dict, source_name: str) -> tuple[tuple, dict]:
        """Images at their ViT size; und samples form their own buckets (a batch is one task kind)."""
        policy = self.plan.policy
        sizes = [policy.vit_size(image.size) for image in record["sources"]]
        item = {
            "key": record["key"], "task": "und", "text": record["text"], "source_name": source_name,
            "conversation": record["conversation"],
            "images": [resized(image, size) for image, size in zip(record["sources"], sizes)],
            "tokens": policy.chat_tokens(sizes, record["conversation"]),
        }
        return ("und", *sizes[0]) if sizes else ("und",), item

    def _resize(self, record: dict, source_name: str) -> tuple[Size, dict]:
        policy = self.plan.policy
        size = policy.vae_size(record["target"].size)
        item = {"key": record["key"], "task": record["task"], "text": record["text"], "source_name": source_name,
                "target": resized(record["target"], size), "source": None}
        vit = None
        if record["source"] is not None:
            item["vit_source"], item["source"] = policy.source_pixels(record["source"], size)
            vit = item["vit_source"].size
        item["tokens"] = policy.tokens(size, vit, record["text"])
        return size, item

    def _emit(self, items: list[Pending]) -> TrainBatch | MixedBatch:
        # In the collated order: a row of several sizes holds one group per size.
        items = [p for group in by_target_size(items, lambda p: p.sample).values() for p in group]
        batch = self.plan.collator([p.sample for p in items])
        batch.data_state = {**self.state(), "sources": [p.sample["source_name"] for p in items],
                            "keys": [p.sample["key"] for p in items]}
        return batch

    # ------------------------------------------------------------------ state
    def skipped(self) -> dict[str, dict[str, int]]:
        return {name: c.as_dict() for name, c in self.counters.items()}

    def state(self) -> dict[str, Any]:
        oldest = self.buckets.oldest()
        return {
            "role": self.role, "draw": self.draw, "stage": self.stage,
            "replay_from": oldest.draw if oldest else self.draw,
            "cursors": oldest.sample["cursors"] if oldest else self._cursors(),
            "pending": self.buckets.pending(),
            "skipped": self.skipped(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Rebuild the buckets by replaying draws ``replay_from .. draw - 1`` from the saved cursors."""
        self.stage = int(state["stage"])
        for stream, cursor in zip(self.streams, state["cursors"]):
            stream.seek(cursor)
        waiting = set(state["pending"])
        live = dict(self.counters)
        for counter in self.counters.values():  # replayed skips were counted before the checkpoint
            counter.counts = {}
        for draw in range(int(state["replay_from"]), int(state["draw"])):
            cursors = self._cursors()
            picked = self._next_raw(draw)
            if draw in waiting:
                size, item = self._prepare(picked)  # it was good before, so it is good again
                self.buckets.add(size, Pending(draw, item["tokens"], {**item, "cursors": cursors}))
        for name, counts in state["skipped"].items():
            live[name].counts = dict(counts)
        self.draw = int(state["draw"])


class MixtureDataset(IterableDataset):
    """Endless collated batches of this rank; see the module docstring for the ordering."""

    def __init__(self, plan: MixturePlan):
        self.plan = plan

    def __iter__(self) -> Iterator[TrainBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan
        index = plan.consumed + worker  # this worker's next per-rank batch index
        role = index % workers
        slot = SlotWorker(plan, role, workers)
        if role in plan.roles:
            slot.restore(plan.roles[role])
        while True:
            yield slot.next_batch(index // plan.batches_per_step)
            index += workers


def _all_text(record: dict) -> str:
    """Every text the sample feeds the VLM: the caption or instruction, or the whole conversation."""
    turns = record.get("conversation")
    return "\n".join(str(t["content"]) for t in turns) if turns else record["text"]
