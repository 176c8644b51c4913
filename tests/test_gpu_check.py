"""benchmarks/gpu_check.py, the prepared full-size GPU check, runs end to end at toy sizes on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_dry_run_prints_every_section():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for section in ("(a) training step", "(b) padded rows", "(c) attention backends", "(d) one 32 px edit"):
        assert section in out, out
    assert "MFU" in out and "lightbagel-plan, 1 GPU" in out and "% of tiles skipped" in out
    assert "max |difference|" in out
