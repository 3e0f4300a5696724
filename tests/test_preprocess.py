"""Preprocessing: recording -> dataset folder (issue: preprocessing)."""
import json
import shutil

import cv2
import numpy as np
import pytest
import soundfile

from data_utils import crop, preprocess
from data_utils.ffmpeg import is_constant_frame_rate, probe
from data_utils.landmarks import MediapipeLandmarker, parse_lms
from data_utils.process import main as process_main
from data_utils.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from tests.conftest import CLIP, CLIP_FRAMES_25FPS, CLIP_TRUTH, HELDOUT_WAV, ffmpeg, cli_error_line


def user_error_line(capsys, argv) -> str:
    return cli_error_line(process_main, capsys, argv)


def make_25fps_clip(target, video_filter="fps=25", extra=()):
    ffmpeg("-i", CLIP, "-vf", video_filter, "-c:v", "libx264", "-crf", "18", "-c:a", "aac", *extra, target)
    return target


# ---------------------------------------------------------------------------- the main path

def test_clip_becomes_a_complete_dataset(processed_clip):
    root = processed_clip
    report = json.loads((root / "process_report.json").read_text())
    converted = root / "talker_25fps.mp4"
    assert converted.exists(), "a 30 fps source must be converted"
    assert report["converted_to_25fps"] and report["video"] == converted.name
    frames = report["frames"]
    assert frames == CLIP_FRAMES_25FPS
    info = probe(converted)
    assert abs(frames - info.duration * FPS) <= 1
    assert is_constant_frame_rate(converted, FPS)

    audio_info = soundfile.info(str(root / "aud.wav"))
    assert (audio_info.samplerate, audio_info.channels, audio_info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    assert audio_info.frames == frames * SAMPLES_PER_FRAME

    jpgs = sorted(path.name for path in (root / "full_body_img").iterdir())
    assert jpgs == sorted(f"{index}.jpg" for index in range(frames))
    assert cv2.imread(str(root / "full_body_img" / "57.jpg")).shape == (512, 512, 3)

    landmarks = np.load(root / "landmarks.npy")
    assert landmarks.shape == (frames, 478, 2)
    lms_files = sorted((root / "landmarks").iterdir())
    assert len(lms_files) == frames
    from_text = parse_lms((root / "landmarks" / "42.lms").read_text())
    assert from_text.shape == (478, 2)
    np.testing.assert_allclose(from_text, landmarks[42], atol=0.006)

    boxes = np.load(root / "crop_boxes.npy")
    assert boxes.shape == (frames, 4) and boxes.dtype == np.int32
    np.testing.assert_array_equal(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert report["missing_face"] == {"count": 0, "frames": [], "ranges_s": []}
    assert set(report["stage_seconds"]) == {"video", "frames", "audio", "crops"}
    assert 150 < report["face_width_px"]["median"] < 250


def test_landmarks_match_the_true_lip_positions(processed_clip):
    truth = np.load(CLIP_TRUTH)
    landmarks = np.load(processed_clip / "landmarks.npy")
    error = np.linalg.norm(landmarks[:, truth["lips_idx"]] - truth["lips_xy"], axis=-1)
    assert error.mean() < 3.0, f"mean lip landmark error {error.mean():.2f} px"
    # The mouth opening the detector sees follows the true jaw motion.
    gap = landmarks[:, crop.MEDIAPIPE.lower_inner_lip, 1] - landmarks[:, crop.MEDIAPIPE.upper_inner_lip, 1]
    assert np.corrcoef(gap, truth["jaw_open"])[0, 1] > 0.8


def test_audio_is_aligned_with_the_source(processed_clip):
    """aud.wav starts where the recording's sound starts (no offset from conversion)."""
    from data_utils.ffmpeg import ffmpeg_binary
    import subprocess

    decoded = subprocess.run([ffmpeg_binary(), "-loglevel", "error", "-i", str(CLIP), "-f", "f32le",
                              "-ac", "1", "-ar", str(SAMPLE_RATE), "-"], capture_output=True, check=True)
    source = np.frombuffer(decoded.stdout, np.float32)
    extracted, _ = soundfile.read(str(processed_clip / "aud.wav"), dtype="float32")
    assert abs(best_lag(source, extracted, range(-160, 161, 8))) <= 8, "audio shifted by more than 0.5 ms"


def best_lag(source: np.ndarray, extracted: np.ndarray, lags) -> int:
    """The shift (samples) of ``extracted`` against ``source`` that lines their speech up best."""
    span = slice(SAMPLE_RATE // 2, SAMPLE_RATE * 3)
    scores = [np.dot(source[span], np.roll(extracted, -lag)[span]) for lag in lags]
    return list(lags)[int(np.argmax(scores))]


AV_GAP_SECONDS = 0.2           # 5 frames: what a camera or editor can leave between the two streams


@pytest.mark.parametrize("late, source_fps", [("audio", 25), ("video", 25), ("audio", 30), ("video", 30)])
def test_audio_that_starts_apart_from_the_picture_stays_in_sync(tmp_path, late, source_fps):
    """aud.wav is on the frames' clock even when the streams start at different times.

    Sample k * 640 of aud.wav must be the sound a player plays with frame k: a
    decoder that reads the audio from its first sample would put it 0.2 s off.
    """
    from data_utils.audio import load_audio

    source = load_audio(CLIP)
    picture = make_25fps_clip(tmp_path / "picture.mp4") if source_fps == 25 else CLIP
    gapped = tmp_path / f"{late}_late.mp4"
    offset = ["-itsoffset", str(AV_GAP_SECONDS)]
    ffmpeg(*(offset if late == "video" else []), "-i", picture, *(offset if late == "audio" else []), "-i", CLIP,
           "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", gapped)
    report = preprocess.process_video(gapped, show_progress=False)
    assert report["converted_to_25fps"] == (source_fps != 25)
    extracted, _ = soundfile.read(str(tmp_path / "aud.wav"), dtype="float32")
    gap_samples = int(AV_GAP_SECONDS * SAMPLE_RATE)
    # The source's frame 0 is the dataset's frame 0, converted or not: a late picture is never
    # padded with copies of its first frame, the sound before it is dropped instead.
    expected = gap_samples if late == "audio" else -gap_samples
    assert abs(best_lag(source, extracted, range(-2 * gap_samples, 2 * gap_samples + 1, 16)) - expected) <= 16
    assert abs(report["audio"]["audio_start_offset_ms"]) > 100
    picture_seconds = probe(picture).duration
    assert abs(report["frames"] - picture_seconds * FPS) <= 1, (report["frames"], picture_seconds)


def test_crop_boxes_are_smoothed_but_follow_the_face(processed_clip):
    landmarks = np.load(processed_clip / "landmarks.npy")
    raw = crop.raw_crop_boxes(landmarks)
    smoothed = np.load(processed_clip / "crop_boxes.npy").astype(float)
    smoothed_rows = np.stack([(smoothed[:, 0] + smoothed[:, 2]) / 2, smoothed[:, 1],
                              smoothed[:, 2] - smoothed[:, 0]], axis=1)
    jitter_raw = np.abs(np.diff(raw, n=2, axis=0)).mean()
    jitter_smoothed = np.abs(np.diff(smoothed_rows, n=2, axis=0)).mean()
    assert jitter_smoothed < 0.6 * jitter_raw
    assert np.abs(smoothed_rows - raw).max() < 4.0


def test_cli_short_and_long_forms_with_spaces_and_non_ascii(tmp_path, capsys):
    folder = tmp_path / "my clips" / "Zoë Ünal"
    folder.mkdir(parents=True)
    video = folder / "Zoë Ünal.mp4"
    shutil.copy(CLIP, video)
    report = process_main([str(video), "--quiet"])
    assert report["frames"] == CLIP_FRAMES_25FPS
    assert (folder / "Zoë Ünal_25fps.mp4").exists() and (folder / "full_body_img" / "99.jpg").exists()
    assert "dataset ready" in capsys.readouterr().out

    elsewhere = tmp_path / "out dir"
    report = process_main(["--input_video", str(video), "--output_dir", str(elsewhere), "--quiet"])
    assert (elsewhere / "aud.wav").exists() and (elsewhere / "landmarks" / "99.lms").exists()


# ---------------------------------------------------------------------------- resumable

def recorded_stages(root, video_name=None):
    """The finished stages .process_state.json records for the folder's recording."""
    sources = json.loads((root / ".process_state.json").read_text())["sources"]
    video_name = video_name or f"{root.name}.mp4"
    matching = [record for record in sources.values() if record["source"]["file"] == video_name]
    assert len(matching) == 1, sources.keys()
    return matching[0]["stages"]


def test_rerun_skips_finished_stages(processed_copy, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for stage_function in ("convert_to_25fps", "extract_frames_and_landmarks", "extract_audio",
                           "compute_crop_boxes"):
        monkeypatch.setattr(preprocess, stage_function, must_not_run)
    report = preprocess.process_video(processed_copy / "talker.mp4", show_progress=False)
    assert report["frames"] == CLIP_FRAMES_25FPS


def test_force_redoes_every_stage(processed_copy):
    wav = processed_copy / "aud.wav"
    before = wav.stat().st_mtime_ns
    state_before = recorded_stages(processed_copy)
    report = preprocess.process_video(processed_copy / "talker.mp4", force=True, show_progress=False)
    assert wav.stat().st_mtime_ns != before
    assert report["frames"] == CLIP_FRAMES_25FPS
    assert set(recorded_stages(processed_copy)) == set(state_before)


def test_interrupted_stage_is_redone_and_the_result_is_complete(processed_clip, tmp_path, monkeypatch):
    root = tmp_path / "talker"
    root.mkdir()
    shutil.copy(CLIP, root / "talker.mp4")
    original_detect = MediapipeLandmarker.detect
    calls = {"count": 0}

    def detect_then_interrupt(self, frame):
        calls["count"] += 1
        if calls["count"] == 50:
            raise KeyboardInterrupt
        return original_detect(self, frame)

    monkeypatch.setattr(MediapipeLandmarker, "detect", detect_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        preprocess.process_video(root / "talker.mp4", show_progress=False)
    # Nothing half-made is left under a final name, and the state says frames are not done.
    assert not (root / "full_body_img").exists() and not (root / "landmarks").exists()
    assert set(recorded_stages(root)) == {"video"}
    # A hard kill leaves its temporary folder behind: the re-run must not be confused by it.
    (root / ".full_body_img.partial").mkdir()
    (root / ".full_body_img.partial" / "0.jpg").write_bytes(b"junk")

    monkeypatch.setattr(MediapipeLandmarker, "detect", original_detect)
    monkeypatch.setattr(preprocess, "convert_to_25fps",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("video stage redone")))
    report = preprocess.process_video(root / "talker.mp4", show_progress=False)
    assert report["frames"] == CLIP_FRAMES_25FPS
    assert len(list((root / "full_body_img").iterdir())) == CLIP_FRAMES_25FPS
    assert not (root / ".full_body_img.partial").exists()
    np.testing.assert_allclose(np.load(root / "landmarks.npy"), np.load(processed_clip / "landmarks.npy"),
                               atol=1e-3)
    np.testing.assert_array_equal(np.load(root / "crop_boxes.npy"), np.load(processed_clip / "crop_boxes.npy"))


def test_changed_source_is_processed_again(processed_copy):
    video = processed_copy / "talker.mp4"
    make_25fps_clip(processed_copy / "other.mp4", "fps=25,hflip")
    shutil.move(processed_copy / "other.mp4", video)
    report = preprocess.process_video(video, show_progress=False)
    assert not report["converted_to_25fps"]
    assert not (processed_copy / "talker_25fps.mp4").exists()
    flipped = np.load(processed_copy / "landmarks.npy")
    assert flipped.shape[0] == CLIP_FRAMES_25FPS


# ---------------------------------------------------------------------------- frame rates, rotation

def test_constant_25fps_source_is_used_as_is(tmp_path):
    video = make_25fps_clip(tmp_path / "cfr.mp4")
    report = preprocess.process_video(video, show_progress=False)
    assert not report["converted_to_25fps"] and report["video"] == "cfr.mp4"
    assert not (tmp_path / "cfr_25fps.mp4").exists()
    assert report["frames"] == CLIP_FRAMES_25FPS


def test_variable_frame_rate_source_keeps_its_timing(tmp_path):
    """Frames come from their timestamps, not their count: a VFR phone video stays in sync."""
    video = tmp_path / "vfr.mp4"
    # 30 fps for the first 2 s, then only every third frame (10 fps), timestamps kept.
    ffmpeg("-i", CLIP, "-vf", "select='lt(t\\,2)+not(mod(n\\,3))'", "-fps_mode", "vfr",
           "-c:v", "libx264", "-crf", "18", "-c:a", "copy", video)
    assert not is_constant_frame_rate(video, 30)
    report = preprocess.process_video(video, show_progress=False)
    assert report["converted_to_25fps"]
    assert abs(report["frames"] - probe(video).duration * FPS) <= 1
    truth = np.load(CLIP_TRUTH)
    landmarks = np.load(tmp_path / "landmarks.npy")
    frames = min(len(landmarks), len(truth["lips_xy"]))
    error = np.linalg.norm(landmarks[:frames, truth["lips_idx"]] - truth["lips_xy"][:frames], axis=-1)
    # Up to 1/20 s of held frames in the 10 fps part; counting frames instead of
    # reading timestamps would put the last second 0.7 s off.
    assert error[75:].mean() < 4.0, error[75:].mean()


def test_rotation_metadata_is_applied(tmp_path):
    sideways = tmp_path / "sideways.mp4"
    ffmpeg("-i", CLIP, "-vf", "crop=512:384:0:64,transpose=1", "-c:v", "libx264", "-c:a", "copy", sideways)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", sideways, "-c", "copy", rotated)
    assert probe(rotated).rotation == 90
    report = preprocess.process_video(rotated, show_progress=False)
    assert report["converted_to_25fps"]
    assert probe(tmp_path / "rotated_25fps.mp4").rotation == 0
    frame = cv2.imread(str(tmp_path / "full_body_img" / "0.jpg"))
    assert frame.shape == (384, 512, 3)
    landmarks = np.load(tmp_path / "landmarks.npy")
    # Upright face: the nose is above the mouth.
    assert (landmarks[:, crop.MEDIAPIPE.nose_tip, 1] < landmarks[:, crop.MEDIAPIPE.upper_inner_lip, 1]).all()
    assert report["missing_face"]["count"] == 0


# ---------------------------------------------------------------------------- missing faces

def test_a_few_faceless_frames_are_interpolated_and_reported(tmp_path):
    video = make_25fps_clip(tmp_path / "gap.mp4",
                            "fps=25,drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(n\\,40\\,42)'")
    report = preprocess.process_video(video, show_progress=False)
    assert report["missing_face"]["frames"] == [40, 41, 42]
    assert report["missing_face"]["ranges_s"] == [[1.6, 1.72]]
    found = np.load(tmp_path / "face_found.npy")
    assert found.dtype == bool and np.flatnonzero(~found).tolist() == [40, 41, 42]
    landmarks = np.load(tmp_path / "landmarks.npy")
    expected = landmarks[39] + (landmarks[43] - landmarks[39]) * 0.5
    np.testing.assert_allclose(landmarks[41], expected, atol=0.01)


def test_too_many_faceless_frames_stop_with_their_times(tmp_path, capsys):
    video = make_25fps_clip(tmp_path / "gap.mp4",
                            "fps=25,drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(n\\,40\\,49)'")
    line = user_error_line(capsys, [str(video), "--quiet"])
    assert str(video) in line and "no face found in 10 of 100 frames" in line
    assert "0:01.60-0:02.00" in line
    assert not (tmp_path / "full_body_img").exists()
    # A user who knows better can raise the limits.
    report = process_main([str(video), "--quiet", "--max_missing_fraction", "0.2"])
    assert report["missing_face"]["count"] == 10


# ---------------------------------------------------------------------------- bad input

def test_missing_file(tmp_path, capsys):
    line = user_error_line(capsys, [str(tmp_path / "nobody.mp4")])
    assert "nobody.mp4 does not exist" in line


def test_text_file_named_mp4(tmp_path, capsys):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n")
    line = user_error_line(capsys, [str(fake)])
    assert "notes.mp4 is a text file, not a readable video" in line
    binary = tmp_path / "noise.mp4"
    binary.write_bytes(bytes(range(256)) * 8)
    line = user_error_line(capsys, [str(binary)])
    assert "noise.mp4" in line and "not a readable video" in line


def test_video_without_audio(tmp_path, capsys):
    silent = tmp_path / "mute.mp4"
    ffmpeg("-i", CLIP, "-an", "-c:v", "copy", silent)
    line = user_error_line(capsys, [str(silent)])
    assert "mute.mp4 has no audio track" in line


def test_audio_only_file(tmp_path, capsys):
    audio = tmp_path / "voice.m4a"
    ffmpeg("-i", HELDOUT_WAV, "-c:a", "aac", audio)
    line = user_error_line(capsys, [str(audio)])
    assert "voice.m4a has no video stream" in line


def test_truncated_mp4(tmp_path, capsys):
    truncated = tmp_path / "cut.mp4"
    data = CLIP.read_bytes()
    truncated.write_bytes(data[: len(data) * 6 // 10])
    line = user_error_line(capsys, [str(truncated)])
    assert "cut.mp4" in line and "truncated" in line


def test_truncated_streamable_mp4(tmp_path, capsys):
    """With the index at the front the file opens, but its frames end early."""
    streamable = tmp_path / "fast.mp4"
    make_25fps_clip(streamable, extra=("-movflags", "+faststart"))
    data = streamable.read_bytes()
    streamable.write_bytes(data[: len(data) // 2])
    line = user_error_line(capsys, [str(streamable), "--quiet"])
    assert "fast.mp4" in line and "truncated" in line


def test_video_without_a_face(tmp_path, capsys):
    faceless = tmp_path / "wall.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=2", "-f", "lavfi",
           "-i", "sine=frequency=220:duration=2", "-c:v", "libx264", "-c:a", "aac", "-shortest", faceless)
    line = user_error_line(capsys, [str(faceless), "--quiet"])
    assert "wall.mp4: no face found in any frame" in line


def test_face_too_small(tmp_path, capsys):
    small = tmp_path / "far.mp4"
    ffmpeg("-i", CLIP, "-t", "2", "-vf", "scale=150:150,pad=512:512:(ow-iw)/2:(oh-ih)/2",
           "-c:v", "libx264", "-c:a", "aac", small)
    line = user_error_line(capsys, [str(small), "--quiet"])
    assert "far.mp4" in line and "px wide" in line and "at least 80 px" in line


# ---------------------------------------------------------------------------- optional backend

def _fake_face_alignment_module():
    """A stand-in for the face-alignment package (whose weights need the internet):
    it answers with the iBUG-68 points of the mediapipe mesh, so the 68-point path
    of the pipeline runs on real face positions."""
    import types

    # mediapipe mesh index closest to each iBUG-68 point
    ibug_from_mesh = [127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,
                      70, 63, 105, 66, 107, 336, 296, 334, 293, 300, 168, 197, 5, 4, 75, 97, 2, 326, 305,
                      33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380, 61, 39, 37, 0, 267, 269,
                      291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87]
    mesh = MediapipeLandmarker()

    class FaceAlignment:
        def __init__(self, landmarks_type, device="cpu", flip_input=False):
            self.device = device

        def get_landmarks_from_image(self, rgb):
            points = mesh.detect(np.ascontiguousarray(rgb[..., ::-1]))
            return None if points is None else [points[ibug_from_mesh]]

    return types.SimpleNamespace(FaceAlignment=FaceAlignment,
                                 LandmarksType=types.SimpleNamespace(TWO_D="2D"))


def test_face_alignment_backend_gives_a_68_point_dataset(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "face_alignment", _fake_face_alignment_module())
    video = make_25fps_clip(tmp_path / "fa.mp4")
    report = process_main([str(video), "--landmarks", "face_alignment", "--quiet"])
    assert report["landmarks"] == {"backend": "face_alignment", "points": 68}
    landmarks = np.load(tmp_path / "landmarks.npy")
    assert landmarks.shape == (CLIP_FRAMES_25FPS, 68, 2)
    assert len((tmp_path / "landmarks" / "0.lms").read_text().splitlines()) == 68
    boxes = np.load(tmp_path / "crop_boxes.npy")
    expected_side = np.median(crop.face_width(landmarks))
    assert abs(np.median(boxes[:, 2] - boxes[:, 0]) - expected_side) <= 2
    # Switching the backend back redoes the landmark stages.
    report = process_main([str(video), "--quiet"])
    assert report["landmarks"]["points"] == 478


def test_face_alignment_backend_missing_says_how_to_install(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "face_alignment", None)
    video = make_25fps_clip(tmp_path / "fa.mp4")
    line = user_error_line(capsys, [str(video), "--landmarks", "face_alignment", "--quiet"])
    assert "pip install face-alignment" in line and "--landmarks mediapipe" in line


# ---------------------------------------------------------------------------- the audio-feature stage

def test_asr_option_adds_the_audio_features_as_the_last_stage(processed_copy, tmp_path, monkeypatch, capsys):
    from tests.test_audio_features import _save_tiny_hubert

    hubert = _save_tiny_hubert(tmp_path / "tiny hubert", layers=1, pos_kernel=16)
    video = processed_copy / "talker.mp4"
    report = process_main([str(video), "--asr", "hubert", "--hubert_model", str(hubert), "--quiet"])
    assert report["features"] == {"asr": "hubert", "file": "aud_hu.npy"}
    features = np.load(processed_copy / "aud_hu.npy")
    assert features.shape[:2] == (CLIP_FRAMES_25FPS, 2) and np.isfinite(features).all()
    assert json.loads((processed_copy / "aud_hu.json").read_text())["frames"] == CLIP_FRAMES_25FPS
    # Finished, the stage is skipped on a re-run like every other stage.
    from data_utils.features import extract as audio_features

    monkeypatch.setattr(audio_features, "prepare_dataset_features",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("features redone")))
    process_main([str(video), "--asr", "hubert", "--hubert_model", str(hubert), "--quiet"])


def test_the_fix_command_keeps_a_hostile_name_one_word(tmp_path):
    """A pasted fix command must not run what a folder name contains."""
    import shlex

    from data_utils.layout import DatasetLayout, process_command
    from lipsync.core.errors import UserError

    root = tmp_path / "May; touch pwned $(touch pwned2)"
    command = process_command(DatasetLayout(root), asr="ave")
    words = shlex.split(command)
    assert words[:2] == ["python", "data_utils/process.py"]
    assert words[words.index("--input_video") + 1] == str(root / f"{root.name}.mp4")
    assert words[words.index("--output_dir") + 1] == str(root)
    assert words[-2:] == ["--asr", "ave"]
    with pytest.raises(UserError, match="does not exist") as refused:
        DatasetLayout(root).require_processed()
    assert shlex.split(str(refused.value).split("run: ", 1)[1]) == words[:-2]


def test_quiet_run_prints_only_the_one_error_line(tmp_path):
    """mediapipe's C++ start-up lines (TFLite, absl) must not come before the one-line error."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, ffmpeg

    faceless = tmp_path / "faceless.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=320x240:r=25:d=2", "-f", "lavfi", "-i", "sine=d=2",
           "-shortest", "-pix_fmt", "yuv420p", faceless)
    result = subprocess.run([sys.executable, str(REPO_ROOT / "data_utils" / "process.py"), str(faceless), "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: "), \
        result.stderr
    assert "no face found" in result.stderr


def test_every_suggested_command_keeps_a_hostile_name_one_word():
    import shlex

    from lipsync.core.commands import continue_training, syncnet_command, train_command
    from lipsync.render.run_lookup import _train_command

    name = "May; rm -rf ~ $(reboot)"
    assert shlex.split(train_command(name, "--asr", "ave")) == ["python", "train_328.py", "--name", name,
                                                                 "--asr", "ave"]
    assert shlex.split(syncnet_command("--name", name)) == ["python", "train_syncnet.py", "--name", name]
    suggested = _train_command(name)
    first, whole = suggested.split(" (or the whole path: ")
    assert shlex.split(first)[3] == name and shlex.split(whole.rstrip(")"))[2] == name
    advice = continue_training("train_328.py")(["--name", name, "--overwrite"])
    assert shlex.split(advice.split("continue with: ")[1]) == ["python", "train_328.py", "--name", name, "--resume"]


def test_passthrough_timing_uses_the_spelling_this_ffmpeg_knows(tmp_path, monkeypatch):
    """-fps_mode since FFmpeg 5.1, -vsync before it (and removed after): an old binary gets -vsync."""
    from data_utils import ffmpeg as ffmpeg_module

    real = ffmpeg_module.ffmpeg_binary()
    old = tmp_path / "old ffmpeg"
    old.write_text('#!/bin/sh\nfor arg in "$@"; do [ "$arg" = "-fps_mode" ] && exit 1; done\n'
                   f'exec "{real}" "$@"\n')
    old.chmod(0o755)
    for function in (ffmpeg_module.ffmpeg_binary, ffmpeg_module.passthrough_timing):
        function.cache_clear()
    try:
        assert ffmpeg_module.passthrough_timing() == ["-fps_mode", "passthrough"]    # the tests' own FFmpeg
        ffmpeg_module.passthrough_timing.cache_clear()
        ffmpeg_module.ffmpeg_binary.cache_clear()
        monkeypatch.setenv(ffmpeg_module.FFMPEG_ENV_VARIABLE, str(old))
        assert ffmpeg_module.passthrough_timing() == ["-vsync", "passthrough"]
    finally:
        monkeypatch.delenv(ffmpeg_module.FFMPEG_ENV_VARIABLE, raising=False)
        for function in (ffmpeg_module.ffmpeg_binary, ffmpeg_module.passthrough_timing):
            function.cache_clear()
