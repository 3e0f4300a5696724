"""The trained U-Net as an ONNX graph: export next to its checkpoint, and run it with onnxruntime.

    python inference_328.py --name May --export_onnx          # checkpoint/May/<epoch>.onnx
    python inference_328.py --name May --audio_path a.wav --backend onnx

Export: the eval-mode model (batch norm folded into the convolutions by the
exporter's constant folding) with inputs ``image6`` (B, 6, 320, 320; 3 (K + 1)
channels for K references) and
``audio`` (B, C, H, W) and output ``image`` (B, 3, 320, 320), batch size
dynamic. The .onnx sits next to its .pth and records which .pth (size and
modification time) it came from, so a retrained checkpoint is re-exported
instead of silently running stale weights. Sessions (provider choice, CUDA
fallback, threads) come from lipsync.core.onnx_runtime.
"""
import copy
import logging
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from data_utils.crop import INNER_SIZE
from lipsync.core.atomic import atomic_path
from lipsync.core.errors import UserError
from lipsync.core.fingerprint import file_fingerprint
from lipsync.core.onnx_runtime import CUDA_PROVIDER, open_session, session_options
from models.unet_328 import input_channels

log = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_IMAGE = "image6"
INPUT_AUDIO = "audio"
OUTPUT_IMAGE = "image"
EXPORT_BATCH = 2                 # example batch for tracing; the batch axis is exported as dynamic
# Keys of the provenance stored in the .onnx metadata.
SOURCE_KEYS = ("source_checkpoint", "source_size", "source_mtime_ns")


def onnx_path_for(checkpoint_path) -> Path:
    """checkpoint/NAME/120.pth -> checkpoint/NAME/120.onnx"""
    return Path(checkpoint_path).with_suffix(".onnx")


def _source_stamp(checkpoint_path) -> Dict[str, str]:
    """The checkpoint's fingerprint in the form the .onnx metadata stores (strings, SOURCE_KEYS)."""
    fingerprint = file_fingerprint(checkpoint_path)
    return dict(zip(SOURCE_KEYS, (fingerprint["file"], str(fingerprint["bytes"]), str(fingerprint["mtime_ns"]))))


def export_onnx(model, audio_shape: Sequence[int], path, metadata: Optional[Dict[str, str]] = None,
                opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` (a LipSyncUNet) to ``path`` as ONNX, atomically; returns the path.

    The graph is traced on the CPU in eval mode; ``metadata`` (strings) is kept
    in the model's metadata_props.
    """
    import onnx

    path = Path(path)
    cpu_model = copy.deepcopy(model).float().cpu().eval()
    generator = torch.Generator().manual_seed(0)
    channels = input_channels(getattr(cpu_model, "reference_frames", 1))
    image6 = torch.rand(EXPORT_BATCH, channels, INNER_SIZE, INNER_SIZE, generator=generator)
    audio = torch.randn(EXPORT_BATCH, *[int(value) for value in audio_shape], generator=generator)
    with atomic_path(path) as temporary:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter: it needs no extra package (the
            # torch.export-based one needs onnxscript) and handles this plain CNN fully.
            warnings.simplefilter("ignore")
            torch.onnx.export(cpu_model, (image6, audio), str(temporary), dynamo=False,
                              input_names=[INPUT_IMAGE, INPUT_AUDIO], output_names=[OUTPUT_IMAGE],
                              dynamic_axes={INPUT_IMAGE: {0: "batch"}, INPUT_AUDIO: {0: "batch"},
                                            OUTPUT_IMAGE: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True)
        graph = onnx.load(str(temporary))
        onnx.checker.check_model(graph)
        for key, value in (metadata or {}).items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.save(graph, str(temporary))
    log.info("exported the U-Net to %s", path)
    return path


def read_metadata(path) -> Dict[str, str]:
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # a damaged file is simply stale: it gets exported again
        return {}
    return {entry.key: entry.value for entry in graph.metadata_props}


def ensure_onnx(checkpoint_path, model, config: Dict, path=None, force: bool = False) -> Path:
    """The .onnx of ``checkpoint_path``, exported now if missing, stale or ``force``."""
    path = Path(path) if path is not None else onnx_path_for(checkpoint_path)
    stamp = _source_stamp(checkpoint_path)
    if not force and path.is_file():
        stored = read_metadata(path)
        if all(stored.get(key) == value for key, value in stamp.items()):
            return path
        log.info("%s is older than %s: exporting again", path.name, Path(checkpoint_path).name)
    metadata = dict(stamp, asr=str(config.get("asr")), widths=",".join(map(str, config.get("widths", []))),
                    audio_shape=",".join(map(str, config.get("audio_shape", []))))
    try:
        return export_onnx(model, config["audio_shape"], path, metadata)
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror}) — make the checkpoint folder writable "
                        "or use --backend torch") from None


class OnnxUNet:
    """Runs an exported U-Net: ``(image6, audio)`` float32 numpy -> (B, 3, 320, 320) float32.

    ``device``: "cpu" or "cuda" (already resolved: lipsync.core.devices.device_name).
    """

    def __init__(self, path, device: str = "cpu", threads: Optional[int] = None, optimization: str = "all"):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path} does not exist — export it: python inference_328.py --name NAME "
                            "--export_onnx")
        self.session = open_session(self.path, device, session_options(threads, optimization),
                                    what_to_do="export it again with --export_onnx")
        self.providers = self.session.get_providers()
        self.device = "cuda" if CUDA_PROVIDER in self.providers else "cpu"

    def __call__(self, image6: np.ndarray, audio: np.ndarray) -> np.ndarray:
        outputs = self.session.run([OUTPUT_IMAGE], {INPUT_IMAGE: np.ascontiguousarray(image6, np.float32),
                                                     INPUT_AUDIO: np.ascontiguousarray(audio, np.float32)})
        return outputs[0]
