"""One scored checkpoint (CheckpointResult), and how scores are written to JSON.

Scores are floats with NaN for "not measured" (no face, no SyncNet, no
landmark detector); JSON has no NaN, so every file evaluation writes goes
through ``finite_or_none`` and NaN is stored as null.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np


@dataclass
class CheckpointResult:
    path: Path
    epoch: int
    scores: Dict
    side_by_side: Optional[Path] = None
    strip: Optional[Path] = None
    reused: bool = False

    def as_dict(self) -> Dict:
        return {"checkpoint": str(self.path), "epoch": self.epoch, "scores": self.scores,
                "side_by_side": str(self.side_by_side) if self.side_by_side else None,
                "strip": str(self.strip) if self.strip else None, "reused": self.reused}


def finite_or_none(value):
    """JSON has no NaN: not-a-number and infinities become null."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def mean_over_checkpoints(results: Sequence[CheckpointResult]) -> Optional[Dict]:
    """The mean and standard deviation of every score over ``results`` (NaN ones left out).

    One checkpoint's motion scores swing from epoch to epoch as much as a change of
    objective does, so a run's end is judged by the mean of its last few epochs.
    None for fewer than two checkpoints.
    """
    if len(results) < 2:
        return None
    names = sorted({name for result in results for name in result.scores})
    means, spreads = {}, {}
    for name in names:
        values = np.array([float(result.scores[name]) for result in results
                           if isinstance(result.scores.get(name), (int, float, np.number))], dtype=np.float64)
        values = values[np.isfinite(values)]
        means[name] = float(values.mean()) if len(values) else math.nan
        spreads[name] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return {"epochs": [result.epoch for result in results], "scores": means, "sd": spreads}
