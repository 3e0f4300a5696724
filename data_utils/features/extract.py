"""Audio features for ``--asr ave|hubert|wenet``, one row per 25 fps video frame: the one entry point.

    python data_utils/audio_features.py --asr ave --wav dataset/May/aud.wav

Alignment (data_utils/timebase.py is the contract): feature row i belongs to
video frame i, and every encoder centres row i on that frame's instant,
``timebase.frame_time(i)`` = sample i * 640. Audio of L samples gives
``timebase.frame_count_for_samples(L)`` rows; audio past either end counts as
silence. How each encoder does that: ave.py, hubert.py, wenet.py.

This module picks the encoder (``resolve_encoder``), runs it
(``extract_features``), and writes features with the metadata that says which
encoder made them, either for a dataset (``prepare_dataset_features``: one row
per extracted frame, reused while the encoder is unchanged) or next to any
audio file (``write_audio_features``).
"""
import json
import logging
import time
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from data_utils.audio import as_samples
from data_utils.features.ave import ave_features, load_ave_encoder, stored_heldout_accuracy
from data_utils.features.ave_training import train_ave_encoder
from data_utils.features.dataset_audio import frame_aligned_samples, require_audio_and_frames
from data_utils.features.hubert import HUBERT_DEFAULT_MODEL, hubert_features, load_hubert
from data_utils.features.wenet import WenetEncoder, wenet_features
from data_utils.layout import DatasetLayout, process_command
from data_utils.output_check import npy_problem
from data_utils.timebase import ASR_CHOICES, FEATURE_SPECS, FPS, SAMPLE_RATE
from lipsync.core.atomic import save_numpy_atomic, write_json_atomic
from lipsync.core.errors import UserError
from lipsync.core.fingerprint import file_fingerprint

log = logging.getLogger(__name__)

ALIGNMENT = "row i is centred on video frame i's instant, i / 25 s"   # stored in every metadata JSON


def check_asr(asr: str) -> None:
    if asr not in FEATURE_SPECS:
        raise UserError(f"unknown --asr {asr!r} — choose one of: {', '.join(ASR_CHOICES)}")


def resolve_encoder(asr: str, *, dataset_dir=None, ave_checkpoint=None, hubert_model=None,
                    wenet_model=None) -> str:
    """The encoder source that ``asr`` will use: a checkpoint path, hub id or ONNX path."""
    check_asr(asr)
    if asr == "ave":
        if ave_checkpoint is not None:
            return str(ave_checkpoint)
        if dataset_dir is not None and DatasetLayout(Path(dataset_dir)).ave_encoder.exists():
            return str(DatasetLayout(Path(dataset_dir)).ave_encoder)
        if dataset_dir is None:
            raise UserError("--asr ave needs an AVE encoder: no dataset folder was given — pass "
                            "--ave_checkpoint PATH, or run python data_utils/process.py --asr ave on the "
                            "recording to learn one")
        layout = DatasetLayout(Path(dataset_dir))
        raise UserError(f"--asr ave needs an AVE encoder: {layout.ave_encoder} does not exist — pass "
                        f"--ave_checkpoint PATH, or run {process_command(layout, 'ave')} to learn one")
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


# =============================================================================
# Features on disk, with the metadata that says which encoder made them
# =============================================================================

def metadata_path(features_path: Path) -> Path:
    """aud_ave.npy -> aud_ave.json: which encoder made the features."""
    return Path(features_path).with_suffix(".json")


def encoder_stamp(source: str) -> str:
    """The source plus, for files, their size and modification time: a retrained ave.pth is a new encoder.

    Stored as "resolved path|bytes|mtime_ns" (lipsync/render/renderer.py reads the two numbers back).
    """
    path = Path(source)
    if path.is_file():
        fingerprint = file_fingerprint(path)
        return f"{path.resolve()}|{fingerprint['bytes']}|{fingerprint['mtime_ns']}"
    return source


def feature_metadata(asr: str, source: str, features: np.ndarray, seconds: float, **extra) -> dict:
    """The metadata JSON of a features file: encoder, shape, time base, and ``extra`` facts."""
    return {"asr": asr, "encoder": source, "encoder_stamp": encoder_stamp(source),
            "per_frame_shape": list(features.shape[1:]), "frames": len(features), "fps": FPS,
            "sample_rate": SAMPLE_RATE, "dtype": str(features.dtype), **extra,
            "alignment": ALIGNMENT, "seconds": round(seconds, 3)}


def prepare_dataset_features(dataset_dir, asr, *, ave_checkpoint=None, hubert_model=None, wenet_model=None,
                             device="cpu", force=False, progress: bool = True, ave_config=None) -> Path:
    """Write dataset_dir/aud_<asr>.npy (one row per frame in full_body_img/) and its metadata JSON.

    For ``ave`` without a checkpoint the person's encoder is learned first
    (dataset_dir/ave.pth, data_utils/features/ave_training.py, ``ave_config`` an
    AveTrainConfig). Finished work whose metadata matches the request is kept
    unless ``force`` (which also relearns ave.pth).
    """
    check_asr(asr)
    layout = DatasetLayout(Path(dataset_dir))
    frames = require_audio_and_frames(layout)
    output = layout.features(asr)
    meta_path = metadata_path(output)
    heldout = None
    if asr == "ave" and ave_checkpoint is None:
        report = train_ave_encoder(layout.root, ave_config, device=device, force=force, progress=progress)
        heldout = report.get("heldout_sync_accuracy")
    source = resolve_encoder(asr, dataset_dir=layout.root, ave_checkpoint=ave_checkpoint,
                             hubert_model=hubert_model, wenet_model=wenet_model)
    if not force and output.exists() and meta_path.exists():
        try:
            previous = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            previous = {}
        damage = npy_problem(output, (frames,))
        if damage:
            log.warning("%s — computing the features again", damage)
        elif previous.get("frames") == frames and previous.get("encoder_stamp") == encoder_stamp(source):
            log.info("%s is up to date (%d frames, %s)", output, frames, source)
            return output
    started = time.time()
    samples = frame_aligned_samples(layout, frames)
    features = extract_features(samples, asr, dataset_dir=layout.root, ave_checkpoint=ave_checkpoint,
                                hubert_model=hubert_model, wenet_model=wenet_model, device=device,
                                frame_count=frames, progress=progress)
    assert len(features) == frames, (len(features), frames)
    seconds = time.time() - started
    save_numpy_atomic(output, features)
    metadata = feature_metadata(asr, source, features, seconds)
    if heldout is not None:
        metadata["heldout_sync_accuracy"] = heldout
    elif asr == "ave":
        metadata["heldout_sync_accuracy"] = stored_heldout_accuracy(Path(source))
    write_json_atomic(meta_path, metadata)
    log.info("wrote %s: %s in %.1f s", output, features.shape, seconds)
    return output


def write_audio_features(wav, asr, output=None, *, device="cpu", **options) -> Tuple[Path, dict]:
    """Features of any audio file to ``output`` (default: next to it, named after it: new.wav -> new_ave.npy)
    + metadata JSON."""
    wav = Path(wav)
    output = Path(output) if output else wav.parent / FEATURE_SPECS[asr].filename_for(wav)
    samples = as_samples(wav)
    source = resolve_encoder(asr, dataset_dir=wav.parent, **options)
    started = time.time()
    features = extract_features(samples, asr, dataset_dir=wav.parent, device=device, progress=True, **options)
    seconds = time.time() - started
    save_numpy_atomic(output, features)
    metadata = feature_metadata(asr, source, features, seconds, source_audio=str(wav),
                                audio_seconds=round(len(samples) / SAMPLE_RATE, 3))
    write_json_atomic(metadata_path(output), metadata)
    return output, metadata
