"""Audio features of new audio, with the encoder the model was trained on: 16 kHz samples in,
one feature row per 25 fps video frame out, computable piece by piece for streaming."""
import logging
import math
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from data_utils.features.ave import ave_features, load_ave_encoder
from data_utils.features.extract import resolve_encoder
from data_utils.features.hubert import hubert_features, load_hubert
from data_utils.features.wenet import WenetEncoder, wenet_features
from data_utils.layout import DatasetLayout
from data_utils.timebase import ASR_CHOICES, SAMPLES_PER_FRAME
from lipsync.core.commands import train_command
from lipsync.core.errors import UserError
from lipsync.core.fingerprint import file_fingerprint

log = logging.getLogger(__name__)

# Audio context each side of a piece when computing its features (video frames).
# AVE rows see +-0.125 s of audio (16 mel frames of 50 ms windows), so 8 frames
# make streamed rows identical to whole-file rows; HuBERT and WeNet attend over
# their whole input, so 1 s each side keeps them close (as their offline
# extraction does for long files).
FEATURE_CONTEXT_FRAMES = {"ave": 8, "hubert": 25, "wenet": 25}
# Hop in samples of each encoder's first analysis stage: a piece must start on
# a sample where both this grid and the 640-sample frame grid restart, or its
# rows are computed on shifted windows (AVE's 200-sample mel hop: every 5 frames).
ENCODER_HOP_SAMPLES = {"ave": 200, "hubert": 320, "wenet": 160}


def feature_encoder_source(config: Dict, layout: DatasetLayout, ave_checkpoint=None, hubert_model=None,
                           wenet_model=None) -> str:
    """The encoder (checkpoint path, HuBERT folder/hub id, WeNet ONNX) for new audio.

    An explicit option wins; otherwise the encoder recorded in the checkpoint's
    feature metadata when it still exists; otherwise the dataset's default
    (dataset/NAME/ave.pth for ave).
    """
    asr = config["asr"]
    recorded = (config.get("features") or {}).get("encoder")
    if asr == "ave" and ave_checkpoint is None and recorded and Path(recorded).is_file():
        ave_checkpoint = recorded
    if asr == "hubert" and hubert_model is None and recorded:
        hubert_model = recorded            # a local folder or a hub id
    if asr == "wenet" and wenet_model is None and recorded and Path(recorded).is_file():
        wenet_model = recorded
    source = resolve_encoder(asr, dataset_dir=layout.root, ave_checkpoint=ave_checkpoint,
                             hubert_model=hubert_model, wenet_model=wenet_model)
    # The feature metadata stamps a file encoder as "<path>|<bytes>|<mtime_ns>" (extract.encoder_stamp).
    stamp = (config.get("features") or {}).get("encoder_stamp")
    if stamp and Path(source).is_file():
        fingerprint = file_fingerprint(source)
        if not stamp.endswith(f"|{fingerprint['bytes']}|{fingerprint['mtime_ns']}"):
            log.warning("%s changed after the U-Net was trained on its features; the mouth may not follow "
                        "the audio — retrain the U-Net (%s)", source, train_command(layout.name))
    return source


class AudioFeaturizer:
    """16 kHz samples -> (N, *per_frame) features, one row per 25 fps frame; encoder loaded once."""

    def __init__(self, asr: str, source: str, device: str = "cpu"):
        if asr not in ASR_CHOICES:
            raise UserError(f"unknown --asr {asr!r} — choose one of: {', '.join(ASR_CHOICES)}")
        self.asr, self.source, self.device = asr, str(source), device
        if asr == "ave":
            self._encoder = load_ave_encoder(source, device)
        elif asr == "hubert":
            self._encoder = load_hubert(source, device)
        else:
            self._encoder = WenetEncoder(source, device)

    @property
    def context_frames(self) -> int:
        return FEATURE_CONTEXT_FRAMES[self.asr]

    @property
    def piece_alignment_frames(self) -> int:
        """Pieces of audio must start on a multiple of this many frames (see ENCODER_HOP_SAMPLES)."""
        return math.lcm(SAMPLES_PER_FRAME, ENCODER_HOP_SAMPLES[self.asr]) // SAMPLES_PER_FRAME

    def __call__(self, samples: np.ndarray, frame_count: Optional[int] = None) -> np.ndarray:
        if self.asr == "ave":
            return ave_features(samples, self._encoder, self.device, frame_count)
        if self.asr == "hubert":
            model, normalise = self._encoder
            return hubert_features(samples, model, normalise, self.device, frame_count)
        return wenet_features(samples, self._encoder, frame_count)
