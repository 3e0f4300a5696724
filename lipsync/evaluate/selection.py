"""Choosing the best checkpoint by one metric, and writing it as checkpoint/NAME/best.pth.

best.pth is a copy of the winner (weights and config) with a ``selection``
entry saying which metric it won on, its value and every candidate's scores;
``inference_328.py --checkpoint best`` loads it, and training leaves it alone.
"""
import logging
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

from lipsync.core.atomic import save_torch_atomic
from lipsync.core.checkpoints import BEST, read_checkpoint
from lipsync.evaluate.results import CheckpointResult, finite_or_none

log = logging.getLogger("evaluation")

# Metrics a checkpoint can be chosen by, and which direction is better.
SELECTION_METRICS: Dict[str, str] = {
    "lmd": "lower", "mouth_ssim": "higher", "mouth_psnr": "higher", "ssim": "higher", "psnr": "higher",
    "opening_correlation": "higher", "lse_d": "lower", "lse_c": "higher", "energy_correlation": "higher",
}
DEFAULT_SELECT_BY = "lmd"
LANDMARK_METRICS = ("lmd", "opening_correlation")
# Below this fraction of generated frames with a detectable face, the landmark
# metrics describe a handful of frames: such a checkpoint is not chosen by them.
MIN_FACE_FOUND = 0.9


def choose_best(results: Sequence[CheckpointResult], metric: str) -> Optional[CheckpointResult]:
    """The checkpoint with the best ``metric``; ties go to the later epoch.

    Landmark metrics only count where the face was found in at least
    MIN_FACE_FOUND of the generated frames (unless none reaches that).
    """
    lower = SELECTION_METRICS[metric] == "lower"
    candidates = [result for result in results
                  if result.scores.get(metric) is not None and math.isfinite(result.scores[metric])]
    if metric in LANDMARK_METRICS:
        reliable = [result for result in candidates if result.scores.get("face_found", 0) >= MIN_FACE_FOUND]
        candidates = reliable or candidates
    if not candidates:
        return None
    return min(candidates, key=lambda result: (result.scores[metric] if lower else -result.scores[metric],
                                               -result.epoch))


def write_best(run_dir: Path, best: CheckpointResult, metric: str, results: Sequence[CheckpointResult],
               described: Dict) -> Path:
    """checkpoint/NAME/best.pth: the winner's weights and config plus why it won (atomic)."""
    state = read_checkpoint(best.path)
    state["selection"] = finite_or_none({
        "by": "evaluate_328.py", "metric": metric, "better": SELECTION_METRICS[metric],
        "value": best.scores[metric], "epoch": best.epoch, "source": Path(best.path).name,
        "frames": described["frames"], "mode": described["mode"],
        "scores": {str(result.epoch): result.scores for result in results},
    })
    path = Path(run_dir) / BEST
    save_torch_atomic(path, state)
    log.info("best: epoch %d by %s = %.4f (%s is better) -> %s", best.epoch, metric, best.scores[metric],
             SELECTION_METRICS[metric], path)
    return path
