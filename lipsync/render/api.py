"""Any new audio in, the person's lip-synced frames out: the importable render API.

    from lipsync.render import load_renderer, render, render_to_file, RenderOptions

    for frame in render("May", "new.wav"):                # (H, W, 3) BGR uint8 frames
        ...
    renderer = load_renderer("May", RenderOptions(checkpoint="best", device="cuda"))
    renderer = load_renderer("May", checkpoint="best", device="cuda")   # the same, as keywords
    render_to_file(renderer, "new.wav", "result/May_new.mp4")   # what inference_328.py does
    stream = renderer.stream()                             # audio arriving live
    for piece in microphone_pieces:                        # 16 kHz mono float32, any length
        for frame in stream.push(piece):
            show(frame)
    for frame in stream.finish():
        show(frame)

Keyword arguments are RenderOptions fields; given together with ``options`` they
replace those fields of it.
"""
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from data_utils.audio import as_samples
from data_utils.timebase import frame_count_for_samples
from lipsync.core.atomic import temporary_sibling
from lipsync.core.checkpoints import load_unet
from lipsync.core.cpu_memory import keep_freed_memory
from lipsync.core.devices import device_name
from lipsync.core.errors import UserError
from lipsync.render.backends import OnnxRuntimeUNet, TorchUNet
from lipsync.render.featurizer import AudioFeaturizer, feature_encoder_source
from lipsync.render.onnx_export import ensure_onnx
from lipsync.render.options import RenderOptions
from lipsync.render.renderer import LipSyncRenderer
from lipsync.render.run_lookup import locate_run
from lipsync.render.stream import RenderStream
from lipsync.render.video_writer import (DEFAULT_CRF, DEFAULT_PRESET, check_output_writable, open_video_writer,
                                         write_wav)

log = logging.getLogger(__name__)


def _with_overrides(options: Optional[RenderOptions], overrides) -> RenderOptions:
    """``options`` (default RenderOptions()) with the keyword fields ``overrides`` replaced."""
    if options is None:
        return RenderOptions(**overrides)
    return options.replace(**overrides) if overrides else options


def load_renderer(name: Optional[str] = None, options: Optional[RenderOptions] = None,
                  **overrides) -> LipSyncRenderer:
    """A renderer for trained person ``name`` (dataset/NAME + checkpoint/NAME/<epoch>.pth).

    ``options.checkpoint``: None = newest epoch, an epoch number, "best", or a .pth path.
    ``options.asr``: None = the checkpoint's; anything else must match it.
    ``options.backend``: "torch" or "onnx" (exported next to the checkpoint on first use).
    """
    options = _with_overrides(options, overrides).check()
    layout, checkpoint_path = locate_run(name, options.dataset_dir, options.checkpoint, options.dataset_root,
                                         options.checkpoint_root)
    device = device_name(options.device)
    if device == "cpu":
        keep_freed_memory()          # the U-Net's activations are reused, not faulted in again per batch
    model, config = load_unet(checkpoint_path, "cpu", asr=options.asr)
    log.info("%s: %s, --asr %s, widths %s, on %s (%s)", layout.name, checkpoint_path, config["asr"],
             config.get("widths"), device, options.backend)
    if options.backend == "onnx":
        unet = OnnxRuntimeUNet(ensure_onnx(checkpoint_path, model, config), device, options.onnx_threads,
                               options.onnx_optimization)
    else:
        unet = TorchUNet(model, device, options.half)
    source = feature_encoder_source(config, layout, options.ave_checkpoint, options.hubert_model, options.wenet_model)
    featurizer = AudioFeaturizer(config["asr"], source, device)
    return LipSyncRenderer(layout, unet, featurizer, config, options, checkpoint_path)


def _as_renderer(name_or_model, options: Optional[RenderOptions], overrides) -> Tuple[LipSyncRenderer, bool]:
    """(renderer, made here?) from a NAME, a LipSyncRenderer or a U-Net module."""
    if isinstance(name_or_model, LipSyncRenderer):
        if options is not None or overrides:
            given = sorted(overrides) if overrides else ["options"]
            raise TypeError(f"options {given} apply when loading; the renderer is already built")
        return name_or_model, False
    if isinstance(name_or_model, (str, Path)):
        return load_renderer(str(name_or_model), options, **overrides), True
    options = _with_overrides(options, overrides)
    if options.dataset_dir is None:
        raise UserError("rendering a model object needs dataset_dir= (the processed recording to paint into)")
    return LipSyncRenderer.from_model(name_or_model, options.dataset_dir, options), True


def render(name_or_model, audio, start_frame: int = 0, options: Optional[RenderOptions] = None,
           **overrides) -> Iterator[np.ndarray]:
    """Frames of ``name_or_model`` (a NAME, a LipSyncRenderer, or a LipSyncUNet with
    dataset_dir=) speaking ``audio`` (a file or 16 kHz mono float32 samples).

    A generator: frames are made batch by batch as it is consumed.
    """
    renderer, owned = _as_renderer(name_or_model, options, overrides)
    try:
        yield from renderer.render(audio, start_frame)
    finally:
        if owned:
            renderer.close()


def render_stream(name_or_model, start_frame: int = 0, options: Optional[RenderOptions] = None,
                  **overrides) -> RenderStream:
    """A RenderStream for live audio: ``push(samples)`` / ``finish()`` yield frames."""
    renderer, _ = _as_renderer(name_or_model, options, overrides)
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
        with open_video_writer(output, renderer.width, renderer.height, audio=audio_file,
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
