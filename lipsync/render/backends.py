"""The trained U-Net behind one call for both backends (eager PyTorch, onnxruntime):
crops (B, 328, 328, 3) BGR uint8 + audio windows (B, C, H, W) -> generated (B, 320, 320, 3) BGR uint8.

Each frame's own crop is its reference; a model trained with --reference_frames K > 1
also gets the K - 1 fixed crops ``use_extra_references`` gave (the same for every frame).
"""
from typing import Optional

import numpy as np
import torch

from data_utils.model_input import model_input_batch
from lipsync.render.onnx_export import OnnxUNet


def model_input(crops_u8: np.ndarray, extra_references: Optional[torch.Tensor], device="cpu") -> torch.Tensor:
    """The U-Net input of a batch of crops on ``device`` (moved there as uint8, a quarter of the
    bytes): each crop its own reference, then the extra ones (already on ``device``)."""
    crops = torch.from_numpy(crops_u8).to(device, non_blocking=True)
    references = crops
    if extra_references is not None:
        fixed = extra_references[None].expand(len(crops), *extra_references.shape)
        references = torch.cat([crops[:, None], fixed], dim=1)
    image6, _ = model_input_batch(crops, references)
    return image6


class ExtraReferences:
    """The fixed extra reference crops of a many-reference model (none by default), kept where
    the model input is built, so that no batch copies them there again."""
    extra_references: Optional[torch.Tensor] = None
    input_device = "cpu"            # onnxruntime takes its input from host memory

    def use_extra_references(self, crops_u8: Optional[np.ndarray]) -> None:
        """(K - 1, 328, 328, 3) BGR uint8 crops every frame gets after its own, or None."""
        self.extra_references = (None if crops_u8 is None or len(crops_u8) == 0
                                 else torch.from_numpy(crops_u8).to(self.input_device))


class TorchUNet(ExtraReferences):
    """crops (B, 328, 328, 3) BGR uint8 + audio (B, C, H, W) -> generated (B, 320, 320, 3) BGR uint8."""

    backend = "torch"

    def __init__(self, model, device: str = "cpu", half: bool = False):
        self.model = model.to(device).eval()
        self.device = self.input_device = device
        self.half = bool(half) and device == "cuda"
        self.fixed_shapes = device == "cuda"
        self._batch_size = 0                            # the largest batch seen; smaller ones are padded to it
        if self.fixed_shapes:
            torch.backends.cudnn.benchmark = True      # fixed input shapes: pick the fastest kernels once

    def __call__(self, crops_u8: np.ndarray, audio: np.ndarray) -> np.ndarray:
        count = len(crops_u8)
        if self.fixed_shapes:
            # cuDNN's benchmark mode tunes every convolution again for each new batch size; the silence
            # hold and a recording's last batch give many. Padding to one size keeps a single tuning.
            self._batch_size = max(self._batch_size, count)
            crops_u8, audio = pad_batch(crops_u8, self._batch_size), pad_batch(audio, self._batch_size)
        with torch.inference_mode():
            image6 = model_input(crops_u8, self.extra_references, self.input_device)
            audio_tensor = torch.from_numpy(audio).to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
                output = self.model(image6, audio_tensor)
            return to_bgr_u8(output[:count]).cpu().numpy()


def pad_batch(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with its last row repeated up to ``size`` rows (unchanged when it has them)."""
    missing = size - len(array)
    if missing <= 0 or len(array) == 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


def to_bgr_u8(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, 320, 320) RGB in [0, 1] (torch) -> (B, 320, 320, 3) BGR uint8 (torch), rounded."""
    scaled = (rgb.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).flip(-1).contiguous()


class OnnxRuntimeUNet(ExtraReferences):
    """The same call as TorchUNet, through onnxruntime (lipsync.render.onnx_export.OnnxUNet)."""

    backend = "onnx"

    def __init__(self, onnx_path, device: str = "cpu", threads: Optional[int] = None,
                 optimization: str = "all"):
        self.session = OnnxUNet(onnx_path, device, threads, optimization)
        self.device = self.session.device

    def __call__(self, crops_u8: np.ndarray, audio: np.ndarray) -> np.ndarray:
        image6 = model_input(crops_u8, self.extra_references, self.input_device)
        output = self.session(image6.numpy(), audio)
        return to_bgr_u8(torch.from_numpy(output)).numpy()
