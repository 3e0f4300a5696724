"""Every option of rendering a trained person (RenderOptions) and inference_328.py's parser.

RenderOptions holds what ``load_renderer`` needs to find and load the run (which
checkpoint, device, backend, audio encoder) and how frames are made (batch size,
paste-back, mouth controls). Its defaults are the user guide's and the parser's;
the parser's ``dest`` names are its field names, so ``RenderOptions.from_args(args)``
reads them back. Options that only the script has (the audio, the output file,
the video encoder's quality) are parser arguments without a field.
"""
import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from data_utils.layout import CHECKPOINT_ROOT, DATASET_ROOT, RESULT_ROOT
from data_utils.timebase import ASR_CHOICES
from lipsync.core.devices import DEVICES
from lipsync.core.errors import UserError
from lipsync.core.options import Options
from lipsync.render.faceless import DEFAULT_FACELESS_FADE_FRAMES
from lipsync.render.frames import DEFAULT_FEATHER_PX
from lipsync.render.mouth_scale import MOUTH_SCALE_LIMITS, check_mouth_scale
from lipsync.render.silence import VAD_CHOICES
from lipsync.render.video_writer import DEFAULT_CRF, DEFAULT_PRESET, X264_PRESETS

DEFAULT_BATCH_SIZE = 8
BACKENDS = ("torch", "onnx")


@dataclass
class RenderOptions(Options):
    # Which run, and how it is loaded:
    dataset_dir: Optional[Path] = None     # the processed recording; None: dataset_root/NAME
    checkpoint: Optional[str] = None       # None: the newest epoch; an epoch number, best, latest, or a .pth path
    asr: Optional[str] = None              # None: the checkpoint's encoder (anything else must match it)
    device: str = "auto"
    backend: str = "torch"                 # or "onnx": exported next to the checkpoint on first use
    half: bool = False                     # float16 on CUDA (torch backend)
    ave_checkpoint: Optional[Path] = None  # encoder overrides; None: the one training used
    hubert_model: Optional[str] = None
    wenet_model: Optional[Path] = None
    onnx_threads: Optional[int] = None     # None: every usable core
    onnx_optimization: str = "all"         # lipsync.core.onnx_runtime.OPTIMIZATION_LEVELS
    dataset_root: Path = DATASET_ROOT
    checkpoint_root: Path = CHECKPOINT_ROOT
    # How frames are made:
    batch_size: int = DEFAULT_BATCH_SIZE
    feather_px: float = DEFAULT_FEATHER_PX
    colour_match: bool = False
    workers: Optional[int] = None      # threads for decoding and paste-back; None = up to the core count
    # Mouth controls (lipsync/render/mouth_control.py):
    silence_hold: bool = True          # pauses in the audio show the person's own closed mouth
    vad: Optional[str] = None          # pause detector: "silero" (None: silero, or energy without silero-vad)
    mouth_scale: float = 1.0           # > 1 opens the mouth wider, < 1 less
    paint_faceless: bool = False       # paint frames where preprocessing found no face (default: untouched)
    faceless_fade: int = DEFAULT_FACELESS_FADE_FRAMES   # frames the mouth fades out over before them

    def check(self) -> "RenderOptions":
        """The options themselves, or a UserError naming the first bad one (the device is checked on load)."""
        if self.backend not in BACKENDS:
            raise UserError(f"unknown --backend {self.backend!r} — choose one of: {', '.join(BACKENDS)}")
        if self.asr is not None and self.asr not in ASR_CHOICES:
            raise UserError(f"unknown --asr {self.asr!r} — choose one of: {', '.join(ASR_CHOICES)}")
        if int(self.batch_size) < 1:
            raise UserError(f"--batch_size must be at least 1, got {self.batch_size}")
        if self.feather_px < 0:
            raise UserError(f"--feather must be 0 or more crop pixels, got {self.feather_px}")
        if self.vad is not None and self.vad not in VAD_CHOICES:
            raise UserError(f"unknown --vad {self.vad!r} — choose one of: {', '.join(VAD_CHOICES)}")
        check_mouth_scale(self.mouth_scale)
        if int(self.faceless_fade) < 0:
            raise UserError(f"--faceless_fade must be 0 or more frames, got {self.faceless_fade}")
        return self


def add_person_arguments(parser, defaults: Optional["RenderOptions"] = None) -> None:
    """The options of every script that renders a trained person (inference_328.py, serve_328.py):
    which person and checkpoint, and how the model runs; ``parser`` may be an argument group."""
    defaults = defaults or RenderOptions()
    parser.add_argument("--name", required=True, help="the person: dataset/NAME and checkpoint/NAME")
    parser.add_argument("--checkpoint", help="an epoch number, best, latest, or a .pth path (default: the newest epoch)")
    parser.add_argument("--device", choices=DEVICES, default=defaults.device)
    parser.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                        help="torch, or onnx (onnxruntime; exported next to the checkpoint on first use)")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size, help="frames per model call")
    parser.add_argument("--fp16", dest="half", action="store_true", help="half precision on CUDA (torch backend)")
    parser.add_argument("--no_silence_hold", dest="silence_hold", action="store_false",
                        help="keep the model's mouth in pauses (default: pauses show the person's own closed mouth)")
    parser.add_argument("--vad", choices=VAD_CHOICES,
                        help="pause detector: silero (default) or energy (a speech-band energy gate, for clean audio)")
    parser.add_argument("--mouth_scale", type=float, default=defaults.mouth_scale,
                        help="how wide the mouth opens: 1.2 = 20%% wider, 0.8 = 20%% less "
                             f"({MOUTH_SCALE_LIMITS[0]:g}-{MOUTH_SCALE_LIMITS[1]:g})")
    parser.add_argument("--dataset_dir", help="processed recording (default: dataset/NAME)")
    parser.add_argument("--onnx_threads", type=int, help="onnxruntime CPU threads (default: all usable cores)")
    parser.add_argument("--workers", type=int, help="threads for frame decoding and paste-back")
    parser.add_argument("--dataset_root", type=Path, default=defaults.dataset_root, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint_root", type=Path, default=defaults.checkpoint_root, help=argparse.SUPPRESS)


def build_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """inference_328.py's options: RenderOptions fields (by ``dest``) plus the script's own."""
    defaults = RenderOptions()
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_person_arguments(parser, defaults)
    parser.add_argument("--audio_path", help="new audio (wav, mp3, m4a, flac, or a video with sound)")
    parser.add_argument("--asr", choices=ASR_CHOICES,
                        help="audio encoder; default: the one the checkpoint was trained with (a different one is an error)")
    parser.add_argument("--start_frame", type=int, default=0, help="recording frame the video starts from")
    parser.add_argument("--output", help="output mp4 (default: result/<NAME>_<audio stem>_<epoch>.mp4)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output (default: write <name>_2.mp4, _3, ... beside it)")
    parser.add_argument("--export_onnx", action="store_true",
                        help="export the checkpoint to <epoch>.onnx (and render too when --audio_path is given)")
    parser.add_argument("--colour_match", "--color_match", dest="colour_match", action="store_true",
                        help="match the generated mouth region's colours to the frame before pasting")
    parser.add_argument("--feather", dest="feather_px", metavar="FEATHER", type=float,
                        default=defaults.feather_px,
                        help="crop pixels over which the generated region fades into the frame")
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF, help="H.264 quality: lower is better and larger")
    parser.add_argument("--x264_preset", default=DEFAULT_PRESET, choices=X264_PRESETS,
                        help="x264 speed preset; faster presets give larger files")
    parser.add_argument("--paint_faceless", action="store_true",
                        help="paint the mouth on frames where preprocessing found no face (default: leave them untouched)")
    parser.add_argument("--faceless_fade", type=int, default=defaults.faceless_fade,
                        help="frames over which the mouth fades out before a frame without a face (0: cut)")
    parser.add_argument("--ave_checkpoint", help="AVE encoder for --asr ave (default: the one training used)")
    parser.add_argument("--hubert_model", help="HuBERT folder or hub id for --asr hubert (default: the one training used)")
    parser.add_argument("--wenet_model", help="WeNet encoder ONNX for --asr wenet (default: the one training used)")
    parser.add_argument("--result_root", type=Path, default=RESULT_ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser
