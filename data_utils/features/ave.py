"""AVE features (``--asr ave``): 16 mel frames around each video frame through the AVE conv encoder.

Row i is video frame i: the 16 mel frames (0.2 s, mel hop 200 = 3.2 mel frames
per video frame) whose centres are nearest to the frame's instant
``timebase.frame_time(i)`` = sample i * 640, i.e. mel frames
``ave_window_start(i) .. ave_window_start(i) + 15``; each window goes through the
AVE conv encoder -> 512 values. Mel frames outside the audio count as silence.

The encoder comes from a released SyncTalk AVE .pth or from the person's own
ave.pth (format AVE_CHECKPOINT_FORMAT, written by
data_utils/features/ave_training.py); this module is that file's reader.
"""
import io
import logging
import warnings
import weakref
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from data_utils.audio import MEL_HOP, SILENCE_MEL_VALUE, as_samples, melspectrogram
from data_utils.timebase import SAMPLES_PER_FRAME, frame_count_for_samples
from lipsync.core.checkpoints import load_torch_file
from lipsync.core.errors import UserError
from models.audio_encoders import AveAudioEncoder

log = logging.getLogger(__name__)

AVE_WINDOW_MEL_FRAMES = 16      # 0.2 s of mel frames per video frame (what the AVE encoder sees)
AVE_BATCH = 256                 # mel windows per encoder call
AVE_ONNX_ON_CPU = True          # run the AVE encoder through onnxruntime on CPU (same numbers, ~2x faster)
AVE_ONNX_OPSET = 17

AVE_CHECKPOINT_FORMAT = "lipsync-ave/1"   # ave.pth written by data_utils/features/ave_training.py
AVE_CHECKPOINT_ADVICE = "--ave_checkpoint needs the SyncTalk AVE audio encoder .pth or a dataset's ave.pth"
RELEASED_FIRST_KEY = "0.conv_block.0.weight"   # the released conv stack's state dict starts here
AUDIO_VISUAL_PREFIX = "audio_encoder."         # the audio half of a whole SyncTalk audio-visual model


# =============================================================================
# Mel windows: which audio each row sees
# =============================================================================

def ave_window_start(frame_index):
    """First mel frame of video frame ``frame_index``'s 16-frame window.

    Mel frame m is centred at sample m * 200 and frame i's instant is sample
    i * 640 (mel position 3.2 i); the window m0 .. m0 + 15 has its middle
    (m0 + 7.5) within half a mel frame of 3.2 i: m0 = floor(3.2 i - 7).
    """
    anchor = np.asarray(frame_index) * SAMPLES_PER_FRAME
    return (anchor - (AVE_WINDOW_MEL_FRAMES // 2 - 1) * MEL_HOP) // MEL_HOP


def ave_mel_windows(samples: np.ndarray, frame_count: Optional[int] = None) -> np.ndarray:
    """(N, 1, 80, 16) float32 AVE encoder inputs, one per video frame.

    Mel frames before the start or past the end of the audio are silence.
    """
    samples = as_samples(samples)
    count = frame_count_for_samples(len(samples)) if frame_count is None else int(frame_count)
    return mel_windows_for_frames(melspectrogram(samples), np.arange(count))


def mel_windows_for_frames(mel: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """(len(frames), 1, 80, 16) windows of a (M, 80) mel spectrogram, silence outside it."""
    index = ave_window_start(np.asarray(frames))[:, None] + np.arange(AVE_WINDOW_MEL_FRAMES)[None, :]
    inside = (index >= 0) & (index < len(mel))
    windows = np.where(inside[..., None], mel[np.clip(index, 0, max(len(mel) - 1, 0))], SILENCE_MEL_VALUE)
    return np.ascontiguousarray(windows.transpose(0, 2, 1)[:, None]).astype(np.float32)


# =============================================================================
# The AVE checkpoint: reading it back
# =============================================================================

def read_ave_checkpoint(path):
    """What an AVE .pth holds (tensors and plain values only: nothing in it runs), or one UserError."""
    path = Path(path)
    try:
        return load_torch_file(path, "cpu", what="PyTorch checkpoint", advice=AVE_CHECKPOINT_ADVICE)
    except UserError as error:
        # The wording users and tests know for this file: "X is not a PyTorch checkpoint (Type) — ...".
        # load_torch_file raises from inside its except block, so __context__ is torch's own error.
        reason = type(error.__context__).__name__ if error.__context__ is not None else "FileNotFoundError"
        raise UserError(f"{path} is not a PyTorch checkpoint ({reason}) — {AVE_CHECKPOINT_ADVICE}") from None


def load_ave_encoder(path, device="cpu"):
    """The AVE audio encoder in eval mode from ``path`` (released SyncTalk format or our ave.pth)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist — give the AVE checkpoint path, or omit --ave_checkpoint "
                        "to learn the encoder from the recording")
    if path.is_dir():
        raise UserError(f"{path} is a folder — --ave_checkpoint needs a .pth file "
                        "(a HuBERT model folder belongs to --asr hubert --hubert_model)")
    checkpoint = read_ave_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a state dict — "
                        "--ave_checkpoint needs the SyncTalk AVE audio encoder .pth")
    if "format" in checkpoint:
        if checkpoint["format"] != AVE_CHECKPOINT_FORMAT:
            raise UserError(f"{path} is a {checkpoint['format']!r} checkpoint, not an AVE encoder "
                            f"({AVE_CHECKPOINT_FORMAT!r}) — give the dataset's ave.pth or a SyncTalk AVE .pth")
        state = checkpoint.get("conv_stack") if isinstance(checkpoint.get("conv_stack"), dict) else {}
    else:
        state = checkpoint
        prefixed = {key[len(AUDIO_VISUAL_PREFIX):]: value for key, value in state.items()
                    if isinstance(key, str) and key.startswith(AUDIO_VISUAL_PREFIX)}
        if prefixed and RELEASED_FIRST_KEY not in state:
            state = prefixed  # a whole audio-visual model: keep its audio conv stack
    if not all(torch.is_tensor(value) for value in state.values()) or RELEASED_FIRST_KEY not in state:
        sample = ", ".join(list(map(str, state))[:3]) or "nothing"
        raise UserError(f"{path} is not an AVE audio encoder checkpoint (it holds {sample}; expected "
                        f"the conv stack's state dict with keys like {RELEASED_FIRST_KEY}) — "
                        "check that this file belongs to --asr ave")
    try:
        encoder = AveAudioEncoder(AveAudioEncoder.width_of(state))
        encoder.conv_stack.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, IndexError, ZeroDivisionError) as error:
        detail = str(error).strip().splitlines()[0][:160]
        raise UserError(f"{path} does not match the AVE audio encoder layout ({detail}) — "
                        "check that this file belongs to --asr ave") from None
    return encoder.to(device).eval()


def stored_heldout_accuracy(checkpoint: Path) -> Optional[float]:
    """Held-out sync accuracy stored in one of our ave.pth files (None for released checkpoints)."""
    try:
        checkpoint_data = read_ave_checkpoint(checkpoint)
    except UserError:
        return None
    if isinstance(checkpoint_data, dict) and checkpoint_data.get("format") == AVE_CHECKPOINT_FORMAT:
        return checkpoint_data.get("report", {}).get("heldout_sync_accuracy")
    return None


# =============================================================================
# Features
# =============================================================================

def ave_features(samples, encoder, device="cpu", frame_count: Optional[int] = None,
                 progress: bool = False) -> np.ndarray:
    """(N, 512) float32 AVE features of 16 kHz ``samples`` with a loaded encoder."""
    from tqdm import tqdm

    samples = as_samples(samples)
    count = frame_count_for_samples(len(samples)) if frame_count is None else int(frame_count)
    mel = melspectrogram(samples)
    encoder = encoder.to(device).eval()
    session = _ave_onnx_session(encoder) if str(device) == "cpu" and AVE_ONNX_ON_CPU else None
    outputs = []
    starts = range(0, count, AVE_BATCH)     # windows made per batch: memory stays bounded for long audio
    with torch.inference_mode():
        for start in tqdm(starts, desc="ave features", unit="batch", disable=not progress):
            windows = mel_windows_for_frames(mel, np.arange(start, min(start + AVE_BATCH, count)))
            if session is not None:
                outputs.append(session.run(None, {"mel": windows})[0])
            else:
                outputs.append(encoder(torch.from_numpy(windows).to(device)).float().cpu().numpy())
    return np.concatenate(outputs).astype(np.float32)


# encoder -> (weights fingerprint, onnxruntime session); weak, so the module stays copyable and picklable
_AVE_SESSIONS = weakref.WeakKeyDictionary()


def _ave_onnx_session(encoder):
    """An onnxruntime CPU session running ``encoder``'s current weights, or None if that fails.

    On CPU onnxruntime runs this small conv stack about 2x faster than eager
    PyTorch (measured in benchmarks/bench_audio_features.py). The session is
    kept per module and rebuilt when its weights change.
    """
    fingerprint = tuple((tensor.data_ptr(), tensor._version) for tensor in encoder.state_dict().values())
    cached = _AVE_SESSIONS.get(encoder)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    try:
        import onnxruntime

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # the TorchScript exporter announces its deprecation
            torch.onnx.export(encoder, (torch.zeros(2, 1, 80, AVE_WINDOW_MEL_FRAMES),), buffer,
                              input_names=["mel"], output_names=["features"],
                              dynamic_axes={"mel": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=AVE_ONNX_OPSET, dynamo=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()   # the same CPU budget as torch
        session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # any exporter/runtime problem: eager PyTorch gives the same numbers
        log.debug("AVE encoder stays on eager PyTorch (%s: %s)", type(error).__name__, error)
        session = None
    _AVE_SESSIONS[encoder] = (fingerprint, session)
    return session
