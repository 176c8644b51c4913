"""What the precision tests look at in a training run, in one process or under FSDP2 (run_tiny.py).

`PrecisionProbe` records, once the model is set up for training: every parameter's and buffer's
stored dtype and the trainable weights (full, gathered under FSDP2); during the first forward,
the dtype each watched module computes with; at the end, the trained weights and the dtypes of
the AdamW state.
"""

from __future__ import annotations

import lightning as L
import torch

# Watched in the first forward: (module, what is read) -> the dtype it holds.
WEIGHT_SEEN = {
    "fusion.0.gen.to_q": "weight",  # fusion: bf16 compute copy
    "gen.dit.blocks.0.ffn.net.2": "weight",  # a Wan block's layers: bf16 compute copy
    "gen.dit.condition_embedder.time_embedder.linear_1": "weight",  # fp32
}
OUTPUT_SEEN = ("fusion.0.gen.to_q", "gen.dit.blocks.0.ffn", "gen.dit.condition_embedder.time_embedder",
               "gen.dit.condition_embedder.time_proj", "gen.vae.vae.encoder.conv_in")
TABLE = "gen.dit.blocks.0.scale_shift_table"  # read while the block's ffn runs


def full_trainable(module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if torch.distributed.is_initialized():
        state = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = module.model.state_dict()
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone().contiguous() for k, v in state.items() if k in trainable}


def tensor_dtypes(value) -> set[torch.dtype]:
    """The dtypes of the floating tensors in a tensor, tuple or list (a rotary table's cos/sin)."""
    if isinstance(value, torch.Tensor):
        return {value.dtype} if value.is_floating_point() else set()
    if isinstance(value, (tuple, list)):
        return set().union(*map(tensor_dtypes, value)) if value else set()
    return set()


class PrecisionProbe(L.Callback):
    """Also, in the first training step: the dtypes of the rotary tables each fusion block is handed,
    and how many times an attention mask is built (fusion/mask.py `BUILDERS`)."""

    def __init__(self):
        self.params, self.buffers, self.seen, self.state_dtypes = {}, {}, {}, set()
        self.rope, self.mask_builds, self._builders = {}, 0, None
        self.initial = self.final = None
        self._hooks = []

    def on_train_start(self, trainer, pl_module) -> None:
        model = pl_module.model
        self.params = {n: p.dtype for n, p in model.named_parameters()}
        self.buffers = {n: b.dtype for n, b in model.named_buffers()}
        self.trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        self.initial = full_trainable(pl_module)
        self._watch(model)

    def _watch(self, model) -> None:
        modules = dict(model.named_modules())
        for name, attr in WEIGHT_SEEN.items():
            self._hooks.append(modules[name].register_forward_pre_hook(self._record(name, attr)))
        for name in OUTPUT_SEEN:
            if name in modules:
                self._hooks.append(modules[name].register_forward_hook(self._record_output(name)))
        block = modules[TABLE.rpartition(".")[0]]
        self._hooks.append(block.ffn.register_forward_pre_hook(self._record_table(block)))
        for i, fusion in enumerate(model.fusion):
            self._hooks.append(fusion.register_forward_pre_hook(self._record_rope(f"fusion.{i}")))

    def _record_rope(self, name: str):
        def hook(module, args):  # forward(h_und, h_gen, mask, rope_und, rope_gen)
            for stream, rope in (("und", args[3]), ("gen", args[4])):
                dtypes = sorted(str(d).removeprefix("torch.") for d in tensor_dtypes(rope))
                self.rope.setdefault(f"{name}.{stream}", dtypes)
        return hook

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from lightbagel.fusion import mask

        if trainer.global_step == 0 and self._builders is None:
            self._builders = dict(mask.BUILDERS)
            for name, build in self._builders.items():
                mask.BUILDERS[name] = self._counted(build)

    def _counted(self, build):
        def counted(order_mask):
            self.mask_builds += 1
            return build(order_mask)
        return counted

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from lightbagel.fusion import mask

        if self._builders is not None:
            mask.BUILDERS.update(self._builders)
            self._builders = {}  # counted once: the first step only

    def _record(self, name: str, attr: str):
        def hook(module, args):
            self.seen.setdefault(f"{name}.{attr}", getattr(module, attr).dtype)
        return hook

    def _record_output(self, name: str):
        def hook(module, args, output):
            self.seen.setdefault(f"{name}:output", output.dtype)
        return hook

    def _record_table(self, block):
        def hook(module, args):
            self.seen.setdefault(TABLE, block.scale_shift_table.dtype)
        return hook

    def on_train_end(self, trainer, pl_module) -> None:
        for hook in self._hooks:
            hook.remove()
        self.final = full_trainable(pl_module)
        for state in trainer.optimizers[0].state.values():
            self.state_dtypes.update(v.dtype for k, v in state.items() if k in ("exp_avg", "exp_avg_sq"))

    def report(self) -> dict:
        names = lambda d: {k: str(v).removeprefix("torch.") for k, v in d.items()}  # noqa: E731
        return {"params": names(self.params), "buffers": names(self.buffers), "seen": names(self.seen),
                "trainable": self.trainable, "rope": self.rope, "mask_builds": self.mask_builds,
                "state_dtypes": sorted(str(d).removeprefix("torch.") for d in self.state_dtypes)}
