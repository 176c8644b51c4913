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
