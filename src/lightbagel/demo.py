"""The web demo: generate, edit and chat tabs over one `LightBagelPipeline`, on gradio.

`lightbagel-demo --model outputs/tiny/export` serves it (cli/demo.py). Every tab has a seed and
the guidance scales the command-line tools take; sampling reports its steps to gradio's
progress bar through the sampler's tqdm loop.
"""

from __future__ import annotations

import inspect
from typing import Optional

from PIL import Image

from lightbagel.data.images import enlarged, to_rgb
from lightbagel.inference.guidance import TASK_DEFAULTS
from lightbagel.shapes import render
from lightbagel.shapes.captions import scene_from_caption

EXAMPLE_SCENE = "a red circle left of a blue square"
SHOWN_SIZE = 256  # outputs are upscaled (nearest) so a 32 px tiny-model image is visible


def _shown(image: Image.Image) -> Image.Image:
    return enlarged(image, SHOWN_SIZE)


class DemoActions:
    """What the buttons do, testable without a browser."""

    def __init__(self, pipe):
        self.pipe = pipe

    def generate(self, prompt: str, seed: float, steps: float, cfg_text: float) -> Image.Image:
        cfg = dict(steps=int(steps), text_guidance=float(cfg_text))  # over the text-to-image defaults
        return _shown(self.pipe(_required(prompt, "prompt"), config=cfg, seed=int(seed), progress=True).images[0])

    def edit(self, source: Optional[Image.Image], instruction: str, seed: float, steps: float, cfg_text: float,
             cfg_image: float) -> Image.Image:
        if source is None:
            raise ValueError("upload a source image, or draw one with 'Render scene'")
        # Overrides on the edit task's defaults (renorm, guidance interval), not text-to-image's.
        cfg = dict(steps=int(steps), text_guidance=float(cfg_text), image_guidance=float(cfg_image))
        out = self.pipe(_required(instruction, "instruction"), images=to_rgb(source), config=cfg,
                        seed=int(seed), progress=True)
        return _shown(out.images[0])

    def chat(self, image: Optional[Image.Image], question: str, max_new_tokens: float) -> str:
        if image is None:
            raise ValueError("upload an image to ask about, or draw one with 'Render scene'")
        return self.pipe.understand(_required(question, "question"), [to_rgb(image)],
                                    max_new_tokens=int(max_new_tokens))

    @staticmethod
    def scene(caption: str) -> Image.Image:
        return render(scene_from_caption(caption), SHOWN_SIZE)


def _required(text: str, what: str) -> str:
    if not (text or "").strip():
        raise ValueError(f"write a {what} first")
    return text.strip()


def build_demo(pipe, title: str = "lightbagel"):
    """The gradio Blocks app; errors in an action show as a gradio error message, not a traceback."""
    import gradio as gr

    actions = DemoActions(pipe)
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nOne model that generates, edits and answers questions about images.")
        with gr.Tab("Generate"):
            _generate_tab(gr, actions)
        with gr.Tab("Edit"):
            _edit_tab(gr, actions)
        with gr.Tab("Chat"):
            _chat_tab(gr, actions)
    return demo


def _sampling(gr, image_guidance: bool = False) -> list:
    task = TASK_DEFAULTS["edit" if image_guidance else "t2i"]  # the sliders start at the task's defaults
    with gr.Row():
        controls = [gr.Number(value=0, precision=0, label="seed"),
                    gr.Slider(1, 100, value=task["steps"], step=1, label="steps"),
                    gr.Slider(1.0, 10.0, value=task["text_guidance"], step=0.5, label="text CFG")]
        if image_guidance:
            image_cfg = task["image_guidance"]
            controls.append(gr.Slider(1.0, 5.0, value=image_cfg, step=0.1, label="image CFG"))
    return controls


def _generate_tab(gr, actions: DemoActions) -> None:
    prompt = gr.Textbox(value=EXAMPLE_SCENE, label="prompt", elem_id="generate-prompt")
    controls = _sampling(gr)
    button = gr.Button("Generate", variant="primary", elem_id="generate-button")
    output = gr.Image(label="generated", type="pil", format="png", elem_id="generate-output")
    button.click(_guarded(gr, actions.generate), [prompt, *controls], output)


def _edit_tab(gr, actions: DemoActions) -> None:
    with gr.Row():
        source = gr.Image(label="source (upload, or render a scene below)", type="pil", elem_id="edit-source")
        output = gr.Image(label="edited", type="pil", format="png", elem_id="edit-output")
    _scene_row(gr, actions, source, "edit")
    instruction = gr.Textbox(value="make the circle green", label="instruction", elem_id="edit-instruction")
    controls = _sampling(gr, image_guidance=True)
    button = gr.Button("Edit", variant="primary", elem_id="edit-button")
    button.click(_guarded(gr, actions.edit), [source, instruction, *controls], output)


def _chat_tab(gr, actions: DemoActions) -> None:
    image = gr.Image(label="image", type="pil", elem_id="chat-image")
    _scene_row(gr, actions, image, "chat")
    question = gr.Textbox(value="what color is the circle", label="question", elem_id="chat-question")
    max_tokens = gr.Slider(1, 128, value=32, step=1, label="max new tokens")
    button = gr.Button("Ask", variant="primary", elem_id="chat-button")
    answer = gr.Textbox(label="answer", elem_id="chat-answer")
    gr.Markdown("The tiny model's VLM is random: its answers are noise. Chat is meant for real VLM cards.")
    button.click(_guarded(gr, actions.chat), [image, question, max_tokens], answer)


def _scene_row(gr, actions: DemoActions, target, prefix: str) -> None:
    with gr.Row():
        caption = gr.Textbox(value=EXAMPLE_SCENE, label="scene caption", elem_id=f"{prefix}-caption")
        button = gr.Button("Render scene", elem_id=f"{prefix}-render")
    button.click(_guarded(gr, actions.scene), [caption], target)


def _guarded(gr, action):
    """The action with gradio's progress tracking, its ValueErrors shown as one-line gr.Error.

    The wrapper shows gradio the action's own parameters (plus `progress`, which gradio fills in),
    so the API page names them (`prompt`, `seed`, ...) instead of `param_0`."""
    own = list(inspect.signature(action).parameters.values())

    def run(*args):
        try:
            return action(*args[:len(own)])  # gradio passes the progress tracker after the inputs
        except ValueError as err:
            raise gr.Error(str(err)) from None

    tracker = inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                default=gr.Progress(track_tqdm=True))
    run.__signature__ = inspect.Signature([*own, tracker])
    run.__name__ = run.__qualname__ = action.__name__
    run.__doc__ = action.__doc__
    return run
