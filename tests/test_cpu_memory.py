"""lipsync/core/cpu_memory.py: freed blocks stay in the process, so allocating again costs no
page faults, and nothing computed changes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BLOCK_MB = 64
ALLOCATE_TWICE = f"""
import json, resource, sys, torch
from lipsync.core.cpu_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
block = torch.ones({BLOCK_MB} << 18)       # {BLOCK_MB} MiB of float32, written once
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = torch.ones({BLOCK_MB} << 18)
print(json.dumps({{"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))
"""


def faults_of_a_second_allocation(setting: str) -> dict:
    finished = subprocess.run([sys.executable, "-c", ALLOCATE_TWICE, setting], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc options: Linux only")
def test_a_freed_block_is_reused_without_faulting_its_pages_in_again():
    default, kept = faults_of_a_second_allocation("default"), faults_of_a_second_allocation("keep")
    pages = (BLOCK_MB << 20) // 4096
    assert kept["kept"] is True
    assert default["faults"] > pages // 2, default          # glibc's default: a fresh mmap, every page faulted
    assert kept["faults"] < pages // 20, kept                # kept: the same heap block, already mapped


def test_training_steps_compute_the_same_with_freed_memory_kept():
    finished = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_cpu_memory.py"), "--steps", "2",
                               "--batch_size", "2"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "identical losses: True" in finished.stdout, finished.stdout
