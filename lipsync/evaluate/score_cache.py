"""Scores of unchanged checkpoints are reused: epoch_E.json, and the key that says when it is stale.

The key names everything the scores depend on: the checkpoint file, the
render options, the scored frames, the SyncNet, the new audio and truth video
(their name, size and modification time), and whether the lip measures could
be made. A re-run with the same key reads the scores back instead of
rendering again; anything else (or --force) scores afresh.
"""
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from lipsync.core.atomic import write_json_atomic
from lipsync.core.fingerprint import file_fingerprint
from lipsync.evaluate.results import CheckpointResult, finite_or_none

SCORES_VERSION = 1                 # bump when a metric's definition changes: cached scores are redone


def checkpoint_stamp(path: Path) -> Dict:
    """{"file", "size", "mtime_ns"} of a file: the form cached scores were always keyed on."""
    fingerprint = file_fingerprint(path)
    return {"file": fingerprint["file"], "size": fingerprint["bytes"], "mtime_ns": fingerprint["mtime_ns"]}


def scores_key(checkpoint: Path, render_options: Dict, frames: Sequence[int], syncnet: Optional[Path],
               audio_path: Optional[Path] = None, start_frame: int = 0, truth_video: Optional[Path] = None,
               landmarks: bool = True) -> Dict:
    """What one checkpoint's scores depend on (``syncnet``: the SyncNet used, None without one;
    ``audio_path``: new audio, None for the held-out tail; ``landmarks``: lip measures made)."""
    key = {"version": SCORES_VERSION, "checkpoint": checkpoint_stamp(checkpoint),
           "render_options": dict(sorted(render_options.items())),
           "frames": [int(frames[0]), int(frames[-1]), int(len(frames))],
           "syncnet": checkpoint_stamp(syncnet) if syncnet is not None else None}
    if audio_path is not None:
        # Name, size and modification time, as these keys have always held: cached scores stay valid.
        key["audio"] = checkpoint_stamp(audio_path)
        key["start_frame"] = int(start_frame)
    if truth_video is not None:
        key["truth_video"] = checkpoint_stamp(truth_video)
    if not landmarks:
        # Only then: keys (and scores) cached with a landmark detector stay valid.
        key["landmarks"] = "unavailable"
    return key


def cache_file(output_dir: Path, epoch: int) -> Path:
    return Path(output_dir) / f"epoch_{epoch}.json"


def read_cached(file: Path, key: Dict, checkpoint: Path, epoch: int, need_video: bool) -> Optional[CheckpointResult]:
    """The stored result when ``file`` was written with this ``key`` (and its video is
    there when one is wanted); else None."""
    if not file.is_file():
        return None
    try:
        stored = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if stored.get("key") != finite_or_none(key):
        return None
    result = stored["result"]
    if need_video and not (result.get("side_by_side") and Path(result["side_by_side"]).is_file()):
        return None
    scores = {name: (float("nan") if value is None else value) for name, value in result["scores"].items()}
    return CheckpointResult(checkpoint, epoch, scores,
                            Path(result["side_by_side"]) if result.get("side_by_side") else None,
                            Path(result["strip"]) if result.get("strip") else None, reused=True)


def store(file: Path, key: Dict, result: CheckpointResult) -> None:
    write_json_atomic(file, finite_or_none({"key": key, "result": result.as_dict()}))
