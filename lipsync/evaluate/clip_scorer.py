"""Scoring one rendered clip frame by frame, against real frames when there are any.

Generated frame k is compared with real frame k as it arrives (PSNR/SSIM of
the frame and the mouth, the mouth's change from frame k-1), its landmarks are
tracked, its mouth crop goes to the SyncNet, and it is written beside the real
frame into the comparison video; only numbers and a few strip tiles are kept,
so a long clip is scored in constant image memory.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lipsync.evaluate import metrics
from lipsync.evaluate.landmark_track import LandmarkTrack
from lipsync.evaluate.pictures import side_by_side, strip_tile
from lipsync.evaluate.sync_embedding import SyncEmbedder


class ClipScorer:
    """Measures one generated clip frame by frame, against real frames when there are any.

    ``mouth_boxes`` (T, 4) are the real mouth regions the mouth measures are
    taken in; ``track_landmarks=False`` (no detector here) leaves the lip
    measures to the caller as n/a.
    """

    def __init__(self, crop_boxes: np.ndarray, mouth_boxes: Optional[np.ndarray] = None,
                 embedder: Optional[SyncEmbedder] = None, feature_rows: Optional[Sequence[int]] = None,
                 writer=None, labels: Tuple[str, str] = ("truth", "generated"), picks: Sequence[int] = (),
                 track_landmarks: bool = True):
        self.crop_boxes, self.mouth_boxes = crop_boxes, mouth_boxes
        self.embedder, self.feature_rows = embedder, feature_rows
        self.writer, self.labels, self.picks = writer, labels, set(picks)
        self.track = LandmarkTrack() if track_landmarks else None
        self.quality: Dict[str, List[float]] = {"psnr": [], "ssim": [], "mouth_psnr": [], "mouth_ssim": []}
        self.changes: List[float] = []
        self.tiles: List[np.ndarray] = []
        self.real_tiles: List[np.ndarray] = []
        self._previous: Optional[np.ndarray] = None
        self.count = 0

    def add(self, generated: np.ndarray, real: Optional[np.ndarray] = None) -> None:
        k = self.count
        box = self.crop_boxes[k]
        if real is not None and self.mouth_boxes is not None:
            mouth = self.mouth_boxes[k]
            self.quality["psnr"].append(metrics.psnr(generated, real))
            self.quality["ssim"].append(metrics.ssim(generated, real))
            self.quality["mouth_psnr"].append(metrics.psnr(generated, real, mouth))
            self.quality["mouth_ssim"].append(metrics.ssim(generated, real, mouth))
            if self._previous is not None:
                self.changes.append(metrics.mouth_change(self._previous, generated, mouth))
        self._previous = generated
        if self.track is not None:
            self.track.add(generated)
        if self.embedder is not None:
            self.embedder.add(generated, box, self.feature_rows[k])
        if self.writer is not None:
            left = real if real is not None else generated
            self.writer.write(side_by_side(left, generated, *self.labels))
        if k in self.picks:
            self.tiles.append(strip_tile(generated, box))
            if real is not None:
                self.real_tiles.append(strip_tile(real, box))
        self.count += 1

    def finish(self) -> Dict:
        """Image and stability numbers, the landmarks (None when not tracked), and the SyncNet embeddings (if any)."""
        landmarks = self.track.result() if self.track is not None else None
        scores = {key: float(np.mean(values)) for key, values in self.quality.items() if values}
        embeddings = self.embedder.result() if self.embedder is not None else None
        return {"scores": scores, "landmarks": landmarks, "changes": self.changes, "embeddings": embeddings}
