"""The dataset bundle (data_utils/bundle.py): pack the processed test clip, unpack it
elsewhere and get the same dataset back; refuse damaged or foreign bundles with one
line; skip a finished re-unpack; train from a crops-only bundle; and unpack + train
in a Python where mediapipe, librosa, soundfile, silero-vad and imageio-ffmpeg cannot
be imported and no ffmpeg is on PATH (the air-gapped GPU server)."""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from data_utils import audio, bundle, bundle_format, bundling, crop, crops_dataset, frame_decoder
from data_utils.crop_cache import JpegCrops
from data_utils.dataset import load_crop_boxes
from data_utils.ffmpeg import probe, video_packet_times
from data_utils.layout import DatasetLayout
from lipsync.core.errors import UserError
from data_utils.timebase import frame_count_for_samples
from tests.conftest import CLIP_FRAMES_25FPS, HELDOUT_WAV, cli_error_line, ffmpeg
from tests.training_helpers import make_small_dataset, person_with_ave_features

REPO_ROOT = Path(__file__).resolve().parent.parent
AVE_TEST_WIDTH = 0.125
OPTIONAL_PACKAGES = ("mediapipe", "librosa", "soundfile", "silero_vad", "imageio_ffmpeg")
# Frames decoded again must match preprocessing's JPEGs: identical where the decoder
# is the same FFmpeg build; within this of each other (mean absolute difference in
# 0..255 levels) where another decoder converts YUV to BGR with other rounding.
FRAME_TOLERANCE = 1.0
# The crops of a crops-only bundle went through H.264 (CRF 17, 4:4:4) and a second
# JPEG: they may differ from the dataset's own crops by this much, mean per pixel.
CROP_TOLERANCE = 2.5
CROP_MIN_PSNR_DB = 36.0
SMALL_FRAMES = 12          # 11 training frames and 1 held out: a tiny epoch is two CPU steps
TRAIN_ARGS = ("--asr", "ave", "--model_size", "tiny", "--batch_size", "8", "--num_workers", "0",
              "--device", "cpu", "--perceptual", "off", "--epochs", "1", "--quiet")


@pytest.fixture(scope="module")
def person(processed_clip, tmp_path_factory):
    """The processed clip with a (small, random) ave.pth and its real aud_ave.npy + aud_ave.json."""
    return person_with_ave_features(processed_clip, tmp_path_factory.mktemp("bundle"), "talker", AVE_TEST_WIDTH)


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def small(processed_clip, tmp_path_factory) -> Path:
    """The clip's first SMALL_FRAMES frames, with test features and a video of just those frames
    (made from the JPEGs), so that training on what a bundle of it unpacks to takes seconds."""
    root = make_small_dataset(processed_clip, tmp_path_factory.mktemp("small") / "talker", SMALL_FRAMES)
    layout = DatasetLayout(root)
    video = root / json.loads(layout.report.read_text())["video"]
    ffmpeg("-framerate", 25, "-start_number", 0, "-i", layout.frames_dir / "%d.jpg", "-frames:v", SMALL_FRAMES,
           "-c:v", "libx264", "-crf", 17, "-pix_fmt", "yuv420p", video)
    return root


@pytest.fixture(scope="module")
def packed(person):
    return bundle.main(["pack", str(person.root), "--quiet"])


@pytest.fixture(scope="module")
def crops_packed(person):
    return bundle.main(["pack", str(person.root), "--crops_only", "--quiet"])


def unpack_to(bundle_path, destination, *extra):
    return bundle.main(["unpack", str(bundle_path), "--output_dir", str(destination), "--quiet", *extra])


def read_jpegs(frames_dir: Path):
    import cv2

    names = sorted(frames_dir.iterdir(), key=lambda path: int(path.stem))
    return [path.name for path in names], np.stack([cv2.imread(str(path)) for path in names]).astype(np.int16)


def assert_same_frames(original_dir: Path, unpacked_dir: Path) -> None:
    """Same names 0..N-1, each frame closest to its own original (order), within tolerance."""
    names, original = read_jpegs(original_dir)
    unpacked_names, unpacked = read_jpegs(unpacked_dir)
    assert unpacked_names == names == [f"{index}.jpg" for index in range(CLIP_FRAMES_25FPS)]
    same = np.abs(unpacked - original).mean(axis=(1, 2, 3))
    shifted = np.abs(unpacked[1:] - original[:-1]).mean(axis=(1, 2, 3))
    assert same.max() <= FRAME_TOLERANCE, same.max()
    assert (same[1:] < shifted).all(), "a frame is closer to its predecessor than to itself: order changed"


# --------------------------------------------------------------------------- the mel filterbank without librosa

@pytest.mark.parametrize("sample_rate, n_fft, n_mels, fmin, fmax", [
    (audio.SAMPLE_RATE, audio.MEL_N_FFT, audio.MEL_BANDS, audio.MEL_FMIN, audio.MEL_FMAX),   # the AVE's
    (22050, 2048, 128, 0.0, 11025.0), (16000, 512, 40, 20.0, 8000.0), (44100, 4096, 256, 30.0, 16000.0)])
def test_numpy_slaney_mel_filterbank_equals_librosa(sample_rate, n_fft, n_mels, fmin, fmax):
    import librosa.filters

    ours = audio.slaney_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    theirs = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == theirs.shape == (n_mels, n_fft // 2 + 1) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert (ours.max(axis=1) > 0).all()          # no empty filter
    if n_fft == audio.MEL_N_FFT:
        np.testing.assert_allclose(audio._mel_basis(), theirs, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- pack and unpack

def test_pack_unpack_gives_back_the_same_dataset(person, packed, tmp_path, capsys):
    original = person.layout
    assert packed == original.root.parent / "talker.bundle.tar"
    with tarfile.open(packed) as tar:
        names = tar.getnames()
    assert names[0] == bundle_format.MANIFEST_MEMBER
    assert not any(name.startswith("full_body_img") or name.startswith("landmarks/") for name in names)

    result = unpack_to(packed, tmp_path / "talker")
    assert "dataset ready" in capsys.readouterr().out and result.decoder == "ffmpeg" and not result.skipped
    unpacked = DatasetLayout(tmp_path / "talker")
    report = json.loads(original.report.read_text())
    carried = ["crop_boxes.npy", "landmarks.npy", "face_found.npy", "aud.wav", "process_report.json",
               "aud_ave.npy", "ave.pth"]
    for name in carried:
        assert (unpacked.root / name).read_bytes() == (original.root / name).read_bytes(), name
    # The video travels without its sound (aud.wav is the sound), its picture packets untouched.
    video = unpacked.root / report["video"]
    assert probe(video).has_video and not probe(video).has_audio and probe(original.root / report["video"]).has_audio
    assert video_packet_times(video) == video_packet_times(original.root / report["video"])
    for name in ("crop_boxes.npy", "landmarks.npy", "face_found.npy", "aud_ave.npy"):
        np.testing.assert_array_equal(np.load(unpacked.root / name), np.load(original.root / name))
    assert unpacked.ave_encoder.stat().st_mtime_ns == original.ave_encoder.stat().st_mtime_ns
    # The feature metadata now names the unpacked encoder, with the same size|mtime stamp.
    before = json.loads(original.features("ave").with_suffix(".json").read_text())
    after = json.loads(unpacked.features("ave").with_suffix(".json").read_text())
    moved = {"encoder", "encoder_stamp"}
    assert {k: v for k, v in after.items() if k not in moved} == {k: v for k, v in before.items() if k not in moved}
    assert after["encoder"] == str(unpacked.ave_encoder.resolve())
    assert after["encoder_stamp"].split("|")[1:] == before["encoder_stamp"].split("|")[1:]
    assert after["encoder_stamp"].split("|")[0] == str(unpacked.ave_encoder.resolve())
    # landmarks/*.lms rebuilt from landmarks.npy, text for text
    lms = sorted(path.name for path in original.landmarks_dir.iterdir())
    assert sorted(path.name for path in unpacked.landmarks_dir.iterdir()) == lms
    assert all(unpacked.landmarks_dir.joinpath(name).read_text() == original.landmarks_dir.joinpath(name).read_text()
               for name in lms)
    assert_same_frames(original.frames_dir, unpacked.frames_dir)
    # The same FFmpeg decoded them for preprocessing: the very same JPEG files.
    assert all(unpacked.frame_path(index).read_bytes() == original.frame_path(index).read_bytes()
               for index in range(CLIP_FRAMES_25FPS))
    assert original.state.name not in os.listdir(unpacked.root)       # rebuilt stages are not carried
    assert sorted(os.listdir(unpacked.root)) == sorted(
        carried + [report["video"], "aud_ave.json", "full_body_img", "landmarks", bundling.UNPACKED_MARKER])


def test_frames_decoded_by_opencv_when_there_is_no_ffmpeg(person, packed, tmp_path, monkeypatch):
    def no_ffmpeg():
        raise UserError("ffmpeg was not found")

    monkeypatch.setattr(frame_decoder, "ffmpeg_binary", no_ffmpeg)
    result = bundling.unpack(packed, tmp_path / "talker", show_progress=False)
    assert result.decoder == "opencv"
    assert_same_frames(person.layout.frames_dir, DatasetLayout(tmp_path / "talker").frames_dir)


def test_re_unpack_skips_and_an_other_folder_is_not_overwritten(person, packed, tmp_path, capsys):
    destination = tmp_path / "talker"
    unpack_to(packed, destination)
    marker = destination / bundling.UNPACKED_MARKER
    stamp = marker.stat().st_mtime_ns
    capsys.readouterr()
    result = unpack_to(packed, destination)
    assert result.skipped and "already unpacked" in capsys.readouterr().out
    assert marker.stat().st_mtime_ns == stamp
    # A folder that did not come from this bundle (here: the preprocessed original) is kept ...
    line = cli_error_line(bundle.main, capsys, ["unpack", str(packed), "--output_dir", str(person.root)])
    assert f"{person.root} already exists and was not unpacked from talker.bundle.tar" in line and "--force" in line
    # ... unless --force: then it is replaced as a whole.
    shutil.rmtree(destination / "landmarks")
    (destination / "leftover.txt").write_text("old")
    unpack_to(packed, destination, "--force")
    assert not (destination / "leftover.txt").exists() and (destination / "landmarks" / "0.lms").is_file()


def test_an_interrupted_unpack_leaves_no_dataset(packed, tmp_path, monkeypatch):
    destination = tmp_path / "talker"
    real_write = bundling.write_frame_jpeg
    written = []

    def write_then_stop(path, frame):
        if len(written) == 30:
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, frame)

    monkeypatch.setattr(bundling, "write_frame_jpeg", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        bundling.unpack(packed, destination, show_progress=False)
    assert not destination.exists() and written           # nothing that looks like a dataset
    monkeypatch.setattr(bundling, "write_frame_jpeg", real_write)
    result = bundling.unpack(packed, destination, show_progress=False)
    assert not result.skipped and len(os.listdir(destination / "full_body_img")) == CLIP_FRAMES_25FPS


def test_pack_names_the_fix_for_an_unprocessed_folder(tmp_path, capsys):
    raw = tmp_path / "May"
    raw.mkdir()
    line = cli_error_line(bundle.main, capsys, ["pack", str(raw)])
    assert line == (f"error: {raw} is not processed (no crop_boxes.npy) — run: python data_utils/process.py "
                    f"--input_video {raw / 'May.mp4'} --output_dir {raw}")
    line = cli_error_line(bundle.main, capsys, ["pack", str(tmp_path / "nobody")])
    assert "does not exist" in line and "data_utils/process.py" in line


# --------------------------------------------------------------------------- damaged and foreign bundles

def member_data_offset(bundle_path: Path, member: str) -> int:
    with tarfile.open(bundle_path) as tar:
        return tar.getmember(member).offset_data


def flipped(source: Path, target: Path, offset: int) -> Path:
    data = bytearray(source.read_bytes())
    data[offset] ^= 0x01
    target.write_bytes(bytes(data))
    return target


def tar_with(target: Path, members) -> Path:
    """A tar holding ``members``: (TarInfo, bytes or None) pairs."""
    with tarfile.open(target, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return target


def regular(name: str, data: bytes) -> tuple:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_damaged_bundles_are_refused_with_one_line(packed, tmp_path, capsys):
    destination = tmp_path / "out" / "talker"
    wav_offset = member_data_offset(packed, "aud.wav.xz") + 1000
    video_offset = member_data_offset(packed, json.loads(tarfile.open(packed).extractfile(
        bundle_format.MANIFEST_MEMBER).read())["video"]) + 5000
    manifest_offset = member_data_offset(packed, bundle_format.MANIFEST_MEMBER) + 200
    size = packed.stat().st_size
    truncated = tmp_path / "truncated.bundle.tar"
    truncated.write_bytes(packed.read_bytes()[:size // 2])
    cases = {
        "flipped byte in aud.wav.xz": (flipped(packed, tmp_path / "a.tar", wav_offset),
                                       "is damaged (aud.wav.xz fails its checksum)"),
        "flipped byte in the video": (flipped(packed, tmp_path / "v.tar", video_offset), "fails its checksum"),
        "flipped byte in the manifest": (flipped(packed, tmp_path / "m.tar", manifest_offset), "is damaged"),
        "flipped byte in a header": (flipped(packed, tmp_path / "h.tar", member_data_offset(packed, "aud.wav.xz")
                                             - 512 + 10), "is damaged"),
        "truncated": (truncated, "truncated"),
        "not a tar": (tmp_path / "notes.bundle.tar", "is not a dataset bundle (not a readable tar file"),
        "foreign tar": (tar_with(tmp_path / "photos.tar", [regular("holiday.jpg", b"\xff\xd8jpeg")]),
                        "is not a dataset bundle (no manifest.json inside)"),
    }
    (tmp_path / "notes.bundle.tar").write_text("shopping list\n")
    for case, (bad, expected) in cases.items():
        line = cli_error_line(bundle.main, capsys, ["unpack", str(bad), "--output_dir", str(destination)])
        assert expected in line, (case, line)
        assert not destination.exists() and not any(destination.parent.glob(".*partial*")), case


def test_unsafe_members_are_refused_and_nothing_is_written_outside(packed, tmp_path, capsys):
    destination = tmp_path / "deep" / "out" / "talker"
    with tarfile.open(packed) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    link = tarfile.TarInfo("evil_link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    device = tarfile.TarInfo("evil_device")
    device.type = tarfile.CHRTYPE
    cases = {
        "../escape.txt": ([regular("../escape.txt", b"escaped")], "points outside the dataset folder"),
        "/tmp absolute": ([regular(str(tmp_path / "absolute.txt"), b"absolute")], "has an absolute path"),
        "symlink": ([(link, None)], "is a symbolic link, not a regular file"),
        "device": ([(device, None)], "is a device, not a regular file"),
        "unlisted": ([regular("extra.npy", b"not listed")], "'extra.npy' is not in its manifest"),
    }
    for case, (extra, expected) in cases.items():
        bad = tar_with(tmp_path / f"{len(os.listdir(tmp_path))}.bundle.tar", members + extra)
        line = cli_error_line(bundle.main, capsys, ["unpack", str(bad), "--output_dir", str(destination)])
        assert expected in line and "refusing to unpack it" in line, (case, line)
    assert not (tmp_path / "deep").exists()
    assert not (tmp_path / "deep" / "out" / "escape.txt").exists() and not (tmp_path / "absolute.txt").exists()
    # A manifest that names a file outside the folder is refused even with a valid checksum.
    manifest = json.loads(members[0][1])
    manifest["files"][0]["path"] = "../../escape.mp4"
    hostile = [regular(bundle_format.MANIFEST_MEMBER, json.dumps(bundle_format.seal(manifest)).encode())] + members[1:]
    line = cli_error_line(bundle.main, capsys, ["unpack", str(tar_with(tmp_path / "hostile.tar", hostile)),
                                                "--output_dir", str(destination)])
    assert "lists files outside a dataset folder" in line
    # A newer format version is named as such.
    manifest = json.loads(members[0][1])
    manifest["version"] = bundle_format.BUNDLE_VERSION + 1
    newer = [regular(bundle_format.MANIFEST_MEMBER, json.dumps(bundle_format.seal(manifest)).encode())] + members[1:]
    line = cli_error_line(bundle.main, capsys, ["unpack", str(tar_with(tmp_path / "newer.tar", newer)),
                                                "--output_dir", str(destination)])
    assert f"bundle format version {bundle_format.BUNDLE_VERSION + 1}" in line


# --------------------------------------------------------------------------- crops only

def test_crops_only_bundle_is_a_dataset_of_crops(person, crops_packed, tmp_path):
    assert crops_packed.name == "talker.crops.bundle.tar"
    result = unpack_to(crops_packed, tmp_path / "talker")
    assert result.crops_only
    original, unpacked = person.layout, DatasetLayout(tmp_path / "talker")
    boxes = load_crop_boxes(original)
    unpacked_boxes = load_crop_boxes(unpacked)
    assert (unpacked_boxes == [0, 0, crop.CROP_SIZE, crop.CROP_SIZE]).all() and len(unpacked_boxes) == len(boxes)
    # Landmarks in crop pixels, by the transform cut_crop applies ...
    landmarks = np.load(original.landmarks_array)
    mapped = np.load(unpacked.landmarks_array)
    assert mapped.shape == landmarks.shape and mapped.dtype == np.float32
    matrix = crop.frame_to_crop_matrix(boxes[7])
    np.testing.assert_allclose(mapped[7], landmarks[7] @ matrix[:, :2].T + matrix[:, 2], atol=1e-3)
    # ... checked on the pixels: the crop of a frame with a dot at a landmark has the dot at the mapped point.
    frame = np.zeros((512, 512, 3), np.uint8)
    x, y = np.round(landmarks[7, crop.MEDIAPIPE.nose_tip]).astype(int)
    frame[y - 1:y + 2, x - 1:x + 2] = 255
    dot = crop.cut_crop(frame, boxes[7])[..., 0].astype(float)
    rows, cols = np.indices(dot.shape)
    centre = np.array([(cols * dot).sum(), (rows * dot).sum()]) / dot.sum()
    expected = matrix[:, :2] @ np.array([x, y], dtype=float) + matrix[:, 2]
    assert np.abs(centre - expected).max() < 0.6, (centre, expected)
    # The training crops of the unpacked dataset are the original training crops, through H.264 and JPEG.
    ours, theirs = JpegCrops(unpacked, unpacked_boxes), JpegCrops(original, boxes)
    for index in (0, 50, 99):
        assert ours[index].shape == (crop.CROP_SIZE, crop.CROP_SIZE, 3)
        difference = ours[index].astype(float) - theirs[index].astype(float)
        assert np.abs(difference).mean() < CROP_TOLERANCE
        assert 10 * np.log10(255 ** 2 / (difference ** 2).mean()) > CROP_MIN_PSNR_DB
    np.testing.assert_array_equal(np.load(unpacked.face_found), np.load(original.face_found))
    for name in ("aud.wav", "aud_ave.npy", "ave.pth"):
        assert (unpacked.root / name).read_bytes() == (original.root / name).read_bytes(), name
    report = json.loads(unpacked.report.read_text())
    assert report["crops_only"]["frame_size"] == [crop.CROP_SIZE, crop.CROP_SIZE]
    assert report["video"] == "talker" + crops_dataset.CROPS_VIDEO_SUFFIX
    assert (unpacked.root / report["video"]).is_file() and not (unpacked.root / "talker_25fps.mp4").exists()


def test_crops_only_bundle_trains_one_tiny_epoch(small, tmp_path):
    import train_328

    crops = bundle.main(["pack", str(small), "--crops_only", "--output", str(tmp_path / "small.tar"), "--quiet"])
    unpack_to(crops, tmp_path / "talker")
    train_328.main(["--dataset_dir", str(tmp_path / "talker"), "--save_dir", str(tmp_path / "checkpoint"),
                    *TRAIN_ARGS])
    assert (tmp_path / "checkpoint" / "latest.pth").is_file()


# --------------------------------------------------------------------------- the GPU server: no optional packages

BLOCKER = '''\
"""Make the optional packages unimportable, as on a machine where they are not installed:
a None entry in sys.modules makes ``import X`` raise ModuleNotFoundError and
importlib.util.find_spec("X") return None."""
import sys

for name in {names!r}:
    sys.modules[name] = None
'''

CHECK_BLOCKED = textwrap.dedent('''\
    import importlib, importlib.util, sys
    sys.path.insert(0, {repo!r})
    for name in {names!r}:
        assert importlib.util.find_spec(name) is None, name
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise AssertionError(name + " imported")
    from data_utils.ffmpeg import ffmpeg_binary
    from lipsync.core.errors import UserError
    try:
        print("ffmpeg at", ffmpeg_binary())
    except UserError:
        print("no ffmpeg")
    import wave
    import numpy as np
    from data_utils.audio import melspectrogram
    with wave.open(sys.argv[1]) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2") / 32768.0
    mel = melspectrogram(samples)
    print("mel", mel.shape, float(mel.min()), float(mel.max()))
''')


def blocked_environment(tmp_path: Path) -> dict:
    site = tmp_path / "blocked_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(names=OPTIONAL_PACKAGES))
    env = {key: value for key, value in os.environ.items() if key not in ("LIPSYNC_FFMPEG", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    env["OMP_NUM_THREADS"] = "1"          # tiny models: threads only contend with other processes
    env["PATH"] = os.pathsep.join(folder for folder in os.environ.get("PATH", "").split(os.pathsep)
                                  if folder and not os.access(Path(folder) / "ffmpeg", os.X_OK))
    return env


def test_unpack_and_train_without_optional_packages_or_ffmpeg(small, tmp_path):
    env = blocked_environment(tmp_path)
    wav = DatasetLayout(small).audio_wav
    check = subprocess.run([sys.executable, "-c", CHECK_BLOCKED.format(repo=str(REPO_ROOT), names=OPTIONAL_PACKAGES),
                            str(wav)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "no ffmpeg" in check.stdout
    assert f"mel {audio.melspectrogram(audio.load_audio(wav)).shape}" in check.stdout

    packed_small = bundle.main(["pack", str(small), "--output", str(tmp_path / "small.bundle.tar"), "--quiet"])
    unpacking = subprocess.run([sys.executable, str(REPO_ROOT / "data_utils" / "bundle.py"), "unpack",
                                str(packed_small), "--quiet"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert unpacking.returncode == 0, unpacking.stderr
    dataset = tmp_path / "dataset" / "talker"
    assert f"dataset ready: {Path('dataset') / 'talker'}" in unpacking.stdout
    assert "decoded by opencv" in unpacking.stdout
    assert sorted(int(path.stem) for path in DatasetLayout(dataset).frames_dir.iterdir()) == list(range(SMALL_FRAMES))
    training = subprocess.run([sys.executable, str(REPO_ROOT / "train_328.py"), "--dataset_dir", str(dataset),
                               "--save_dir", str(tmp_path / "checkpoint"), *TRAIN_ARGS],
                              env=env, capture_output=True, text=True, cwd=tmp_path)
    assert training.returncode == 0, training.stderr[-3000:]
    assert (tmp_path / "checkpoint" / "latest.pth").is_file()


def test_inference_and_evaluation_without_optional_packages_or_ffmpeg(person, tmp_path):
    """The GPU server's setup: mp4 by OpenCV with the sound beside it, energy gate, no landmark scores."""
    import cv2
    import torch

    from models.unet_328 import WIDTHS, LipSyncUNet
    from tests.training_helpers import save_tiny_unet_checkpoint

    env = blocked_environment(tmp_path)
    torch.manual_seed(0)
    save_tiny_unet_checkpoint(LipSyncUNet("ave", (32, 16, 16), WIDTHS["tiny"]), person, "talker", 1)
    roots = ["--dataset_root", str(person.dataset_root), "--checkpoint_root", str(person.checkpoint_root)]
    output = tmp_path / "result" / "spoken.mp4"
    inference = subprocess.run([sys.executable, str(REPO_ROOT / "inference_328.py"), "--name", "talker",
                                "--audio_path", str(HELDOUT_WAV), "--device", "cpu", "--no_progress",
                                "--output", str(output), *roots], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert inference.returncode == 0, inference.stderr[-3000:]
    assert "no ffmpeg here" in inference.stderr and "energy gate" in inference.stderr
    capture = cv2.VideoCapture(str(output))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert frames == frame_count_for_samples(len(audio.load_audio(HELDOUT_WAV)))
    np.testing.assert_allclose(audio.load_audio(output.with_suffix(".wav")), audio.load_audio(HELDOUT_WAV),
                               atol=1 / 32768)
    evaluation = subprocess.run([sys.executable, str(REPO_ROOT / "evaluate_328.py"), "--name", "talker",
                                 "--device", "cpu", "--checkpoint", "1", "--val_fraction", "0.2",
                                 "--dataset_dir", str(person.root),
                                 "--checkpoint_dir", str(person.checkpoint_root / "talker")],
                                env=env, capture_output=True, text=True, cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "mediapipe is not installed" in evaluation.stderr + evaluation.stdout
    assert "mouth" in evaluation.stdout.lower()


# --------------------------------------------------------------------------- the wheels for the server

def test_download_wheels_names_what_the_server_lacks_without_downloading(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "download_wheels.py"), "--dry_run",
                             "--dest", str(tmp_path / "wheels")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    command = result.stdout
    for flag in ("download", "--no-deps", "--only-binary=:all:", "--python-version 3.12", "--implementation cp",
                 "--platform manylinux_2_28_x86_64", "--platform manylinux2014_x86_64", "silero-vad=="):
        assert flag in command, flag
    for not_needed in ("mediapipe", "librosa", "soundfile"):
        assert not_needed not in command.split("would download:")[-1]
    assert not (tmp_path / "wheels").exists()


def test_landmark_wheels_bring_what_mediapipe_needs_into_a_folder_of_their_own(tmp_path):
    # mediapipe needs protobuf 4.25 and attrs; protobuf 4.25 beside the server's onnx breaks it, so
    # they go to wheels/landmarks/, which benchmarks/gpu_check.sh installs apart.
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "download_wheels.py"), "--dry_run",
                             "--with_landmarks", "--dest", str(tmp_path / "wheels")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    plans = [line.split("would download: ")[1].split(" -> ") for line in result.stdout.splitlines()
             if line.startswith("would download: ")]
    wanted = {Path(dest): packages.split() for packages, dest in plans}
    assert wanted == {tmp_path / "wheels": ["silero-vad==6.2.3"],
                      tmp_path / "wheels" / "landmarks": ["mediapipe==0.10.21", "protobuf==4.25.8", "attrs==26.1.0"]}
    assert f"-d {tmp_path / 'wheels' / 'landmarks'} mediapipe==0.10.21" in result.stdout
