"""Packing a processed dataset into one bundle and unpacking it on a machine that only
trains (no network, no mediapipe, maybe no FFmpeg) into a dataset ready to use.

A bundle carries what training, inference and evaluation read and cannot rebuild
there: the 25 fps video's picture (its sound is aud.wav), landmarks.npy,
face_found.npy, crop_boxes.npy, aud.wav, the audio features with their .json,
ave.pth and process_report.json. What can be rebuilt stays behind: full_body_img/
(decoded again from the video on unpack, same count and order, JPEG as
preprocessing writes it), landmarks/*.lms (written again from landmarks.npy), the
crop cache, the source recording when it was converted, .process_state.json.
``crops_only`` carries the dataset's crops-only form instead
(data_utils/crops_dataset.py). The file format is data_utils/bundle_format.py.

Unpacking fills a temporary folder beside the target that becomes dataset/NAME
only when complete, with a marker (.bundle.json) written last: an interrupted
unpack leaves nothing that looks like a dataset, and a finished one is skipped.
"""
import collections
import concurrent.futures
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, Optional, Sequence

import numpy as np

from data_utils.bundle_format import BundleReader, write_bundle
from data_utils.crops_dataset import write_crops_dataset_files
from data_utils.dataset import load_crop_boxes
from data_utils.ffmpeg import probe, run_ffmpeg, video_packet_times
from data_utils.frame_decoder import video_frames
from data_utils.landmarks import format_lms
from data_utils.layout import DATASET_ROOT, DatasetLayout, process_command
from data_utils.timebase import ASR_CHOICES, FPS
from data_utils.video import JPEG_QUALITY, write_frame_jpeg
from lipsync.core.atomic import atomic_directory, write_json_atomic
from lipsync.core.errors import UserError
from lipsync.core.progress import progress_bar

log = logging.getLogger("bundle")

BUNDLE_SUFFIX = ".bundle.tar"
CROPS_BUNDLE_SUFFIX = ".crops.bundle.tar"
UNPACKED_MARKER = ".bundle.json"      # written last inside dataset/NAME: "complete, from this bundle"
UNPACK_COMMAND = "python data_utils/bundle.py unpack"
FRAME_WRITER_THREADS = 2              # cv2 encodes JPEGs outside the GIL
MAX_PENDING_FRAME_WRITES = 32         # bounds memory while the JPEG writers catch up


@dataclass
class UnpackResult:
    dataset: Path
    skipped: bool                     # already unpacked from this bundle: nothing was written
    frames: int
    decoder: Optional[str] = None     # "ffmpeg" or "opencv": what decoded the video's frames
    crops_only: bool = False


# --------------------------------------------------------------------------- pack

def _read_report(layout: DatasetLayout) -> Dict:
    try:
        return json.loads(layout.report.read_text())
    except (OSError, ValueError):
        raise UserError(f"{layout.root} has no readable {layout.report.name} — run again: "
                        f"{process_command(layout)}") from None


def dataset_files(layout: DatasetLayout, report: Dict, asr: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    """{name: path} of what a bundle of ``layout`` carries, "video" first (the rest by their names)."""
    video = layout.root / str(report.get("video", ""))
    if not report.get("video") or not video.is_file():
        raise UserError(f"{layout.root} has no 25 fps video ({video.name or 'process_report.json names none'}), "
                        f"which the bundle needs to rebuild the frames — run again: {process_command(layout)}")
    files = {"video": video}
    for path in (layout.crop_boxes, layout.landmarks_array, layout.face_found, layout.audio_wav, layout.report):
        if not path.is_file():
            raise UserError(f"{layout.root} is not processed (no {path.name}) — run: {process_command(layout)}")
        files[path.name] = path
    wanted = list(asr) if asr else [name for name in ASR_CHOICES if layout.features(name).is_file()]
    for name in wanted:
        features = layout.features(name)
        if not features.is_file():
            raise UserError(f"{layout.root} has no features for --asr {name} ({features.name}) — "
                            f"run: {process_command(layout, name)}")
        for path in (features, features.with_suffix(".json")):
            if path.is_file():
                files[path.name] = path
    if not wanted:
        log.warning("%s has no audio features: the bundle carries none (after unpacking: "
                    "python data_utils/audio_features.py --asr ave --wav DATASET/aud.wav)", layout.root)
    if layout.ave_encoder.is_file():
        files[layout.ave_encoder.name] = layout.ave_encoder
    return files


def check_frame_counts(layout: DatasetLayout, video: Path, frames: int) -> None:
    """Every per-frame file, the frames folder and the video agree (else unpack would fail far away)."""
    for path in (layout.landmarks_array, layout.face_found):
        count = len(np.load(path, mmap_mode="r"))
        if count != frames:
            raise UserError(f"{path} has {count} frames but {layout.crop_boxes.name} has {frames} — "
                            f"run again: {process_command(layout)}")
    if not layout.frame_path(frames - 1).is_file() or layout.frame_path(frames).exists():
        raise UserError(f"{layout.frames_dir} does not hold exactly the frames 0 .. {frames - 1} — "
                        f"run again: {process_command(layout)}")
    packets = len(video_packet_times(video))
    if packets != frames:
        raise UserError(f"{video} has {packets} frames but the dataset has {frames} — "
                        f"run again: {process_command(layout)}")


def video_without_sound(video: Path, folder: Path) -> Path:
    """A copy of ``video`` with its video stream only (packets copied, so the frames are the same).

    The sound travels as aud.wav already; a recording's AAC track at 192 kbit/s
    would add 1.4 MB per minute to the bundle.
    """
    output = folder / video.name
    run_ffmpeg(["-i", str(video), "-map", "0:v:0", "-c", "copy", "-movflags", "+faststart", str(output)],
               "copy the video without its sound", video)
    return output


def default_bundle_path(dataset_dir, crops_only: bool = False) -> Path:
    """dataset/May -> dataset/May.bundle.tar (dataset/May.crops.bundle.tar with ``crops_only``)."""
    root = Path(dataset_dir)
    return root.parent / f"{root.name}{CROPS_BUNDLE_SUFFIX if crops_only else BUNDLE_SUFFIX}"


def pack(dataset_dir, output=None, crops_only: bool = False, asr: Optional[Sequence[str]] = None,
         show_progress: bool = True) -> Path:
    """Write the bundle of a processed dataset folder (its crops-only form with ``crops_only``)."""
    layout = DatasetLayout(Path(dataset_dir)).require_processed()
    report = _read_report(layout)
    files = dataset_files(layout, report, asr)
    frames = len(load_crop_boxes(layout))
    check_frame_counts(layout, files["video"], frames)
    output = Path(output) if output else default_bundle_path(layout.root, crops_only)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=output.parent) as scratch:   # /tmp may be small
        scratch = Path(scratch)
        if crops_only:
            files.update(write_crops_dataset_files(layout, report, scratch, show_progress))
        else:
            files["video"] = video_without_sound(files["video"], scratch)
        fields = {"name": layout.name, "frames": frames, "fps": FPS, "crops_only": bool(crops_only),
                  "video": files["video"].name, "frame_size": list(probe(files["video"]).display_size),
                  "jpeg_quality": JPEG_QUALITY, "packed_from": str(layout.root.resolve()),
                  "packed_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_bundle(output, fields, progress_bar(list(files.values()), desc="pack", unit="file",
                                                  enabled=show_progress), scratch)
    log.info("%s: %d files, %.1f MB", output, len(files), output.stat().st_size / 1e6)
    return output


# --------------------------------------------------------------------------- unpack

def write_frames(video: Path, frames_dir: Path, expected: int, show_progress: bool = True) -> str:
    """Decode ``video`` into frames_dir/0.jpg, 1.jpg, ... as preprocessing writes them; returns the decoder."""
    decoder, frames = video_frames(video)
    frames_dir.mkdir(parents=True, exist_ok=True)
    pending = collections.deque()
    count = 0
    with concurrent.futures.ThreadPoolExecutor(FRAME_WRITER_THREADS) as writers:
        try:
            for frame in progress_bar(frames, total=expected, desc="frames", unit="frame", enabled=show_progress):
                if count < expected:
                    pending.append(writers.submit(write_frame_jpeg, frames_dir / f"{count}.jpg", frame))
                count += 1
                while len(pending) > MAX_PENDING_FRAME_WRITES or (pending and pending[0].done()):
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            frames.close()
    if count != expected:
        raise UserError(f"{video.name} decodes to {count} frames ({decoder}) but the dataset has {expected} — "
                        "the bundle is damaged, or this decoder drops frames; unpack where ffmpeg is installed")
    return decoder


def _relocate_feature_metadata(folder: Path, final_root: Path, packed_from: str) -> None:
    """Point aud_<asr>.json's encoder at the unpacked ave.pth where it named the packed dataset's.

    The stamp keeps its size and mtime (ave.pth's mtime travels with it), so inference
    and a later feature run recognise the encoder that made these features.
    """
    old = str(PurePosixPath(packed_from) / "ave.pth")
    new = str(final_root.resolve() / "ave.pth")
    for name in ASR_CHOICES:
        path = DatasetLayout(folder).features(name).with_suffix(".json")
        if not path.is_file():
            continue
        metadata = json.loads(path.read_text())
        stamp = str(metadata.get("encoder_stamp", ""))
        if stamp.startswith(old + "|"):
            metadata["encoder_stamp"] = new + stamp[len(old):]
            metadata["encoder"] = new
            write_json_atomic(path, metadata)


def _already_unpacked(destination: Path, manifest: Dict) -> bool:
    try:
        recorded = json.loads((destination / UNPACKED_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("manifest_sha256") == manifest["manifest_sha256"] and DatasetLayout(destination).is_processed()


def unpack(bundle, output_dir=None, force: bool = False, show_progress: bool = True,
           dataset_root=DATASET_ROOT) -> UnpackResult:
    """Unpack ``bundle`` into output_dir (default dataset_root/NAME): checked, atomic, skipped if done."""
    with BundleReader(bundle) as reader:
        manifest = reader.manifest
        name, frames, crops_only = manifest["name"], int(manifest["frames"]), bool(manifest.get("crops_only"))
        destination = Path(output_dir) if output_dir else Path(dataset_root) / name
        if destination.exists() and not force:
            if _already_unpacked(destination, manifest):
                return UnpackResult(destination, True, frames, crops_only=crops_only)
            raise UserError(f"{destination} already exists and was not unpacked from {reader.path.name} — move it "
                            f"away, give another --output_dir, or replace it: {UNPACK_COMMAND} {bundle} --force")
        layout = DatasetLayout(destination)
        carried = {entry["path"] for entry in manifest["files"]}
        needed = [manifest.get("video"), layout.crop_boxes.name, layout.landmarks_array.name, layout.audio_wav.name]
        missing = [str(path) for path in needed if path not in carried]
        if missing:
            raise UserError(f"{reader.path} is not a dataset bundle (its manifest lacks {', '.join(missing)}) — "
                            "refusing to unpack it")
        with atomic_directory(destination) as folder:
            for entry in progress_bar(manifest["files"], desc="unpack", unit="file", enabled=show_progress):
                reader.restore(entry, folder / entry["path"])
            layout = DatasetLayout(folder)
            decoder = write_frames(folder / manifest["video"], layout.frames_dir, frames, show_progress)
            layout.landmarks_dir.mkdir()
            for index, points in enumerate(np.load(layout.landmarks_array)):
                layout.landmark_path(index).write_text(format_lms(points))
            _relocate_feature_metadata(folder, destination, str(manifest.get("packed_from", "")))
            write_json_atomic(folder / UNPACKED_MARKER, {
                "bundle": reader.path.name, "manifest_sha256": manifest["manifest_sha256"], "name": name,
                "frames": frames, "crops_only": crops_only, "frame_decoder": decoder,
                "packed_at": manifest.get("packed_at")})
    return UnpackResult(destination, False, frames, decoder, crops_only)
