"""SyncNet embeddings of scored frames and their audio windows (for LSE-D / LSE-C).

The trained SyncNet of the run (checkpoint/NAME/syncnet/best.pth) embeds each
frame's mouth crop and the audio window of its instant; metrics.sync_confidence
turns the two embedding sequences into the scores.
"""
import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from data_utils import crop
from data_utils.model_input import inner_rgb_batch
from data_utils.timebase import model_audio_input
from lipsync.core.checkpoints import load_syncnet, read_checkpoint
from lipsync.core.errors import UserError

log = logging.getLogger("evaluation")

SYNC_BATCH = 32                    # crops per SyncNet call
SYNCNET_METRICS = ("lse_d", "lse_c")
# A SyncNet that cannot find the sync point of the real frames (their LSE-C below
# this) has not learned sync: its scores of generated frames mean nothing. Real
# speech scored by a SyncNet with ~80 % held-out pair accuracy gives 0.2 or more.
MIN_INFORMATIVE_LSE_C = 0.05


class SyncEmbedder:
    """Collects (frame crop, audio window) pairs and embeds them with a trained SyncNet.

    ``features`` are the (N, *per_frame) audio features the windows come from;
    ``add`` takes a frame, its crop box and the feature row of its instant.
    """

    def __init__(self, syncnet, features: np.ndarray, asr: str, device):
        self.syncnet, self.features, self.asr, self.device = syncnet, features, asr, device
        self._crops: List[np.ndarray] = []
        self._rows: List[int] = []
        self._faces: List[np.ndarray] = []
        self._voices: List[np.ndarray] = []

    def add(self, frame_bgr: np.ndarray, box, feature_row: int) -> None:
        self._crops.append(crop.cut_crop(frame_bgr, box))
        self._rows.append(int(feature_row))
        if len(self._crops) == SYNC_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._crops:
            return
        with torch.inference_mode():
            images = inner_rgb_batch(torch.from_numpy(np.stack(self._crops)).to(self.device))
            audio = torch.from_numpy(np.stack([model_audio_input(self.features, row, self.asr)
                                               for row in self._rows])).to(self.device)
            face, voice = self.syncnet.embeddings(images, audio)
        self._faces.append(face.float().cpu().numpy())
        self._voices.append(voice.float().cpu().numpy())
        self._crops, self._rows = [], []

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        """(face, audio) embeddings, (N, E) each, L2-normalised."""
        self._flush()
        return np.concatenate(self._faces), np.concatenate(self._voices)


def sync_embedder(syncnet, features: Optional[np.ndarray], asr: str, device) -> Optional[SyncEmbedder]:
    """An embedder when there is a SyncNet and audio features to score with, else None."""
    if syncnet is None or features is None:
        return None
    return SyncEmbedder(syncnet, features, asr, device)


def load_evaluation_syncnet(path: Optional[Path], asr: str, audio_shape, device):
    """The trained SyncNet for the sync scores and its held-out pair accuracy, or (None, None)."""
    if path is None or not Path(path).is_file():
        log.info("no SyncNet at %s: SyncNet distance/confidence are skipped "
                 "(train one: python train_syncnet.py --name NAME)", path)
        return None, None
    try:
        model, _ = load_syncnet(path, device, asr=asr, audio_shape=audio_shape)
    except UserError as error:
        log.warning("SyncNet distance/confidence skipped: %s", error)
        return None, None
    accuracy = (read_checkpoint(path).get("metrics") or {}).get("val_pair_accuracy")
    return model, accuracy
