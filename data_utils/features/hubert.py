"""HuBERT features (``--asr hubert``): two 50 Hz hidden states per 25 fps video frame.

The model's conv front end has stride 320 samples and a receptive field of 400;
the audio is shifted so that states 2i and 2i+1 are centred 10 ms before and
after frame i's instant (sample i * 640) -> (2, hidden) per frame. Long audio
runs in 20 s chunks with 1 s of context each side (segments.py).
"""
import pickle
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from data_utils.audio import as_samples
from data_utils.features.segments import run_in_segments
from data_utils.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME, frame_count_for_samples
from lipsync.core.errors import UserError

HUBERT_DEFAULT_MODEL = "facebook/hubert-large-ls960-ft"
HUBERT_STATES_PER_FRAME = 2     # 50 Hz hidden states, 25 fps video
HUBERT_CHUNK_STATES = 1000      # 20 s of states per model call: memory stays bounded
HUBERT_CONTEXT_STATES = 50      # 1 s of extra audio each side of a chunk, outputs discarded
HUBERT_NORM_EPSILON = 1e-7      # zero-mean unit-variance input, as the model was trained


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
    except pickle.UnpicklingError:       # transformers loads .bin weights weights-only: this one asks for code
        raise UserError(f"the HuBERT weights in {name!r} ask to run code when loaded, which this project never "
                        "does with a file — use a folder with model.safetensors (save_pretrained writes one)") from None
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
