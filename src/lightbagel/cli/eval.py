"""`lightbagel-eval`: score a trained model like the paper does, on what the user points at.

Without benchmark arguments it runs the synthetic shapes world (exact scores). Results go to
`<out>/report.md` (markdown tables), `<out>/metrics.json` and an MLflow run: nested under the
training run of the evaluated model, in that run's own store, when the export sits in a
`lightbagel-fit` output folder; else in a store under `<out>`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightbagel.cli.common import Parser, add_trust_flag, at_boundary, check_device, non_negative_int, positive_int
from lightbagel.cli.generate import sampler_args, sampler_overrides
from lightbagel.inference.guidance import TASK_DEFAULTS
from lightbagel.recipe.schema import DTYPE_NAMES

DEFAULT_MODEL = "outputs/tiny/export"


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="lightbagel-eval", description="Evaluate a lightbagel-fit export.",
                                epilog="example: lightbagel-eval outputs/tiny/export --synthetic")
    p.add_argument("models", nargs="*", default=[DEFAULT_MODEL], metavar="model",
                   help=f"export dir(s) (default: {DEFAULT_MODEL}); several are compared in one table")
    p.add_argument("--out", default=None, help="results dir (default: <model>/../eval)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="compute dtype (default: the training one); VAE and rotary tables stay fp32")
    add_trust_flag(p)
    p.add_argument("--synthetic", action="store_true", help="the shapes world (default when nothing else is asked)")
    p.add_argument("--per-category", type=positive_int, default=32, help="synthetic prompts per category")
    p.add_argument("--vqa-per-kind", type=non_negative_int, default=32,
                   help="synthetic questions per kind for the understanding score (0 skips it)")
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
    sampler_args(p, steps=30)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mlflow-uri", default=None, help="tracking URI (default: sqlite under --out; 'none' skips)")
    return p.parse_args(argv)


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
    if args.vqa_per_kind > 0:
        from lightbagel.evaluation.vqa import evaluate_vqa

        vqa = evaluate_vqa(pipe, args.vqa_per_kind, seed=args.seed)
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
    for model in args.models:
        name = Path(model).resolve().parent.name  # the run's output_dir name
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

    pipe = LightBagelPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                              trust_remote_code=args.trust_remote_code)
    cfg = sampler_overrides(args)
    out = Path(args.out) if args.out else Path(args.model).resolve().parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    public_asked = any((args.geneval, args.dpg, args.gedit, args.imgedit))
    metrics, sections = {}, []
    if args.synthetic or not public_asked:
        m, s = run_synthetic(pipe, args, cfg, out)
        metrics.update(m), sections.extend(s)
    m, s = run_public(pipe, args, cfg, out)
    metrics.update(m), sections.extend(s)
    _write(out, args, {task: pipe.default_config(task, **cfg).to_dict() for task in TASK_DEFAULTS},
           metrics, sections)
    return 0


def _write(out: Path, args, samplers: dict, metrics: dict, sections: list[str]) -> None:
    from lightbagel.evaluation.report import log_to_mlflow, metrics_table

    settings = f"model `{args.model}`; sampler per task: {json.dumps(samplers)}"
    text = "\n\n".join([f"# lightbagel-eval\n\n{settings}", *sections, "## All metrics", metrics_table(metrics)])
    (out / "report.md").write_text(text + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(text)
    if args.mlflow_uri != "none":
        from lightbagel.runs.tracking import training_run

        trained = None if args.mlflow_uri else training_run(Path(args.model))
        uri = trained[0] if trained else args.mlflow_uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
        params = {"model": args.model, **{f"sampler.{task}.{k}": v for task, cfg in samplers.items()
                                          for k, v in cfg.items()}}
        t2i = samplers["t2i"]
        name = f"eval {Path(args.model).resolve().parent.name} steps={t2i['steps']} cfg={t2i['text_guidance']:g}"
        files = [out / "report.md", out / "metrics.json"] + [out / "grids"] * (out / "grids").is_dir()
        run_id = log_to_mlflow(metrics, params, uri, run_name=name, parent=trained[1:] if trained else None,
                               artifacts=tuple(files))
        where = f"nested under training run {trained[2]}" if trained else "its own experiment"
        print(f"\nmlflow: run {run_id} in {uri} ({where})")


if __name__ == "__main__":
    sys.exit(main())
