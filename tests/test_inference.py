"""Inference: new audio -> the person's lip-synced mp4 (issue 5).

A real processed dataset (the bundled clip), a small random AVE audio encoder
saved as the person's ave.pth with features computed by the real feature code,
and a tiny-width U-Net checkpoint written with the training code's
save_checkpoint: everything inference reads is what training leaves behind.
The U-Net is untrained (random weights with non-trivial batch-norm
statistics): these tests check timing, geometry, streaming, file format and
errors, not how good the mouth looks.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from data_utils import crop
from data_utils.audio import load_audio
from data_utils.features.extract import extract_features, prepare_dataset_features
from lipsync.core.checkpoints import save_checkpoint, unet_config
from lipsync.render.silence import silence_hold_weights
from data_utils.dataset import read_feature_metadata
from lipsync.core.errors import UserError
from data_utils.ffmpeg import ffmpeg_binary, probe, video_packet_times
from data_utils.layout import DatasetLayout
from lipsync.render import load_renderer, render, render_to_file
from lipsync.render.frames import compose_frame, match_colours, pingpong_index, pingpong_indices
from lipsync.render.onnx_export import OnnxUNet, ensure_onnx, onnx_path_for
from lipsync.render.options import RenderOptions, build_parser
from data_utils.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME, frame_count_for_samples, model_audio_input
from lipsync.render.video_writer import write_wav
from inference_328 import main as inference_main
from models.unet_328 import WIDTHS, LipSyncUNet
from tests.conftest import CLIP_FRAMES_25FPS, HELDOUT_WAV, REPO_ROOT, cli_error_line
from tests.training_helpers import person_with_ave_features, randomise_batch_norm, save_tiny_unet_checkpoint
from tests.wenet_helpers import (STREAMING_META, WENET_DIM, TinyFullEncoder, TinyStreamingEncoder,
                                 export_full_encoder, export_streaming)

NAME = "talker"
EPOCH = 10
AVE_TEST_WIDTH = 0.125           # a small AVE conv stack: real layout, fast on CPU
PINGPONG_START = 80              # 2 s of audio from frame 80 runs past the end of the 100-frame clip


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from a second thread, and on a shared 2-core machine
    (frame decoding and ffmpeg run beside it) OpenMP threads waiting on each other make
    it several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def person(processed_clip, tmp_path_factory):
    """dataset/talker (processed, with ave.pth and aud_ave.npy) and checkpoint/talker/10.pth."""
    person = person_with_ave_features(processed_clip, tmp_path_factory.mktemp("inference"), NAME, AVE_TEST_WIDTH)
    audio_shape = (32, 16, 16)
    model = LipSyncUNet("ave", audio_shape, WIDTHS["tiny"])
    randomise_batch_norm(model)
    person.checkpoint = save_tiny_unet_checkpoint(model, person, NAME, EPOCH)
    person.features = np.load(person.layout.features("ave"))
    return person


def roots(person):
    return ["--dataset_root", str(person.dataset_root), "--checkpoint_root", str(person.checkpoint_root)]


@pytest.fixture(scope="module")
def renderer(person):
    with load_renderer(NAME, dataset_root=person.dataset_root, checkpoint_root=person.checkpoint_root,
                       device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def heldout():
    return load_audio(HELDOUT_WAV)            # 2 s: 50 frames


@pytest.fixture(scope="module")
def pingpong_render(renderer, heldout):
    """render() of the held-out audio from frame 80: (frames, recording frame of each)."""
    frames = list(render(renderer, heldout, start_frame=PINGPONG_START))
    return frames, pingpong_indices(PINGPONG_START, len(frames), renderer.frame_count)


class RecordingUNet:
    """Wraps the renderer's model and records what it is called with."""

    def __init__(self, unet):
        self.unet, self.calls, self.audio = unet, 0, []

    def __call__(self, crops, audio):
        self.calls += 1
        self.audio.append(audio.copy())
        return self.unet(crops, audio)


@pytest.fixture
def recording(renderer):
    original = renderer.unet
    renderer.unet = RecordingUNet(original)
    yield renderer.unet
    renderer.unet = original


def decoded_frames(path, width, height):
    """Every frame of a video as (height, width, 3) BGR uint8."""
    result = subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(path), "-f", "rawvideo",
                             "-pix_fmt", "bgr24", "pipe:1"], capture_output=True, check=True)
    return np.frombuffer(result.stdout, np.uint8).reshape(-1, height, width, 3)


def error_line(capsys, argv) -> str:
    return cli_error_line(inference_main, capsys, argv)


# ---------------------------------------------------------------------------- ping-pong order

def test_pingpong_runs_forward_then_backward_without_jumps():
    assert list(pingpong_indices(0, 10, 4)) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert list(pingpong_indices(2, 6, 4)) == [2, 3, 2, 1, 0, 1]
    assert list(pingpong_indices(0, 3, 1)) == [0, 0, 0]
    long_run = pingpong_indices(37, 5000, CLIP_FRAMES_25FPS)
    assert long_run.min() == 0 and long_run.max() == CLIP_FRAMES_25FPS - 1
    assert np.abs(np.diff(long_run)).max() == 1           # every step moves one frame: never a jump
    assert pingpong_index(2 * (CLIP_FRAMES_25FPS - 1), CLIP_FRAMES_25FPS) == 0


def test_rendered_frames_follow_the_recording_in_pingpong_order(renderer, person, heldout, pingpong_render):
    frames, sources = pingpong_render
    assert len(frames) == frame_count_for_samples(len(heldout)) == 50
    # From frame 80 the 100-frame recording turns at 99 and runs back.
    assert list(sources[:22]) == list(range(80, 100)) + [98, 97]
    boxes = np.load(DatasetLayout(person.root).crop_boxes)
    changed = 0
    for frame, source in zip(frames, sources):
        original = cv2.imread(str(DatasetLayout(person.root).frame_path(source)))
        assert frame.shape == original.shape == (512, 512, 3) and frame.dtype == np.uint8
        x0, y0, x1, y1 = boxes[source]                     # the dataset's smoothed box of that frame
        outside = np.ones(frame.shape[:2], bool)
        outside[max(y0, 0):y1, max(x0, 0):x1] = False
        assert np.array_equal(frame[outside], original[outside])
        changed += int(np.abs(frame.astype(int) - original).max() > 10)
    assert changed == len(frames)                          # the model repainted every frame's mouth


# ---------------------------------------------------------------------------- paste-back

def test_paste_back_is_feathered_and_leaves_the_rest_untouched(person):
    box = np.load(DatasetLayout(person.root).crop_boxes)[0]
    x0, y0, x1, _ = [int(value) for value in box]
    scale = (x1 - x0) / crop.CROP_SIZE
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    green = np.zeros((crop.INNER_SIZE, crop.INNER_SIZE, 3), np.uint8)
    green[..., 1] = 255
    feather = 12.0
    pasted = compose_frame(noise.copy(), crop.cut_crop(noise, box), green, box, feather_px=feather)

    # The repainted rectangle in frame pixels.
    left = x0 + (crop.CROP_BORDER + crop.MASK_LEFT) * scale
    right = x0 + (crop.CROP_BORDER + crop.MASK_RIGHT) * scale
    top = y0 + (crop.CROP_BORDER + crop.MASK_TOP) * scale
    bottom = y0 + (crop.CROP_BORDER + crop.MASK_BOTTOM) * scale
    rows, cols = np.mgrid[:512, :512]
    margin = 2                                             # resampling reaches one or two pixels
    outside = (cols < left - margin) | (cols > right + margin) | (rows < top - margin) | (rows > bottom + margin)
    assert np.array_equal(pasted[outside], noise[outside])
    deep = ((cols > left + feather * scale + margin) & (cols < right - feather * scale - margin)
            & (rows > top + feather * scale + margin) & (rows < bottom - feather * scale - margin))
    assert np.abs(pasted[deep].astype(int) - green[0, 0]).max() <= 1

    # On a flat grey frame the blend across the left edge ramps smoothly from frame to generated.
    def share_of_generated(feather_px):
        grey = np.full((512, 512, 3), 128, np.uint8)
        out = compose_frame(grey.copy(), crop.cut_crop(grey, box), green, box, feather_px=feather_px)
        row = int((top + bottom) / 2)
        return (out[row, :, 1].astype(float) - 128) / (255 - 128)

    ramp = share_of_generated(feather)
    start = int(left) - margin
    crossing = ramp[start:int(left + 2 * feather * scale)]
    assert crossing[0] < 0.02 and crossing[-1] > 0.98
    assert np.all(np.diff(crossing) >= -0.01)              # monotonic
    assert np.sum((crossing > 0.1) & (crossing < 0.9)) >= feather * scale * 0.6  # a wide soft edge
    hard = share_of_generated(0.0)[start:int(left + 2 * feather * scale)]
    assert np.sum((hard > 0.1) & (hard < 0.9)) <= 2        # without feathering: a hard seam


def test_colour_matching_removes_a_colour_cast(person):
    frame = cv2.imread(str(DatasetLayout(person.root).frame_path(10)))
    box = np.load(DatasetLayout(person.root).crop_boxes)[10]
    inner = crop.cut_crop(frame, box)[crop.INNER, crop.INNER]
    cast = inner.astype(np.float32) * np.array([0.85, 1.0, 1.1]) + np.array([25.0, -10.0, 5.0])
    cast = np.clip(cast, 0, 255).astype(np.uint8)
    before = np.abs(cast.astype(int) - inner).mean()
    matched = match_colours(cast, inner)
    after = np.abs(matched.astype(int) - inner).mean()
    assert before > 10 and after < 3
    # Colour matching only changes what is pasted: with it on, pixels outside the box stay the frame's.
    out = compose_frame(frame.copy(), crop.cut_crop(frame, box), cast, box, colour_match=True)
    x0, y0, x1, y1 = box
    assert np.array_equal(out[:y0], frame[:y0])


# ---------------------------------------------------------------------------- audio and streaming

@pytest.fixture(scope="module")
def short_render(renderer):
    """render() of 1.5 s of speech, with the audio windows the model was given."""
    samples = load_audio(HELDOUT_WAV)[:int(1.5 * SAMPLE_RATE)]
    frames, recorder = render_recording_the_model(renderer, samples)
    return SimpleNamespace(samples=samples, frames=frames, audio=np.concatenate(recorder.audio))


def render_recording_the_model(renderer, samples):
    """(frames, RecordingUNet): render() with every model call recorded."""
    original = renderer.unet
    renderer.unet = recorder = RecordingUNet(original)
    try:
        return list(renderer.render(samples)), recorder
    finally:
        renderer.unet = original


def test_each_frame_gets_the_audio_window_of_the_whole_file(person, short_render):
    count = frame_count_for_samples(len(short_render.samples))
    assert len(short_render.frames) == count == 38
    whole = extract_features(short_render.samples, "ave", ave_checkpoint=person.ave)
    # Frames fully inside a pause show the person's own closed mouth: the model is not run for them.
    drawn = np.flatnonzero(silence_hold_weights(short_render.samples) < 1)
    assert len(drawn) > 0
    expected = np.stack([model_audio_input(whole, index, "ave") for index in drawn])
    np.testing.assert_allclose(short_render.audio, expected, atol=1e-5)


def test_the_model_does_not_run_in_pauses(renderer):
    speech = load_audio(HELDOUT_WAV)[:SAMPLE_RATE]
    samples = np.concatenate([speech, np.zeros(SAMPLE_RATE, np.float32), speech])     # a 1 s pause
    weights = silence_hold_weights(samples)
    held = int(np.count_nonzero(weights >= 1))
    assert held > 10
    frames, recorder = render_recording_the_model(renderer, samples)
    assert len(frames) == len(weights)
    assert sum(len(window) for window in recorder.audio) == len(weights) - held


def test_streaming_pieces_give_the_same_frames_with_bounded_latency(renderer, short_render):
    samples = short_render.samples
    stream = renderer.stream()
    streamed, piece = [], 977                              # odd piece sizes: ~60 ms at a time
    for begin in range(0, len(samples), piece):
        for frame in stream.push(samples[begin:begin + piece]):
            streamed.append(frame)
        arrived_frames = stream.samples_in // SAMPLES_PER_FRAME
        assert len(streamed) >= arrived_frames - stream.latency_frames
    assert len(streamed) >= 38 - stream.latency_frames     # most frames came out while audio arrived
    streamed.extend(stream.finish())
    assert stream.latency_frames <= 25                     # under one second of audio at batch size 8
    assert len(streamed) == len(short_render.frames) == 38
    for mine, reference in zip(streamed, short_render.frames):
        assert np.abs(mine.astype(int) - reference).max() <= 1


def test_a_model_in_memory_renders_like_its_checkpoint(person, renderer):
    from lipsync.core.checkpoints import load_unet

    model, _ = load_unet(person.checkpoint, "cpu")
    model.train()
    samples = load_audio(HELDOUT_WAV)[:int(0.4 * SAMPLE_RATE)]
    frames = list(render(model, samples, dataset_dir=person.root, device="cpu"))
    assert model.training                                  # the caller's model is left as it was
    reference = list(renderer.render(samples))
    assert len(frames) == len(reference) == 10
    assert all(np.array_equal(mine, theirs) for mine, theirs in zip(frames, reference))


def test_script_options_are_render_options_with_the_same_defaults():
    options = RenderOptions.from_args(build_parser().parse_args(["--name", NAME]))
    assert options == RenderOptions()
    args = build_parser().parse_args(["--name", NAME, "--feather", "3", "--fp16", "--color_match", "--batch_size", "4",
                                      "--backend", "onnx", "--checkpoint", "best", "--device", "cpu"])
    options = RenderOptions.from_args(args)
    assert (options.feather_px, options.half, options.colour_match, options.batch_size, options.backend,
            options.checkpoint, options.device) == (3.0, True, True, 4, "onnx", "best", "cpu")


def test_options_object_and_keywords_load_the_same_renderer(person):
    options = RenderOptions(dataset_root=person.dataset_root, checkpoint_root=person.checkpoint_root, device="cpu",
                            batch_size=3)
    with load_renderer(NAME, options, feather_px=2.0) as loaded:
        assert (loaded.options.batch_size, loaded.options.feather_px) == (3, 2.0)
        assert loaded.checkpoint_path == person.checkpoint
    assert options.feather_px == RenderOptions().feather_px         # the caller's options are not changed
    with pytest.raises(UserError, match="--batch_size must be at least 1, got 0"):
        load_renderer(NAME, options.replace(batch_size=0))


def test_render_is_a_generator_that_yields_before_the_audio_is_done(renderer, recording):
    samples = load_audio(HELDOUT_WAV)
    frames = renderer.render(samples)
    first = next(frames)
    assert first.shape == (512, 512, 3)
    assert recording.calls <= 2                            # 50 frames need 7 batches; 2 made the first frame
    frames.close()


def test_long_audio_renders_in_bounded_memory(person, tmp_path):
    """Peak numpy/Python memory while 100 frames go to the mp4 stays at a few frames."""
    samples = load_audio(HELDOUT_WAV)
    long_audio = np.concatenate([samples, samples])        # 100 frames: 79 MB if frames were kept
    frame_bytes = 512 * 512 * 3
    with load_renderer(NAME, dataset_root=person.dataset_root, checkpoint_root=person.checkpoint_root,
                       device="cpu", batch_size=2) as small_batches:
        tracemalloc.start()
        try:
            result = render_to_file(small_batches, long_audio, tmp_path / "long.mp4", progress=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert result.frames == 100 and len(video_packet_times(tmp_path / "long.mp4")) == 100
    # Prefetched frames, a batch being pasted, the encoder's queue: about 16 frames.
    print(f"peak traced memory: {peak / frame_bytes:.1f} frames")
    assert peak < 30 * frame_bytes, f"peak {peak / frame_bytes:.1f} frames"


def test_silent_audio_renders_a_video(person, tmp_path, capsys):
    silence = write_wav(tmp_path / "silence.wav", np.zeros(SAMPLE_RATE // 2, np.float32))
    output = tmp_path / "silent.mp4"
    inference_main(["--name", NAME, "--audio_path", str(silence), "--output", str(output), "--device", "cpu",
                    "--no_progress", *roots(person)])
    assert len(video_packet_times(output)) == 13
    assert f"wrote {output}" in capsys.readouterr().out


def test_a_finished_result_is_never_replaced_without_overwrite(person, tmp_path, capsys):
    silence = write_wav(tmp_path / "pause.wav", np.zeros(SAMPLE_RATE // 5, np.float32))
    result_root = tmp_path / "result"
    argv = ["--name", NAME, "--audio_path", str(silence), "--device", "cpu", "--no_progress",
            "--result_root", str(result_root), *roots(person)]
    first = inference_main(argv)
    content = first.read_bytes()
    second = inference_main(argv)                                   # same audio stem, same default name
    assert second == first.with_name(f"{first.stem}_2.mp4")
    assert f"{first} exists: writing {second} instead" in capsys.readouterr().out
    assert first.read_bytes() == content and second.is_file()
    assert inference_main(argv + ["--overwrite"]) == first
    assert sorted(path.name for path in result_root.iterdir()) == [first.name, second.name]


# ---------------------------------------------------------------------------- the script and the mp4

def test_script_writes_h264_aac_mp4_exactly_as_long_as_the_audio(person, heldout, pingpong_render, tmp_path, capsys):
    result_root = tmp_path / "result dir"                   # a space in the path
    path = inference_main(["--name", NAME, "--audio_path", str(HELDOUT_WAV), "--start_frame", str(PINGPONG_START),
                           "--batch_size", "5", "--device", "cpu", "--no_progress", "--result_root", str(result_root),
                           *roots(person)])
    assert path == result_root / f"{NAME}_heldout_2s_{EPOCH}.mp4" and path.is_file()
    assert not [p for p in result_root.iterdir() if p != path]   # no temporary or intermediate files left
    info = probe(path)
    assert "Video: h264" in info.raw_banner and "yuv420p" in info.raw_banner and "Audio: aac" in info.raw_banner
    assert (info.width, info.height, info.average_fps) == (512, 512, 25.0)
    frames = frame_count_for_samples(len(heldout))
    assert len(video_packet_times(path)) == frames
    assert abs(len(load_audio(path)) - len(heldout)) < SAMPLES_PER_FRAME   # audio track as long as the audio
    decoded = decoded_frames(path, 512, 512)
    rendered, _ = pingpong_render
    assert len(decoded) == frames
    for index in (0, 19, 20, 49):                         # the same frames, in order, as the API gives
        assert np.abs(decoded[index].astype(float) - rendered[index]).mean() < 3
    assert "frames/s" in capsys.readouterr().out


def test_sigterm_during_a_render_removes_the_unfinished_video(person, tmp_path):
    """A render stopped by SIGTERM (a job scheduler, `kill`) cleans up as Ctrl-C does."""
    long_audio = write_wav(tmp_path / "long.wav", np.tile(load_audio(HELDOUT_WAV), 30))    # a minute
    result_root = tmp_path / "result"
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "inference_328.py"), "--name", NAME,
                                "--audio_path", str(long_audio), "--device", "cpu", "--no_progress",
                                "--result_root", str(result_root), *roots(person)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and \
            not (result_root.is_dir() and any(result_root.iterdir())):
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    time.sleep(0.5)                                          # well into writing frames
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 143, errors
    assert errors.strip().splitlines()[-1] == ("stopped (SIGTERM): the unfinished video was removed; "
                                               "run the same command again to render it")
    assert "Traceback" not in errors
    assert list(result_root.iterdir()) == []


# ---------------------------------------------------------------------------- ONNX

def test_onnx_export_agrees_with_torch_and_renders(person, renderer, heldout, capsys):
    exported = inference_main(["--name", NAME, "--export_onnx", *roots(person)])
    assert exported == onnx_path_for(person.checkpoint) and exported.is_file()
    assert f"exported {exported}" in capsys.readouterr().out

    from lipsync.core.checkpoints import load_unet
    from data_utils.model_input import model_input_batch

    model, config = load_unet(person.checkpoint, "cpu")
    crops = np.stack([renderer.load_background(index)[1] for index in (0, 33, 99)])
    image6, _ = model_input_batch(torch.from_numpy(crops), torch.from_numpy(crops))
    audio = np.stack([model_audio_input(person.features, index, "ave") for index in (0, 33, 99)])
    with torch.no_grad():
        expected = model(image6, torch.from_numpy(audio)).numpy()
    session = OnnxUNet(exported, "cpu")
    assert session.providers == ["CPUExecutionProvider"]
    actual = session(image6.numpy(), audio)
    assert actual.shape == (3, 3, 320, 320)
    assert np.abs(actual - expected).max() < 1e-3

    # Up to date: kept; the checkpoint rewritten after the export: exported again.
    stamp = exported.stat().st_mtime_ns
    assert ensure_onnx(person.checkpoint, model, config) == exported and exported.stat().st_mtime_ns == stamp
    later = person.checkpoint.stat().st_mtime_ns + 10**9
    os.utime(person.checkpoint, ns=(later, later))
    ensure_onnx(person.checkpoint, model, config)
    assert exported.stat().st_mtime_ns != stamp

    samples = heldout[:int(0.6 * SAMPLE_RATE)]
    with load_renderer(NAME, dataset_root=person.dataset_root, checkpoint_root=person.checkpoint_root,
                       device="cpu", backend="onnx") as onnx_renderer:
        onnx_frames = list(onnx_renderer.render(samples))
    torch_frames = list(renderer.render(samples))
    assert len(onnx_frames) == len(torch_frames) == 15
    for mine, reference in zip(onnx_frames, torch_frames):
        assert np.abs(mine.astype(int) - reference).max() <= 2


# ---------------------------------------------------------------------------- bad input

def test_unknown_name_lists_the_trained_names(person, capsys):
    line = error_line(capsys, ["--name", "nobody", "--audio_path", str(HELDOUT_WAV), *roots(person)])
    assert "unknown name 'nobody'" in line and f"trained names in {person.checkpoint_root}/: " in line
    assert NAME in line.split("trained names")[1]


def test_dataset_without_checkpoint_says_how_to_train(person, capsys):
    (person.dataset_root / "newcomer").mkdir(exist_ok=True)
    line = error_line(capsys, ["--name", "newcomer", "--audio_path", str(HELDOUT_WAV), *roots(person)])
    assert "no trained checkpoint" in line and "python train_328.py --name newcomer" in line


def test_bad_audio_files_give_one_line_each(person, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    missing = tmp_path / "missing.wav"
    for path, expected in ((empty, "is empty"), (text, "is not a readable audio file"), (missing, "does not exist")):
        line = error_line(capsys, ["--name", NAME, "--audio_path", str(path), "--output", str(tmp_path / "o.mp4"),
                                   "--device", "cpu", *roots(person)])
        assert str(path) in line and expected in line, line
    assert not (tmp_path / "o.mp4").exists()


def test_a_truncated_wav_renders_with_a_warning(person, tmp_path, caplog):
    whole = write_wav(tmp_path / "whole.wav", load_audio(HELDOUT_WAV))
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])     # header still says 2 s
    with caplog.at_level("WARNING"):
        path = inference_main(["--name", NAME, "--audio_path", str(cut), "--output", str(tmp_path / "cut.mp4"),
                               "--device", "cpu", "--no_progress", *roots(person)])
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any(f"{cut} is cut short: its header says 2.00 s but only 1.00 s" in text for text in warnings), warnings
    assert len(video_packet_times(path)) == 25


def test_output_folder_that_cannot_be_written(person, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = error_line(capsys, ["--name", NAME, "--audio_path", str(HELDOUT_WAV), "--device", "cpu",
                               "--output", str(blocker / "out.mp4"), *roots(person)])
    assert "cannot create the output folder" in line and str(blocker) in line
    if os.geteuid() != 0:                                   # root writes anywhere: only testable as a user
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            line = error_line(capsys, ["--name", NAME, "--audio_path", str(HELDOUT_WAV), "--device", "cpu",
                                       "--output", str(locked / "out.mp4"), *roots(person)])
            assert "is not writable" in line and str(locked) in line
        finally:
            locked.chmod(0o700)


def test_option_mistakes_give_one_line_each(person, capsys):
    line = error_line(capsys, ["--name", NAME, "--audio_path", str(HELDOUT_WAV), "--asr", "hubert", *roots(person)])
    assert "trained with --asr ave, not --asr hubert" in line
    line = error_line(capsys, ["--name", NAME, "--audio_path", str(HELDOUT_WAV), "--checkpoint", "30", *roots(person)])
    assert "30.pth does not exist (epochs saved: 10)" in line
    line = error_line(capsys, ["--name", NAME, "--audio_path", str(HELDOUT_WAV), "--start_frame", "100",
                               "--device", "cpu", *roots(person)])
    assert "--start_frame 100 is outside the recording (frames 0 .. 99" in line
    line = error_line(capsys, ["--name", NAME, *roots(person)])
    assert "give --audio_path" in line
    if not torch.cuda.is_available():
        line = error_line(capsys, ["--name", NAME, "--audio_path", str(HELDOUT_WAV), "--device", "cuda",
                                   *roots(person)])
        assert "--device cuda" in line and "no CUDA GPU" in line


def test_checkpoint_without_processed_dataset(person, tmp_path, capsys):
    orphan = person.checkpoint_root / "orphan"
    orphan.mkdir(exist_ok=True)
    shutil.copy(person.checkpoint, orphan / "10.pth")
    line = error_line(capsys, ["--name", "orphan", "--audio_path", str(HELDOUT_WAV), *roots(person)])
    assert f"{person.dataset_root / 'orphan'} does not exist" in line and "process.py" in line
    with pytest.raises(UserError, match="needs dataset_dir"):
        list(render(LipSyncUNet("ave", (32, 16, 16), WIDTHS["tiny"]), HELDOUT_WAV))


# ---------------------------------------------------------------------------- other encoders

TINY_HUBERT_HIDDEN = 32          # (2, 32) values a frame -> a (1, 32, 32) window


def unet_checkpoint_for(dataset_dir, asr: str, audio_shape, save_dir) -> Path:
    """A tiny U-Net checkpoint for the dataset's ``asr`` features, as training writes one."""
    model = LipSyncUNet(asr, audio_shape, WIDTHS["tiny"])
    randomise_batch_norm(model)
    metadata = read_feature_metadata(DatasetLayout(dataset_dir), asr)
    return save_checkpoint(save_dir / "20.pth", model.state_dict(),
                           unet_config(model, metadata), 20)


def assert_render_uses_the_training_encoder(dataset_dir, checkpoint, asr: str, encoder, atol: float):
    """0.6 s of speech renders 15 frames whose audio windows are the whole file's, from ``encoder``."""
    samples = load_audio(HELDOUT_WAV)[:int(0.6 * SAMPLE_RATE)]
    with load_renderer(dataset_dir=dataset_dir, checkpoint=checkpoint, device="cpu") as renderer:
        assert renderer.asr == asr and renderer.featurizer.source == str(encoder)
        renderer.unet = recorder = RecordingUNet(renderer.unet)
        frames = list(renderer.render(samples))
    assert len(frames) == 15 and frames[0].shape == (512, 512, 3)
    whole = extract_features(samples, asr, **{f"{asr}_model": encoder})
    expected = np.stack([model_audio_input(whole, index, asr) for index in range(15)])
    np.testing.assert_allclose(np.concatenate(recorder.audio), expected, atol=atol)


def test_hubert_model_renders_with_the_encoder_it_was_trained_on(processed_copy, tmp_path):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(3)
    hubert_dir = tmp_path / "tiny hubert"
    config = HubertConfig(hidden_size=TINY_HUBERT_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=4, vocab_size=12)
    HubertModel(config).eval().save_pretrained(hubert_dir)
    prepare_dataset_features(processed_copy, "hubert", hubert_model=hubert_dir, progress=False)
    checkpoint = unet_checkpoint_for(processed_copy, "hubert", (1, TINY_HUBERT_HIDDEN, TINY_HUBERT_HIDDEN),
                                     tmp_path / "checkpoint" / "hu")
    assert_render_uses_the_training_encoder(processed_copy, checkpoint, "hubert", hubert_dir, atol=1e-5)


def wenet_person(processed_copy, tmp_path, kind: str):
    """The bundled clip with WeNet features from a tiny exported encoder, and a U-Net checkpoint for them."""
    torch.manual_seed(5)
    folder = tmp_path / "wenet model"
    folder.mkdir()
    if kind == "full":
        encoder = export_full_encoder(TinyFullEncoder(), folder / "encoder.onnx")
    else:
        encoder = export_streaming(TinyStreamingEncoder(), folder / "encoder.onnx", STREAMING_META)
    prepare_dataset_features(processed_copy, "wenet", wenet_model=encoder, progress=False)
    return encoder, unet_checkpoint_for(processed_copy, "wenet", (1, WENET_DIM, WENET_DIM),
                                        tmp_path / "checkpoint" / "we")


@pytest.mark.parametrize("kind", ["full", "streaming"])
def test_wenet_model_renders_with_the_encoder_it_was_trained_on(processed_copy, tmp_path, kind):
    encoder, checkpoint = wenet_person(processed_copy, tmp_path, kind)
    assert_render_uses_the_training_encoder(processed_copy, checkpoint, "wenet", encoder, atol=1e-4)


def test_wenet_audio_streamed_in_pieces_gives_the_whole_file_windows(processed_copy, tmp_path):
    # the full-utterance encoder sees 7 fbank frames per output, well inside the
    # stream's context, so 3 s fed in odd pieces must give the whole file's rows
    encoder, checkpoint = wenet_person(processed_copy, tmp_path, "full")
    samples = load_audio(HELDOUT_WAV)[:3 * SAMPLE_RATE]
    count = frame_count_for_samples(len(samples))
    with load_renderer(dataset_dir=processed_copy, checkpoint=checkpoint, device="cpu", batch_size=4) as renderer:
        renderer.unet = recorder = RecordingUNet(renderer.unet)
        stream = renderer.stream()
        streamed = []
        for begin in range(0, len(samples), 1531):
            streamed.extend(stream.push(samples[begin:begin + 1531]))
        streamed.extend(stream.finish())
    assert len(streamed) == count
    whole = extract_features(samples, "wenet", wenet_model=encoder)
    expected = np.stack([model_audio_input(whole, index, "wenet") for index in range(count)])
    np.testing.assert_allclose(np.concatenate(recorder.audio), expected, atol=1e-4)


# ---------------------------------------------------------------------------- the writer alone

def test_video_writer_failure_is_one_line_and_leaves_no_file(tmp_path):
    from lipsync.render.video_writer import VideoWriter

    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("not audio\n")
    output = tmp_path / "broken.mp4"
    frame = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(UserError, match=r"broken\.mp4: ffmpeg (stopped while writing|could not write) the video"):
        with VideoWriter(output, 64, 64, audio=not_audio) as writer:
            for _ in range(200):
                writer.write(frame)
    assert list(tmp_path.iterdir()) == [not_audio]

    odd = tmp_path / "odd.mp4"
    with VideoWriter(odd, 63, 65) as writer:               # odd sizes are padded for yuv420p
        for value in range(5):
            writer.write(np.full((65, 63, 3), value * 40, np.uint8))
    assert len(video_packet_times(odd)) == 5 and probe(odd).has_audio is False


def test_a_partial_batch_padded_to_one_shape_draws_the_same_mouths():
    # On CUDA, TorchUNet pads every batch to the largest it has seen (one cuDNN tuning, not one per
    # size); eval-mode batch norm is per frame, so the padding rows change nothing in the real ones.
    from lipsync.render.backends import TorchUNet, pad_batch

    torch.manual_seed(0)
    audio_shape = (2, 16, 32)
    model = LipSyncUNet("ave", audio_shape, WIDTHS["tiny"])
    generator = np.random.default_rng(0)
    crops = generator.integers(0, 256, (5, *crop.CROP_SHAPE), dtype=np.uint8)
    audio = generator.standard_normal((5, *audio_shape)).astype(np.float32)
    plain = TorchUNet(model, "cpu")
    padded = TorchUNet(model, "cpu")
    padded.fixed_shapes = True
    full_batch = padded(crops, audio)
    partial = padded(crops[:2], audio[:2])
    assert padded._batch_size == 5 and partial.shape == (2, 320, 320, 3)
    # Another batch size may take other kernels: equal up to one grey level of rounding.
    assert np.abs(partial.astype(np.int16) - plain(crops[:2], audio[:2])).max() <= 1
    assert np.abs(full_batch.astype(np.int16) - plain(crops, audio)).max() <= 1
    assert pad_batch(audio[:2], 5).shape == (5, *audio_shape) and np.array_equal(pad_batch(audio[:2], 5)[4], audio[1])
