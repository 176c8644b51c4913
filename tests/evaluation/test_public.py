"""Public benchmark runners write the layouts the official scorers read (tiny fake prompt files)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lightbagel.evaluation import public
from lightbagel.inference import SamplerConfig

FAST = SamplerConfig(steps=1, shift=1.0)


def _source(path):
    Image.new("RGB", (40, 24), (200, 30, 30)).save(path)
    return path


def test_geneval_layout(tiny_pipe, tmp_path):
    meta = tmp_path / "evaluation_metadata.jsonl"
    rows = [{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a red circle"},
            {"tag": "counting", "include": [{"class": "square", "count": 2}], "prompt": "two blue squares"}]
    meta.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    jobs = public.geneval_jobs(meta, tmp_path / "out", samples=2)
    assert public.run_jobs(tiny_pipe, jobs, FAST, batch_size=3) == 4
    for i, row in enumerate(rows):
        folder = tmp_path / "out" / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == row
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["00000.png", "00001.png"]


def test_dpg_bench_writes_a_grid_per_prompt(tiny_pipe, tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "item_a.txt").write_text("a red circle left of a blue square\n")
    (prompts / "item_b.txt").write_text("a green triangle\n")
    jobs = public.dpg_jobs(prompts, tmp_path / "out", samples=4)
    public.run_jobs(tiny_pipe, jobs, FAST, batch_size=3)  # a prompt's samples span two batches
    for name in ("item_a", "item_b"):
        assert Image.open(tmp_path / "out" / f"{name}.png").size == (64, 64)  # 2x2 grid of 32 px images
    with pytest.raises(ValueError, match="prompt files"):
        public.dpg_jobs(tmp_path / "out" / "nothing", tmp_path / "x")


def test_gedit_layout_and_language_filter(tiny_pipe, tmp_path):
    _source(tmp_path / "src.png")
    rows = [{"key": "k1", "task_type": "color_alter", "instruction": "make the circle green",
             "instruction_language": "en", "input_image": "src.png"},
            {"key": "k2", "task_type": "subject-remove", "instruction": "remove the square",
             "instruction_language": "cn", "input_image": "src.png"}]
    data = tmp_path / "gedit.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    jobs = public.gedit_jobs(data, tmp_path / "out", language="en")
    assert len(jobs) == 1
    public.run_jobs(tiny_pipe, jobs, FAST)
    assert (tmp_path / "out" / "fullset" / "color_alter" / "en" / "k1.png").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": "k"}))
    with pytest.raises(ValueError, match="GEdit-Bench fields"):
        public.gedit_jobs(bad, tmp_path / "out")


def test_imgedit_layout(tiny_pipe, tmp_path):
    (tmp_path / "singleturn" / "animal").mkdir(parents=True)
    _source(tmp_path / "singleturn" / "animal" / "000001.jpg")
    edits = {"1082": {"id": "animal/000001.jpg", "prompt": "make the circle green", "edit_type": "alter"}}
    (tmp_path / "basic_edit.json").write_text(json.dumps(edits))
    jobs = public.imgedit_jobs(tmp_path / "basic_edit.json", tmp_path / "singleturn", tmp_path / "out")
    public.run_jobs(tiny_pipe, jobs, FAST)
    # A 40 x 24 source: the output keeps its aspect, bucketed by the training rules (32 px long side).
    assert Image.open(tmp_path / "out" / "1082.png").size == tiny_pipe.policy.vae_size((40, 24)) == (32, 16)
