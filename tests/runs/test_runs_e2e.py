"""Run control end to end, as the README tells a new user to drive it: its `lightbagel-fit`
commands run in order in a copy of the repository's recipes (few steps, tiny data), then a
moved folder, a concurrent second fit, a killed run, log-file output and an eval of the export."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lightbagel.cli import eval as eval_cli
from lightbagel.cli import fit as fit_cli
from lightbagel.model_folder import load_exported
from lightbagel.training.checkpointing import complete_checkpoints

REPO = Path(__file__).resolve().parents[2]
FAST = ["data.num_samples=64", "data.batch_size=8", "trainer.log_every_n_steps=2", "trainer.sample_every_n_steps=0",
        "trainer.num_sample_images=2", "trainer.sample_steps=2", "trainer.enable_progress_bar=false"]
# The README's commands, in its order; the test fails when the README changes without it.
README_COMMANDS = [
    "recipes/tiny.yaml",
    "recipes/tiny.yaml name=tiny_lr trainer.max_steps=50 optim.lr=3e-4",
    "recipes/tiny.yaml name=tiny_no_fusion fusion=none",
    "recipes/tiny.yaml --print-recipe",
    "--list",
    "recipes/tiny.yaml trainer.max_steps=3000",
    "recipes/tiny.yaml optim.lr=3e-4",
    "recipes/tiny.yaml optim.lr=3e-4 --fresh",
]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    found = re.findall(r"^lightbagel-fit (recipes/tiny\.yaml.*|--list.*)$", text, re.M)
    return [command.split("#")[0].strip() for command in found]


def fast(argv: list[str], data_root: Path) -> list[str]:
    """The command at test size: 4 steps, or 6 where it extends a run beyond the tiny default's."""
    steps = [a for a in argv if a.startswith("trainer.max_steps=")]
    longer = bool(steps) and int(steps[0].split("=")[1]) > 1500
    kept = [a for a in argv if a not in steps]
    return [*kept, *FAST, f"data.root={data_root}", f"trainer.max_steps={6 if longer else 4}"]


def mlflow_run(folder: Path):
    record = json.loads((folder / "run.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    return client, client.get_run(record["mlflow_run_id"])


@pytest.fixture(scope="module")
def readme(tmp_path_factory):
    """Runs the README's commands in a copy of recipes/; returns the folder and each command's result."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "recipes", root / "recipes")
    cwd = os.getcwd()
    os.chdir(root)
    results = {}
    try:
        for command in readme_commands():
            stamp = {p.name: p.stat().st_mtime_ns for p in (root / "outputs/tiny/checkpoints").glob("*")}
            rc, out, err = _run(fast(command.split(), root / "data") if "recipes/" in command else command.split())
            results[command] = {"rc": rc, "out": out, "err": err, "tiny_checkpoints_before": stamp}
    finally:
        os.chdir(cwd)
    return root, results


def _run(argv: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = fit_cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_readme_commands_do_what_the_readme_says(readme):
    root, results = readme
    assert list(results) == README_COMMANDS
    assert all(r["rc"] == 0 for c, r in results.items() if c != "recipes/tiny.yaml optim.lr=3e-4"), results
    outputs = root / "outputs"
    assert (outputs / "tiny/export/model.safetensors").is_file() and (outputs / "tiny/mlflow.db").is_file()
    assert json.loads((outputs / "tiny_lr/run.json").read_text())["recipe"]["optim"]["lr"] == 3e-4
    swapped = load_exported(outputs / "tiny_no_fusion/export")
    assert {type(block).__name__ for block in swapped.fusion} == {"NoFusionBlock"}
    assert "optim:" in results["recipes/tiny.yaml --print-recipe"]["out"]
    assert "tiny.yaml" in results["--list"]["out"] and "  fusion:\n" in results["--list"]["out"]
    # The override runs left the default run alone; the longer run resumed it in its MLflow run.
    first_run = results["recipes/tiny.yaml"]["out"]
    resumed = results["recipes/tiny.yaml trainer.max_steps=3000"]
    assert "resuming from step-00000004.ckpt" in resumed["out"]
    assert [p.name for p in complete_checkpoints(outputs / "tiny/checkpoints")][-1] == "step-00000006.ckpt"
    client, run = mlflow_run(outputs / "tiny")
    assert run.info.run_id in first_run and run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # one run however often it was started
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "loss/train")) >= 5


def test_a_mismatched_resume_fails_in_one_line(readme):
    _, results = readme
    refused = results["recipes/tiny.yaml optim.lr=3e-4"]
    assert refused["rc"] == 2 and refused["out"] == ""
    line = refused["err"].strip()
    assert len(line.splitlines()) == 1
    assert "outputs/tiny holds a run of another recipe (optim.lr 0.001 -> 0.0003)" in line
    assert "--fresh" in line and "name=NAME" in line


def test_fresh_starts_beside_the_old_run_and_keeps_it(readme):
    root, results = readme
    fresh = results["recipes/tiny.yaml optim.lr=3e-4 --fresh"]
    assert (root / "outputs/tiny-2/export/model.safetensors").is_file()
    assert json.loads((root / "outputs/tiny-2/run.json").read_text())["recipe"]["optim"]["lr"] == 3e-4
    after = {p.name: p.stat().st_mtime_ns for p in (root / "outputs/tiny/checkpoints").glob("*")}
    assert after == fresh["tiny_checkpoints_before"] and after  # not one file of the old run touched
    _, old = mlflow_run(root / "outputs/tiny")
    _, new = mlflow_run(root / "outputs/tiny-2")
    assert old.info.run_id != new.info.run_id and new.info.run_name.startswith("tiny-2 optim.lr=3e-4")


def test_a_moved_output_folder_logs_into_itself_and_loads(readme, tmp_path):
    root, _ = readme
    original, moved = root / "outputs/tiny", tmp_path / "elsewhere" / "tiny"
    shutil.copytree(original, moved)
    before = sorted(str(p.relative_to(original)) for p in (original / "mlartifacts").rglob("*"))
    argv = [str(root / "recipes/tiny.yaml"), f"output_dir={moved}", *FAST, f"data.root={root / 'data'}"]
    rc, out, err = _run([*argv, "trainer.max_steps=8"])
    assert rc == 0, err
    client, run = mlflow_run(moved)
    assert "resuming from step-00000006.ckpt" in out
    assert run.info.artifact_uri.startswith(str((moved / "mlartifacts").resolve()))
    assert "model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert sorted(str(p.relative_to(original)) for p in (original / "mlartifacts").rglob("*")) == before
    assert load_exported(moved / "export") is not None


def test_eval_lands_in_the_evaluated_models_training_run(readme):
    root, _ = readme
    folder = root / "outputs/tiny_lr"
    assert eval_cli.main([str(folder / "export"), "--per-category", "1", "--steps", "1", "--batch-size", "8"]) == 0
    client, training = mlflow_run(folder)
    runs = client.search_runs([training.info.experiment_id])
    evals = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == training.info.run_id]
    assert len(evals) == 1 and "synthetic/overall" in evals[0].data.metrics


def test_a_second_fit_on_a_busy_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from lightbagel.runs.folder import folder_lock\n"
         "with folder_lock(Path(sys.argv[1])):\n print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert fit_cli.main([str(REPO / "recipes/tiny.yaml"), f"output_dir={out}", *FAST, "trainer.max_steps=2"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert err == (f"lightbagel-fit: {out} is in use by another lightbagel-fit (pid {holder.pid}); wait for it to "
                   "end, or train elsewhere with --fresh or name=NAME")


def test_a_killed_run_is_marked_and_resumed_into_the_same_mlflow_run(tmp_path):
    out, logs = tmp_path / "run", tmp_path / "log.txt"
    argv = [str(REPO / "recipes/tiny.yaml"), f"output_dir={out}", f"data.root={tmp_path / 'data'}",
            *FAST, "data.num_samples=2000", "trainer.max_steps=500", "trainer.checkpoint_every_n_steps=2"]
    with open(logs, "w") as log:  # a log file, as under nohup or SLURM
        proc = subprocess.Popen([sys.executable, "-m", "lightbagel.cli.fit", *argv], stdout=log, stderr=log,
                                env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        deadline = time.monotonic() + 300
        while len(complete_checkpoints(out / "checkpoints")) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, logs.read_text()
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    text = logs.read_text()
    assert "\r" not in text  # no progress-bar frames in a log file
    assert "lightbagel-fit  recipe" in text and "writing 2000 shapes-world samples" in text
    assert re.search(r"^step 2/500  loss \d+\.\d{4}  [\d.]+ samples/s  ETA \S+$", text, re.M), text
    assert "litlogger" not in text and "Total FLOPs" not in text and "LeafSpec" not in text
    client, killed = mlflow_run(out)
    assert killed.info.status == "KILLED"
    stopped_at = int(complete_checkpoints(out / "checkpoints")[-1].name[5:13])

    assert fit_cli.main([*argv, f"trainer.max_steps={stopped_at + 2}"]) == 0
    _, resumed = mlflow_run(out)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "loss/train")]
    assert max(steps) >= stopped_at + 1
    assert len(steps) == len(set(steps)), sorted(steps)  # the stop step was saved: nothing logged twice
