"""Preprocessing speed: frames per second of each stage and of the whole.

    python benchmarks/bench_preprocess.py                      # the 40 s fixture if ../shared is there
    python benchmarks/bench_preprocess.py --video some.mp4 --compare_static

Target on 2 CPU cores: a 512x512 clip at 60 frames/s or more overall, with the
face mesh in tracking (video) mode. ``--compare_static`` also times per-image
detection on the same frames, to show what tracking mode buys.
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "talker_a" / "talker_a.mp4"
BUNDLED = REPO_ROOT / "tests" / "data" / "talker_a_4s.mp4"
TARGET_FPS = 60.0


def time_static_detection(frames_dir: Path, limit: int) -> float:
    """Frames/s of mediapipe in static-image mode (a detector run on every frame)."""
    import cv2
    import mediapipe as mp

    paths = sorted(frames_dir.glob("*.jpg"), key=lambda path: int(path.stem))[:limit]
    frames = [cv2.imread(str(path)) for path in paths]
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True)
    started = time.perf_counter()
    for frame in frames:
        mesh.process(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return len(frames) / (time.perf_counter() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=FIXTURE if FIXTURE.exists() else BUNDLED)
    parser.add_argument("--compare_static", action="store_true")
    args = parser.parse_args(argv)

    from data_utils.ffmpeg import probe
    from data_utils.preprocess import process_video

    info = probe(args.video)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"video: {args.video.name} {info.width}x{info.height} {info.average_fps} fps {info.duration:.2f} s")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "bench"
        root.mkdir()
        video = root / "bench.mp4"
        shutil.copy(args.video, video)
        started = time.perf_counter()
        report = process_video(video, show_progress=False)
        total = time.perf_counter() - started
        frames = report["frames"]
        print(f"{'stage':<10} {'seconds':>8} {'frames/s':>10}")
        for stage, seconds in report["stage_seconds"].items():
            rate = frames / seconds if seconds > 0 else float("inf")
            print(f"{stage:<10} {seconds:>8.2f} {rate:>10.1f}")
        overall = frames / total
        print(f"{'whole':<10} {total:>8.2f} {overall:>10.1f}   ({frames} frames at 25 fps)")
        print(f"target {TARGET_FPS:.0f} frames/s: {'met' if overall >= TARGET_FPS else 'NOT met'} "
              f"(ratio {overall / TARGET_FPS:.2f}); a 5-minute recording would take "
              f"{5 * 60 * 25 / overall / 60:.1f} min")
        if args.compare_static:
            static = time_static_detection(root / "full_body_img", limit=200)
            tracking = frames / report["stage_seconds"]["frames"]
            print(f"landmarks, per-image detection: {static:.1f} frames/s; tracking mode stage "
                  f"(incl. decode + JPEG writes): {tracking:.1f} frames/s (ratio {tracking / static:.2f})")


if __name__ == "__main__":
    main()
