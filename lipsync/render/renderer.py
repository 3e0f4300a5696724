"""The renderer: one person's processed recording plus one trained U-Net, painting the mouth
for new audio (built by lipsync.render.api.load_renderer; streaming in lipsync.render.stream).

How a frame is made (frame i of the output, 25 fps, 640 samples of audio each):
- background: the processed recording (dataset/NAME/full_body_img/) in
  ping-pong order from ``start_frame`` (lipsync/render/frames.py);
- crop: the recording's own smoothed crop box (crop_boxes.npy), so the face
  does not jitter; the 328 crop is cut with data_utils.crop.cut_crop;
- model: data_utils.dataset.model_input_batch (reference = the frame's own
  crop, target = the same crop with the lower face masked; a model trained with
  --reference_frames K also gets K - 1 fixed crops spread over the recording,
  data_utils.model_input.spread_reference_indices) and the audio window
  of frames i-8 .. i+7 (data_utils.timebase.model_audio_input), through either
  backend (lipsync/render/backends.py);
- mouth controls (lipsync/render/mouth_control.py, issue 7), between the model and
  the paste-back: recording frames without a face are written untouched; the
  mouth opening is scaled by ``mouth_scale``; in pauses of the audio
  (lipsync/render/silence.py) the mouth cross-fades to the person's own closed
  mouth;
- paste-back: the feathered blend of the generated square into the frame,
  optionally after matching its colours (lipsync/render/frames.py).
"""
import copy
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from data_utils import crop as crop_geometry
from data_utils.audio import as_samples
from data_utils.dataset import load_crop_boxes, read_feature_metadata
from data_utils.layout import DatasetLayout, process_command
from data_utils.model_input import spread_reference_indices
from data_utils.timebase import FEATURE_SPECS, SAMPLE_RATE
from lipsync.core.checkpoints import unet_options_of
from lipsync.core.devices import device_name
from lipsync.core.errors import UserError
from lipsync.core.onnx_runtime import cpu_thread_count
from lipsync.render.backends import TorchUNet
from lipsync.render.featurizer import AudioFeaturizer, feature_encoder_source
from lipsync.render.faceless import load_face_found
from lipsync.render.frames import compose_frame
from lipsync.render.mouth_control import MouthControls
from lipsync.render.options import RenderOptions
from lipsync.render.stream import RenderStream

OFFLINE_PIECE_SECONDS = 10       # a whole file is fed to the stream in pieces this long
MAX_WORKER_THREADS = 8           # JPEG decoding, crop cutting and paste-back (cv2 releases the GIL)


class LipSyncRenderer:
    """Renders one person's recording to new audio with one trained U-Net.

    Build with ``load_renderer`` (a trained NAME) or ``LipSyncRenderer.from_model``
    (a U-Net in memory plus a processed dataset folder).
    """

    def __init__(self, layout: DatasetLayout, unet, featurizer: AudioFeaturizer, config: Dict,
                 options: Optional[RenderOptions] = None, checkpoint_path: Optional[Path] = None):
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
        # Decoding and paste-back threads, shared by every stream of this renderer.
        self.thread_pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="render")
        expected = tuple(config.get("audio_shape") or ())
        self._expected_audio_shape = expected
        extra = unet_options_of(config)["reference_frames"] - 1
        if extra > 0:
            self.unet.use_extra_references(self._spread_reference_crops(extra))

    @classmethod
    def from_model(cls, model, dataset_dir, options: Optional[RenderOptions] = None) -> "LipSyncRenderer":
        """A renderer for a LipSyncUNet already in memory (e.g. during training).

        The renderer works on a copy in eval mode: the caller's model keeps its mode and device.
        Of ``options``' loading fields only device, asr, half and the encoders apply (there is
        no checkpoint to find or export).
        """
        options = (options or RenderOptions()).check()
        layout = DatasetLayout(Path(dataset_dir))
        asr = options.asr
        model_asr = getattr(model, "asr", None)
        if asr is not None and model_asr is not None and asr != model_asr:
            raise UserError(f"the model was trained with --asr {model_asr}, not --asr {asr} — use --asr {model_asr}")
        asr = model_asr or asr
        if asr is None:
            raise UserError("say which audio encoder the model was trained with (asr='ave'|'hubert'|'wenet')")
        config = {"asr": asr, "audio_shape": list(model.audio_shape), "widths": list(getattr(model, "widths", ())),
                  "features": read_feature_metadata(layout, asr),
                  "reference_frames": int(getattr(model, "reference_frames", 1))}
        device = device_name(options.device)
        featurizer = AudioFeaturizer(asr, feature_encoder_source(config, layout, options.ave_checkpoint,
                                                                 options.hubert_model, options.wenet_model), device)
        return cls(layout, TorchUNet(copy.deepcopy(model), device, options.half), featurizer, config, options)

    # ------------------------------------------------------------------ frames

    def _spread_reference_crops(self, count: int) -> np.ndarray:
        """(count, 328, 328, 3) crops of frames with a face, spread over the recording."""
        with_face = np.flatnonzero(load_face_found(self.layout, self.frame_count))
        indices = spread_reference_indices(with_face if len(with_face) else np.arange(self.frame_count), count)
        return np.stack([crop_geometry.cut_crop(self._read_frame(index), self.boxes[index]) for index in indices])

    def _read_frame(self, index: int) -> np.ndarray:
        import cv2

        path = self.layout.frame_path(int(index))
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
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

    def stream(self, start_frame: int = 0) -> RenderStream:
        """A stream that takes audio pieces as they arrive and yields frames with bounded latency."""
        return RenderStream(self, self.check_start_frame(start_frame))

    def render(self, audio, start_frame: int = 0) -> Iterator[np.ndarray]:
        """Frames (BGR uint8, the recording's size) for ``audio`` (a file or 16 kHz mono float32 samples).

        Exactly ``frame_count_for_samples(len(samples))`` frames, produced in
        batches as the generator is consumed; nothing keeps them afterwards.
        """
        samples = as_samples(audio)
        stream = self.stream(start_frame)
        piece = OFFLINE_PIECE_SECONDS * SAMPLE_RATE
        for begin in range(0, len(samples), piece):
            yield from stream.push(samples[begin:begin + piece])
        yield from stream.finish()

    def close(self) -> None:
        self.thread_pool.shutdown(wait=True)
        self.controls.close()

    def __enter__(self) -> "LipSyncRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
