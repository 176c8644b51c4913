"""Plausible bugs, applied one at a time to a copy of `src/`, each against the tests that must catch it.

    nice -n 10 python scripts/hand_mutations.py            # every mutation: prints caught / total
    nice -n 10 python scripts/hand_mutations.py flex vqa   # those whose name contains a word
    nice -n 10 python scripts/hand_mutations.py --no-baseline flex  # without first running the tests unmutated

A mutation is an exact text replacement that must occur once in its file, so a list that no longer
matches the code fails loudly instead of testing nothing. The tests run with `PYTHONPATH` on the
mutated copy; the working tree is never touched. `scripts/mutation.sh` runs mutmut's generated
mutations over the same modules (docs/mutation.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # under src/lightbagel/
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files that must fail


P = "tests/training/test_precision.py::"
R = "tests/runs/test_folder.py::"
M = "tests/runs/test_mlflow_logger.py::"
MUTATIONS = [
    Mutation("precision: apply_precision skips the fp32 buffers", "precision.py",
             "        if buffer.is_floating_point() and plan.keeps(name):",
             "        if False and buffer.is_floating_point() and plan.keeps(name):",
             (P + "test_apply_precision_recasts_the_fp32_list_of_a_bf16_model",)),
    Mutation("precision: bf16-true handed to Lightning", "precision.py",
             '"bf16-true": Precision("bf16-mixed",', '"bf16-true": Precision("bf16-true",',
             (P + "test_pure_bf16_still_keeps_the_fp32_list_fp32",)),
    Mutation("precision: read_dtype swapped", "precision.py",
             "return self.frozen if frozen else self.master",
             "return self.master if frozen else self.frozen",
             ("tests/backbones/test_loading.py::test_bf16_mixed_reads_trainable_weights_in_fp32_and_frozen_ones_in_bf16",)),
    Mutation("flex: full tiles without the key-side one-sample condition", "fusion/flex.py",
             "full &= one_q & one_k & (", "full &= one_q & (",
             ("tests/fusion/test_flex.py::test_block_mask_equals_dense_rule_on_a_packed_joint_row",)),
    Mutation("source cache: UndCache.rows drops the source K/V", "model.py",
             "source = None if self.source is None else self.source.rows(index)", "source = None",
             ("tests/inference/test_sampler.py::test_after_the_first_step_only_the_target_slot_runs",)),
    Mutation("sampler defaults: edit image guidance 2.0 -> 1.0", "inference/guidance.py",
             "text_guidance=4.0, image_guidance=2.0, guidance_interval=(0.0, 1.0)",
             "text_guidance=4.0, image_guidance=1.0, guidance_interval=(0.0, 1.0)",
             ("tests/inference/test_guidance.py::test_task_defaults_are_valid_and_differ_where_bagel_does",)),
    Mutation("run control: RESUMABLE's trainer.card widened to trainer", "runs/folder.py",
             '"name", "output_dir", "trainer.card",', '"name", "output_dir", "trainer",',
             (R + "test_a_resume_refuses_every_change_to_what_is_trained",)),
    Mutation("run control: recipes compared without a checkpoint", "runs/folder.py",
             "if record is None or not has_checkpoint:", "if record is None:",
             (R + "test_recipes_are_compared_only_when_there_is_a_checkpoint_to_resume",)),
    Mutation("run control: reopen never marks a left-RUNNING run KILLED", "runs/tracking.py",
             'client.set_terminated(run_id, "KILLED")', "pass",
             (R + "test_a_run_left_running_is_marked_killed_before_it_resumes",)),
    Mutation("security: lightbagel-eval hard-codes trust_remote_code=True", "cli/eval.py",
             "trust_remote_code=args.trust_remote_code)", "trust_remote_code=True)",
             ("tests/test_model_folder.py::test_no_command_lets_a_model_folder_turn_on_remote_code",)),
    Mutation("faults: the sharded checkpoint's shard-size check removed", "training/checkpointing.py",
             "            _check_shard_sizes(ckpt)", "            pass",
             ("tests/training/test_checkpointing.py",)),
    Mutation("mlflow logger: logging after finalize queued", "runs/mlflow_logger.py",
             "        if self._closed:\n            return MLFlowLogger.log_metrics(self, metrics, step)\n", "",
             (M + "test_after_finalize_a_value_is_written_before_log_metrics_returns",)),
    Mutation("scorers: VQA exact match turned into containment", "evaluation/vqa.py",
             "reply == item.question.answer", "item.question.answer in reply",
             ("tests/evaluation/test_vqa.py::test_a_right_answer_with_more_words_scores_zero",)),
    Mutation("scorers: the count check == turned into >=", "shapes/__init__.py",
             '"count": len(found) == len(wanted),', '"count": len(found) >= len(wanted),',
             ("tests/shapes/test_shapes.py::test_an_extra_object_fails_the_count",)),
    Mutation("pretrain stages: is_complete always true", "training/stages.py",
             "    return resolved_recipe(export / RECIPE) == stage.config", "    return True",
             ("tests/training/test_stages.py::test_an_export_is_reused_only_for_the_same_stage_recipe",)),
    Mutation("pretrain stages: the parts' missing/unexpected-key check removed", "training/stages.py",
             "        if result.missing_keys or result.unexpected_keys:", "        if False:",
             ("tests/training/test_stages.py::test_a_part_whose_weights_do_not_all_fit_is_refused",)),
    # The weak tests, each against a bug it let through.
    Mutation("zero init: fusion output bias 1e-6 instead of 0", "fusion/blocks.py",
             "            nn.init.zeros_(self.to_out.bias)", "            nn.init.constant_(self.to_out.bias, 1e-6)",
             ("tests/backbones/test_conformance.py::test_zero_init_fusion_adds_exactly_nothing_to_the_dit",)),
    Mutation("answer mask: off by one position", "training/module.py",
             "keep = answer_mask[:, 1:]", "keep = answer_mask[:, :-1]",
             ("tests/training/test_understanding.py::test_answer_loss_reads_answer_tokens_only",)),
    Mutation("flops: packed rows count one source per batch (any for sum)", "packing.py",
             "per_slot * (len(batch) + int(batch.has_source.sum()))",
             "per_slot * (len(batch) + int(batch.has_source.any()))",
             ("tests/test_packing.py::test_batch_flops_count_the_tokens_each_layout_computes",)),
    Mutation("flops: padded rows count a source slot per edit (sum for any)", "packing.py",
             "(1 + int(batch.has_source.any()))", "(1 + int(batch.has_source.sum()))",
             ("tests/test_packing.py::test_batch_flops_count_the_tokens_each_layout_computes",)),
    Mutation("synthetic eval: image seeds restart in every batch", "evaluation/synthetic.py",
             "seed=[image_seed + start + i for i in range(len(chunk))]",
             "seed=[image_seed + i for i in range(len(chunk))]",
             ("tests/evaluation/test_synthetic.py::test_with_the_tiny_model_every_image_is_scored",)),
    Mutation("packed resume: a resumed packed run trains padded rows", "training/module.py",
             "run = LAYOUTS[self.recipe.data.packing.layout]",
             'run = LAYOUTS["padded" if self.trainer.ckpt_path else self.recipe.data.packing.layout]',
             ("tests/test_packing.py::test_killed_packed_run_resumes_onto_the_uninterrupted_runs_weights",)),
    Mutation("mlflow logger: log_metrics writes on the training thread", "runs/mlflow_logger.py",
             "        self._pending.put((dict(metrics), step))",
             "        MLFlowLogger.log_metrics(self, metrics, step)",
             (M + "test_finalize_waits_for_the_writes",)),
    Mutation("mlflow logger: save waits for the writes", "runs/mlflow_logger.py",
             "    def flush(self) -> None:",
             "    def save(self) -> None:\n        self.flush()\n\n    def flush(self) -> None:",
             (M + "test_save_does_not_wait_for_the_writes",)),
    Mutation("prefetch: iter starts the producer", "data/prefetch.py",
             "        self._iterators.add(it)\n", "        self._iterators.add(it)\n        it._start()\n",
             ("tests/data/test_prefetch.py::test_nothing_starts_before_the_first_batch_is_asked_for",)),
    Mutation("prefetch: a dropped iterator never stops its producer", "data/prefetch.py",
             "    def __del__(self) -> None:\n        self.close()", "    def __del__(self) -> None:\n        pass",
             ("tests/data/test_prefetch.py::test_the_producer_stops_when_the_iterator_is_dropped",)),
    Mutation("run control: the folder lock never locks", "runs/folder.py",
             "            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)", "            pass",
             ("tests/runs/test_runs_e2e.py::test_a_second_fit_on_a_busy_folder_is_refused",)),
]


def mutated_copy(mutation: Mutation, root: Path) -> Path:
    src = root / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = src / "lightbagel" / mutation.path
    text = target.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: {mutation.path} holds {text.count(mutation.old)} copies of "
                         f"{mutation.old!r}, not 1; update scripts/hand_mutations.py")
    target.write_text(text.replace(mutation.old, mutation.new))
    return src


def failure(tests: list[str], src: Path) -> str:
    """pytest's line for the first failing test ('' when all pass)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider", *tests]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if run.returncode == 0:
        return ""
    failed = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return (failed or run.stdout.splitlines()[-1:] or [f"exit {run.returncode}"])[0][:200]


def caught(mutation: Mutation) -> str:
    """Why the mutated code fails its tests ('' when it survives)."""
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        return failure(list(mutation.tests), mutated_copy(mutation, Path(tmp)))


def main(words: list[str]) -> int:
    baseline = "--no-baseline" not in words  # for a rerun right after a green run of the same tests
    words = [w for w in words if w != "--no-baseline"]
    chosen = [m for m in MUTATIONS if not words or any(w in m.name for w in words)]
    # The chosen tests must pass unmutated, or every mutation would count as caught.
    unmutated = failure(sorted({t for m in chosen for t in m.tests}), REPO / "src") if baseline else ""
    if unmutated:
        raise SystemExit(f"the listed tests fail without any mutation; fix them first: {unmutated}")
    found = 0
    for mutation in chosen:
        why = caught(mutation)
        found += bool(why)
        print(f"caught   {mutation.name}\n         {why}" if why else f"SURVIVED {mutation.name}", flush=True)
    print(f"{found} of {len(chosen)} caught")
    return 0 if found == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
