"""lightbagel-eval end to end on a saved tiny export: table, metrics.json, MLflow run."""

from __future__ import annotations

import json

from lightbagel.cli.eval import main


def test_synthetic_eval_writes_table_metrics_and_mlflow(tiny_export, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main([str(tiny_export), "--out", str(out), "--per-category", "1", "--steps", "1", "--vqa-per-kind", "1",
               "--mlflow-uri", f"sqlite:///{tmp_path / 'ml.db'}"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| color_attr |" in printed and "| edit |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["synthetic/overall"] <= 1.0
    assert "| caption |" in printed and 0.0 <= metrics["vqa/overall"] <= 1.0  # understanding beside generation
    assert (out / "report.md").read_text().startswith("# lightbagel-eval")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ml.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lightbagel-eval").experiment_id])
    assert runs[0].data.metrics["synthetic/overall"] == metrics["synthetic/overall"]
    # The report files go beside the store, not into ./mlruns of the working directory.
    assert {p.name for p in (tmp_path / "mlartifacts").rglob("*.md")} == {"report.md"}
    grids = {a.path for a in client.list_artifacts(runs[0].info.run_id, "grids")}
    assert {"grids/single_object.png", "grids/edit.png"} <= grids


def test_public_runner_only_and_bad_input(tiny_export, tmp_path, capsys):
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"tag": "colors", "prompt": "a red circle"}) + "\n")
    out = tmp_path / "eval"
    assert main([str(tiny_export), "--out", str(out), "--geneval", str(meta), "--samples", "1", "--steps", "1",
                 "--mlflow-uri", "none"]) == 0
    assert (out / "geneval" / "00000" / "samples" / "00000.png").is_file()
    assert not (out / "synthetic").exists()  # only what was asked
    assert main([str(tiny_export), "--out", str(out), "--imgedit", str(meta), "--mlflow-uri", "none"]) == 2
    assert "--imgedit-images" in capsys.readouterr().err


def test_vqa_is_skipped_with_a_note_when_the_vlm_was_never_trained(tiny_export, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main([str(tiny_export), "--out", str(out), "--per-category", "1", "--steps", "1",
                 "--mlflow-uri", "none"]) == 0
    assert "VQA skipped" in capsys.readouterr().err
    assert "VQA skipped" in (out / "report.md").read_text()
    assert not any(k.startswith("vqa/") for k in json.loads((out / "metrics.json").read_text()))


def test_each_eval_gets_a_folder_named_by_step_and_changed_settings(tmp_path):
    from lightbagel.cli.eval import eval_dir, eval_name, parse_args
    from lightbagel.model_folder import point_export, version_dir, write_info

    version = version_dir(tmp_path / "run", 1500)
    write_info(version, step=1500)
    point_export(tmp_path / "run", version)
    model = str(tmp_path / "run" / "export")
    args = parse_args([model, "--seed", "1", "--per-category", "8", "--batch-size", "4"])
    args.model = model
    assert eval_name(args) == "step-1500 per-category=8 seed=1"  # batch size changes no result
    plain = parse_args([model])
    plain.model = model
    assert eval_name(plain) == "step-1500"
    first = eval_dir(args)
    assert first == (tmp_path / "run" / "eval" / "step-1500_per-category=8_seed=1").resolve()
    first.mkdir(parents=True)
    assert eval_dir(args) == first.with_name(first.name + "-2")  # a second eval never overwrites the first
