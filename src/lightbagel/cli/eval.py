"""`lightbagel-eval`: score a trained model like the paper does, on what the user points at.

Without benchmark arguments it runs the synthetic shapes world (exact scores). Each eval gets
its own folder, `<run>/eval/step-N[ setting=value ...]` (numbered when that one exists), holding
`report.md` (every setting, then markdown tables) and `metrics.json`, and its own MLflow run of
the same name: nested under the training run of the evaluated model, in that run's store, when
the export sits in a `lightbagel-fit` output folder; else in a store under `<out>`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightbagel.cli.common import (
    Parser,
    add_device_flag,
    add_threads_flag,
    add_trust_flag,
    at_boundary,
    check_device,
    non_negative_int,
    positive_int,
)
from lightbagel.cli.generate import sampler_args, sampler_overrides
from lightbagel.inference.guidance import TASK_DEFAULTS
from lightbagel.recipe.schema import DTYPE_NAMES

DEFAULT_MODEL = "outputs/tiny/export"
# Options that say where results go or how fast they come, not what is measured: left out of an
# eval's name (the settings that differ from the defaults), kept in its report.
NOT_SETTINGS = ("models", "model", "out", "mlflow_uri", "threads", "batch_size", "device", "trust_remote_code",
                "vqa_scored")
SKIPPED_VQA = ("VQA skipped: this model's VLM is random and was never trained (its answers are noise); "
               "pass --vqa-per-kind N to score it anyway")


def parser() -> Parser:
    p = Parser(prog="lightbagel-eval", description="Evaluate a lightbagel-fit export.",
               epilog="example: lightbagel-eval outputs/tiny/export --synthetic")
    p.add_argument("models", nargs="*", default=[DEFAULT_MODEL], metavar="model",
                   help="export dir(s); several are compared in one table")
    p.add_argument("--out", default=None,
                   help="results dir (default: a new <run>/eval/step-N[ setting=value ...] per eval)")
    add_device_flag(p)
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="compute dtype (default: the training one); VAE and rotary tables stay fp32")
    add_trust_flag(p)
    p.add_argument("--synthetic", action="store_true", help="the shapes world (default when nothing else is asked)")
    p.add_argument("--per-category", type=positive_int, default=32, help="synthetic prompts per category")
    p.add_argument("--vqa-per-kind", type=non_negative_int, default=None,
                   help="synthetic questions per kind for the understanding score; 0 skips it (default: 32, "
                        "or 0 when the model's VLM was never trained)")
    p.add_argument("--geneval", type=Path, help="GenEval evaluation_metadata.jsonl")
    p.add_argument("--dpg", type=Path, help="DPG-Bench prompts/ directory of <id>.txt")
    p.add_argument("--gedit", type=Path, help="GEdit-Bench rows (.jsonl/.json/.parquet)")
    p.add_argument("--gedit-language", default=None, help="only rows of this instruction_language (en, cn)")
    p.add_argument("--imgedit", type=Path, help="ImgEdit basic_edit.json")
    p.add_argument("--imgedit-images", type=Path, help="ImgEdit image root (Benchmark/singleturn)")
    p.add_argument("--samples", type=positive_int, default=4, help="images per prompt for GenEval and DPG-Bench")
    p.add_argument("--size", type=positive_int, default=None,
                   help="image side for public benchmarks (default: recipe's)")
    p.add_argument("--fid-feature", help="package.module:factory returning an nn.Module image -> features")
    p.add_argument("--clip-model", type=Path, help="local CLIP dir (CLIPModel + CLIPProcessor) for CLIP score")
    sampler_args(p)
    p.add_argument("--batch-size", type=positive_int, default=32, help="images sampled in one forward")
    p.add_argument("--seed", type=int, default=0, help="prompt and image seed")
    p.add_argument("--mlflow-uri", default=None,
                   help="tracking URI (default: the training run's store, else sqlite under --out; 'none' skips)")
    add_threads_flag(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def changed_settings(args) -> dict:
    """The settings of this eval that differ from lightbagel-eval's defaults (what names it)."""
    defaults = parser()
    return {k: v for k, v in vars(args).items()
            if k not in NOT_SETTINGS and v != defaults.get_default(k)}


def eval_name(args) -> str:
    """`step-1500` (the export's step) plus each changed setting: `step-1500 seed=1 per-category=8`."""
    from lightbagel.model_folder import export_info

    step = export_info(Path(args.model)).get("step")
    head = f"step-{step}" if isinstance(step, int) else Path(args.model).resolve().name
    shown = [f"{k.replace('_', '-')}={' '.join(map(str, v)) if isinstance(v, list) else v}"
             for k, v in changed_settings(args).items()]
    return " ".join([head, *shown])


def eval_dir(args) -> Path:
    """`--out`, else a folder of this eval's own under the run's `eval/`, numbered if that name is taken."""
    from lightbagel.model_folder import run_folder

    if args.out:
        return Path(args.out)
    first = run_folder(Path(args.model)) / "eval" / eval_name(args).replace(" ", "_").replace("/", "-")
    found, n = first, 2
    while found.exists():
        found, n = first.with_name(f"{first.name}-{n}"), n + 1
    return found


def run_synthetic(pipe, args, cfg, out: Path) -> tuple[dict, list[str]]:
    from lightbagel import shapes
    from lightbagel.evaluation.synthetic import EDIT, evaluate_synthetic

    report = evaluate_synthetic(pipe, args.per_category, seed=args.seed, config=cfg, batch_size=args.batch_size,
                                image_seed=args.seed)
    report.save_images(out / "synthetic")
    report.save_grids(out / "grids")
    metrics = report.metrics("synthetic/")
    from lightbagel.evaluation.heldout import heldout_loss

    data = pipe.recipe.data
    losses = heldout_loss(pipe.model, data.image_size, data.vit_image_size)
    metrics.update({f"synthetic/{k}": v for k, v in losses.items()})
    sections = ["## Synthetic shapes world (exact scores)", report.to_markdown()]
    if args.vqa_scored == 0 and args.vqa_per_kind is None:
        sections += ["## Understanding", SKIPPED_VQA]
        print(f"lightbagel-eval: {SKIPPED_VQA}", file=sys.stderr)
    if args.vqa_scored > 0:
        from lightbagel.evaluation.vqa import evaluate_vqa

        vqa = evaluate_vqa(pipe, args.vqa_scored, seed=args.seed)
        metrics.update(vqa.metrics("vqa/"))
        sections += ["## Understanding: exact VQA on held-out scenes", vqa.to_markdown()]
    t2i = [(it, im) for it, im in report.images if it.category != EDIT]
    if args.fid_feature:
        from lightbagel.evaluation.metrics import fid, load_feature_model

        real = [shapes.render(it.scene, pipe.image_size) for it, _ in t2i]
        metrics["synthetic/fid"] = fid(real, [im for _, im in t2i], load_feature_model(args.fid_feature))
    if args.clip_model:
        from lightbagel.evaluation.metrics import clip_score

        metrics["synthetic/clip_score"] = clip_score([im for _, im in t2i], [it.prompt for it, _ in t2i],
                                                     args.clip_model)
    return metrics, sections


def run_public(pipe, args, cfg, out: Path) -> tuple[dict, list[str]]:
    from lightbagel.evaluation import public

    planned = []
    if args.geneval:
        planned.append(("geneval", public.geneval_jobs(args.geneval, out / "geneval", args.samples)))
    if args.dpg:
        planned.append(("dpg_bench", public.dpg_jobs(args.dpg, out / "dpg_bench", args.samples)))
    if args.gedit:
        planned.append(("gedit_bench", public.gedit_jobs(args.gedit, out / "gedit_bench", args.gedit_language)))
    if args.imgedit:
        if not args.imgedit_images:
            raise ValueError("--imgedit needs --imgedit-images ROOT (the folder basic_edit.json ids are under)")
        planned.append(("imgedit", public.imgedit_jobs(args.imgedit, args.imgedit_images, out / "imgedit")))
    metrics, lines = {}, []
    for name, jobs in planned:
        n = public.run_jobs(pipe, jobs, cfg, args.batch_size, args.seed, desc=name, size=args.size)
        metrics[f"{name}/images"] = float(n)
        lines.append(f"| {name} | {len(jobs)} | {n} | {out / name} |")
    if not lines:
        return metrics, []
    table = ["| benchmark | prompts | images | written to (score with the official scorer) |", "|---|---:|---:|---|"]
    return metrics, ["## Public benchmarks (generation only)", "\n".join(table + lines)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if len(args.models) == 1:
        args.model = args.models[0]
        return evaluate_one(args)
    return compare(args)


def compare(args) -> int:
    """Evaluates every model with the same settings and prints one table, a row per model."""
    from lightbagel.evaluation.report import comparison_table

    root = Path(args.out) if args.out else Path("outputs/compare")
    rows = {}
    from lightbagel.model_folder import run_folder

    for model in args.models:
        name = run_folder(Path(model)).name
        one = argparse.Namespace(**{**vars(args), "model": model, "out": str(root / name)})
        if evaluate_one(one) != 0:
            return 2
        rows[name] = json.loads((root / name / "metrics.json").read_text())
    table = comparison_table(rows)
    (root / "comparison.md").write_text(table + "\n")
    print(f"\n## Comparison ({len(rows)} models)\n\n{table}\n\nwritten to {root / 'comparison.md'}")
    return 0


def evaluate_one(args) -> int:
    return at_boundary("lightbagel-eval", lambda: _evaluate_one(args))


def _evaluate_one(args) -> int:
    check_device(args.device)
    from lightbagel.inference import LightBagelPipeline
    from lightbagel.threads import apply_threads

    pipe = LightBagelPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                              trust_remote_code=args.trust_remote_code)
    apply_threads(args.threads, pipe.recipe.trainer.num_threads)
    # A VLM nothing trained scores 0 on every question: not worth its minutes unless asked for.
    args.vqa_scored = args.vqa_per_kind if args.vqa_per_kind is not None else 32 * pipe.understanding_trained
    cfg = sampler_overrides(args)
    out = eval_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    public_asked = any((args.geneval, args.dpg, args.gedit, args.imgedit))
    metrics, sections = {}, []
    if args.synthetic or not public_asked:
        m, s = run_synthetic(pipe, args, cfg, out)
        metrics.update(m), sections.extend(s)
    m, s = run_public(pipe, args, cfg, out)
    metrics.update(m), sections.extend(s)
    _write(out, args, {task: pipe.default_config(task, **cfg).to_dict() for task in TASK_DEFAULTS},
           metrics, sections, pipe.recipe.trainer.mlflow.tracking_uri)
    return 0


def settings(args) -> dict:
    """Every setting of this eval, by flag name, with the export it read (the versioned folder)."""
    shown = {k.replace("_", "-"): v for k, v in vars(args).items() if k not in ("models", "model", "mlflow_uri")}
    return {"model": args.model, "export": str(Path(args.model).resolve()), **shown}


def settings_table(args, samplers: dict) -> str:
    rows = [f"| {k} | `{v}` |" for k, v in settings(args).items()]
    rows += [f"| sampler {task} | `{json.dumps(cfg)}` |" for task, cfg in samplers.items()]
    return "\n".join(["## Settings", "", "| setting | value |", "|---|---|", *rows])


def _write(out: Path, args, samplers: dict, metrics: dict, sections: list[str], store: str | None) -> None:
    from lightbagel.evaluation.report import log_to_mlflow, metrics_table

    text = "\n\n".join([f"# lightbagel-eval {eval_name(args)}", settings_table(args, samplers), *sections,
                          "## All metrics", metrics_table(metrics)])
    (out / "report.md").write_text(text + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(text)
    if args.mlflow_uri != "none":
        from lightbagel.runs.tracking import training_run

        trained = None if args.mlflow_uri else training_run(Path(args.model), store)
        uri = trained[0] if trained else args.mlflow_uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
        params = {**settings(args), **{f"sampler.{task}.{k}": v for task, cfg in samplers.items()
                                       for k, v in cfg.items()}}
        name = f"eval {eval_name(args)}"
        files = [out / "report.md", out / "metrics.json"] + [out / "grids"] * (out / "grids").is_dir()
        run_id = log_to_mlflow(metrics, params, uri, run_name=name, parent=trained[1:] if trained else None,
                               artifacts=tuple(files))
        where = f"nested under training run {trained[2]}" if trained else "its own experiment"
        print(f"\nmlflow: run {run_id} in {uri} ({where})")


if __name__ == "__main__":
    sys.exit(main())
