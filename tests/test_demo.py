"""The demo's edit and chat actions (the browser test drives generate): inputs from a rendered
scene, and a one-line message instead of a traceback when an input is missing."""

from __future__ import annotations

import pytest

from lightbagel.demo import SHOWN_SIZE, DemoActions


@pytest.fixture
def actions(tiny_model, tiny_recipe):
    from lightbagel.inference import LightBagelPipeline

    return DemoActions(LightBagelPipeline(tiny_model, tiny_recipe.config))


def test_edit_and_chat_work_on_a_rendered_scene(actions):
    scene = actions.scene("a red circle left of a blue square")
    assert scene.size == (SHOWN_SIZE, SHOWN_SIZE)
    edited = actions.edit(scene, "make the circle green", seed=0, steps=2, cfg_text=4.0, cfg_image=1.5)
    assert edited.size == (SHOWN_SIZE, SHOWN_SIZE)
    assert isinstance(actions.chat(scene, "what color is the circle", max_new_tokens=3), str)


@pytest.mark.parametrize("call, message", [
    (lambda a: a.generate("  ", seed=0, steps=2, cfg_text=4.0), "write a prompt first"),
    (lambda a: a.edit(None, "make it green", seed=0, steps=2, cfg_text=4.0, cfg_image=1.5), "upload a source image"),
    (lambda a: a.chat(None, "what is it", max_new_tokens=3), "upload an image"),
    (lambda a: a.scene("a pink circle"), "cannot draw 'a pink circle'"),
    # A 260 KB prompt: refused by the model's token limit before anything is allocated for it.
    (lambda a: a.generate("red " * 65_000, seed=0, steps=2, cfg_text=4.0), "prompt 1 is longer than the 512 tokens"),
    (lambda a: a.chat(a.scene("a red circle"), "red " * 65_000, max_new_tokens=3), "the question is longer than"),
    (lambda a: a.generate("a red circle", seed=0, steps=2, cfg_text=float("inf")), "text_guidance must be a finite"),
])
def test_a_missing_input_is_one_message(actions, call, message):
    with pytest.raises(ValueError, match=message):
        call(actions)


def test_edit_and_generate_keep_their_tasks_sampler_defaults(actions, monkeypatch):
    """The sliders override steps and guidance only: an edit keeps BAGEL's edit renorm and interval."""
    from lightbagel.inference.guidance import TASK_DEFAULTS

    seen, job = [], actions.pipe.job
    monkeypatch.setattr(actions.pipe, "job", lambda *a, **kw: seen.append(job(*a, **kw).config) or job(*a, **kw))
    scene = actions.scene("a red circle left of a blue square")
    actions.edit(scene, "make the circle green", seed=0, steps=2, cfg_text=3.0, cfg_image=1.5)
    actions.generate("a red circle", seed=0, steps=2, cfg_text=3.0)
    edit, t2i = seen
    assert (edit.renorm, edit.guidance_interval) == (TASK_DEFAULTS["edit"]["renorm"],
                                                     TASK_DEFAULTS["edit"]["guidance_interval"])
    assert (t2i.renorm, t2i.guidance_interval) == (TASK_DEFAULTS["t2i"]["renorm"],
                                                   TASK_DEFAULTS["t2i"]["guidance_interval"])
    assert (edit.steps, edit.text_guidance, edit.image_guidance) == (2, 3.0, 1.5)


def test_the_api_names_each_parameter(actions):
    """gradio names API parameters from the handler's signature: the wrapper must show the action's."""
    from lightbagel.demo import build_demo

    endpoints = build_demo(actions.pipe).get_api_info()["named_endpoints"]
    names = {name: [p["parameter_name"] for p in ep["parameters"]] for name, ep in endpoints.items()}
    assert names["/generate"] == ["prompt", "seed", "steps", "cfg_text"]
    assert names["/edit"] == ["source", "instruction", "seed", "steps", "cfg_text", "cfg_image"]
    assert names["/chat"] == ["image", "question", "max_new_tokens"]
