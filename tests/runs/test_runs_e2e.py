"""Run control end to end, as the README tells a new user to drive it: its `lightbagel-fit` and
`lightbagel-eval` commands run in order in a copy of the repository's recipes (few steps, tiny
data), asserted on through MLflow's client API; then a moved project, a concurrent second fit, a
killed run and log-file output."""

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
from lightbagel.model_folder import export_info, load_exported
from lightbagel.training.checkpointing import complete_checkpoints

REPO = Path(__file__).resolve().parents[2]
FAST = ["data.num_samples=64", "data.batch_size=8", "trainer.log_every_n_steps=2", "trainer.sample_every_n_steps=0",
        "trainer.num_sample_images=2", "trainer.sample_steps=2", "trainer.enable_progress_bar=false"]
EVAL_FAST = ["--per-category", "1", "--steps", "1", "--batch-size", "8"]
# The README's commands, in its order; the test fails when the README changes without it.
README_COMMANDS = [
    "lightbagel-fit recipes/tiny.yaml",
    "lightbagel-fit recipes/tiny.yaml name=tiny_lr trainer.max_steps=50 optim.lr=3e-4",
    "lightbagel-fit recipes/tiny.yaml name=tiny_no_fusion fusion=none",
    "lightbagel-fit recipes/tiny.yaml --print-recipe",
    "lightbagel-fit --list",
    "lightbagel-eval outputs/tiny/export",
    "lightbagel-fit recipes/tiny.yaml trainer.max_steps=3000",
    "lightbagel-eval outputs/tiny/export --seed 1",
    "lightbagel-fit recipes/tiny.yaml optim.lr=3e-4",
    "lightbagel-fit recipes/tiny.yaml optim.lr=3e-4 --fresh",
    "lightbagel-fit recipes/tiny.yaml optim.lr=3e-4 output_dir=outputs/tiny-2",
    "lightbagel-eval outputs/tiny/export",
]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    found = re.findall(r"^(lightbagel-fit (?:recipes/tiny\.yaml.*|--list.*)|lightbagel-eval outputs/tiny/export.*)$",
                       text, re.M)
    return [command.split("#")[0].strip() for command in found]


def fast(argv: list[str], data_root: Path) -> list[str]:
    """The command at test size: 4 steps, or 6 where it extends a run beyond the tiny default's."""
    steps = [a for a in argv if a.startswith("trainer.max_steps=")]
    longer = bool(steps) and int(steps[0].split("=")[1]) > 1500
    kept = [a for a in argv if a not in steps]
    return [*kept, *FAST, f"data.root={data_root}", f"trainer.max_steps={6 if longer else 4}"]


def mlflow_run(folder: Path):
    """The project store beside the run's folder, and the run's MLflow run."""
    record = json.loads((folder / "run.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{folder.parent / 'mlflow.db'}")
    return client, client.get_run(record["mlflow_run_id"])


def nested(client, run) -> dict[str, object]:
    """The runs nested under `run`, by name."""
    runs = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    return {r.info.run_name: r for r in runs}


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
            key = command if command not in results else f"{command} #2"  # the README repeats one eval
            results[key] = {**_command(command, root, first_eval=not any("eval" in c for c in results)),
                            "tiny_checkpoints_before": stamp}
    finally:
        os.chdir(cwd)
    return root, results


def _command(command: str, root: Path, first_eval: bool) -> dict:
    prog, *argv = command.split()
    if prog == "lightbagel-eval" and first_eval:  # as under nohup: a log file, not a terminal
        log = root / "eval.log"
        with open(log, "w") as handle:
            rc = subprocess.call([sys.executable, "-m", "lightbagel.cli.eval", *argv, *EVAL_FAST], stdout=handle,
                                 stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        return {"rc": rc, "out": log.read_text(), "err": ""}
    if prog == "lightbagel-eval":
        rc, out, err = _run([*argv, *EVAL_FAST], eval_cli.main)
    else:
        rc, out, err = _run(fast(argv, root / "data") if "recipes/" in command else argv)
    return {"rc": rc, "out": out, "err": err}


def _run(argv: list[str], main=fit_cli.main) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_readme_commands_do_what_the_readme_says(readme):
    root, results = readme
    assert [c.split(" #")[0] for c in results] == README_COMMANDS
    refused = "lightbagel-fit recipes/tiny.yaml optim.lr=3e-4"
    assert all(r["rc"] == 0 for c, r in results.items() if c != refused), results
    outputs = root / "outputs"
    assert (outputs / "tiny/export/model.safetensors").is_file() and (outputs / "mlflow.db").is_file()
    assert json.loads((outputs / "tiny_lr/run.json").read_text())["recipe"]["optim"]["lr"] == 3e-4
    swapped = load_exported(outputs / "tiny_no_fusion/export")
    assert {type(block).__name__ for block in swapped.fusion} == {"NoFusionBlock"}
    assert "optim:" in results["lightbagel-fit recipes/tiny.yaml --print-recipe"]["out"]
    listed = results["lightbagel-fit --list"]["out"]
    assert "tiny.yaml" in listed and "  fusion:\n" in listed
    # The override runs left the default run alone; the longer run resumed it in its MLflow run.
    first_run = results["lightbagel-fit recipes/tiny.yaml"]["out"]
    resumed = results["lightbagel-fit recipes/tiny.yaml trainer.max_steps=3000"]
    assert "resuming from step-00000004.ckpt" in resumed["out"]
    assert [p.name for p in complete_checkpoints(outputs / "tiny/checkpoints")][-1] == "step-00000006.ckpt"
    client, run = mlflow_run(outputs / "tiny")
    assert run.info.run_id in first_run and run.info.status == "FINISHED"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "loss/train")) >= 5


def test_the_recipes_runs_compare_in_one_store_and_experiment(readme):
    root, _ = readme
    client, tiny = mlflow_run(root / "outputs/tiny")
    assert client.get_experiment(tiny.info.experiment_id).name == "tiny"  # the recipe family
    training = [r for r in client.search_runs([tiny.info.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    names = sorted(r.info.run_name.split()[0] for r in training)
    assert names == ["tiny", "tiny-2", "tiny_lr", "tiny_no_fusion"]  # one run per folder, however often resumed
    for folder in ("tiny_lr", "tiny_no_fusion", "tiny-2"):
        assert mlflow_run(root / "outputs" / folder)[1].info.experiment_id == tiny.info.experiment_id


def test_evals_nest_under_their_training_run_named_by_their_settings(readme):
    root, results = readme
    client, tiny = mlflow_run(root / "outputs/tiny")
    evals = nested(client, tiny)
    assert sorted(evals) == ["eval step-4 per-category=1 steps=1", "eval step-6 per-category=1 steps=1",
                             "eval step-6 per-category=1 steps=1 seed=1"]
    assert evals["eval step-6 per-category=1 steps=1 seed=1"].data.params["seed"] == "1"
    assert {p.name for p in (root / "outputs/tiny/eval").iterdir()} >= {
        "step-4_per-category=1_steps=1", "step-6_per-category=1_steps=1_seed=1", "step-6_per-category=1_steps=1"}
    report = (root / "outputs/tiny/eval/step-6_per-category=1_steps=1_seed=1/report.md").read_text()
    assert "| seed | `1` |" in report and "| per-category | `1` |" in report and "VQA skipped" in report


def test_a_resume_keeps_every_export_an_eval_referred_to(readme):
    root, _ = readme
    client, tiny = mlflow_run(root / "outputs/tiny")
    referred = {Path(r.data.params["export"]) for r in nested(client, tiny).values()}
    assert {p.name for p in referred} == {"step-00000004", "step-00000006"}
    for export in referred:
        assert export_info(export)["step"] == int(export.name[5:]) and load_exported(export) is not None
    assert (root / "outputs/tiny/export").resolve().name == "step-00000006"  # `export` names the newest
    assert oct((root / "outputs/tiny/export/model.safetensors").stat().st_mode & 0o777) == "0o644"


def test_a_non_tty_eval_logs_plain_lines(readme):
    _, results = readme
    log = results["lightbagel-eval outputs/tiny/export"]["out"]
    assert "\r" not in log and "synthetic eval batch 1/1" in log
    assert "GPU available" not in log and "TPU available" not in log


def test_a_mismatched_resume_fails_in_one_line(readme):
    _, results = readme
    refused = results["lightbagel-fit recipes/tiny.yaml optim.lr=3e-4"]
    assert refused["rc"] == 2 and refused["out"] == ""
    line = refused["err"].strip()
    assert len(line.splitlines()) == 1
    assert "outputs/tiny holds a run of another recipe (optim.lr 0.001 -> 0.0003)" in line
    assert "--fresh" in line and "name=NAME" in line


def test_fresh_starts_beside_the_old_run_and_keeps_it(readme):
    root, results = readme
    fresh = results["lightbagel-fit recipes/tiny.yaml optim.lr=3e-4 --fresh"]
    assert (root / "outputs/tiny-2/export/model.safetensors").is_file()
    assert json.loads((root / "outputs/tiny-2/run.json").read_text())["recipe"]["optim"]["lr"] == 3e-4
    after = {p.name: p.stat().st_mtime_ns for p in (root / "outputs/tiny/checkpoints").glob("*")}
    assert after == fresh["tiny_checkpoints_before"] and after  # not one file of the old run touched
    _, old = mlflow_run(root / "outputs/tiny")
    _, new = mlflow_run(root / "outputs/tiny-2")
    assert old.info.run_id != new.info.run_id and new.info.run_name.startswith("tiny-2 optim.lr=3e-4")
    resumed = results["lightbagel-fit recipes/tiny.yaml optim.lr=3e-4 output_dir=outputs/tiny-2"]
    assert "resuming from step-00000004.ckpt" in resumed["out"]  # the README's way back into a --fresh run
    assert mlflow_run(root / "outputs/tiny-2")[1].info.run_id == new.info.run_id


def test_a_moved_project_logs_into_itself_and_loads(readme, tmp_path):
    root, _ = readme
    original, moved = root / "outputs", tmp_path / "elsewhere" / "outputs"
    shutil.copytree(original, moved, symlinks=True)
    before = sorted(str(p.relative_to(original)) for p in (original / "mlartifacts").rglob("*"))
    argv = [str(root / "recipes/tiny.yaml"), f"output_dir={moved / 'tiny'}", *FAST, f"data.root={root / 'data'}"]
    rc, out, err = _run([*argv, "trainer.max_steps=8"])
    assert rc == 0, err
    client, run = mlflow_run(moved / "tiny")
    assert "resuming from step-00000006.ckpt" in out and run.info.run_id == mlflow_run(original / "tiny")[1].info.run_id
    assert run.info.artifact_uri.startswith(str((moved / "mlartifacts").resolve()))
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "exports")}
    assert {"exports/step-00000004", "exports/step-00000006", "exports/step-00000008"} <= logged
    assert sorted(str(p.relative_to(original)) for p in (original / "mlartifacts").rglob("*")) == before
    assert (moved / "tiny/export").resolve() == (moved / "tiny/exports/step-00000008").resolve()
    assert load_exported(moved / "tiny/export") is not None and not (moved / "tiny/.lock").exists()


def test_a_second_fit_on_a_busy_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from lightbagel.runs.folder import folder_lock\n"
         "with folder_lock(Path(sys.argv[1])):\n print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        # Were the lock broken, this fit would run: its data goes under tmp_path too, never into ./data.
        assert fit_cli.main([str(REPO / "recipes/tiny.yaml"), f"output_dir={out}", f"data.root={tmp_path / 'data'}",
                             *FAST, "trainer.max_steps=2"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert err == (f"lightbagel-fit: {out} is in use by another lightbagel-fit (pid {holder.pid}); wait for it to "
                   "end, or train elsewhere with --fresh or name=NAME")


@pytest.mark.xfail(strict=False, reason="known race (issue 24, open): after SIGTERM and resume the resumed fit's "
                   "loss/train steps sometimes do not reach the store (steps [1, 3, 5] after resuming to 7); it "
                   "passed in one run and failed in another, so not strict until the race is fixed")
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
    assert "\r" not in text and "GPU available" not in text and "TPU available" not in text  # a quiet log file
    assert "lightbagel-fit  recipe" in text and "writing 2000 shapes-world samples" in text
    assert re.search(r"^step 2/500  loss \d+\.\d{4}  [\d.]+ samples/s  ETA \S+$", text, re.M), text
    assert "litlogger" not in text and "Total FLOPs" not in text and "LeafSpec" not in text
    client, killed = mlflow_run(out)
    assert killed.info.status == "KILLED"
    stopped_at = int(complete_checkpoints(out / "checkpoints")[-1].name[5:13])
    trained_before = killed.data.metrics["time/train_seconds"]

    assert fit_cli.main([*argv, f"trainer.max_steps={stopped_at + 2}"]) == 0
    _, resumed = mlflow_run(out)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "loss/train")]
    assert max(steps) >= stopped_at + 1
    assert len(steps) == len(set(steps)), sorted(steps)  # the stop step was saved: nothing logged twice
    # Training time adds up over the resume (MLflow's own duration would span the pause too).
    assert resumed.data.metrics["time/train_seconds"] > trained_before
