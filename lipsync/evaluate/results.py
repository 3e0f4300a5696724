"""One scored checkpoint (CheckpointResult), and how scores are written to JSON.

Scores are floats with NaN for "not measured" (no face, no SyncNet, no
landmark detector); JSON has no NaN, so every file evaluation writes goes
through ``finite_or_none`` and NaN is stored as null.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

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
