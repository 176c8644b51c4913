"""Where evaluation results go: a markdown table on disk and metrics in MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lightbagel.recipe.compose import PARAM_MAX_CHARS


def metrics_table(metrics: dict[str, float]) -> str:
    """A two-column markdown table of any flat metrics."""
    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    return "\n".join(lines)


def log_to_mlflow(metrics: dict[str, float], params: dict[str, object], tracking_uri: str,
                  experiment: str = "lightbagel-eval", run_name: Optional[str] = None,
                  artifacts: tuple[Path, ...] = (), parent: Optional[tuple[str, str]] = None) -> str:
    """One MLflow run holding the metrics, the settings and the report files; returns its id.

    `parent` = (experiment id, run id): the run is nested under that run (the training run of the
    evaluated model), so training and its evaluations show side by side in one UI.
    """
    import mlflow

    from lightbagel.runs import tracking

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if parent is None:
        experiment_id = tracking.experiment_id(client, experiment, _artifacts_beside(tracking_uri))
    else:
        experiment_id = parent[0]
    tags = {"mlflow.parentRunId": parent[1]} if parent is not None else None
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, str(value)[:PARAM_MAX_CHARS])
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    for path in artifacts:  # a folder goes in whole, under its own name
        if Path(path).is_dir():
            client.log_artifacts(run_id, str(path), Path(path).name)
        else:
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def _artifacts_beside(tracking_uri: str) -> Optional[str]:
    """A local sqlite store keeps its artifacts next to it; MLflow's default is ./mlruns in the
    working directory (which may be a source tree). Other stores choose their own."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return (Path(tracking_uri[len(prefix):]).resolve().parent / "mlartifacts").as_uri()


def comparison_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table with a row per model and a column per metric (prefixes dropped)."""
    keys = list(dict.fromkeys(k for metrics in rows.values() for k in metrics))
    header = ["model", *(k.split("/", 1)[-1] for k in keys)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(keys)]
    for name, metrics in rows.items():
        cells = [f"{metrics[k]:.4f}" if k in metrics else "" for k in keys]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)
