"""benchmarks/gpu_check.sh in its CPU smoke mode, end to end, so the GPU check cannot rot
on machines without a GPU: every part runs (tiny width, seconds each), the CUDA tests
are reported as skipped, fp16 as not applicable, and results.json has every section
with numbers. The person is the bundled clip with a small random AVE encoder; its
"held-out" speech is the recording's first 0.48 s with those frames as the true video
(the only speech of the clip that has a true video), passed the way a user passes
heldout_a.wav and heldout_a_truth.mp4. The clip is cut to 24 frames, half held out:
SyncNet needs 11+ frames per split, and every training step counts on 2 cores.
Paths have spaces."""
import base64
import hashlib
import json
import math
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from benchmarks.gpu_check import PARTS_IN_ISSUE_ORDER, find_heldout
from data_utils.audio import load_audio
from data_utils.timebase import SAMPLES_PER_FRAME
from lipsync.core.errors import UserError
from lipsync.render.video_writer import write_wav
from tests.conftest import ffmpeg
from tests.training_helpers import cut_to_frames, person_with_ave_features

REPO_ROOT = Path(__file__).resolve().parent.parent
FRAMES = 24                      # of the clip's 100
VAL_FRACTION = 0.5               # 12 train and 12 held-out frames
HELDOUT_FRAMES = 12              # 0.48 s of speech and its true video (evaluation needs 10+)
AVE_WIDTH = 0.25                 # a small random AVE encoder: fast features
SMOKE_TIMEOUT_S = 300
EVALUATION_METRICS = ("mouth_psnr", "lmd", "opening_correlation", "opening_offset", "opening_ratio")


@pytest.fixture(scope="module")
def smoke(processed_clip, tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu check") / "a folder"
    person = person_with_ave_features(processed_clip, base, "talker", AVE_WIDTH)
    cut_to_frames(person.layout, FRAMES)
    audio = write_wav(base / "held out.wav",
                      load_audio(person.layout.audio_wav)[:HELDOUT_FRAMES * SAMPLES_PER_FRAME])
    truth = base / "held out_truth.mp4"
    ffmpeg("-framerate", 25, "-start_number", 0, "-i", person.layout.frames_dir / "%d.jpg",
           "-frames:v", HELDOUT_FRAMES, "-c:v", "libx264", "-crf", 12, "-pix_fmt", "yuv420p", truth)
    output = base / "check out"
    command = ["bash", REPO_ROOT / "benchmarks" / "gpu_check.sh", "talker", "--smoke",
               "--dataset_dir", person.root, "--heldout_audio", audio, "--truth_video", truth,
               "--val_fraction", VAL_FRACTION, "--output_dir", output, "--copy_results", base / "comes back"]
    finished = subprocess.run([str(part) for part in command], cwd=base, capture_output=True, text=True,
                              timeout=SMOKE_TIMEOUT_S)
    assert (output / "results.json").is_file(), finished.stdout[-3000:] + finished.stderr[-3000:]
    return finished, json.loads((output / "results.json").read_text()), output


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_smoke_check_runs_every_part_and_reports_numbers(smoke):
    finished, results, output = smoke
    parts = results["parts"]
    transcript = finished.stdout[-4000:] + finished.stderr[-2000:]
    assert tuple(parts) == PARTS_IN_ISSUE_ORDER and results["mode"] == "smoke"
    for name in ("cuda_tests", "throughput", "training", "inference"):
        assert parts[name]["status"] != "failed", (name, parts[name]["reason"], transcript)
    assert finished.returncode == (0 if results["all_passed"] else 1), transcript

    tests = parts["cuda_tests"]["figures"]["tests"]
    assert parts["cuda_tests"]["status"] == "skipped" and len(tests) >= 6
    assert all(test["outcome"] == "skipped" and "no CUDA device" in test["reason"] for test in tests.values())

    rows = parts["throughput"]["figures"]["rows"]
    assert sorted((row["model_size"], row["amp"]) for row in rows) == [("tiny", False), ("tiny", True)]
    assert all(is_number(row["samples_per_s"]) and row["hours_5min_200_epochs"] > 0 for row in rows)

    trained = parts["training"]["figures"]
    for stage in ("syncnet", "unet"):
        # the smoke limit (0.001 min) ends both 2-epoch runs after their first epoch
        assert trained[stage]["epochs"] == 1 and trained[stage]["stopped_by"] == "max_minutes", trained[stage]
        assert is_number(trained[stage]["samples_per_s"]) and Path(trained[stage]["checkpoint"]).is_file()
    assert trained["unet"]["use_syncnet"]
    evaluation = trained["evaluation"]
    assert evaluation["frames"] == HELDOUT_FRAMES and "against held out_truth.mp4" in evaluation["against"]
    assert all(is_number(evaluation["scores"][name]) for name in EVALUATION_METRICS), evaluation["scores"]
    readout = trained["audio_readout"]
    assert "failed" not in readout, readout
    assert all(is_number(readout[name]) for name in ("opening_correlation", "opening_offset", "opening_ratio")), readout

    served = parts["inference"]["figures"]
    end_to_end = served["end_to_end"]
    assert is_number(end_to_end["torch fp32"]["frames_per_second"])
    assert is_number(end_to_end["onnxruntime"]["frames_per_second"])
    assert end_to_end["torch fp16"]["frames_per_second"] is None and "not applicable" in end_to_end["torch fp16"]["note"]
    assert sorted(served["model_only"], key=int) == ["1", "4"]
    assert all(is_number(row["frames_per_second"]) for backends in served["model_only"].values()
               for row in backends.values())

    # bench_serve.py, when present, is only started (--help) in the smoke check
    serve_present = (REPO_ROOT / "benchmarks" / "bench_serve.py").is_file()
    assert parts["serve"]["status"] == ("skipped" if serve_present else "not present"), parts["serve"]
    table = (output / "results.md").read_text()
    assert "| part | status | seconds | note |" in table and "| cuda_tests | skipped |" in table
    assert "Read-out of the trained audio embedding (benchmarks/audio_readout.py): opening r " in table
    assert "| part | status | seconds | note |" in finished.stdout
    assert (output / "logs" / "train_unet.log").is_file()
    # --copy_results: what a lent machine's output folder brings back, three files
    copied = output.parent / "comes back"
    assert sorted(path.name for path in copied.iterdir()) == ["logs.tar.gz", "results.json", "results.md"]
    assert json.loads((copied / "results.json").read_text()) == results
    with tarfile.open(copied / "logs.tar.gz") as archive:
        names = archive.getnames()
    assert "logs/train_unet.log" in names and "evaluation/table.md" in names


def test_heldout_audio_and_its_truth_video_are_found_beside_the_dataset(tmp_path):
    (tmp_path / "heldout_a.wav").write_bytes(b"RIFF")
    assert find_heldout(tmp_path, None, None) == (tmp_path / "heldout_a.wav", None)
    (tmp_path / "heldout_a_truth.mp4").write_bytes(b"mp4")
    assert find_heldout(tmp_path, None, None) == (tmp_path / "heldout_a.wav", tmp_path / "heldout_a_truth.mp4")
    with pytest.raises(UserError, match="does not exist"):
        find_heldout(tmp_path, str(tmp_path / "other.wav"), None)


def test_a_step_past_its_share_ends_what_it_started_too(tmp_path, monkeypatch):
    # A part's command that starts others (torchrun's workers, bench_serve's server) must not leave
    # them holding the GPU when its time runs out.
    import os
    import sys
    import time

    from benchmarks import gpu_check_parts
    from benchmarks.gpu_check_parts import SMOKE, Check, PartFailed, run_step

    monkeypatch.setattr(gpu_check_parts, "MIN_PART_SECONDS", 1)
    check = Check("x", SMOKE, tmp_path, tmp_path / "out", None, None, 0.05)
    pid_file = tmp_path / "child.pid"
    starts_a_child = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
                      "'import time; time.sleep(120)']); open(sys.argv[1], 'w').write(str(child.pid)); "
                      "print('started', flush=True); time.sleep(120)")
    started = time.monotonic()
    with pytest.raises(PartFailed, match="stopped after 4 s"):
        run_step(check, "sleeper", [sys.executable, "-c", starts_a_child, pid_file], 4)
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    for _ in range(50):                                  # SIGKILL is delivered at once; reaping may lag
        try:
            os.kill(child, 0)
            if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                break
        except (ProcessLookupError, FileNotFoundError):     # gone, possibly between the two looks
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {child} is still running")
    assert "started" in (tmp_path / "out" / "logs" / "sleeper.log").read_text()


def test_serve_is_skipped_with_its_reason_where_the_webrtc_packages_are_missing(tmp_path, monkeypatch):
    # The GPU box has neither aiortc nor PyAV (too big to carry beside mediapipe): the part says so
    # and does not fail the check, instead of failing on bench_serve.py's first import.
    import importlib.util

    from benchmarks import gpu_check_parts
    from benchmarks.gpu_check_parts import GPU, Check

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "av" else found(name, *rest))
    figures = gpu_check_parts.serve(Check("x", GPU, tmp_path, tmp_path / "out", None, None, 0.05), 90)
    assert figures == {"skipped": "av not installed: live serving is not measured (pip install -r requirements.txt "
                                  "where a package index is reachable)"}
    assert not (tmp_path / "out" / "logs").exists()


# --------------------------------------------------------------------------- carried wheels

def write_wheel(folder: Path, name: str, version: str = "1.0") -> Path:
    """A minimal pure-Python wheel whose module ``name`` says which wheel it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"FROM = {name!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_landmark_wheels_reach_only_the_steps_that_measure_landmarks(tmp_path, monkeypatch):
    # mediapipe needs protobuf 4.25, which breaks the GPU box's onnx: gpu_check.sh installs the
    # landmark wheels (wheels/landmarks/, and mediapipe/protobuf/attrs left in a flat wheels/)
    # into a site of their own, and only steps run with landmarks=True see it.
    from benchmarks import gpu_check_parts
    from benchmarks.gpu_check_parts import LANDMARKS_SITE_ENV, SMOKE, Check, run_step

    wheels = tmp_path / "carried wheels"
    write_wheel(wheels, "mainprobe")
    write_wheel(wheels / "landmarks", "landmarkprobe")
    write_wheel(wheels, "attrs", "0.0.1")            # an older flat wheels/ folder's landmark wheel
    site, landmarks_site = tmp_path / "main site", tmp_path / "landmarks site"
    environment = {**os.environ, "LIPSYNC_WHEELS": str(wheels), "LIPSYNC_SITE": str(site),
                   "LIPSYNC_LANDMARKS_SITE": str(landmarks_site)}
    finished = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--help"], env=environment,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "--smoke" in finished.stdout
    assert {path.name for path in site.iterdir() if not path.name.endswith(".dist-info")} == {"mainprobe"}
    assert ({path.name for path in landmarks_site.iterdir() if not path.name.endswith(".dist-info")}
            == {"landmarkprobe", "attrs"})

    monkeypatch.setattr(gpu_check_parts, "MIN_PART_SECONDS", 1)
    monkeypatch.setenv(LANDMARKS_SITE_ENV, str(landmarks_site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    check = Check("x", SMOKE, tmp_path, tmp_path / "out", None, None, 0.05)
    probe = "import importlib.util as u; print([n for n in ('mainprobe', 'landmarkprobe') if u.find_spec(n)])"
    assert "['mainprobe', 'landmarkprobe']" in run_step(check, "with", [sys.executable, "-c", probe], 60,
                                                          landmarks=True)
    assert "['mainprobe']" in run_step(check, "without", [sys.executable, "-c", probe], 60)
