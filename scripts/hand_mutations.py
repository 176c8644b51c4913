"""Plausible bugs, applied one at a time to a copy of `src/`, each against the tests that must catch it.

    nice -n 10 python scripts/hand_mutations.py            # every mutation: prints caught / total
    nice -n 10 python scripts/hand_mutations.py flex vqa   # those whose name contains a word

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
MUTATIONS = [
    Mutation("precision: apply_precision skips the fp32 buffers", "precision.py",
             "        if buffer.is_floating_point() and plan.keeps(name):",
             "        if False and buffer.is_floating_point() and plan.keeps(name):",
             (P + "test_apply_precision_recasts_the_fp32_list_of_a_bf16_model",)),
    Mutation("precision: bf16-true handed to Lightning", "precision.py",
             '"bf16-true": Precision("bf16-mixed",', '"bf16-true": Precision("bf16-true",',
             (P + "test_pure_bf16_still_keeps_the_fp32_list_fp32",)),
    Mutation("precision: read_dtype swapped", "precision.py",
             "return self.precision.frozen if frozen else self.precision.master",
             "return self.precision.master if frozen else self.precision.frozen",
             ("tests/backbones/test_loading.py::test_bf16_mixed_reads_trainable_weights_in_fp32_and_frozen_ones_in_bf16",)),
    Mutation("flex: full tiles without the key-side one-sample condition", "fusion/flex.py",
             "full &= one_q & one_k & (", "full &= one_q & (",
             ("tests/test_flex.py::test_block_mask_equals_dense_rule_on_a_packed_joint_row",)),
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


def passes(tests: list[str], src: Path) -> bool:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True).returncode == 0


def caught(mutation: Mutation) -> bool:
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        return not passes(list(mutation.tests), mutated_copy(mutation, Path(tmp)))


def main(words: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not words or any(w in m.name for w in words)]
    # The chosen tests must pass unmutated, or every mutation would count as caught.
    if not passes(sorted({t for m in chosen for t in m.tests}), REPO / "src"):
        raise SystemExit("the listed tests fail without any mutation; fix them first")
    found = 0
    for mutation in chosen:
        ok = caught(mutation)
        found += ok
        print(f"{'caught  ' if ok else 'SURVIVED'} {mutation.name}", flush=True)
    print(f"{found} of {len(chosen)} caught")
    return 0 if found == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
