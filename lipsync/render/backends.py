"""The trained U-Net behind one call for both backends (eager PyTorch, onnxruntime):
crops (B, 328, 328, 3) BGR uint8 + audio windows (B, C, H, W) -> generated (B, 320, 320, 3) BGR uint8."""
from typing import Optional

import numpy as np
import torch

from data_utils.model_input import model_input_batch
from lipsync.render.onnx_export import OnnxUNet


class TorchUNet:
    """crops (B, 328, 328, 3) BGR uint8 + audio (B, C, H, W) -> generated (B, 320, 320, 3) BGR uint8."""

    backend = "torch"

    def __init__(self, model, device: str = "cpu", half: bool = False):
        self.model = model.to(device).eval()
        self.device = device
        self.half = bool(half) and device == "cuda"
        if device == "cuda":
            torch.backends.cudnn.benchmark = True      # fixed input shapes: pick the fastest kernels once

    def __call__(self, crops_u8: np.ndarray, audio: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            crops = torch.from_numpy(crops_u8).to(self.device, non_blocking=True)
            image6, _ = model_input_batch(crops, crops)
            audio_tensor = torch.from_numpy(audio).to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
                output = self.model(image6, audio_tensor)
            return to_bgr_u8(output).cpu().numpy()


def to_bgr_u8(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, 320, 320) RGB in [0, 1] (torch) -> (B, 320, 320, 3) BGR uint8 (torch), rounded."""
    scaled = (rgb.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).flip(-1).contiguous()


class OnnxRuntimeUNet:
    """The same call as TorchUNet, through onnxruntime (lipsync.render.onnx_export.OnnxUNet)."""

    backend = "onnx"

    def __init__(self, onnx_path, device: str = "cpu", threads: Optional[int] = None,
                 optimization: str = "all"):
        self.session = OnnxUNet(onnx_path, device, threads, optimization)
        self.device = self.session.device

    def __call__(self, crops_u8: np.ndarray, audio: np.ndarray) -> np.ndarray:
        crops = torch.from_numpy(crops_u8)
        image6, _ = model_input_batch(crops, crops)
        output = self.session(image6.numpy(), audio)
        return to_bgr_u8(torch.from_numpy(output)).numpy()
