"""The validation callback runs the synthetic eval on the model being trained and logs it."""

from __future__ import annotations

from types import SimpleNamespace

from lightbagel.evaluation.callback import SyntheticEval
from lightbagel.training.module import LightBagelModule


class _Logger:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, metrics))


def test_callback_logs_scores_every_n_steps_once(tiny_recipe, tmp_path):
    module = LightBagelModule(tiny_recipe.config)
    module.train()
    logger = _Logger()
    callback = SyntheticEval(every_n_steps=2, per_category=1, steps=1, out_dir=tmp_path)
    for step in (1, 2):
        trainer = SimpleNamespace(global_step=step, is_global_zero=True, logger=logger)
        callback.on_train_batch_end(trainer, module, None, None, 0)
    callback.on_train_end(trainer, module)  # step 2 already evaluated: not again
    assert [s for s, _ in logger.logged] == [2]
    assert set(logger.logged[0][1]) >= {"val/overall", "val/edit", "val/counting"}
    assert (tmp_path / "step_000002.md").is_file()
    assert module.training  # back in training mode
