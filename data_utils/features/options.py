"""Options of the audio-feature command (data_utils/audio_features.py): the encoder weights and its parser.

``EncoderOptions`` names which weights each ``--asr`` uses; the feature
functions (extract.py) take its fields as keyword arguments::

    encoder = EncoderOptions.from_args(args)
    prepare_dataset_features(dataset_dir, args.asr, **encoder.as_dict())
"""
import argparse
from dataclasses import dataclass
from typing import Optional

from data_utils.features.hubert import HUBERT_DEFAULT_MODEL
from data_utils.timebase import ASR_CHOICES
from lipsync.core.devices import DEVICES
from lipsync.core.options import Options


@dataclass
class EncoderOptions(Options):
    """Which weights the encoders use; None is each encoder's default."""
    ave_checkpoint: Optional[str] = None    # default: the dataset's ave.pth, learned from the recording
    hubert_model: Optional[str] = None      # default: HUBERT_DEFAULT_MODEL (a local folder or a hub id)
    wenet_model: Optional[str] = None       # --asr wenet has no default: an encoder exported to ONNX


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Audio features per 25 fps video frame (<wav stem>_<asr>.npy).")
    parser.add_argument("--asr", required=True, help=f"audio encoder: {' | '.join(ASR_CHOICES)}")
    parser.add_argument("--wav", required=True, help="audio file (any format ffmpeg reads)")
    parser.add_argument("--output", help="output .npy (default: next to --wav, named after it and the "
                                         "encoder: new.wav -> new_ave.npy, new_hu.npy, new_wenet.npy)")
    parser.add_argument("--ave_checkpoint", help="pretrained SyncTalk AVE audio encoder (.pth); default: "
                                                 "ave.pth learned from the recording in the --wav folder")
    parser.add_argument("--hubert_model", default=None,
                        help=f"HuBERT model folder or hub id (default {HUBERT_DEFAULT_MODEL})")
    parser.add_argument("--wenet_model", help="WeNet encoder exported to ONNX")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="device for the encoder (default auto: cuda when available)")
    parser.add_argument("--force", action="store_true",
                        help="for a dataset's aud.wav: recompute (and relearn ave.pth) even if up to date")
    return parser
