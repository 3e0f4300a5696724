"""lipsync/core/cpu_memory.py: with freed memory kept, training steps stop faulting their
activations in again, and compute exactly the same (benchmarks/bench_cpu_memory.py's children)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "benchmarks" / "bench_cpu_memory.py"
STEPS, BATCH_SIZE = "2", "8"


def steps_measured(setting: str) -> dict:
    """One child of the benchmark: 2 warm-up + 2 timed steps of the tiny U-Net at batch 8."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    finished = subprocess.run([sys.executable, str(BENCH), "--steps", STEPS, "--batch_size", BATCH_SIZE,
                               "--one", setting], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                              env=environment)
    return json.loads(finished.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc options: Linux only")
def test_training_steps_reuse_freed_activations_and_compute_the_same():
    default, kept = steps_measured("default"), steps_measured("kept")
    assert kept["kept"] is True and default["kept"] is False
    # glibc's default unmaps freed activations and faults them in again the next step (~200,000 pages
    # a step at batch 8, where they are tens of MiB); kept, the blocks are reused (~1,000).
    assert kept["page_faults_per_step"] < default["page_faults_per_step"] / 5, (default, kept)
    assert kept["losses"] == default["losses"]
