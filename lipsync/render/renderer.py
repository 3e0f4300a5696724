"""Any new audio in, the person's lip-synced frames out: the importable render API.

    from lipsync.render.renderer import load_renderer, render, render_to_file

    for frame in render("May", "new.wav"):                # (H, W, 3) BGR uint8 frames
        ...
    renderer = load_renderer("May", checkpoint="best", device="cuda")
    render_to_file(renderer, "new.wav", "result/May_new.mp4")   # what inference_328.py does
    stream = renderer.stream()                             # audio arriving live
    for piece in microphone_pieces:                        # 16 kHz mono float32, any length
        for frame in stream.push(piece):
            show(frame)
    for frame in stream.finish():
        show(frame)

How a frame is made (frame i of the output, 25 fps, 640 samples of audio each):
- background: the processed recording (dataset/NAME/full_body_img/) played
  forward and backward from ``start_frame`` (ping-pong), so audio longer than
  the recording never jumps back to its first frame;
- crop: the recording's own smoothed crop box (crop_boxes.npy), so the face
  does not jitter; the 328 crop is cut with data_utils.crop.cut_crop;
- model: data_utils.dataset.model_input_batch (reference = the frame's own
  crop, target = the same crop with the lower face masked) and the audio window
  of frames i-8 .. i+7 (data_utils.timebase.model_audio_input);
- paste-back: the generated 320 square replaces the crop's centre and is
  blended into the frame through data_utils.crop.paste_crop's feathered mask
  (no hard rectangle), optionally after matching its colours to the frame;
- mouth controls (lipsync/render/mouth_control.py, issue 7), between the model and
  the paste-back: recording frames without a face are written untouched; the
  mouth opening is scaled by ``mouth_scale``; in pauses of the audio
  (lipsync/render/silence.py) the mouth cross-fades to the person's own closed
  mouth.

Streaming: audio features are computed piece by piece, with enough audio
context around each piece that the rows equal those of the whole file (AVE is
exact; HuBERT/WeNet see ``FEATURE_CONTEXT_FRAMES`` of context), frames go
through the model in batches and come out as soon as the audio after them that
their window needs has arrived. Nothing holds more than a few batches of
frames, so a 10-minute audio renders in the same memory as a 10-second one.
"""
import functools
import logging
import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np

from data_utils import crop as crop_geometry
from lipsync.core.errors import UserError
from data_utils.layout import CHECKPOINT_ROOT, DATASET_ROOT, RESULT_ROOT, DatasetLayout, checkpoint_dir
from lipsync.render.mouth_control import DEFAULT_FACELESS_FADE_FRAMES, MouthControls, check_mouth_scale
from data_utils.timebase import (ASR_CHOICES, FEATURE_SPECS, SAMPLE_RATE, SAMPLES_PER_FRAME, WINDOW_AFTER,
                                 WINDOW_BEFORE, frame_count_for_samples, model_audio_input)

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
DEFAULT_FEATHER_PX = 12.0        # crop pixels over which the generated region fades into the frame
BACKENDS = ("torch", "onnx")
DEVICES = ("auto", "cpu", "cuda")
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
OFFLINE_PIECE_SECONDS = 10       # a whole file is fed to the stream in pieces this long
MAX_WORKER_THREADS = 8           # JPEG decoding, crop cutting and paste-back (cv2 releases the GIL)
# Colour matching: per-channel gain is limited so a dark or flat patch cannot blow up the colours.
COLOUR_GAIN_LIMITS = (0.5, 2.0)
COLOUR_STD_FLOOR = 1.0


# =============================================================================
# Small pieces: device, ping-pong order, colour matching, paste-back
# =============================================================================

def resolve_device(device: str = "auto") -> str:
    """"auto" -> cuda when torch sees a GPU, else cpu; "cuda" without a GPU is an error."""
    import torch

    if device not in DEVICES:
        raise UserError(f"unknown --device {device!r} — choose one of: {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU — use --device cpu "
                        "(or install the CUDA build of PyTorch)")
    return device


def pingpong_index(position: int, frame_count: int) -> int:
    """Recording frame shown at ``position`` when playing 0 .. N-1, N-2 .. 0, 1 .. (no frame doubled)."""
    if frame_count <= 1:
        return 0
    period = 2 * (frame_count - 1)
    phase = position % period
    return phase if phase < frame_count else period - phase


def pingpong_indices(start_frame: int, count: int, frame_count: int) -> np.ndarray:
    """Recording frames for ``count`` output frames starting at recording frame ``start_frame``."""
    return np.array([pingpong_index(start_frame + k, frame_count) for k in range(count)], dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _kept_region() -> np.ndarray:
    """(320, 320) uint8, 255 where the model does not repaint the inner crop (an OpenCV mask)."""
    return np.where(crop_geometry.inner_mask() == 0, 255, 0).astype(np.uint8)


def match_colours(generated: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``generated`` (320, 320, 3) uint8 with its colours matched to ``original``.

    The model redraws the whole square but only its repainted region is
    pasted; outside that region it should reproduce the real frame exactly, so
    any colour cast shows there, free of the mouth's own change. A per-channel
    gain and offset that maps the generated statistics of that area onto the
    real ones is applied to the whole square (as a lookup table: uint8 in, uint8 out).
    """
    import cv2

    kept = _kept_region()
    generated_mean, generated_std = (value.ravel() for value in cv2.meanStdDev(generated, mask=kept))
    original_mean, original_std = (value.ravel() for value in cv2.meanStdDev(original, mask=kept))
    gain = np.clip(np.maximum(original_std, COLOUR_STD_FLOOR) / np.maximum(generated_std, COLOUR_STD_FLOOR),
                   *COLOUR_GAIN_LIMITS)
    levels = np.arange(256, dtype=np.float64)[:, None]
    table = np.clip((levels - generated_mean) * gain + original_mean + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(generated, table[None])             # (1, 256, 3): one table per channel


def compose_frame(frame: np.ndarray, crop_328: np.ndarray, generated_320: np.ndarray, box,
                  feather_px: float = DEFAULT_FEATHER_PX, colour_match: bool = False) -> np.ndarray:
    """Paste the generated (320, 320, 3) BGR square into ``frame`` (changed in place and returned).

    ``crop_328`` is the frame's own 328 crop (cut_crop with ``box``); its
    centre is replaced by the generated square and the result is blended back
    through the feathered repainted-region mask, so pixels outside that region
    keep their exact values and the edge ramps over ``feather_px`` crop pixels.
    """
    inner = crop_328[crop_geometry.INNER, crop_geometry.INNER]
    if colour_match:
        generated_320 = match_colours(generated_320, inner)
    patched = crop_328.copy()
    patched[crop_geometry.INNER, crop_geometry.INNER] = generated_320
    return crop_geometry.paste_crop(frame, patched, box, feather_px)


# =============================================================================
# Finding a trained person
# =============================================================================

def trained_names(checkpoint_root=CHECKPOINT_ROOT) -> List[str]:
    """Names under checkpoint/ that hold at least one .pth."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    return sorted(path.name for path in root.iterdir() if path.is_dir() and any(path.glob("*.pth")))


def _train_command(name: str) -> str:
    return f"python train_328.py --name {name} --asr ave (or the whole path: bash training_328.sh {name} 0)"


def locate_run(name: Optional[str], dataset_dir=None, checkpoint=None, dataset_root=DATASET_ROOT,
               checkpoint_root=CHECKPOINT_ROOT) -> Tuple[DatasetLayout, Path]:
    """(dataset layout, checkpoint file) for ``name``; one clear UserError for each missing piece.

    ``checkpoint``: None (newest epoch), an epoch number, "best"/"latest", or a .pth path.
    """
    from lipsync.core.checkpoints import resolve_checkpoint
    from data_utils.dataset import process_command

    if name is None and dataset_dir is None:
        raise UserError("give the person's --name (dataset/NAME and checkpoint/NAME)")
    layout = DatasetLayout(Path(dataset_dir)) if dataset_dir is not None else \
        DatasetLayout.for_name(name, dataset_root)
    name = name or layout.name
    runs = checkpoint_dir(name, checkpoint_root)
    explicit_file = checkpoint is not None and not str(checkpoint).isdigit() and \
        str(checkpoint) not in ("best", "latest")
    if explicit_file:
        checkpoint_path = resolve_checkpoint(runs, checkpoint)
    else:
        if not layout.root.exists() and not runs.exists():
            names = trained_names(checkpoint_root)
            have = ", ".join(names) if names else f"none yet (train one: {_train_command('NAME')})"
            raise UserError(f"unknown name {name!r}: neither {layout.root} nor {runs} exists — "
                            f"trained names in {Path(checkpoint_root)}/: {have}")
        if not runs.is_dir() or not any(runs.glob("*.pth")):
            raise UserError(f"{name} has a dataset ({layout.root}) but no trained checkpoint in {runs} — "
                            f"train it first: {_train_command(name)}")
        checkpoint_path = resolve_checkpoint(runs, checkpoint)
    if not layout.root.is_dir():
        raise UserError(f"{layout.root} does not exist — inference paints the mouth into the processed "
                        f"frames of {name}'s recording; put it at {layout.source_video()} and run: "
                        f"{process_command(layout)}")
    for needed in (layout.crop_boxes, layout.frames_dir):
        if not needed.exists():
            raise UserError(f"{layout.root} is not processed (no {needed.name}) — run: {process_command(layout)}")
    return layout, checkpoint_path


def checkpoint_label(checkpoint_path) -> str:
    """The epoch a checkpoint holds, for output names: "120" for 120.pth, else its stored epoch."""
    from lipsync.core.checkpoints import read_checkpoint

    path = Path(checkpoint_path)
    if path.stem.isdigit():
        return path.stem
    epoch = read_checkpoint(path).get("epoch")
    return str(epoch) if epoch is not None else path.stem


def default_output_path(name: str, audio_path, label: str, result_root=RESULT_ROOT) -> Path:
    """result/<NAME>_<audio stem>_<epoch>.mp4"""
    return Path(result_root) / f"{name}_{Path(audio_path).stem}_{label}.mp4"


# =============================================================================
# Audio features of new audio, with the encoder the model was trained on
# =============================================================================

def feature_encoder_source(config: Dict, layout: DatasetLayout, ave_checkpoint=None, hubert_model=None,
                           wenet_model=None) -> str:
    """The encoder (checkpoint path, HuBERT folder/hub id, WeNet ONNX) for new audio.

    An explicit option wins; otherwise the encoder recorded in the checkpoint's
    feature metadata when it still exists; otherwise the dataset's default
    (dataset/NAME/ave.pth for ave).
    """
    from data_utils.features.extract import resolve_encoder

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
    stamp = (config.get("features") or {}).get("encoder_stamp")
    if stamp and Path(source).is_file():
        stat = Path(source).stat()
        if not stamp.endswith(f"|{stat.st_size}|{stat.st_mtime_ns}"):
            log.warning("%s changed after the U-Net was trained on its features; the mouth may not follow "
                        "the audio — retrain the U-Net (python train_328.py --name %s)", source, layout.name)
    return source


class AudioFeaturizer:
    """16 kHz samples -> (N, *per_frame) features, one row per 25 fps frame; encoder loaded once."""

    def __init__(self, asr: str, source: str, device: str = "cpu"):
        from data_utils.features import extract as audio_features

        if asr not in ASR_CHOICES:
            raise UserError(f"unknown --asr {asr!r} — choose one of: {', '.join(ASR_CHOICES)}")
        self.asr, self.source, self.device = asr, str(source), device
        self._module = audio_features
        if asr == "ave":
            self._encoder = audio_features.load_ave_encoder(source, device)
        elif asr == "hubert":
            self._encoder = audio_features.load_hubert(source, device)
        else:
            self._encoder = audio_features.WenetEncoder(source, device)

    @property
    def context_frames(self) -> int:
        return FEATURE_CONTEXT_FRAMES[self.asr]

    @property
    def piece_alignment_frames(self) -> int:
        """Pieces of audio must start on a multiple of this many frames (see ENCODER_HOP_SAMPLES)."""
        return math.lcm(SAMPLES_PER_FRAME, ENCODER_HOP_SAMPLES[self.asr]) // SAMPLES_PER_FRAME

    def __call__(self, samples: np.ndarray, frame_count: Optional[int] = None) -> np.ndarray:
        features = self._module
        if self.asr == "ave":
            return features.ave_features(samples, self._encoder, self.device, frame_count)
        if self.asr == "hubert":
            model, normalise = self._encoder
            return features.hubert_features(samples, model, normalise, self.device, frame_count)
        return features.wenet_features(samples, self._encoder, frame_count)


# =============================================================================
# The model, behind one call for both backends
# =============================================================================

class TorchUNet:
    """crops (B, 328, 328, 3) BGR uint8 + audio (B, C, H, W) -> generated (B, 320, 320, 3) BGR uint8."""

    backend = "torch"

    def __init__(self, model, device: str = "cpu", half: bool = False):
        import torch

        self.model = model.to(device).eval()
        self.device = device
        self.half = bool(half) and device == "cuda"
        if device == "cuda":
            torch.backends.cudnn.benchmark = True      # fixed input shapes: pick the fastest kernels once

    def __call__(self, crops_u8: np.ndarray, audio: np.ndarray) -> np.ndarray:
        import torch

        from data_utils.dataset import model_input_batch

        with torch.inference_mode():
            crops = torch.from_numpy(crops_u8).to(self.device, non_blocking=True)
            image6, _ = model_input_batch(crops, crops)
            audio_tensor = torch.from_numpy(audio).to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
                output = self.model(image6, audio_tensor)
            return to_bgr_u8(output).cpu().numpy()


def to_bgr_u8(rgb):
    """(B, 3, 320, 320) RGB in [0, 1] (torch) -> (B, 320, 320, 3) BGR uint8 (torch), rounded."""
    import torch

    scaled = (rgb.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).flip(-1).contiguous()


class OnnxRuntimeUNet:
    """The same call as TorchUNet, through onnxruntime (lipsync.core.onnx_runtime)."""

    backend = "onnx"

    def __init__(self, onnx_path, device: str = "cpu", threads: Optional[int] = None,
                 optimization: str = "all"):
        from lipsync.core.onnx_runtime import OnnxUNet

        self.session = OnnxUNet(onnx_path, device, threads, optimization)
        self.device = self.session.device

    def __call__(self, crops_u8: np.ndarray, audio: np.ndarray) -> np.ndarray:
        import torch

        from data_utils.dataset import model_input_batch

        crops = torch.from_numpy(crops_u8)
        image6, _ = model_input_batch(crops, crops)
        output = self.session(image6.numpy(), audio)
        return to_bgr_u8(torch.from_numpy(output)).numpy()


# =============================================================================
# The renderer: a person's recording + a trained model
# =============================================================================

@dataclass
class RenderOptions:
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
        from lipsync.render.silence import VAD_CHOICES

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


class LipSyncRenderer:
    """Renders one person's recording to new audio with one trained U-Net.

    Build with ``load_renderer`` (a trained NAME) or ``LipSyncRenderer.from_model``
    (a U-Net in memory plus a processed dataset folder).
    """

    def __init__(self, layout: DatasetLayout, unet, featurizer: AudioFeaturizer, config: Dict,
                 options: Optional[RenderOptions] = None, checkpoint_path: Optional[Path] = None):
        from data_utils.dataset import load_crop_boxes
        from lipsync.core.onnx_runtime import cpu_thread_count

        self.layout = layout
        self.unet = unet
        self.featurizer = featurizer
        self.config = config
        self.asr = config["asr"]
        self.options = (options or RenderOptions()).check()
        self.checkpoint_path = checkpoint_path
        self.boxes = load_crop_boxes(layout)
        self.frame_count = len(self.boxes)
        last = layout.frame_path(self.frame_count - 1)
        if not last.is_file():
            from data_utils.dataset import process_command

            raise UserError(f"{last} is missing ({self.frame_count} crop boxes but fewer frames) — "
                            f"run again: {process_command(layout)}")
        self.height, self.width = self._read_frame(0).shape[:2]
        options = self.options
        self.controls = MouthControls(layout, self.boxes, silence_hold=options.silence_hold, vad=options.vad,
                                      mouth_scale=options.mouth_scale, paint_faceless=options.paint_faceless,
                                      faceless_fade=int(options.faceless_fade), feather_px=options.feather_px)
        self._compose = functools.partial(compose_frame, feather_px=options.feather_px,
                                          colour_match=options.colour_match)
        workers = self.options.workers or min(MAX_WORKER_THREADS, cpu_thread_count())
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="render")
        expected = tuple(config.get("audio_shape") or ())
        self._expected_audio_shape = expected

    @classmethod
    def from_model(cls, model, dataset_dir, device: str = "auto", asr: Optional[str] = None,
                   ave_checkpoint=None, hubert_model=None, wenet_model=None, half: bool = False,
                   **options) -> "LipSyncRenderer":
        """A renderer for a LipSyncUNet already in memory (e.g. during training).

        The renderer works on a copy in eval mode: the caller's model keeps its mode and device.
        """
        import copy

        from data_utils.dataset import read_feature_metadata

        layout = DatasetLayout(Path(dataset_dir))
        model_asr = getattr(model, "asr", None)
        if asr is not None and model_asr is not None and asr != model_asr:
            raise UserError(f"the model was trained with --asr {model_asr}, not --asr {asr} — use --asr {model_asr}")
        asr = model_asr or asr
        if asr is None:
            raise UserError("say which audio encoder the model was trained with (asr='ave'|'hubert'|'wenet')")
        config = {"asr": asr, "audio_shape": list(model.audio_shape), "widths": list(getattr(model, "widths", ())),
                  "features": read_feature_metadata(layout, asr)}
        device = resolve_device(device)
        featurizer = AudioFeaturizer(asr, feature_encoder_source(config, layout, ave_checkpoint, hubert_model,
                                                                 wenet_model), device)
        return cls(layout, TorchUNet(copy.deepcopy(model), device, half), featurizer, config,
                   RenderOptions(**options))

    # ------------------------------------------------------------------ frames

    def _read_frame(self, index: int) -> np.ndarray:
        import cv2

        path = self.layout.frame_path(int(index))
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            from data_utils.dataset import process_command

            raise UserError(f"{path} is missing or unreadable — run again: {process_command(self.layout)}")
        return frame

    def load_background(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(frame, its 328 crop) of recording frame ``index``."""
        frame = self._read_frame(index)
        return frame, crop_geometry.cut_crop(frame, self.boxes[index])

    def compose_output(self, frame: np.ndarray, crop_328: np.ndarray, generated: np.ndarray,
                       recording_frame: int, hold_weight: float = 0.0) -> np.ndarray:
        """The output frame: the mouth controls, then the feathered paste-back of the generated square.

        A recording frame without a face comes back as ``frame`` itself, untouched.
        """
        return self.controls.apply(frame, crop_328, generated, recording_frame, hold_weight, self._compose)

    @property
    def frame_size(self) -> Tuple[int, int]:
        """(width, height) of the output frames: the recording's own size."""
        return self.width, self.height

    def check_start_frame(self, start_frame: int) -> int:
        if not 0 <= int(start_frame) < self.frame_count:
            raise UserError(f"--start_frame {start_frame} is outside the recording "
                            f"(frames 0 .. {self.frame_count - 1} in {self.layout.frames_dir})")
        return int(start_frame)

    def check_features(self, features: np.ndarray) -> None:
        """The features of new audio must have the shape the model was trained on."""
        shape = FEATURE_SPECS[self.asr].window_shape(features.shape[1:])
        if self._expected_audio_shape and tuple(shape) != self._expected_audio_shape:
            raise UserError(f"the {self.asr} encoder {self.featurizer.source} gives audio windows of shape "
                            f"{tuple(shape)} but the model was trained on {self._expected_audio_shape} — "
                            "use the encoder the model was trained with")

    # ------------------------------------------------------------------ API

    def stream(self, start_frame: int = 0) -> "RenderStream":
        """A stream that takes audio pieces as they arrive and yields frames with bounded latency."""
        return RenderStream(self, self.check_start_frame(start_frame))

    def render(self, audio, start_frame: int = 0) -> Iterator[np.ndarray]:
        """Frames (BGR uint8, the recording's size) for ``audio`` (a file or 16 kHz mono float32 samples).

        Exactly ``frame_count_for_samples(len(samples))`` frames, produced in
        batches as the generator is consumed; nothing keeps them afterwards.
        """
        from data_utils.audio import as_samples

        samples = as_samples(audio)
        stream = self.stream(start_frame)
        piece = OFFLINE_PIECE_SECONDS * SAMPLE_RATE
        for begin in range(0, len(samples), piece):
            yield from stream.push(samples[begin:begin + piece])
        yield from stream.finish()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.controls.close()

    def __enter__(self) -> "LipSyncRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RenderStream:
    """Audio pieces in, frames out, in order; see ``LipSyncRenderer.stream``.

    ``push(samples)`` takes the next 16 kHz mono float32 samples and returns an
    iterator over the frames that became ready (iterate it before the next
    push); ``finish()`` says the audio ended and returns the remaining frames.
    A frame comes out once the audio ``latency_frames`` frames after it has
    arrived: its window needs WINDOW_AFTER frames of audio ahead, the feature
    encoder ``context_frames`` more, and frames are made a batch at a time.
    """

    def __init__(self, renderer: LipSyncRenderer, start_frame: int):
        self.renderer = renderer
        self.start_frame = start_frame
        self.batch_size = int(renderer.options.batch_size)
        self.context = renderer.featurizer.context_frames
        self.frames_out = 0                       # output frames yielded so far
        self.samples_in = 0                       # samples received so far
        self.finished = False
        self._samples = np.zeros(0, np.float32)   # received audio from sample _samples_start on
        self._samples_start = 0
        self._features: Optional[np.ndarray] = None   # rows for frames _features_start .. _features_stop-1
        self._features_start = 0
        self._features_stop = 0
        self._loads: Dict[int, Future] = {}       # output frame -> pending (frame, crop)
        self._next_render = 0                     # next output frame to go through the model
        self._composing: Deque[Tuple[int, List[Future]]] = deque()
        self._hold = renderer.controls.new_silence_hold()   # None when the silence hold is off
        self.held_frames = 0                      # output frames with some of the closed mouth in them

    @property
    def latency_frames(self) -> int:
        """Most frames of audio that can arrive after frame i's audio before frame i is yielded."""
        return WINDOW_AFTER + self.context + self.batch_size

    # ------------------------------------------------------------------ input

    def push(self, samples) -> Iterator[np.ndarray]:
        if self.finished:
            raise RuntimeError("push() after finish()")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size and not np.all(np.isfinite(samples)):
            raise UserError("the audio contains NaN or infinite samples")
        self._samples = np.concatenate([self._samples, samples])
        self.samples_in += samples.size
        if self._hold is not None:
            self._hold.push(samples)
        return self._drain(final=False)

    def finish(self) -> Iterator[np.ndarray]:
        if self.finished:
            return iter(())
        if self.samples_in == 0:
            raise UserError("the audio contains no samples — give a recording with sound")
        self.finished = True
        if self._hold is not None:
            self._hold.finish()
        return self._drain(final=True)

    @property
    def total_frames(self) -> Optional[int]:
        """Output frames of the whole audio, once it has finished."""
        return frame_count_for_samples(self.samples_in) if self.finished else None

    # ------------------------------------------------------------------ work

    def _piece_start(self) -> int:
        """First frame of the next feature piece: the left context, on the encoder's grid."""
        first = max(0, self._features_stop - self.context)
        return first - first % self.renderer.featurizer.piece_alignment_frames

    def _update_features(self, final: bool) -> None:
        if final:
            target = frame_count_for_samples(self.samples_in)
        else:
            # Rows up to here have all the audio their encoder window sees.
            target = self.samples_in // SAMPLES_PER_FRAME - self.context
            # Each call pays for 2 x context frames of margin, so compute only when
            # the new rows complete a batch for the model (frame i needs rows to i + 7).
            if target - (WINDOW_AFTER - 1) - self._next_render < self.batch_size:
                return
        if target <= self._features_stop:
            return
        first = self._piece_start()
        end_sample = self.samples_in if final else (target + self.context) * SAMPLES_PER_FRAME
        segment = self._samples[first * SAMPLES_PER_FRAME - self._samples_start:end_sample - self._samples_start]
        rows = self.renderer.featurizer(segment)
        if len(rows) < target - first:
            raise UserError(f"the {self.renderer.asr} encoder returned {len(rows)} feature frames for "
                            f"{target - first} video frames")
        if self._features is None:
            self.renderer.check_features(rows)
        fresh = np.asarray(rows[self._features_stop - first:target - first], dtype=np.float32)
        keep_from = max(0, self._next_render - WINDOW_BEFORE)
        old = self._features[keep_from - self._features_start:] if self._features is not None \
            else np.zeros((0,) + fresh.shape[1:], np.float32)
        self._features = np.concatenate([old, fresh])
        self._features_start = keep_from
        self._features_stop = target
        # Audio before the next piece's left context is never read again.
        drop = max(0, self._piece_start() * SAMPLES_PER_FRAME - self._samples_start)
        if drop:
            self._samples = self._samples[drop:]
            self._samples_start += drop

    def _renderable(self, final: bool) -> int:
        if final:
            return self._features_stop - self._next_render
        # Frame i's window needs feature rows up to i + WINDOW_AFTER - 1.
        ready = self._features_stop - WINDOW_AFTER + 1
        if self._hold is not None:        # (its look-ahead is shorter than the window's: never the limit)
            ready = min(ready, self._hold.ready_frames)
        return max(0, ready - self._next_render)

    def _background(self, output_index: int) -> Future:
        """The pending (frame, crop) of output frame ``output_index``; prefetches what follows."""
        renderer = self.renderer
        prefetch_until = output_index + 2 * self.batch_size
        if self.finished:
            prefetch_until = min(prefetch_until, frame_count_for_samples(self.samples_in))
        for index in range(output_index, prefetch_until):
            if index not in self._loads:
                recording_frame = pingpong_index(self.start_frame + index, renderer.frame_count)
                self._loads[index] = renderer._pool.submit(renderer.load_background, recording_frame)
        return self._loads.pop(output_index)

    def _run_batch(self, count: int) -> None:
        renderer = self.renderer
        indices = range(self._next_render, self._next_render + count)
        loaded = [self._background(index) for index in indices]
        backgrounds = [future.result() for future in loaded]
        crops = np.stack([crop_328 for _, crop_328 in backgrounds])
        audio = np.stack([model_audio_input(self._features, index - self._features_start, renderer.asr)
                          for index in indices])
        generated = renderer.unet(crops, audio)
        holds = self._hold.weights(indices.start, indices.stop) if self._hold is not None else np.zeros(count)
        self.held_frames += int(np.count_nonzero(holds))
        jobs = []
        for (frame, crop_328), image, index, hold in zip(backgrounds, generated, indices, holds):
            recording_frame = pingpong_index(self.start_frame + index, renderer.frame_count)
            jobs.append(renderer._pool.submit(renderer.compose_output, frame, crop_328, image, recording_frame,
                                              float(hold)))
        self._composing.append((self._next_render, jobs))
        self._next_render += count

    def _yield_composed(self, keep: int) -> Iterator[np.ndarray]:
        while len(self._composing) > keep:
            _, jobs = self._composing.popleft()
            for job in jobs:
                self.frames_out += 1
                yield job.result()

    def _drain(self, final: bool) -> Iterator[np.ndarray]:
        self._update_features(final)
        while True:
            ready = self._renderable(final)
            if ready == 0 or (not final and ready < self.batch_size):
                break
            self._run_batch(min(ready, self.batch_size))
            # One batch is pasted back in worker threads while the next goes through the model.
            yield from self._yield_composed(keep=1)
        yield from self._yield_composed(keep=0)
        if final:
            for future in self._loads.values():
                future.cancel()
            self._loads.clear()


# =============================================================================
# Loading a trained person, and the one-call forms
# =============================================================================

def load_renderer(name: Optional[str] = None, *, dataset_dir=None, checkpoint=None, asr: Optional[str] = None,
                  device: str = "auto", backend: str = "torch", half: bool = False,
                  ave_checkpoint=None, hubert_model=None, wenet_model=None,
                  onnx_threads: Optional[int] = None, onnx_optimization: str = "all",
                  dataset_root=DATASET_ROOT, checkpoint_root=CHECKPOINT_ROOT, **options) -> LipSyncRenderer:
    """A renderer for trained person ``name`` (dataset/NAME + checkpoint/NAME/<epoch>.pth).

    ``checkpoint``: None = newest epoch, an epoch number, "best", or a .pth path.
    ``asr``: None = the checkpoint's; anything else must match it.
    ``backend``: "torch" or "onnx" (exported next to the checkpoint on first use).
    ``options``: RenderOptions fields (batch_size, feather_px, colour_match, workers, and the mouth
    controls silence_hold, vad, mouth_scale, paint_faceless, faceless_fade).
    """
    from lipsync.core.checkpoints import load_unet

    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r} — choose one of: {', '.join(BACKENDS)}")
    if asr is not None and asr not in ASR_CHOICES:
        raise UserError(f"unknown --asr {asr!r} — choose one of: {', '.join(ASR_CHOICES)}")
    render_options = RenderOptions(**options).check()
    layout, checkpoint_path = locate_run(name, dataset_dir, checkpoint, dataset_root, checkpoint_root)
    device = resolve_device(device)
    model, config = load_unet(checkpoint_path, "cpu", asr=asr)
    log.info("%s: %s, --asr %s, widths %s, on %s (%s)", layout.name, checkpoint_path, config["asr"],
             config.get("widths"), device, backend)
    if backend == "onnx":
        from lipsync.core.onnx_runtime import ensure_onnx

        unet = OnnxRuntimeUNet(ensure_onnx(checkpoint_path, model, config), device, onnx_threads, onnx_optimization)
    else:
        unet = TorchUNet(model, device, half)
    featurizer = AudioFeaturizer(config["asr"], feature_encoder_source(config, layout, ave_checkpoint,
                                                                       hubert_model, wenet_model), device)
    return LipSyncRenderer(layout, unet, featurizer, config, render_options, checkpoint_path)


_LOAD_KEYS = ("dataset_dir", "checkpoint", "asr", "device", "backend", "half", "ave_checkpoint", "hubert_model",
              "wenet_model", "onnx_threads", "onnx_optimization", "dataset_root", "checkpoint_root")


def _as_renderer(name_or_model, options: Dict) -> Tuple[LipSyncRenderer, bool]:
    """(renderer, made here?) from a NAME, a LipSyncRenderer or a U-Net module."""
    if isinstance(name_or_model, LipSyncRenderer):
        if options:
            raise TypeError(f"options {sorted(options)} apply when loading; the renderer is already built")
        return name_or_model, False
    if isinstance(name_or_model, (str, Path)):
        return load_renderer(str(name_or_model), **options), True
    if options.get("dataset_dir") is None:
        raise UserError("rendering a model object needs dataset_dir= (the processed recording to paint into)")
    options = dict(options)
    dataset_dir = options.pop("dataset_dir")
    for key in ("checkpoint", "backend", "onnx_threads", "onnx_optimization", "dataset_root", "checkpoint_root"):
        options.pop(key, None)
    return LipSyncRenderer.from_model(name_or_model, dataset_dir, **options), True


def render(name_or_model, audio, start_frame: int = 0, **options) -> Iterator[np.ndarray]:
    """Frames of ``name_or_model`` (a NAME, a LipSyncRenderer, or a LipSyncUNet with
    dataset_dir=) speaking ``audio`` (a file or 16 kHz mono float32 samples).

    A generator: frames are made batch by batch as it is consumed.
    """
    renderer, owned = _as_renderer(name_or_model, options)
    try:
        yield from renderer.render(audio, start_frame)
    finally:
        if owned:
            renderer.close()


def render_stream(name_or_model, start_frame: int = 0, **options) -> RenderStream:
    """A RenderStream for live audio: ``push(samples)`` / ``finish()`` yield frames."""
    renderer, _ = _as_renderer(name_or_model, options)
    return renderer.stream(start_frame)


@dataclass
class RenderResult:
    path: Path
    frames: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.inf


def render_to_file(renderer: LipSyncRenderer, audio, output, start_frame: int = 0,
                   progress: bool = True, crf: Optional[int] = None, preset: Optional[str] = None) -> RenderResult:
    """Render ``audio`` and stream the frames into ``output`` (H.264 + AAC mp4, 25 fps).

    ``audio``: an audio file (its own track is muxed, at its own quality) or
    16 kHz mono float32 samples (muxed from a temporary wav). The mp4 has
    exactly frame_count_for_samples(samples) frames and appears only when
    complete. ``crf`` / ``preset``: x264 quality and speed (video_writer defaults).
    """
    from tqdm import tqdm

    from lipsync.core.atomic import temporary_sibling
    from data_utils.audio import as_samples
    from lipsync.render.video_writer import DEFAULT_CRF, DEFAULT_PRESET, VideoWriter, check_output_writable, write_wav

    output = check_output_writable(output)
    start_frame = renderer.check_start_frame(start_frame)
    samples = as_samples(audio)
    total = frame_count_for_samples(len(samples))
    temporary_wav = None
    if isinstance(audio, (str, Path)):
        audio_file = Path(audio)
    else:
        temporary_wav = audio_file = write_wav(temporary_sibling(output).with_suffix(".wav"), samples)
    started = time.perf_counter()
    try:
        with VideoWriter(output, renderer.width, renderer.height, audio=audio_file,
                         crf=DEFAULT_CRF if crf is None else crf, preset=preset or DEFAULT_PRESET) as writer, \
                tqdm(total=total, unit="frame", desc=f"rendering {output.name}", disable=not progress,
                     dynamic_ncols=True) as bar:
            for frame in renderer.render(samples, start_frame):
                writer.write(frame)
                bar.update(1)
    finally:
        if temporary_wav is not None and temporary_wav.exists():
            temporary_wav.unlink()
    seconds = time.perf_counter() - started
    if writer.frames_written != total:
        raise RuntimeError(f"rendered {writer.frames_written} frames for {total} frames of audio")
    log.info("wrote %s: %d frames in %.1f s (%.1f frames/s)", output, total, seconds, total / seconds)
    return RenderResult(output, total, seconds)
