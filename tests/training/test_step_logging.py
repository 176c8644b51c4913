"""training_step calls `self.log` only on the steps Lightning writes: the logger receives exactly
what it received when every step logged."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers.logger import Logger
from torch.utils.data import DataLoader

from lightbagel.training.module import LightBagelModule

KEPT = ("loss/", "train/target_tokens")


class Recorder(Logger):
    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, {k: float(v) for k, v in metrics.items() if k.startswith(KEPT)}))


def _logged(recipe, batches, tmp_path, bar: bool = False, callbacks=()) -> list[tuple[int, dict]]:
    L.seed_everything(0, verbose=False)
    logger = Recorder()
    trainer = L.Trainer(accelerator="cpu", max_steps=len(batches), log_every_n_steps=2, logger=logger,
                        enable_progress_bar=bar, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, callbacks=list(callbacks))
    trainer.fit(LightBagelModule(recipe.config), train_dataloaders=DataLoader(batches, batch_size=None))
    return logger.rows


class BarLoss(L.Callback):
    """The loss each step returned, and the loss the progress bar shows once the step is done."""

    def __init__(self):
        self.returned, self.shown = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.returned.append(float(outputs["loss"]))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.returned:
            self.shown.append(float(trainer.progress_bar_metrics["loss/train"]))


def test_logging_steps_carry_every_value_of_an_every_step_log(tiny_recipe, tiny_model, make_batch, tmp_path,
                                                              monkeypatch):
    batches = [make_batch(tiny_model, n=2, seed=k) for k in range(5)]
    gated = _logged(tiny_recipe, batches, tmp_path / "gated")
    monkeypatch.setattr(LightBagelModule, "_logging_now", lambda self: (True, True))
    every = _logged(tiny_recipe, batches, tmp_path / "every")
    assert gated == every
    assert [step for step, _ in gated] == [1, 3]
    assert all(set(row) == {"loss/train", "loss/flow", "train/target_tokens"} for _, row in gated)


def test_a_progress_bar_shows_every_steps_loss(tiny_recipe, tiny_model, make_batch, tmp_path):
    bar = BarLoss()
    _logged(tiny_recipe, [make_batch(tiny_model, n=2, seed=k) for k in range(4)], tmp_path, bar=True,
            callbacks=[bar])
    assert bar.shown == bar.returned[:-1]
