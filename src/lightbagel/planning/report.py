"""A plan as the tables `lightbagel-plan` prints."""

from __future__ import annotations

from lightbagel.planning.plan import Plan

GIB = 1024**3


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def _b(n: float) -> str:
    return f"{n / 1e9:,.3f} B"


def parameters_table(plan: Plan) -> list[str]:
    rows = [[p.name, f"{p.total:,}", _b(p.total), _b(p.trainable), _b(p.frozen)] for p in plan.parts]
    total = sum(p.total for p in plan.parts)
    trainable = sum(p.trainable for p in plan.parts)
    rows.append(["total", f"{total:,}", _b(total), _b(trainable), _b(total - trainable)])
    return _table(["part", "parameters", "billions", "trainable", "frozen"], rows)


def workload_lines(plan: Plan) -> list[str]:
    w = plan.workload
    n = w.samples
    return [
        f"packed sequence: {w.seq_len:,} tokens = {n['t2i']:.2f} T2I + {n['edit']:.2f} edit samples "
        f"(edit fraction {w.edit_fraction:.2f})",
        f"  T2I:  {w.t2i.text} text + {w.t2i.gen} DiT tokens ({w.image_size} px image)",
        f"  edit: {w.edit.text} text + {w.edit.vit} ViT ({w.edit.vit_patches} patches, {w.vit_size} px) "
        f"+ {w.edit.gen} DiT tokens (source + target)",
    ]


def flops_table(plan: Plan) -> list[str]:
    rows = [[r.name, f"{r.forward / 1e12:,.1f}", f"{r.backward / 1e12:,.1f}", f"{r.model / 1e12:,.1f}",
             f"{r.with_checkpointing / 1e12:,.1f}"] for r in plan.flops]
    fwd, bwd = sum(r.forward for r in plan.flops), sum(r.backward for r in plan.flops)
    ckpt = sum(r.with_checkpointing for r in plan.flops)
    rows.append(["total", *(f"{x / 1e12:,.1f}" for x in (fwd, bwd, fwd + bwd, ckpt))])
    return _table(["TFLOPs / packed sequence", "forward", "backward", "fwd+bwd", "with act. ckpt"], rows)


def memory_table(plan: Plan) -> list[str]:
    m = plan.memory
    g = lambda x: f"{x / GIB:,.2f}"
    rows = [["weights", g(m.weights), g(m.weights)], ["gradients", g(m.gradients), g(m.gradients)],
            ["AdamW state", g(m.optimizer), g(m.optimizer)], ["FSDP all-gather buffers", g(m.gather), g(m.gather)],
            ["activations (1 packed sequence)", g(m.activations), g(m.activations_checkpointed)],
            ["total", g(m.total), g(m.total_checkpointed)]]
    title = f"GiB per GPU, FSDP2 over {m.world} GPUs ({plan.nodes} x {plan.gpus})"
    return _table([title, "no act. ckpt", "act. ckpt"], rows)


def packing_lines(plan: Plan) -> list[str]:
    """The measured data sample: how full batches are and what padding would add."""
    p = plan.packing
    if p is None:
        return []
    fill = "" if p.budget_fill is None else f" = {p.budget_fill:.1%} of data.packing.token_budget {p.budget:,}"
    if p.cap_fill is not None:
        fill += f", {p.cap_fill:.1%} of data.packing.max_tokens {p.max_tokens:,}"
    return [
        f"data sample: {p.batches} batches, {p.samples} samples ({p.mixed} batches of several image sizes); "
        f"{p.real / p.batches:,.0f} real tokens per batch{fill}",
        f"  real tokens / computed token slots: packed rows 100%, padded rows {p.padded_fraction:.1%} "
        f"(the trainer builds {p.layout} rows; the FLOPs below are per packed sequence, real tokens only)",
        "",
    ]


def ideal_flops(plan: Plan, flops: list) -> float:
    """What a step must compute: every part's forward, the backward of trainable parts only, no
    recompute (a frozen part's input gradients and checkpointing's replay are the overhead)."""
    trainable = {p.name for p in plan.parts if p.trainable}
    return sum(r.forward for r in flops) + sum(r.backward for r in flops if r.name in trainable)


def efficiency_lines(plan: Plan) -> list[str]:
    """Computed FLOPs per real token against the ideal, and the cost of `fusion.und_writeback`."""
    ideal = ideal_flops(plan, plan.flops)
    model, ckpt = (sum(getattr(r, k) for r in plan.flops) for k in ("model", "with_checkpointing"))
    lines = [f"computed / ideal FLOPs per real token (ideal: trainable fwd+bwd, frozen fwd only, no recompute): "
             f"{model / ideal:.2f}x without act. ckpt, {ckpt / ideal:.2f}x with it (every block recomputed)"]
    if plan.writeback is not None:
        flipped, other = plan.writeback
        here = "false" if flipped else "true"
        o_model, o_ckpt = (sum(getattr(r, k) for r in other) for k in ("model", "with_checkpointing"))
        lines.append(f"fusion.und_writeback {here} (this recipe): {model / 1e12:,.1f} TFLOPs fwd+bwd "
                     f"({ckpt / 1e12:,.1f} with act. ckpt); {str(flipped).lower()}: {o_model / 1e12:,.1f} "
                     f"({o_ckpt / 1e12:,.1f}), {o_model / model:.2f}x")
    return lines


def format_plan(plan: Plan) -> str:
    lines = [f"plan for {plan.name}", "", *parameters_table(plan), "", *workload_lines(plan), "",
             *packing_lines(plan), *flops_table(plan), *efficiency_lines(plan), "", *memory_table(plan)]
    return "\n".join(lines)
