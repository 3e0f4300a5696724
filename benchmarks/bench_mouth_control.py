"""Mouth controls (issue 7): how well pauses are found, what each control costs
per frame, and what the hold and the scale do to a trained person's render.

    python benchmarks/bench_mouth_control.py                                  # costs, bundled clip
    python benchmarks/bench_mouth_control.py --fixture ../shared/fixtures/talker_a
    python benchmarks/bench_mouth_control.py --name talker_a --audio heldout.wav

--fixture DIR: a folder with talker_a.mp4 and talker_a.truth.npz (phoneme
timings; '_' is silence). Frame accuracy of both detectors against the truth,
on the clean audio and with white noise 20 dB / pink noise 10 dB below the
speech, how many speech frames the hold would cover (should be 0), and how
much of the truth's pauses it covers fully.

Costs (always): the bundled clip processed into a temporary folder. Per frame:
Silero / energy gate (as x real time), the hold's placement of the closed
mouth, and the opening warp with its face-mesh detection. The frame's own crop
stands in for the generated square.

--name NAME: renders --audio (default: the bundled held-out speech) with two
1 s silences inserted. It prints the inner-lip gap inside the silences with and
without the hold, next to the recording's most closed mouth. It also renders
with --mouth_scale 1.2 and 0.8 and prints the ratio of the mean gap to the
unscaled render's and the correlation of the two tracks.
"""
import argparse
import hashlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np
import torch

from data_utils import crop
from data_utils.audio import load_audio
from data_utils.crop import cut_crop
from data_utils.ffmpeg import run_ffmpeg
from data_utils.layout import DatasetLayout, checkpoint_dir
from data_utils.preprocess import process_video
from data_utils.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME, frame_count_for_samples
from lipsync.core.atomic import write_bytes_atomic
from lipsync.core.checkpoints import resolve_checkpoint
from lipsync.core.console import configure_console_logging
from lipsync.evaluate.landmark_track import LandmarkTrack
from lipsync.evaluate.metrics import mouth_opening, offset_correlation
from lipsync.render import load_renderer
from lipsync.render.frames import compose_frame, pingpong_index
from lipsync.render.mouth_control import MouthControls
from lipsync.render.silence import (HOLD_AFTER_SPEECH_FRAMES, RAMP_FRAMES, RELEASE_BEFORE_SPEECH_FRAMES,
                                    VoiceActivity, detect_speech, hold_weights, silence_hold_weights)

BUNDLED = REPO_ROOT / "tests" / "data" / "talker_a_4s.mp4"
SPEECH = REPO_ROOT / "tests" / "data" / "heldout_2s.wav"
NOISES = (("clean", None, None), ("white noise, 20 dB SNR", "white", 20.0), ("pink noise, 10 dB SNR", "pink", 10.0))
COST_FRAMES = 40
COST_AUDIO_REPEATS = 5          # 10 s of speech: the detector's model load (once per stream) is not what is timed
SILENCE_SECONDS = 1.0
OPEN_MOUTH = 0.01


def truth_silence(truth_path: Path, sample_count: int):
    """(frames,) bool: frame i's 40 ms (centred on i / 25 s) is mostly inside '_' phonemes."""
    truth = np.load(truth_path)
    silent = np.zeros(sample_count, bool)
    for name, start, stop in zip(truth["phoneme_names"], truth["phoneme_start"], truth["phoneme_end"]):
        if name == "_":
            silent[int(round(start * SAMPLE_RATE)):int(round(stop * SAMPLE_RATE))] = True
    half = SAMPLES_PER_FRAME // 2
    padded = np.concatenate([np.ones(half, bool), silent, np.ones(SAMPLES_PER_FRAME, bool)])
    return np.array([padded[i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME].mean() > 0.5
                     for i in range(frame_count_for_samples(sample_count))])


def with_noise(samples, silent_frames, kind, snr_db, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(len(samples))
    if kind == "pink":
        spectrum = np.fft.rfft(noise)
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        spectrum[0] = 0
        noise = np.fft.irfft(spectrum, len(samples))
    speech = np.repeat(~silent_frames, SAMPLES_PER_FRAME)[:len(samples)]
    scale = np.sqrt(np.mean(samples[speech] ** 2) / np.mean(noise ** 2)) / 10 ** (snr_db / 20)
    return (samples + noise * scale).astype(np.float32)


def vad_accuracy(fixture: Path) -> None:
    samples = load_audio(fixture / "talker_a.mp4")
    silent = truth_silence(fixture / "talker_a.truth.npz", len(samples))
    full_pause = hold_weights(~silent) == 1
    print(f"\n## Pauses found in {fixture / 'talker_a.mp4'} ({len(silent)} frames, {int(silent.sum())} silent)\n")
    print("| audio | detector | frame accuracy | speech frames held | truth's full-hold frames held | x real time |")
    print("|---|---|---|---|---|---|")
    for label, kind, snr in NOISES:
        audio = samples if kind is None else with_noise(samples, silent, kind, snr)
        for vad in ("silero", "energy"):
            started = time.perf_counter()
            speech = detect_speech(audio, vad)
            seconds = time.perf_counter() - started
            weights = hold_weights(speech)
            print(f"| {label} | {vad} | {np.mean(speech != silent):.3f} | {int(((weights > 0) & ~silent).sum())} "
                  f"| {np.mean(weights[full_pause] == 1):.3f} | {len(audio) / 16000 / seconds:.0f} |")


def control_costs(scratch: Path) -> None:
    root = scratch / "person"
    root.mkdir()
    shutil.copy(BUNDLED, root / "person.mp4")
    process_video(root / "person.mp4", show_progress=False)
    layout = DatasetLayout(root)
    boxes = np.load(layout.crop_boxes)
    samples = np.tile(load_audio(SPEECH), COST_AUDIO_REPEATS)
    print("\n## Cost per frame (CPU, one thread for the caller)\n")
    for vad in ("silero", "energy"):
        started = time.perf_counter()
        activity = VoiceActivity(vad)
        loaded = time.perf_counter()
        activity.push(samples)
        activity.finish()
        seconds = time.perf_counter() - loaded
        print(f"- pause detection, {vad}: {len(samples) / 16000 / seconds:.0f}x real time "
              f"({1000 * seconds / (len(samples) / 640):.2f} ms per frame; "
              f"{1000 * (loaded - started):.0f} ms to start, once per audio stream)")
    import cv2

    frames = [cv2.imread(str(layout.frame_path(index))) for index in range(COST_FRAMES)]
    crops = [crop.cut_crop(frame, boxes[index]) for index, frame in enumerate(frames)]

    def compose(frame, crop_328, generated, box):
        return compose_frame(frame, crop_328, generated, box)

    cases = (("paste-back only (controls off)", dict(silence_hold=False), 0.0),
             ("silence hold, full weight", dict(silence_hold=True), 1.0),
             ("silence hold, in a ramp", dict(silence_hold=True), 0.5),
             ("--mouth_scale 1.2", dict(silence_hold=False, mouth_scale=1.2), 0.0))
    for label, options, weight in cases:
        controls = MouthControls(layout, boxes, **options)
        controls.apply(frames[0].copy(), crops[0], crops[0][crop.INNER, crop.INNER], 0, weight, compose)
        started = time.perf_counter()
        for index in range(COST_FRAMES):
            controls.apply(frames[index].copy(), crops[index], crops[index][crop.INNER, crop.INNER], index, weight,
                           compose)
        milliseconds = 1000 * (time.perf_counter() - started) / COST_FRAMES
        controls.close()
        print(f"- {label}: {milliseconds:.1f} ms per frame")


TILE_PX = 128                   # README pictures: each frame's 328 crop at this size
MOUTH_ROWS = slice(64, 224)     # the mouth and chin inside the 328 crop, shown larger for --mouth_scale
MOUTH_COLS = slice(44, 284)
MOUTH_TILE = (240, 160)
LABEL_SCALE = 0.4
LABEL_BAND_PX = 150
MAX_PICTURE_BYTES = 200_000
FACE_COVER = "drawbox=x=96:y=40:w=320:h=430:color=black:t=fill:enable='between(t,3.36,3.68)'"
FACELESS_START = 78
FACELESS_TILES = (80, 81, 82, 83, 84, 92, 93, 94, 95, 96)


def labelled(image, text, bottom=True):
    """A copy of ``image`` with ``text`` (lines split at newlines) written on it, outlined."""
    import cv2

    image = image.copy()
    lines = text.split("\n")
    y = image.shape[0] - 6 - 16 * (len(lines) - 1) if bottom else 18
    for line in lines:
        for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(image, line, (5, y), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, colour, thickness, cv2.LINE_AA)
        y += 16
    return image


def face_tile(crop_328, text):
    import cv2

    return labelled(cv2.resize(crop_328, (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA), text)


def mouth_tile(crop_328, text):
    import cv2

    return labelled(cv2.resize(crop_328[MOUTH_ROWS, MOUTH_COLS], MOUTH_TILE, interpolation=cv2.INTER_CUBIC), text)


def grid(rows, row_labels):
    """Rows of equally sized tiles, each row with its label in a grey band on the left."""
    out = []
    for tiles, label in zip(rows, row_labels):
        strip = np.concatenate(tiles, axis=1)
        band = np.full((strip.shape[0], LABEL_BAND_PX, 3), 64, np.uint8)
        out.append(np.concatenate([labelled(band, label, bottom=False), strip], axis=1))
    return np.concatenate(out, axis=0)


def save_picture(path: Path, image) -> Path:
    """PNG under MAX_PICTURE_BYTES: full colour when it fits, else a 256-colour palette."""
    from PIL import Image

    picture = Image.fromarray(image[..., ::-1].copy())
    palette = picture.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    for candidate in (picture, palette):
        buffer = io.BytesIO()
        candidate.save(buffer, "PNG", optimize=True)
        if buffer.tell() <= MAX_PICTURE_BYTES:
            break
    write_bytes_atomic(path, buffer.getvalue())
    return path


def render_effects(args) -> None:
    speech = load_audio(args.audio)
    third = len(speech) // 3
    gap = np.zeros(int(SILENCE_SECONDS * SAMPLE_RATE), np.float32)
    samples = np.concatenate([speech[:third], gap, speech[third:2 * third], gap, speech[2 * third:]])
    silences = [(third // SAMPLES_PER_FRAME, (third + len(gap)) // SAMPLES_PER_FRAME),
                ((2 * third + len(gap)) // SAMPLES_PER_FRAME, (2 * third + 2 * len(gap)) // SAMPLES_PER_FRAME)]
    settle = HOLD_AFTER_SPEECH_FRAMES + RAMP_FRAMES + 1       # one frame of slack for the detector
    release = RAMP_FRAMES + RELEASE_BEFORE_SPEECH_FRAMES
    core = np.concatenate([np.arange(first + settle, stop - release) for first, stop in silences])
    weights = silence_hold_weights(samples)
    common = dict(dataset_root=args.dataset_root, checkpoint_root=args.checkpoint_root, device=args.device,
                  checkpoint=args.checkpoint)

    def render(keep_all=False, keep=(), **options):
        """(openings, frame hashes, {index: 328 crop}, frames/s, renderer) of one render of ``samples``."""
        with load_renderer(args.name, **common, **options) as renderer:
            track, hashes, crops = LandmarkTrack(), [], {}
            started = time.perf_counter()
            for index, frame in enumerate(renderer.render(samples)):
                track.add(frame)
                hashes.append(hashlib.blake2b(frame.tobytes(), digest_size=16).digest())
                if keep_all or index in keep:
                    crops[index] = cut_crop(frame, renderer.boxes[pingpong_index(index, renderer.frame_count)])
            seconds = time.perf_counter() - started
        return mouth_opening(track.result()), hashes, crops, len(hashes) / seconds, renderer

    keep_all = args.images is not None
    held, held_hashes, held_crops, held_fps, renderer = render(keep_all)
    unheld, unheld_hashes, unheld_crops, unheld_fps, _ = render(keep_all, silence_hold=False)
    recording = mouth_opening(np.load(renderer.layout.landmarks_array))
    neutral = renderer.controls.neutral
    print(f"\n## {args.name}: {args.audio} with two {SILENCE_SECONDS:g} s silences ({len(held)} frames)\n")
    print(f"- the recording's inner-lip gap: median {np.nanmedian(recording):.3f}, 5th percentile "
          f"{np.nanpercentile(recording, 5):.3f} face widths; the hold's closed mouth (frame "
          f"{neutral.frame_index}): {neutral.opening:.3f}")
    print(f"- inside the inserted silences ({len(core)} fully held frames): with the hold mean "
          f"{np.nanmean(held[core]):.3f}, max {np.nanmax(held[core]):.3f}; without mean "
          f"{np.nanmean(unheld[core]):.3f}, max {np.nanmax(unheld[core]):.3f}")
    free = np.flatnonzero(weights == 0)
    same = sum(held_hashes[index] == unheld_hashes[index] for index in free)
    print(f"- frames held: {int((weights > 0).sum())} (the inserted silences and the audio's own pauses); "
          f"of the other {len(free)}, identical pixel for pixel with and without the hold: {same}")
    print(f"- render speed: {held_fps:.1f} frames/s with the hold, {unheld_fps:.1f} without "
          f"(face-mesh tracking of every frame included)")
    speaking = np.where(weights == 0, unheld, np.nan)
    widest = [int(index) for index in np.argsort(-np.nan_to_num(speaking, nan=-1.0))]
    scale_frames = [widest[0], next(index for index in widest if abs(index - widest[0]) > 10)]
    scaled_crops = {1.0: unheld_crops}
    for factor in (1.2, 0.8):
        scaled, _, crops, fps, _ = render(keep=scale_frames, silence_hold=False, mouth_scale=factor)
        scaled_crops[factor] = crops
        track = offset_correlation(scaled, unheld)
        open_frames = unheld > OPEN_MOUTH
        print(f"- --mouth_scale {factor}: mean gap ratio {np.nanmean(scaled) / np.nanmean(unheld):.3f} "
              f"({np.nanmean(scaled[open_frames]) / np.nanmean(unheld[open_frames]):.3f} on the "
              f"{int(open_frames.sum())} open frames), r {track['correlation']:.3f}, "
              f"best offset {track['best_offset']}, {fps:.1f} frames/s")
    if args.images:
        args.images.mkdir(parents=True, exist_ok=True)
        first = silences[0][0]
        picks = [first - 1, first + 2, first + 3, first + 4, first + 5, first + settle + 4]
        rows = [[face_tile(unheld_crops[index], f"{index - first:+d}") for index in picks],
                [face_tile(held_crops[index], f"{index - first:+d}  w {weights[index]:.2f}") for index in picks]]
        path = save_picture(args.images / "silence_hold.png", grid(rows, [
            "--no_silence_hold", "silence hold\n(default)\nw: hold weight"]))
        print(f"- wrote {path} ({path.stat().st_size // 1000} KB; frames {picks}: the first inserted silence "
              f"starts at frame {first})")
        rows = [[mouth_tile(scaled_crops[factor][index], f"frame {index}  x{factor:g}") for factor in (0.8, 1.0, 1.2)]
                for index in scale_frames]
        path = save_picture(args.images / "mouth_scale.png", grid(rows, ["--mouth_scale\n0.8 / 1.0 / 1.2", ""]))
        print(f"- wrote {path} ({path.stat().st_size // 1000} KB; frames {scale_frames})")


def faceless_image(args, scratch: Path) -> None:
    """The bundled clip with the face covered for a moment, rendered with NAME's checkpoint."""
    import cv2

    root = scratch / "covered"
    root.mkdir()
    video = root / "covered.mp4"
    run_ffmpeg(["-i", str(BUNDLED), "-vf", FACE_COVER, "-c:v", "libx264", "-crf", "18", "-c:a", "copy", str(video)],
               "cover the face", video)
    process_video(video, show_progress=False, max_missing_fraction=0.5, max_missing_seconds=1.0)
    layout = DatasetLayout(root)
    found = np.load(layout.face_found)
    checkpoint = resolve_checkpoint(checkpoint_dir(args.name, args.checkpoint_root), args.checkpoint)
    samples = load_audio(SPEECH)[:int(0.8 * 16000)]
    originals, outputs = [], []
    with load_renderer(dataset_dir=root, checkpoint=str(checkpoint), device=args.device) as renderer:
        presence = renderer.controls.presence
        for index, frame in enumerate(renderer.render(samples, start_frame=FACELESS_START)):
            source = pingpong_index(FACELESS_START + index, renderer.frame_count)
            if source in FACELESS_TILES and len(outputs) < len(FACELESS_TILES):
                box = renderer.boxes[source]
                recorded = cv2.imread(str(layout.frame_path(source)))
                if not found[source]:
                    assert np.array_equal(frame, recorded)
                share = "no face" if not found[source] else f"mouth {presence[source]:.2f}"
                outputs.append(face_tile(cut_crop(frame, box), share))
                originals.append(face_tile(cut_crop(recorded, box), f"frame {source}"))
    missing = np.flatnonzero(~found)
    path = save_picture(args.images / "faceless.png",
                        grid([originals, outputs], ["recording\n(face covered)", "output"]))
    print(f"- wrote {path} ({path.stat().st_size // 1000} KB; recording frames {FACELESS_TILES}; no face in "
          f"{missing.min()}-{missing.max()})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixture", type=Path, help="folder with talker_a.mp4 and talker_a.truth.npz")
    parser.add_argument("--name", help="a trained person to render (dataset/NAME, checkpoint/NAME)")
    parser.add_argument("--checkpoint", help="epoch, best, or .pth (default: the newest)")
    parser.add_argument("--audio", type=Path, default=SPEECH, help="speech to insert the silences into")
    parser.add_argument("--dataset_root", default="dataset")
    parser.add_argument("--checkpoint_root", default="checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--images", type=Path, help="with --name: write the README pictures here (docs/images)")
    args = parser.parse_args(argv)
    configure_console_logging(quiet=True)
    torch.set_num_threads(args.threads)
    if args.fixture:
        vad_accuracy(args.fixture)
    with tempfile.TemporaryDirectory() as scratch:
        control_costs(Path(scratch))
        if args.name:
            render_effects(args)
            if args.images:
                faceless_image(args, Path(scratch))


if __name__ == "__main__":
    main()
