"""The understanding objective: answer-token cross-entropy of the VLM on `und` samples."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from lightbagel import shapes
from lightbagel.data.chat import ChatBatch, collate_chat
from lightbagel.data.datamodule import MixtureDataModule
from lightbagel.inference import LightBagelPipeline
from lightbagel.model import build_model
from lightbagel.recipe import load_recipe
from lightbagel.shapes import questions
from lightbagel.training.module import LightBagelModule, answer_loss, objective_tasks

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"
VLM_TRAINING = ["understanding.freeze=false", "objective.und_weight=1.0", "objective.flow_weight=0.0"]


def test_answer_loss_reads_answer_tokens_only():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    mask = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    loss = answer_loss(logits, ids, mask)
    question = ids.clone()
    question[0, 2] = (ids[0, 2] + 1) % 11  # a question token's label
    question[1, 5] = (ids[1, 5] + 1) % 11  # a token after the answer
    assert torch.equal(answer_loss(logits, question, mask), loss)
    answer = ids.clone()
    answer[0, 4] = (ids[0, 4] + 1) % 11
    assert not torch.equal(answer_loss(logits, answer, mask), loss)
    # Which logit predicts which token: position j - 1 predicts answer token j, nothing else.
    by_hand = torch.stack([-logits[b, j - 1].log_softmax(-1)[ids[b, j]] for b, j in mask.nonzero().tolist()])
    torch.testing.assert_close(loss, by_hand.mean())


def test_objective_decides_which_tasks_train():
    paper = load_recipe(TINY).config
    assert objective_tasks(paper) == ("t2i", "edit")
    assert objective_tasks(load_recipe(TINY, VLM_TRAINING).config) == ("und",)
    with pytest.raises(ValueError, match="understanding.freeze=false"):
        LightBagelModule(load_recipe(TINY, ["objective.und_weight=1.0"]).config)


def test_und_samples_flow_from_shards_to_loss(tmp_path):
    overrides = [*VLM_TRAINING, f"data.root={tmp_path}", "data.num_samples=24", "data.shuffle_buffer=1",
                 "data.task_weights={t2i: 0.0, edit: 0.0, und: 1.0}"]
    cfg = load_recipe(TINY, overrides).config
    module = LightBagelModule(cfg)
    processor = module.model.und.processor
    data = MixtureDataModule(cfg.data, processor, tmp_path, vae_multiple=4, tasks=objective_tasks(cfg))
    data.prepare_data()
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, ChatBatch) and len(batch) > 1
    # The marked tokens are the assistant turns of the shard's conversations, each closed by <|im_end|>.
    first = processor.tokenizer.decode(batch.und.input_ids[0][batch.answer_mask[0]]).split("<|im_end|>")
    assert len(first) == questions_per_sample() + 1 and all(a.strip() for a in first[:-1])

    loss = module.training_step(batch, 0)
    loss.backward()
    vlm_grads = [p.grad for p in module.model.und.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and vlm_grads and any(g.abs().sum() > 0 for g in vlm_grads)
    assert all(p.grad is None for p in module.model.gen.parameters())


def questions_per_sample() -> int:
    from lightbagel.shapes.shards import UND_TURNS

    return UND_TURNS


def test_tiny_vlm_overfits_one_scene_and_answers_it():
    cfg = load_recipe(TINY, VLM_TRAINING).config
    torch.manual_seed(0)
    model = build_model(cfg)
    scene = shapes.Scene([shapes.ShapeObject("circle", "red", 0.3, 0.5, 0.3),
                          shapes.ShapeObject("square", "blue", 0.75, 0.5, 0.3)])
    image = shapes.render(scene, 32)
    asked = [questions.ask(random.Random(k), scene, kind) for k, kind in enumerate(questions.KINDS)]
    samples = [{"conversation": [{"role": "user", "content": "<image>" + q.question},
                                 {"role": "assistant", "content": q.answer}], "images": [image], "text": q.question}
               for q in asked]
    batch = collate_chat(model.und.processor, samples)
    optimizer = torch.optim.AdamW(model.und.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        answer_loss(model.vlm_logits(batch.und), batch.und.input_ids, batch.answer_mask).backward()
        optimizer.step()
    pipe = LightBagelPipeline(model, cfg)
    assert [pipe.understand(q.question, [image]) for q in asked] == [q.answer for q in asked]


def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    from lightbagel.recipe.schema import OptimConfig
    from lightbagel.training.module import lr_factor

    cosine = lr_factor(OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1), max_steps=110)
    values = [cosine(s) for s in range(110)]
    assert values[0] == 0.1 and values[9] == 1.0  # linear warmup
    assert all(a >= b for a, b in zip(values[9:], values[10:])) and abs(cosine(110) - 0.1) < 1e-9
    constant = lr_factor(OptimConfig(warmup_steps=10), max_steps=110)
    assert constant(9) == constant(109) == 1.0
