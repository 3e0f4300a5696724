"""Download, on a machine with a package index, the wheels the air-gapped GPU server still lacks.

    python3 scripts/download_wheels.py                        # -> wheels/*.whl, prints the total size
    python3 scripts/download_wheels.py --with_ffmpeg          # + an ffmpeg binary (imageio-ffmpeg)
    python3 scripts/download_wheels.py --with_landmarks       # + wheels/landmarks/: evaluation's LMD and opening scores
    python3 scripts/download_wheels.py --bundle dataset/May.bundle.tar   # count the bundle in the budget
    python3 scripts/download_wheels.py --dry_run              # print the pip command, download nothing
On the server:  python -m pip install --no-index --no-deps wheels/*.whl
                python -m pip install --no-index --no-deps --target ~/lipsync_landmarks wheels/landmarks/*.whl
                PYTHONPATH=~/lipsync_landmarks python evaluate_328.py ...    # only where landmarks are measured
(benchmarks/gpu_check.sh does all three itself.)

The server (Linux x86_64, CPython 3.12, no network) already has torch, torchvision,
numpy 2, opencv-python-headless, onnx, onnxruntime (CPU), transformers, scipy,
matplotlib, tqdm and tensorboard. With a dataset from data_utils/bundle.py it needs
of the rest only:
  silero-vad      11.3 MB  the silence hold's pause detector (without it the energy gate
                           is used, with a warning); needs torch and packaging, both there
  imageio-ffmpeg  29.5 MB  (--with_ffmpeg) an ffmpeg binary, where the server has none:
                           mp4 output with sound, and audio that is not a wav
  mediapipe       35.6 MB  (--with_landmarks) the face mesh evaluation measures generated
                           frames with (LMD, mouth opening r/offset/ratio); without it those
                           are n/a. 0.10.21 declares numpy<2 but ran with numpy 2.2.6 and 2.5.5;
  protobuf 4.25    0.3 MB  it does need protobuf<5 (under 5.29 and 7.36 its graph config fails
                           to parse) and attrs (not among the server's packages). These three go
  attrs            0.1 MB  to wheels/landmarks/, to be installed into a folder of their own: on
                           the server's PYTHONPATH protobuf 4.25 would break its onnx (1.23 needs
                           protobuf's runtime_version, new in 5.26), and with it ONNX export.
Not needed there: the landmarks of the recording itself (they travel in the bundle), librosa (data_utils/audio.py has the mel filterbank in
numpy), soundfile (only preprocessing writes wav files), onnxruntime-gpu (~300 MB; the
CPU build serves the audio encoders, the U-Net runs in torch on the GPU).
Dependencies are not downloaded (--no-deps): the server has them.
"""
import argparse
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO_ROOT / "wheels"      # ignored by git
TARGET = ["--python-version", "3.12", "--implementation", "cp",
          "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
          "--platform", "manylinux2014_x86_64"]
NEEDED = ["silero-vad==6.2.3"]
FFMPEG = ["imageio-ffmpeg==0.6.0"]       # ffmpeg 7.1; later releases ship a larger binary
# The last mediapipe wheel with the face mesh, and what it needs that the server lacks or has too new.
LANDMARKS = ["mediapipe==0.10.21", "protobuf==4.25.8", "attrs==26.1.0"]
LANDMARKS_SUBDIR = "landmarks"           # a folder of their own: see the docstring
CARRY_LIMIT_BYTES = 64 * 2 ** 20         # what can be brought to the server, project files included


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="folder for the wheels (default: wheels/)")
    parser.add_argument("--with_ffmpeg", action="store_true", help="also imageio-ffmpeg (an ffmpeg binary)")
    parser.add_argument("--with_landmarks", action="store_true",
                        help="also mediapipe (+ protobuf 4.25, attrs), in DEST/landmarks/: landmark scores in "
                             "evaluation")
    parser.add_argument("--bundle", type=Path, action="append", default=[],
                        help="a bundle (or any file) that travels too: counted in the total")
    parser.add_argument("--dry_run", action="store_true", help="print what would be downloaded, download nothing")
    return parser


def pip_command(packages, dest: Path):
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *TARGET,
            "-d", str(dest), *packages]


def project_bytes() -> int:
    """Bytes of the project's tracked files (what is copied to the server besides wheels and bundles)."""
    listed = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z"], capture_output=True)
    if listed.returncode != 0:
        return 0
    paths = [REPO_ROOT / name for name in listed.stdout.decode().split("\0") if name]
    return sum(path.stat().st_size for path in paths if path.is_file())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    downloads = [(NEEDED + (FFMPEG if args.with_ffmpeg else []), args.dest)]
    if args.with_landmarks:
        downloads.append((LANDMARKS, args.dest / LANDMARKS_SUBDIR))
    for packages, dest in downloads:
        print(("would download: " if args.dry_run else "downloading: ") + " ".join(packages) + f" -> {dest}")
        print(" ".join(pip_command(packages, dest)))
    if args.dry_run:
        return 0
    for packages, dest in downloads:
        dest.mkdir(parents=True, exist_ok=True)
        if subprocess.run(pip_command(packages, dest)).returncode != 0:
            print("error: pip could not download the wheels (is a package index reachable?)", file=sys.stderr)
            return 1
    wheels = sorted(wheel for _, dest in downloads for wheel in dest.glob("*.whl"))
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 1e6:8.1f} MB  {wheel.relative_to(args.dest)}")
    total = sum(wheel.stat().st_size for wheel in wheels)
    print(f"{total / 1e6:8.1f} MB  wheels in {args.dest}")
    carried = total + project_bytes() + sum(path.stat().st_size for path in args.bundle)
    verdict = "fits" if carried <= CARRY_LIMIT_BYTES else "does NOT fit"
    print(f"{carried / 1e6:8.1f} MB  with the project files{' and bundles' if args.bundle else ''}: {verdict} "
          f"in {CARRY_LIMIT_BYTES / 2 ** 20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
