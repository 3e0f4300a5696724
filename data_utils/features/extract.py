"""Audio features for ``--asr ave|hubert|wenet``, one row per 25 fps video frame.

    python data_utils/features/extract.py --asr ave --wav dataset/May/aud.wav
    python data_utils/features/extract.py --asr hubert --wav dataset/May/aud.wav
    python data_utils/features/extract.py --asr wenet --wav dataset/May/aud.wav --wenet_model encoder.onnx

Alignment (data_utils/timebase.py is the contract): feature row i belongs to
video frame i, and every encoder centres row i on that frame's instant,
``timebase.frame_time(i)`` = sample i * 640. Audio of L samples gives
``timebase.frame_count_for_samples(L)`` rows; audio past either end counts as
silence.

- ave: the 16 mel frames (0.2 s, mel hop 200 = 3.2 mel frames per video frame)
  whose centres are nearest to the frame's instant: mel frames
  ``ave_window_start(i) .. ave_window_start(i) + 15``; each window goes through
  the AVE conv encoder -> 512 values.
- hubert: 50 Hz hidden states (stride 320, receptive field 400 samples); the
  audio is shifted so that states 2i and 2i+1 are centred 10 ms before and
  after frame i's instant -> (2, hidden) per frame.
- wenet: 80-dim Kaldi fbank (25 ms window, 10 ms shift) into a WeNet encoder
  exported to ONNX whose conv front end subsamples 4x (40 ms per output = one
  per video frame); the audio is shifted so output i is centred on frame i.
  (The upstream project ran WeNet at 20 fps; here it is 25 fps like the rest.)
"""
import argparse
import json
import logging
import sys
import time
import weakref
from pathlib import Path
from typing import Callable, Optional, Tuple

if __package__ in (None, ""):
    # Run as a file (python data_utils/features/extract.py): make the repo importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from lipsync.core.atomic import save_numpy_atomic, write_json_atomic
from data_utils.audio import MEL_HOP, SILENCE_MEL_VALUE, as_samples, melspectrogram
from lipsync.core.errors import UserError, exit_on_user_error
from data_utils.layout import DatasetLayout
from data_utils.timebase import (ASR_CHOICES, FEATURE_SPECS, FPS, SAMPLE_RATE, SAMPLES_PER_FRAME,
                                 frame_count_for_samples)

log = logging.getLogger(__name__)

# --- AVE -------------------------------------------------------------------------
AVE_WINDOW_MEL_FRAMES = 16      # 0.2 s of mel frames per video frame (what the AVE encoder sees)
AVE_BATCH = 256                 # mel windows per encoder call
AVE_ONNX_ON_CPU = True          # run the AVE encoder through onnxruntime on CPU (same numbers, ~2x faster)
AVE_ONNX_OPSET = 17

# --- HuBERT ----------------------------------------------------------------------
HUBERT_DEFAULT_MODEL = "facebook/hubert-large-ls960-ft"
HUBERT_STATES_PER_FRAME = 2     # 50 Hz hidden states, 25 fps video
HUBERT_CHUNK_STATES = 1000      # 20 s of states per model call: memory stays bounded
HUBERT_CONTEXT_STATES = 50      # 1 s of extra audio each side of a chunk, outputs discarded
HUBERT_NORM_EPSILON = 1e-7      # zero-mean unit-variance input, as the model was trained

# --- WeNet -----------------------------------------------------------------------
FBANK_BINS = 80
FBANK_FRAME_LENGTH = 400        # 25 ms
FBANK_FRAME_SHIFT = 160         # 10 ms
FBANK_FFT = 512                 # window zero-padded to a power of two, as Kaldi does
FBANK_LOW_HZ = 20.0
FBANK_PREEMPHASIS = 0.97
FBANK_POVEY_POWER = 0.85        # Kaldi's default "povey" window: Hann ** 0.85
FBANK_INT16_SCALE = 32768.0     # WeNet computes fbank on int16-range samples
FBANK_EPSILON = float(np.finfo(np.float32).eps)
WENET_SUBSAMPLING = 4           # conv2d front end: 10 ms fbank -> 40 ms = one output per video frame
WENET_RIGHT_CONTEXT = 6         # fbank frames beyond the first that one output sees (two 3x3 convs)
WENET_SEGMENT_OUTPUTS = 750     # 30 s per call for full-utterance encoders: bounded memory
WENET_CONTEXT_OUTPUTS = 25      # 1 s of extra frames each side of a segment, outputs discarded
WENET_STREAMING_INPUTS = ("chunk", "offset", "required_cache_size", "att_cache", "cnn_cache", "att_mask")
WENET_STREAMING_METADATA = ("output_size", "num_blocks", "head", "cnn_module_kernel", "chunk_size",
                            "left_chunks", "subsampling_rate", "right_context")
WENET_FULL_INPUTS = ("speech", "speech_lengths")

AVE_CHECKPOINT_FORMAT = "lipsync-ave/1"   # ave.pth written by data_utils/features/ave_training.py


# =============================================================================
# AVE
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


def _torch_load(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise UserError(f"{path} is not a PyTorch checkpoint ({type(error).__name__}) — "
                        "--ave_checkpoint needs the SyncTalk AVE audio encoder .pth or a dataset's ave.pth") from None


def load_ave_encoder(path, device="cpu"):
    """The AVE audio encoder in eval mode from ``path`` (released SyncTalk format or our ave.pth)."""
    import torch
    from models.audio_encoders import AveAudioEncoder

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist — give the AVE checkpoint path, or omit --ave_checkpoint "
                        "to learn the encoder from the recording")
    if path.is_dir():
        raise UserError(f"{path} is a folder — --ave_checkpoint needs a .pth file "
                        "(a HuBERT model folder belongs to --asr hubert --hubert_model)")
    checkpoint = _torch_load(path)
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
        prefixed = {key[len("audio_encoder."):]: value for key, value in state.items()
                    if isinstance(key, str) and key.startswith("audio_encoder.")}
        if prefixed and "0.conv_block.0.weight" not in state:
            state = prefixed  # a whole audio-visual model: keep its audio conv stack
    if not all(torch.is_tensor(value) for value in state.values()) or "0.conv_block.0.weight" not in state:
        sample = ", ".join(list(map(str, state))[:3]) or "nothing"
        raise UserError(f"{path} is not an AVE audio encoder checkpoint (it holds {sample}; expected "
                        "the conv stack's state dict with keys like 0.conv_block.0.weight) — "
                        "check that this file belongs to --asr ave")
    try:
        encoder = AveAudioEncoder(AveAudioEncoder.width_of(state))
        encoder.conv_stack.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, IndexError, ZeroDivisionError) as error:
        detail = str(error).strip().splitlines()[0][:160]
        raise UserError(f"{path} does not match the AVE audio encoder layout ({detail}) — "
                        "check that this file belongs to --asr ave") from None
    return encoder.to(device).eval()


def ave_features(samples, encoder, device="cpu", frame_count: Optional[int] = None,
                 progress: bool = False) -> np.ndarray:
    """(N, 512) float32 AVE features of 16 kHz ``samples`` with a loaded encoder."""
    import torch
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
    import io
    import warnings

    import torch

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


# =============================================================================
# Overlapping segments: long audio through a sequence model in bounded memory
# =============================================================================

def run_in_segments(total: int, segment: int, context: int,
                    run: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Outputs 0 .. total-1 of a sequence model, ``segment`` at a time.

    ``run(first, stop)`` returns the model's outputs ``first .. stop-1``
    computed from just the input they need; each segment is run with
    ``context`` extra outputs either side so attention sees past its edges,
    and only the segment's own outputs are kept.
    """
    pieces = []
    for first in range(0, total, segment):
        stop = min(first + segment, total)
        run_first, run_stop = max(0, first - context), min(total, stop + context)
        outputs = run(run_first, run_stop)
        if len(outputs) < run_stop - run_first:
            raise UserError(f"the encoder returned {len(outputs)} frames for {run_stop - run_first} "
                            "expected — it does not have the expected frame rate")
        pieces.append(outputs[first - run_first:stop - run_first])
    return np.concatenate(pieces)


# =============================================================================
# HuBERT
# =============================================================================

def _conv_geometry(kernels, strides) -> Tuple[int, int]:
    """(receptive field, stride) in samples of a stack of 1-D convolutions."""
    receptive, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        receptive += (kernel - 1) * jump
        jump *= stride
    return receptive, jump


def load_hubert(model_name, device="cpu"):
    """(HubertModel in eval mode, normalise input?) from a local folder or hub id."""
    from transformers import AutoConfig, HubertModel

    name = str(model_name)
    local = Path(name)
    if local.exists() and not local.is_dir():
        raise UserError(f"{name} is a file — --hubert_model needs a HuBERT model folder (with config.json) "
                        f"or a hub id such as {HUBERT_DEFAULT_MODEL}")
    if local.is_dir() and not (local / "config.json").exists():
        raise UserError(f"{name} has no config.json — --hubert_model needs a HuBERT model folder "
                        "saved with save_pretrained, or a hub id")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        detail = str(error).strip().splitlines()[0][:160]
        raise UserError(f"could not load HuBERT model {name!r} ({detail}) — give a local model folder "
                        "with --hubert_model, or connect once so the hub can download it") from None
    if getattr(config, "model_type", None) != "hubert":
        raise UserError(f"{name} is a {getattr(config, 'model_type', 'unknown')!r} model, not HuBERT — "
                        "give a HuBERT model with --hubert_model")
    try:
        model = HubertModel.from_pretrained(name)
    except (OSError, ValueError, RuntimeError) as error:
        detail = str(error).strip().splitlines()[0][:160]
        raise UserError(f"could not load the HuBERT weights of {name!r} ({detail})") from None
    normalise = config.feat_extract_norm == "layer"
    try:
        from transformers import Wav2Vec2FeatureExtractor

        normalise = bool(Wav2Vec2FeatureExtractor.from_pretrained(name).do_normalize)
    except (OSError, ValueError):
        pass  # no preprocessor config: models with layer-norm feature extractors expect normalised input
    # a folder saved in half precision loads as half; the audio goes in as float32
    return model.float().to(device).eval(), normalise


def hubert_features(samples, model, normalise: bool, device="cpu", frame_count: Optional[int] = None,
                    progress: bool = False) -> np.ndarray:
    """(N, 2, hidden) float32 last hidden states, states 2i and 2i+1 around frame i."""
    import torch
    from tqdm import tqdm

    samples = as_samples(samples).astype(np.float64)
    count = frame_count_for_samples(len(samples)) if frame_count is None else int(frame_count)
    config = model.config
    receptive, stride = _conv_geometry(config.conv_kernel, config.conv_stride)
    if stride * HUBERT_STATES_PER_FRAME != SAMPLES_PER_FRAME:
        raise UserError(f"the HuBERT model's frame rate is {SAMPLE_RATE / stride:g} Hz; "
                        f"{SAMPLE_RATE * HUBERT_STATES_PER_FRAME // SAMPLES_PER_FRAME} Hz is needed for "
                        f"{HUBERT_STATES_PER_FRAME} states per video frame")
    if normalise:
        samples = (samples - samples.mean()) / np.sqrt(samples.var() + HUBERT_NORM_EPSILON)
    # State k covers padded samples [stride k, stride k + receptive); shifting the audio right by
    # ``lead`` centres state 2i at frame i's instant minus half a state stride, 2i+1 plus half.
    lead = receptive // 2 + stride // 2
    states = HUBERT_STATES_PER_FRAME * count
    total = stride * (states - 1) + receptive
    padded = np.zeros(max(total, lead + len(samples)), dtype=np.float32)
    padded[lead:lead + len(samples)] = samples
    chunks = tqdm(total=states, desc="hubert features", unit="state", disable=not progress)

    def run(first, stop):
        segment = torch.from_numpy(padded[stride * first:stride * (stop - 1) + receptive])[None].to(device)
        with torch.inference_mode():
            hidden = model(segment).last_hidden_state[0]
        chunks.update(stop - first)
        return hidden.float().cpu().numpy()

    output = run_in_segments(states, HUBERT_CHUNK_STATES, HUBERT_CONTEXT_STATES, run)
    chunks.close()
    return output.reshape(count, HUBERT_STATES_PER_FRAME, -1).astype(np.float32)


# =============================================================================
# WeNet (ONNX)
# =============================================================================

def _kaldi_mel_banks() -> np.ndarray:
    """(80, FBANK_FFT // 2 + 1) triangular filters on Kaldi's mel scale (1127 ln(1 + f/700))."""
    def mel(frequency):
        return 1127.0 * np.log1p(np.asarray(frequency, dtype=np.float64) / 700.0)

    nyquist = SAMPLE_RATE / 2
    low, high = mel(FBANK_LOW_HZ), mel(nyquist)
    step = (high - low) / (FBANK_BINS + 1)
    bin_mels = mel(np.arange(FBANK_FFT // 2) * SAMPLE_RATE / FBANK_FFT)
    banks = np.zeros((FBANK_BINS, FBANK_FFT // 2 + 1), dtype=np.float64)
    for band in range(FBANK_BINS):
        left, centre, right = low + band * step, low + (band + 1) * step, low + (band + 2) * step
        rising = (bin_mels - left) / (centre - left)
        falling = (right - bin_mels) / (right - centre)
        banks[band, :FBANK_FFT // 2] = np.maximum(0.0, np.minimum(rising, falling))
    return banks


def kaldi_fbank(samples: np.ndarray) -> np.ndarray:
    """(frames, 80) float32 Kaldi-style log mel filterbank (no dither, no energy, snip edges).

    Frame j covers samples [160 j, 160 j + 400); samples are scaled to the
    int16 range first, as WeNet does.
    """
    samples = np.asarray(samples, dtype=np.float64) * FBANK_INT16_SCALE
    count = 0 if len(samples) < FBANK_FRAME_LENGTH else 1 + (len(samples) - FBANK_FRAME_LENGTH) // FBANK_FRAME_SHIFT
    if count == 0:
        return np.zeros((0, FBANK_BINS), dtype=np.float32)
    n = np.arange(FBANK_FRAME_LENGTH)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * n / (FBANK_FRAME_LENGTH - 1))) ** FBANK_POVEY_POWER
    banks = _kaldi_mel_banks()
    output = np.empty((count, FBANK_BINS), dtype=np.float32)
    block = 8192
    for start in range(0, count, block):
        stop = min(start + block, count)
        index = np.arange(start, stop)[:, None] * FBANK_FRAME_SHIFT + n[None, :]
        frames = samples[index]
        frames = frames - frames.mean(axis=1, keepdims=True)              # remove DC offset
        frames = np.concatenate([frames[:, :1] * (1 - FBANK_PREEMPHASIS),   # Kaldi's first sample rule
                                 frames[:, 1:] - FBANK_PREEMPHASIS * frames[:, :-1]], axis=1)
        power = np.abs(np.fft.rfft(frames * window, n=FBANK_FFT, axis=1)) ** 2
        output[start:stop] = np.log(np.maximum(power @ banks.T, FBANK_EPSILON))
    return output


class WenetEncoder:
    """A WeNet encoder exported to ONNX, in either accepted signature.

    - streaming (wenet/bin/export_onnx_cpu.py): inputs ``chunk`` (1, T, 80),
      ``offset``, ``required_cache_size``, ``att_cache``, ``cnn_cache``,
      ``att_mask`` (ONNX drops the ones a mode does not use), outputs
      ``output``, ``r_att_cache``, ``r_cnn_cache``, and the metadata that script
      writes (chunk_size, left_chunks, subsampling_rate, right_context, ...).
      It is run chunk by chunk exactly as WeNet's runtime does.
    - full utterance (e.g. wenet/bin/export_onnx_gpu.py): inputs ``speech``
      (B, T, 80) and ``speech_lengths`` (B,), first output ``encoder_out``;
      run on overlapping 30 s segments.
    Both must subsample 4x (conv2d front end: 40 ms per output).
    """

    def __init__(self, path, device="cpu"):
        from lipsync.core.onnx_runtime import open_session

        path = Path(path)
        if not path.exists():
            raise UserError(f"{path} does not exist — --wenet_model needs a WeNet encoder exported to ONNX "
                            "(wenet/bin/export_onnx_cpu.py writes encoder.onnx)")
        if path.is_dir():
            candidate = path / "encoder.onnx"
            if not candidate.exists():
                raise UserError(f"{path} is a folder without encoder.onnx — give the encoder's .onnx file")
            path = candidate
        self.path = path
        self.session = open_session(path, str(device), what_to_do="--wenet_model needs a WeNet encoder "
                                    "exported to ONNX")
        self.inputs = {node.name: node for node in self.session.get_inputs()}
        self.output_names = [node.name for node in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if "chunk" in self.inputs:
            self.mode = "streaming"
            missing = [key for key in WENET_STREAMING_METADATA if key not in self.metadata]
            if missing:
                raise UserError(f"{path} is a streaming WeNet encoder without the metadata "
                                f"{', '.join(missing)} — export it with wenet/bin/export_onnx_cpu.py")
            self.config = {key: int(self.metadata[key]) for key in WENET_STREAMING_METADATA}
            subsampling = self.config["subsampling_rate"]
            right_context = self.config["right_context"]
        elif all(name in self.inputs for name in WENET_FULL_INPUTS):
            self.mode = "full"
            subsampling = int(self.metadata.get("subsampling_rate", WENET_SUBSAMPLING))
            right_context = int(self.metadata.get("right_context", WENET_RIGHT_CONTEXT))
        else:
            raise UserError(f"{path} has inputs {sorted(self.inputs)}, not a WeNet encoder's — expected "
                            f"({', '.join(WENET_STREAMING_INPUTS)}) from export_onnx_cpu.py or "
                            f"({', '.join(WENET_FULL_INPUTS)})")
        if subsampling != WENET_SUBSAMPLING:
            raise UserError(f"{path} subsamples {subsampling}x; 25 fps features need a 4x-subsampling "
                            "(conv2d) WeNet encoder (40 ms per output)")
        self.subsampling, self.right_context = subsampling, right_context
        feature_input = self.inputs["chunk" if self.mode == "streaming" else "speech"]
        feature_size = feature_input.shape[-1] if feature_input.shape else None
        if isinstance(feature_size, int) and feature_size != FBANK_BINS:
            raise UserError(f"{path} expects {feature_size}-dim input features; WeNet here uses "
                            f"{FBANK_BINS}-dim fbank")

    @property
    def lead_samples(self) -> int:
        """Audio shift that centres output i on sample 640 i.

        Output k sees fbank frames 4k .. 4k + right_context, centred on frame
        4k + right_context / 2, i.e. sample 160 (4k + rc/2) + 200 of the padded audio.
        """
        return FBANK_FRAME_SHIFT * self.right_context // 2 + FBANK_FRAME_LENGTH // 2

    def fbank_frames_for(self, outputs: int) -> int:
        return self.subsampling * (outputs - 1) + self.right_context + 1

    def _typed(self, name, value):
        node = self.inputs[name]
        dtype = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
                 "tensor(float)": np.float32, "tensor(float16)": np.float16}.get(node.type, np.float32)
        array = np.asarray(value, dtype=dtype)
        if array.ndim == 0 and len(node.shape) == 1:
            array = array.reshape(1)
        return array

    def run_full(self, fbank: np.ndarray) -> np.ndarray:
        """Encoder outputs of one (T, 80) stretch of fbank, all at once."""
        feed = {"speech": self._typed("speech", fbank[None]),
                "speech_lengths": self._typed("speech_lengths", [len(fbank)])}
        for name in self.inputs:
            if name not in feed:
                raise UserError(f"{self.path} needs an input {name!r} that a full-utterance WeNet encoder "
                                "does not have")
        return self.session.run(self.output_names[:1], feed)[0][0]

    def run_streaming(self, fbank: np.ndarray, progress: bool = False) -> np.ndarray:
        """Encoder outputs of (T, 80) fbank, chunk by chunk with the attention and conv caches."""
        from tqdm import tqdm

        config = self.config
        chunk_size, left_chunks = config["chunk_size"], config["left_chunks"]
        heads, blocks, size = config["head"], config["num_blocks"], config["output_size"]
        context = self.right_context + 1
        if chunk_size <= 0:          # exported for full attention: one call over everything
            window = stride = max(len(fbank), context)
        else:
            stride = self.subsampling * chunk_size
            window = (chunk_size - 1) * self.subsampling + context
        if left_chunks > 0 and chunk_size > 0:
            required_cache = chunk_size * left_chunks
        else:
            required_cache = -1 if left_chunks < 0 else 0
        offset = max(required_cache, 0)
        att_cache = np.zeros((blocks, heads, max(required_cache, 0), size // heads * 2), dtype=np.float32)
        cnn_cache = np.zeros((blocks, 1, size, config["cnn_module_kernel"] - 1), dtype=np.float32)
        outputs = []
        starts = range(0, len(fbank) - context + 1, stride)
        for chunk_index, start in enumerate(tqdm(starts, desc="wenet chunks", disable=not progress)):
            values = {"chunk": fbank[None, start:start + window], "offset": offset,
                      "required_cache_size": required_cache, "att_cache": att_cache, "cnn_cache": cnn_cache}
            if required_cache > 0:
                mask = np.ones((1, 1, required_cache + chunk_size), dtype=bool)
                if chunk_index < left_chunks:   # the cache is still zeros: do not attend to it
                    mask[:, :, :(left_chunks - chunk_index) * chunk_size] = False
                values["att_mask"] = mask
            else:
                values["att_mask"] = np.ones((0, 0, 0), dtype=bool)
            feed = {name: self._typed(name, values[name]) for name in self.inputs if name in values}
            unknown = [name for name in self.inputs if name not in values]
            if unknown:
                raise UserError(f"{self.path} has unexpected inputs {unknown} for a streaming WeNet encoder")
            result = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
            output = result.get("output", next(iter(result.values())))
            outputs.append(output[0])
            offset += output.shape[1]
            att_cache = result.get("r_att_cache", att_cache)
            cnn_cache = result.get("r_cnn_cache", cnn_cache)
        if not outputs:
            return np.zeros((0, size), dtype=np.float32)
        return np.concatenate(outputs)


def wenet_features(samples, encoder: WenetEncoder, frame_count: Optional[int] = None,
                   progress: bool = False) -> np.ndarray:
    """(N, output_size) float32 WeNet encoder outputs, output i centred on frame i."""
    samples = as_samples(samples)
    count = frame_count_for_samples(len(samples)) if frame_count is None else int(frame_count)
    lead = encoder.lead_samples
    frames_needed = encoder.fbank_frames_for(count)
    total = FBANK_FRAME_SHIFT * (frames_needed - 1) + FBANK_FRAME_LENGTH
    padded = np.zeros(max(total, lead + len(samples)), dtype=np.float32)
    padded[lead:lead + len(samples)] = samples
    fbank = kaldi_fbank(padded)
    if encoder.mode == "streaming":
        output = encoder.run_streaming(fbank, progress)
    else:
        sub, span = encoder.subsampling, encoder.right_context + 1
        output = run_in_segments(count, WENET_SEGMENT_OUTPUTS, WENET_CONTEXT_OUTPUTS,
                                 lambda first, stop: encoder.run_full(fbank[sub * first:sub * (stop - 1) + span]))
    if len(output) < count:
        raise UserError(f"{encoder.path} returned {len(output)} frames for {count} video frames — "
                        "it is not a 4x-subsampling WeNet encoder")
    return np.ascontiguousarray(output[:count]).astype(np.float32)


# =============================================================================
# One entry point for all encoders
# =============================================================================

def _check_asr(asr: str) -> None:
    if asr not in FEATURE_SPECS:
        raise UserError(f"unknown --asr {asr!r} — choose one of: {', '.join(ASR_CHOICES)}")


def resolve_encoder(asr: str, *, dataset_dir=None, ave_checkpoint=None, hubert_model=None,
                    wenet_model=None) -> str:
    """The encoder source that ``asr`` will use: a checkpoint path, hub id or ONNX path."""
    _check_asr(asr)
    if asr == "ave":
        if ave_checkpoint is not None:
            return str(ave_checkpoint)
        if dataset_dir is not None and DatasetLayout(Path(dataset_dir)).ave_encoder.exists():
            return str(DatasetLayout(Path(dataset_dir)).ave_encoder)
        where = f"{DatasetLayout(Path(dataset_dir)).ave_encoder} does not exist" if dataset_dir else \
            "no dataset folder was given"
        raise UserError(f"--asr ave needs an AVE encoder: {where} — pass --ave_checkpoint PATH, or run "
                        "python data_utils/process.py --asr ave on the recording to learn one")
    if asr == "hubert":
        return str(hubert_model or HUBERT_DEFAULT_MODEL)
    if wenet_model is None:
        raise UserError("--asr wenet needs --wenet_model PATH (a WeNet encoder exported to ONNX, e.g. "
                        "with wenet/bin/export_onnx_cpu.py)")
    return str(wenet_model)


def extract_features(audio, asr, *, dataset_dir=None, ave_checkpoint=None, hubert_model=None,
                     wenet_model=None, device="cpu", frame_count: Optional[int] = None,
                     progress: bool = False) -> np.ndarray:
    """(N, *per_frame) float32 features of ``audio`` (a path or 16 kHz float32 samples).

    N = timebase.frame_count_for_samples(len(samples)) unless ``frame_count``
    is given (audio past the end then counts as silence). For ``ave`` without
    ``ave_checkpoint`` the person's own encoder dataset_dir/ave.pth is used.
    """
    source = resolve_encoder(asr, dataset_dir=dataset_dir, ave_checkpoint=ave_checkpoint,
                             hubert_model=hubert_model, wenet_model=wenet_model)
    samples = as_samples(audio)
    if asr == "ave":
        return ave_features(samples, load_ave_encoder(source, device), device, frame_count, progress)
    if asr == "hubert":
        model, normalise = load_hubert(source, device)
        return hubert_features(samples, model, normalise, device, frame_count, progress)
    return wenet_features(samples, WenetEncoder(source, device), frame_count, progress)


def metadata_path(features_path: Path) -> Path:
    """aud_ave.npy -> aud_ave.json: which encoder made the features."""
    return Path(features_path).with_suffix(".json")


def count_video_frames(frames_dir: Path) -> int:
    """Number of i.jpg frames in a processed dataset's full_body_img/."""
    return sum(1 for path in Path(frames_dir).glob("*.jpg") if path.stem.isdigit())


def _fit_to_frames(samples: np.ndarray, frames: int, wav: Path) -> np.ndarray:
    """Exactly frames x 640 samples: a short tail is padded with silence, extra audio dropped."""
    wanted = frames * SAMPLES_PER_FRAME
    if abs(len(samples) - wanted) >= SAMPLES_PER_FRAME:
        log.warning("%s has %.3f s of audio for %d frames (%.3f s); aligning to the frames",
                    wav, len(samples) / SAMPLE_RATE, frames, frames / FPS)
    fitted = np.zeros(wanted, dtype=np.float32)
    fitted[:min(wanted, len(samples))] = samples[:wanted]
    return fitted


def is_processed_dataset(folder) -> bool:
    """True for a preprocessed dataset folder (aud.wav, full_body_img/, crop_boxes.npy)."""
    layout = DatasetLayout(Path(folder))
    return layout.audio_wav.exists() and layout.frames_dir.is_dir() and layout.crop_boxes.exists()


def prepare_dataset_features(dataset_dir, asr, *, ave_checkpoint=None, hubert_model=None, wenet_model=None,
                             device="cpu", force=False, progress: bool = True, ave_config=None) -> Path:
    """Write dataset_dir/aud_<asr>.npy (one row per frame in full_body_img/) and its metadata JSON.

    For ``ave`` without a checkpoint the person's encoder is learned first
    (dataset_dir/ave.pth, data_utils/features/ave_training.py, ``ave_config`` an
    AveTrainConfig). Finished work whose metadata matches the request is kept
    unless ``force`` (which also relearns ave.pth).
    """
    _check_asr(asr)
    layout = DatasetLayout(Path(dataset_dir))
    if not layout.audio_wav.exists():
        raise UserError(f"{layout.audio_wav} does not exist — run: python data_utils/process.py "
                        f"{layout.source_video()}")
    frames = count_video_frames(layout.frames_dir)
    if frames == 0:
        raise UserError(f"{layout.frames_dir} has no frames — run: python data_utils/process.py "
                        f"{layout.source_video()}")
    output = layout.features(asr)
    meta_path = metadata_path(output)
    heldout = None
    if asr == "ave" and ave_checkpoint is None:
        from data_utils.features.ave_training import train_ave_encoder

        report = train_ave_encoder(layout.root, ave_config, device=device, force=force, progress=progress)
        heldout = report.get("heldout_sync_accuracy")
    source = resolve_encoder(asr, dataset_dir=layout.root, ave_checkpoint=ave_checkpoint,
                             hubert_model=hubert_model, wenet_model=wenet_model)
    source_stamp = _source_stamp(source)
    if not force and output.exists() and meta_path.exists():
        try:
            previous = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            previous = {}
        if previous.get("frames") == frames and previous.get("encoder_stamp") == source_stamp:
            log.info("%s is up to date (%d frames, %s)", output, frames, source)
            return output
    started = time.time()
    samples = _fit_to_frames(as_samples(layout.audio_wav), frames, layout.audio_wav)
    features = extract_features(samples, asr, dataset_dir=layout.root, ave_checkpoint=ave_checkpoint,
                                hubert_model=hubert_model, wenet_model=wenet_model, device=device,
                                frame_count=frames, progress=progress)
    assert len(features) == frames, (len(features), frames)
    seconds = time.time() - started
    save_numpy_atomic(output, features)
    metadata = {"asr": asr, "encoder": source, "encoder_stamp": source_stamp,
                "per_frame_shape": list(features.shape[1:]), "frames": frames, "fps": FPS,
                "sample_rate": SAMPLE_RATE, "dtype": str(features.dtype),
                "alignment": "row i is centred on video frame i's instant, i / 25 s",
                "seconds": round(seconds, 3)}
    if heldout is not None:
        metadata["heldout_sync_accuracy"] = heldout
    elif asr == "ave":
        metadata["heldout_sync_accuracy"] = _stored_accuracy(Path(source))
    write_json_atomic(meta_path, metadata)
    log.info("wrote %s: %s in %.1f s", output, features.shape, seconds)
    return output


def _source_stamp(source: str) -> str:
    """The source plus, for files, their size and modification time: a retrained ave.pth is a new encoder."""
    path = Path(source)
    if path.is_file():
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return source


def _stored_accuracy(checkpoint: Path):
    """Held-out sync accuracy stored in one of our ave.pth files (None for released checkpoints)."""
    try:
        checkpoint_data = _torch_load(checkpoint)
    except UserError:
        return None
    if isinstance(checkpoint_data, dict) and checkpoint_data.get("format") == AVE_CHECKPOINT_FORMAT:
        return checkpoint_data.get("report", {}).get("heldout_sync_accuracy")
    return None


# =============================================================================
# CLI
# =============================================================================

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Audio features per 25 fps video frame (aud_<asr>.npy).")
    parser.add_argument("--asr", required=True, help=f"audio encoder: {' | '.join(ASR_CHOICES)}")
    parser.add_argument("--wav", required=True, help="audio file (any format ffmpeg reads)")
    parser.add_argument("--output", help="output .npy (default: next to --wav, named per encoder, "
                                         "e.g. aud_ave.npy)")
    parser.add_argument("--ave_checkpoint", help="pretrained SyncTalk AVE audio encoder (.pth); default: "
                                                 "ave.pth learned from the recording in the --wav folder")
    parser.add_argument("--hubert_model", default=None,
                        help=f"HuBERT model folder or hub id (default {HUBERT_DEFAULT_MODEL})")
    parser.add_argument("--wenet_model", help="WeNet encoder exported to ONNX")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--force", action="store_true",
                        help="for a dataset's aud.wav: recompute (and relearn ave.pth) even if up to date")
    return parser


def write_audio_features(wav, asr, output=None, *, device="cpu", **options) -> Tuple[Path, dict]:
    """Features of any audio file to ``output`` (default: next to it, e.g. aud_ave.npy) + metadata JSON."""
    wav = Path(wav)
    output = Path(output) if output else wav.parent / FEATURE_SPECS[asr].filename
    samples = as_samples(wav)
    source = resolve_encoder(asr, dataset_dir=wav.parent, **options)
    started = time.time()
    features = extract_features(samples, asr, dataset_dir=wav.parent, device=device, progress=True, **options)
    seconds = time.time() - started
    save_numpy_atomic(output, features)
    metadata = {"asr": asr, "encoder": source, "encoder_stamp": _source_stamp(source),
                "per_frame_shape": list(features.shape[1:]), "frames": len(features), "fps": FPS,
                "sample_rate": SAMPLE_RATE, "dtype": str(features.dtype), "source_audio": str(wav),
                "audio_seconds": round(len(samples) / SAMPLE_RATE, 3),
                "alignment": "row i is centred on video frame i's instant, i / 25 s", "seconds": round(seconds, 3)}
    write_json_atomic(metadata_path(output), metadata)
    return output, metadata


@exit_on_user_error
def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _check_asr(args.asr)
    wav = Path(args.wav)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    options = {"ave_checkpoint": args.ave_checkpoint, "hubert_model": args.hubert_model,
               "wenet_model": args.wenet_model}
    if args.output is None and wav.name == DatasetLayout(wav.parent).audio_wav.name and is_processed_dataset(wav.parent):
        # a preprocessed dataset: one row per extracted frame, ave.pth learned if needed, metadata for reuse
        output = prepare_dataset_features(wav.parent, args.asr, device=device, force=args.force, **options)
        metadata = json.loads(metadata_path(output).read_text())
    else:
        output, metadata = write_audio_features(wav, args.asr, args.output, device=device, **options)
    accuracy = metadata.get("heldout_sync_accuracy")
    timing = f" from {metadata['audio_seconds']:.2f} s of audio in {metadata['seconds']:.1f} s" \
        if "audio_seconds" in metadata else ""
    print(f"{output}: {metadata['frames']} frames x {tuple(metadata['per_frame_shape'])} ({args.asr}, "
          f"{metadata['encoder']}){timing}"
          + ("" if accuracy is None else f"; AVE held-out sync accuracy {100 * accuracy:.1f}%"))
    return output


if __name__ == "__main__":
    main()
