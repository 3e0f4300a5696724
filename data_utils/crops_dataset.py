"""A dataset's crops-only form: the same dataset, with each frame replaced by its 328 x 328
model crop, so that a recording of any resolution travels at the size of its crops.

Its frames ARE the crops: every crop box becomes (0, 0, 328, 328), which cut_crop
maps with the identity (scale 1, no shift), so training, inference and evaluation
see the crops they would have cut; the landmarks are mapped into crop pixels with
data_utils.crop.frame_to_crop_matrix, the transform cut_crop applies. What differs:
the crops pass through H.264 (CRF 17, full chroma) and a second JPEG; renders and
evaluation videos are 328 x 328; the full frames cannot be rebuilt from it.
"""
import subprocess
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np

from data_utils import crop
from data_utils.crop_cache import JpegCrops
from data_utils.dataset import load_crop_boxes
from data_utils.ffmpeg import ffmpeg_binary, last_error_line
from data_utils.layout import DatasetLayout
from data_utils.timebase import FPS
from data_utils.video import CONVERSION_CRF, CONVERSION_PRESET
from lipsync.core.atomic import save_numpy_atomic, write_json_atomic
from lipsync.core.errors import UserError
from lipsync.core.progress import progress_bar

CROPS_VIDEO_SUFFIX = "_crops_25fps.mp4"
# Full chroma: 4:2:0 alone costs the crops ~1.5 dB (PSNR 39.7 -> 41.3 dB against the
# dataset's crops at CRF 17), and at CRF 17 the 4:4:4 file is even smaller (1.31 vs 1.40 MB for 40 s).
CROPS_PIXEL_FORMAT = "yuv444p"


def encode_crop_video(crops: JpegCrops, output: Path, show_progress: bool = True) -> None:
    """The 328 crops as a 25 fps H.264 video, at the quality preprocessing converts recordings with."""
    command = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{crop.CROP_SIZE}x{crop.CROP_SIZE}",
               "-r", str(FPS), "-i", "pipe:0", "-c:v", "libx264", "-preset", CONVERSION_PRESET,
               "-crf", str(CONVERSION_CRF), "-pix_fmt", CROPS_PIXEL_FORMAT, "-movflags", "+faststart", str(output)]
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=stderr_file)
        try:
            for index in progress_bar(range(len(crops)), desc="crop video", unit="frame", enabled=show_progress):
                process.stdin.write(np.ascontiguousarray(crops[index]).tobytes())
            process.stdin.close()
        except BrokenPipeError:       # ffmpeg stopped early: its message says why
            pass
        except BaseException:
            process.kill()
            raise
        finally:
            process.wait()
        if process.returncode != 0:
            stderr_file.seek(0)
            detail = last_error_line(stderr_file.read().decode("utf-8", "replace"))
            raise UserError(f"ffmpeg could not encode the crop video ({detail})")


def landmarks_in_crops(landmarks: np.ndarray, boxes: np.ndarray, size: int = crop.CROP_SIZE) -> np.ndarray:
    """(N, P, 2) frame-pixel landmarks -> (N, P, 2) float32 pixels of each ``cut_crop(frame, box, size)``."""
    matrices = np.stack([crop.frame_to_crop_matrix(box, size) for box in boxes])      # (N, 2, 3)
    points = np.asarray(landmarks, dtype=np.float64)
    mapped = np.einsum("nij,npj->npi", matrices[:, :, :2], points) + matrices[:, None, :, 2]
    return mapped.astype(np.float32)


def write_crops_dataset_files(layout: DatasetLayout, report: Dict, folder: Path,
                              show_progress: bool = True) -> Dict[str, Path]:
    """The files that differ in the crops-only form of ``layout``, written into ``folder``.

    Returns {"video": ..., "crop_boxes.npy": ..., "landmarks.npy": ..., "process_report.json": ...};
    every other file of the dataset is the same in both forms.
    """
    boxes = load_crop_boxes(layout)
    video = folder / f"{layout.name}{CROPS_VIDEO_SUFFIX}"
    encode_crop_video(JpegCrops(layout, boxes), video, show_progress)
    whole_crop = np.array([0, 0, crop.CROP_SIZE, crop.CROP_SIZE], dtype=boxes.dtype)
    outputs = {"video": video, layout.crop_boxes.name: folder / layout.crop_boxes.name,
               layout.landmarks_array.name: folder / layout.landmarks_array.name,
               layout.report.name: folder / layout.report.name}
    save_numpy_atomic(outputs[layout.crop_boxes.name], np.tile(whole_crop, (len(boxes), 1)))
    save_numpy_atomic(outputs[layout.landmarks_array.name], landmarks_in_crops(np.load(layout.landmarks_array), boxes))
    sides = boxes[:, 2] - boxes[:, 0]
    source = report.get("source", {})
    write_json_atomic(outputs[layout.report.name], {
        **report, "video": video.name,
        "crops_only": {"frame_size": [crop.CROP_SIZE, crop.CROP_SIZE], "source_video": report.get("video"),
                       "source_frame_size": [source.get("width"), source.get("height")],
                       "source_crop_side_px": {"median": int(np.median(sides)), "min": int(sides.min()),
                                               "max": int(sides.max())}}})
    return outputs
