"""Preprocessing options (``data_utils/process.py``): the dataclass and its command line, together."""
import argparse
from dataclasses import dataclass
from typing import Dict, Optional

from data_utils.landmarks import BACKENDS
from data_utils.preprocess import MAX_MISSING_FACE_FRACTION, MAX_MISSING_FACE_SECONDS
from data_utils.timebase import ASR_CHOICES
from lipsync.core.options import Options

FEATURE_OPTION_NAMES = ("ave_checkpoint", "hubert_model", "wenet_model")


@dataclass
class PreprocessOptions(Options):
    """How a recording becomes a dataset; defaults follow the user guide."""
    asr: Optional[str] = None                  # also compute aud_<asr>.npy
    landmarks: str = "mediapipe"
    ave_checkpoint: Optional[str] = None
    hubert_model: Optional[str] = None
    wenet_model: Optional[str] = None
    device: str = "cpu"                        # for the audio features
    max_missing_fraction: float = MAX_MISSING_FACE_FRACTION
    max_missing_seconds: float = MAX_MISSING_FACE_SECONDS
    force: bool = False
    quiet: bool = False

    def process_video_arguments(self) -> Dict:
        """The keyword arguments of data_utils.preprocess.process_video these options stand for."""
        features = {name: getattr(self, name) for name in FEATURE_OPTION_NAMES if getattr(self, name)}
        if self.asr:
            features["device"] = self.device
        return {"asr": self.asr, "landmarks_backend": self.landmarks, "force": self.force,
                "feature_options": features, "show_progress": not self.quiet,
                "max_missing_fraction": self.max_missing_fraction,
                "max_missing_seconds": self.max_missing_seconds}


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", help="the recording (same as --input_video)")
    parser.add_argument("--input_video", help="the recording, e.g. dataset/May/May.mp4")
    parser.add_argument("--output_dir", help="dataset folder (default: the video's folder)")
    parser.add_argument("--asr", choices=ASR_CHOICES, default=None,
                        help="also compute audio features for this encoder (default: none)")
    parser.add_argument("--landmarks", choices=BACKENDS, default="mediapipe",
                        help="landmark detector (face_alignment needs its weights already downloaded)")
    parser.add_argument("--ave_checkpoint", help="pretrained AVE weights (otherwise learned from the recording)")
    parser.add_argument("--hubert_model", help="HuBERT model: local folder or hub id")
    parser.add_argument("--wenet_model", help="WeNet encoder exported to ONNX")
    parser.add_argument("--device", default="cpu", help="device for audio features: cpu | cuda (default cpu)")
    parser.add_argument("--max_missing_fraction", type=float, default=MAX_MISSING_FACE_FRACTION,
                        help="stop if more than this fraction of frames has no face (default %(default)s)")
    parser.add_argument("--max_missing_seconds", type=float, default=MAX_MISSING_FACE_SECONDS,
                        help="stop if the face is missing longer than this in a row (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="redo every stage")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser
