"""Silence hold, mouth-opening control and frames without a face (issue 7).

The render tests go through the real render path (load_renderer -> render)
on the bundled clip. The person's U-Net is a tiny model set up as a copy of its
reference and fine-tuned on the CPU for a few dozen steps to redraw its reference crop (inference gives it
the frame's own crop as reference). This is what an overfit model does: the
mouth keeps the background frame's motion, so without the hold it moves
through silences (the failure the hold exists to fix), and its mouths open
and close visibly enough for the face mesh to measure the scale. Renders
that differ only after the model (hold on/off, scale factors) share the
model's outputs through a cache, so each frame goes through the U-Net once.
"""
import hashlib
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from data_utils import crop
from lipsync.render import silence
from data_utils.audio import load_audio
from data_utils.dataset import open_person
from data_utils.model_input import model_input_batch
from lipsync.core.errors import UserError
from lipsync.evaluate.landmark_track import detect_landmarks
from data_utils.ffmpeg import video_packet_times
from data_utils.layout import DatasetLayout
from lipsync.evaluate.metrics import mouth_opening, offset_correlation
from lipsync.render.faceless import load_face_found, presence_weights
from lipsync.render.mouth_scale import MOUTH_SCALE_LIMITS, opening_warp_maps
from lipsync.render.neutral_mouth import choose_neutral_frame
from lipsync.render import load_renderer
from lipsync.render.frames import pingpong_indices
from lipsync.render.silence import (HOLD_AFTER_SPEECH_FRAMES, LOOK_AHEAD_FRAMES, LOOK_BACK_FRAMES, RAMP_FRAMES,
                                RELEASE_BEFORE_SPEECH_FRAMES, SilenceHold, detect_speech, hold_weights,
                                silence_hold_weights)
from data_utils.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME, frame_count_for_samples
from inference_328 import main as inference_main
from models.unet_328 import WIDTHS, LipSyncUNet
from tests.conftest import CLIP, CLIP_TRUTH, HELDOUT_WAV, ffmpeg
from tests.training_helpers import person_with_ave_features, save_tiny_unet_checkpoint

NAME = "talker"
EPOCH = 30
COPY_STEPS = 30
COPY_LR = 1e-3                  # fine-tunes a working copy: small steps keep it one
COPY_BATCH = 2
COPY_HEAD_GAIN = 4.8            # sigmoid(4.8 (x - 1/2)) stays within 0.03 of x for x in 0.1 .. 0.9
COPY_CHECK_FRAMES = slice(None, None, 10)   # the frames on which the copy's error is measured
AVE_TEST_WIDTH = 0.125

# Ground truth of the bundled clip's audio: the '_' (silence) phonemes of the
# fixture's talker_a.truth.npz, shifted by the clip's start (0.8 s into talker_a).
CLIP_SILENCES_S = ((0.0, 0.213), (2.253, 2.395))
SILENCE_S = 1.0                 # each inserted pause
# Frames at least this far from a pause's edges are the hold's full part: the
# hangover plus the ramp after the voice stops (and one frame of slack: Silero's
# 32 ms steps can call the first silent frame speech), the ramp plus the release
# before it returns.
DETECTOR_SLACK_FRAMES = 1
HOLD_SETTLE_FRAMES = HOLD_AFTER_SPEECH_FRAMES + RAMP_FRAMES + DETECTOR_SLACK_FRAMES
HOLD_RELEASE_FRAMES = RAMP_FRAMES + RELEASE_BEFORE_SPEECH_FRAMES
OPEN_MOUTH = 0.01               # face widths: a mouth measured wider than this is open
CLOSED_JAW = 0.01               # the fixture's jaw_open below this: a closed mouth


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- the person

def start_as_a_copy(model):
    """Set ``model``'s full-resolution path to hand its reference crop's RGB to the output.

    The stem's convolution passes the reference channels (image6's first three) on, the
    inverted-residual block after it and the one after the decoder's last merge start as
    identities (their last batch norm zero), that merge takes the stem's skip and nothing from
    below, and the head maps x to sigmoid(COPY_HEAD_GAIN (x - 1/2)), close to x. The rest keeps
    its random weights. Batch norm must stay in eval mode (statistics 0 and 1) for this to hold.
    """
    rgb = model.head.out_channels
    with torch.no_grad():
        stem_conv, merge = model.stem[0][0], model.up[-1].merge[0]
        stem_conv.weight.zero_()
        merge.weight.zero_()
        centre = stem_conv.kernel_size[0] // 2
        skip_start = merge.in_channels - model.widths[0]           # the merge sees cat([upsampled, skip])
        model.head.weight.zero_()
        model.head.bias.fill_(-COPY_HEAD_GAIN / 2)
        for channel in range(rgb):
            stem_conv.weight[channel, channel, centre, centre] = 1.0
            merge.weight[channel, skip_start + channel] = 1.0
            model.head.weight[channel, channel] = COPY_HEAD_GAIN
        for block in (model.stem[1], model.up[-1].blocks):
            block.block[-1].weight.zero_()
            block.block[-1].bias.zero_()


def copy_error(model, crops, audio):
    """Mean |output - reference| of ``model`` (as it renders, eval mode) on COPY_CHECK_FRAMES."""
    with torch.no_grad():
        batch = torch.from_numpy(crops[COPY_CHECK_FRAMES])
        image6, truth = model_input_batch(batch, batch)
        return float((model(image6, torch.from_numpy(audio[COPY_CHECK_FRAMES])) - truth).abs().mean())


def train_copying_unet(root, steps=COPY_STEPS):
    """A tiny U-Net that redraws its reference crop (the input inference gives it), mouth included.

    Trained from random weights for a few dozen steps it drew smudges whose measured opening
    depended on chance: a thin lip gap came out closed or open depending on the seed, or on a
    1e-6 change of the initial weights (the size of the rounding differences between torch
    builds), and batch norm's running statistics, behind the fast-moving weights, smudged it
    further at eval time. So the model starts as a copy (``start_as_a_copy``) and training,
    with batch norm frozen, fine-tunes it: the model that renders is the one the loss saw, and
    its mouths follow the recording's whatever the seed.
    """
    person = open_person(root, "ave", show_progress=False)
    crops = np.stack([person.crop(index) for index in range(person.frame_count)])
    audio = np.stack([person.audio(index) for index in range(person.frame_count)])
    torch.manual_seed(0)
    model = LipSyncUNet("ave", person.audio_shape, WIDTHS["tiny"])
    model.eval()                                # batch norm frozen, see the docstring
    untrained_error = copy_error(model, crops, audio)
    start_as_a_copy(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=COPY_LR)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        picked = rng.choice(len(crops), COPY_BATCH, replace=False)
        batch = torch.from_numpy(crops[picked])
        image6, truth = model_input_batch(batch, batch)
        loss = (model(image6, torch.from_numpy(audio[picked])) - truth).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    trained_error = copy_error(model, crops, audio)
    print(f"copy error: untrained {untrained_error:.4f}, trained {trained_error:.4f}")
    assert trained_error < 0.3 * untrained_error
    return model, person.audio_shape


@pytest.fixture(scope="module")
def person(processed_clip, tmp_path_factory):
    person = person_with_ave_features(processed_clip, tmp_path_factory.mktemp("mouth_control"), NAME,
                                      AVE_TEST_WIDTH)
    model, audio_shape = train_copying_unet(person.root)
    person.checkpoint = save_tiny_unet_checkpoint(model, person, NAME, EPOCH)
    return person


class CachedUNet:
    """The renderer's model with its outputs remembered per (crop, audio window)."""

    def __init__(self, unet, cache):
        self.unet, self.cache = unet, cache

    @staticmethod
    def key(crop_u8, audio):
        return hashlib.blake2b(crop_u8.tobytes() + audio.tobytes(), digest_size=16).digest()

    def __call__(self, crops, audio):
        keys = [self.key(one_crop, one_audio) for one_crop, one_audio in zip(crops, audio)]
        missing = [index for index, key in enumerate(keys) if key not in self.cache]
        if missing:
            for index, image in zip(missing, self.unet(crops[missing], audio[missing])):
                self.cache[keys[index]] = image
        return np.stack([self.cache[key] for key in keys])


@pytest.fixture(scope="module")
def unet_cache():
    return {}


@pytest.fixture(scope="module")
def make_renderer(person, unet_cache):
    made = []

    def make(dataset_dir=None, **options):
        if dataset_dir is None:
            renderer = load_renderer(NAME, dataset_root=person.dataset_root, checkpoint_root=person.checkpoint_root,
                                     device="cpu", **options)
        else:
            renderer = load_renderer(dataset_dir=dataset_dir, checkpoint=person.checkpoint, device="cpu", **options)
        renderer.unet = CachedUNet(renderer.unet, unet_cache)
        made.append(renderer)
        return renderer

    yield make
    for renderer in made:
        renderer.close()


def openings(frames):
    """(frames,) inner-lip gap in face widths, measured by the face mesh on the output frames."""
    return mouth_opening(detect_landmarks(frames))


# ---------------------------------------------------------------------------- voice activity

def speech_with_pauses():
    """The clip's audio with a 1 s pause inserted at 2 s: (samples, truth silent per frame)."""
    speech = load_audio(CLIP)
    cut = 2 * SAMPLE_RATE
    samples = np.concatenate([speech[:cut], np.zeros(int(SILENCE_S * SAMPLE_RATE), np.float32), speech[cut:]])
    silent_spans = [(start if start < 2 else start + SILENCE_S, stop if stop <= 2 else stop + SILENCE_S)
                    for start, stop in CLIP_SILENCES_S] + [(2.0, 2.0 + SILENCE_S)]
    silent_samples = np.zeros(len(samples), bool)
    for start, stop in silent_spans:
        silent_samples[int(round(start * SAMPLE_RATE)):int(round(stop * SAMPLE_RATE))] = True
    # Frame i: the 40 ms centred on its instant, silent when most of it is.
    half = SAMPLES_PER_FRAME // 2
    padded = np.concatenate([np.ones(half, bool), silent_samples, np.ones(SAMPLES_PER_FRAME, bool)])
    count = frame_count_for_samples(len(samples))
    truth = np.array([padded[i * SAMPLES_PER_FRAME:i * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME].mean() > 0.5
                      for i in range(count)])
    return samples, truth


@pytest.mark.parametrize("vad", ["silero", "energy"])
def test_voice_activity_matches_the_phoneme_truth(vad):
    samples, silent = speech_with_pauses()
    speech = detect_speech(samples, vad)
    assert len(speech) == len(silent) == 125
    accuracy = float(np.mean(speech != silent))
    print(f"{vad}: frame accuracy {accuracy:.3f}")
    assert accuracy >= 0.93
    held = hold_weights(speech) > 0
    assert not (held & ~silent).any()                          # never holds the mouth during speech
    inserted = np.arange(50 + HOLD_SETTLE_FRAMES, 75 - HOLD_RELEASE_FRAMES)
    assert (hold_weights(speech)[inserted] == 1).all()         # the inserted second is held


def test_silero_keeps_pauses_apart_from_background_noise():
    """White noise 20 dB below the speech: the energy gate's weakness, not Silero's."""
    samples, silent = speech_with_pauses()
    rng = np.random.default_rng(0)
    speech_rms = np.sqrt(np.mean(samples[np.repeat(~silent, SAMPLES_PER_FRAME)[:len(samples)]] ** 2))
    noisy = samples + rng.standard_normal(len(samples)).astype(np.float32) * speech_rms / 10
    speech = detect_speech(noisy, "silero")
    assert np.mean(speech != silent) >= 0.9
    weights = hold_weights(speech)
    assert not ((weights > 0) & ~silent).any()
    assert (weights[50 + HOLD_SETTLE_FRAMES:75 - HOLD_RELEASE_FRAMES] == 1).all()


def test_unknown_or_missing_detector_is_one_clear_line(monkeypatch):
    with pytest.raises(UserError, match="unknown --vad 'webrtc'"):
        silence.make_detector("webrtc")
    monkeypatch.setattr(silence, "silero_available", lambda: False)
    assert silence.make_detector(None).name == "energy"        # falls back, with a warning
    monkeypatch.setitem(sys.modules, "silero_vad", None)       # asked for by name but not installed
    with pytest.raises(UserError, match="needs the silero-vad package — run: pip install -r requirements.txt"):
        silence.make_detector("silero")


# ---------------------------------------------------------------------------- hold weights

def test_hold_weights_ramp_smoothly_inside_pauses_only():
    pattern = [(True, 20), (False, 25), (True, 10), (False, 3), (True, 10), (False, 8), (True, 1),
               (False, 8), (True, 12), (False, 12)]
    speech = np.concatenate([np.full(count, value) for value, count in pattern])
    weights = hold_weights(speech)
    edges = np.cumsum([count for _, count in pattern])
    words = speech.copy()
    words[edges[5]] = False                                    # the one-frame click
    assert not weights[words].any()                            # speech frames keep the model's mouth
    pause = weights[20:45]
    assert pause[0] == 0 and (pause[1 + RAMP_FRAMES:25 - 2 - RAMP_FRAMES] == 1).all()
    assert (pause[-2:] == 0).all()                             # released before the voice returns
    rising = pause[1:1 + RAMP_FRAMES]
    assert np.all(np.diff(rising) > 0) and rising[0] > 0 and rising[-1] < 1
    np.testing.assert_array_equal(pause[-2 - RAMP_FRAMES:-2], rising[::-1])   # the same ramp, mirrored
    assert np.abs(np.diff(weights)).max() < 0.32               # no pop: at most a third per frame
    assert not weights[edges[2]:edges[3]].any()                # a 3-frame gap is inside speech
    # A one-frame click does not split the 17-frame pause around it.
    assert weights[edges[4]:edges[7]].max() == 1 and weights[edges[5]] > 0
    assert (weights[-12 + 1 + RAMP_FRAMES:] == 1).all()        # a pause at the end holds to the end
    assert (hold_weights(np.zeros(30, bool)) == 1).all()       # silent audio: a closed mouth throughout
    assert hold_weights(np.zeros(0, bool)).shape == (0,)


def test_weights_from_a_stretch_equal_the_whole_audios():
    """What makes streaming exact: a frame's weight depends only on the frames around it."""
    rng = np.random.default_rng(1)
    for _ in range(40):
        runs = rng.integers(1, 12, 30)
        speech = np.repeat(rng.random(30) < 0.5, runs)
        whole = hold_weights(speech)
        for frame in range(len(speech)):
            low, high = max(0, frame - LOOK_BACK_FRAMES), min(len(speech), frame + LOOK_AHEAD_FRAMES + 1)
            part = hold_weights(speech[low:high], starts_at_audio_start=low == 0,
                                ends_at_audio_end=high == len(speech))
            assert part[frame - low] == whole[frame], (speech.astype(int).tolist(), frame)


@pytest.mark.parametrize("vad", ["silero", "energy"])
def test_audio_in_pieces_gives_the_whole_files_weights(vad):
    samples, _ = speech_with_pauses()
    whole = silence_hold_weights(samples, vad)
    rng = np.random.default_rng(2)
    hold, streamed, position = SilenceHold(vad), [], 0
    while position < len(samples):
        size = int(rng.integers(1, 4000))
        hold.push(samples[position:position + size])
        position += size
        if hold.ready_frames > len(streamed):
            streamed.extend(hold.weights(len(streamed), hold.ready_frames))
        assert len(streamed) >= position // SAMPLES_PER_FRAME - LOOK_AHEAD_FRAMES - 2
    hold.finish()
    streamed.extend(hold.weights(len(streamed), hold.ready_frames))
    assert np.array_equal(np.asarray(streamed, np.float32), whole) and whole.max() == 1


# ---------------------------------------------------------------------------- the silence hold, rendered

PIECES_S = (0.6, 0.6, 0.4)      # held-out speech between two inserted 1 s pauses


@pytest.fixture(scope="module")
def paused_audio():
    """Held-out speech with two inserted 1 s silences: (samples, [(first, stop) frames of each silence])."""
    speech = load_audio(HELDOUT_WAV)
    parts, silences, position, used = [], [], 0, 0
    for index, seconds in enumerate(PIECES_S):
        piece = speech[used:used + int(seconds * SAMPLE_RATE)]
        used += len(piece)
        parts.append(piece)
        position += len(piece)
        if index < len(PIECES_S) - 1:
            parts.append(np.zeros(int(SILENCE_S * SAMPLE_RATE), np.float32))
            silences.append((position // SAMPLES_PER_FRAME, (position + int(SILENCE_S * SAMPLE_RATE)) // SAMPLES_PER_FRAME))
            position += int(SILENCE_S * SAMPLE_RATE)
    return np.concatenate(parts), silences


@pytest.fixture(scope="module")
def hold_renders(make_renderer, paused_audio):
    samples, silences = paused_audio
    with_hold = make_renderer()
    frames = list(with_hold.render(samples))
    without = list(make_renderer(silence_hold=False).render(samples))
    return SimpleNamespace(frames=frames, without=without, renderer=with_hold, silences=silences,
                           opening=openings(frames), opening_without=openings(without))


def test_silences_show_the_persons_closed_mouth_and_speech_is_unchanged(person, hold_renders, paused_audio):
    samples, silences = paused_audio
    frames, without = hold_renders.frames, hold_renders.without
    assert len(frames) == len(without) == frame_count_for_samples(len(samples)) == 90
    # The level of the recording's own closed mouth: the frames its ground truth calls closed
    # (jaw_open 0 in the generator's mouth state), measured with the same face mesh.
    recording_opening = mouth_opening(np.load(person.layout.landmarks_array))
    closed = np.load(CLIP_TRUTH)["jaw_open"] < CLOSED_JAW
    closed_level = float(recording_opening[closed].max())
    speaking_level = float(np.median(recording_opening))
    assert closed_level < 0.5 * speaking_level
    for first, stop in silences:
        core = np.arange(first + HOLD_SETTLE_FRAMES, stop - HOLD_RELEASE_FRAMES)
        held, unheld = hold_renders.opening[core], hold_renders.opening_without[core]
        print(f"silence {first}-{stop}: held {np.round(held, 3)}, without hold {np.round(unheld, 3)}, "
              f"recording closed <= {closed_level:.3f}")
        assert np.isfinite(held).all()
        assert held.max() <= closed_level + 0.005               # the recording's closed mouth
        assert np.mean(unheld > OPEN_MOUTH) > 0.5               # without the hold it kept moving
    # Speech frames are exactly the render without the hold (2 frames of slack for the 40 ms windows).
    near = np.zeros(len(frames), bool)
    for first, stop in silences:
        near[max(0, first - 2):stop + 2] = True
    for index in np.flatnonzero(~near):
        assert np.array_equal(frames[index], without[index]), index
    assert hold_renders.renderer.controls.neutral is not None


def test_hold_fades_in_and_out_without_a_jump(hold_renders, paused_audio):
    """Frame-to-frame change of the mouth region at each pause's edges stays like speech's."""
    frames, without = hold_renders.frames, hold_renders.without
    boxes = np.load(DatasetLayout(hold_renders.renderer.layout.root).crop_boxes)
    sources = pingpong_indices(0, len(frames), len(boxes))

    def mouth(frame, index):
        return crop.cut_crop(frame, boxes[sources[index]])[crop.INNER, crop.INNER][crop.MASK_TOP:crop.MASK_BOTTOM]

    change = [np.abs(mouth(frames[k], k).astype(float) - mouth(frames[k - 1], k - 1)).mean() for k in range(1, len(frames))]
    speech_change = [np.abs(mouth(without[k], k).astype(float) - mouth(without[k - 1], k - 1)).mean()
                     for k in range(1, len(frames))]
    assert max(change) <= 1.5 * max(speech_change)


def test_streamed_audio_gives_the_same_held_frames(make_renderer, hold_renders, paused_audio):
    samples, _ = paused_audio
    stream = hold_renders.renderer.stream()
    streamed = []
    for begin in range(0, len(samples), 1111):
        streamed.extend(stream.push(samples[begin:begin + 1111]))
    streamed.extend(stream.finish())
    assert stream.held_frames > 30
    assert len(streamed) == len(hold_renders.frames)
    for mine, reference in zip(streamed, hold_renders.frames):
        assert np.abs(mine.astype(int) - reference).max() <= 1


def test_neutral_frame_is_silent_closed_and_settled():
    track = np.array([0.05, 0.04, 0.0, 0.05, 0.03, 0.002, 0.001, 0.003, 0.04, 0.0005, 0.05])
    count = len(track)
    landmarks = np.zeros((count, 478, 2), np.float32)
    landmarks[:, 234] = (0, 100)
    landmarks[:, 454] = (100, 100)                              # face width 100 px
    landmarks[:, 13] = (50, 150)
    landmarks[:, 14] = np.stack([np.full(count, 50.0), 150 + 100 * track], axis=1)
    speech = np.arange(count) < 4                               # frame 2 is closed but speaking (an "m")
    found = np.ones(count, bool)
    # Frame 9 is the most closed silent frame, but only for an instant; frame 6 is closed at rest.
    assert choose_neutral_frame(landmarks, found, speech) == 6
    found[6] = False
    assert choose_neutral_frame(landmarks, found, speech) == 5
    assert choose_neutral_frame(landmarks, np.ones(count, bool), np.ones(count, bool)) == 6   # no silence at all


# ---------------------------------------------------------------------------- mouth opening

def synthetic_mouth():
    """A 320 square with lips, a dark 20 px gap and a chin line."""
    image = np.full((crop.INNER_SIZE, crop.INNER_SIZE, 3), 180, np.uint8)
    image[140:150, 110:210] = (60, 60, 160)
    image[150:170, 115:205] = 30
    image[170:182, 110:210] = (60, 60, 170)
    image[228:232, 100:220] = 90
    points = dict(upper=(160, 150), lower=(160, 170), left=(112, 160), right=(208, 160), chin=(160, 230))
    return image, points


@pytest.mark.parametrize("factor", [0.8, 1.2, 1.5])
def test_warp_scales_the_gap_and_stays_inside_the_repainted_region(factor):
    image, points = synthetic_mouth()
    map_x, map_y = opening_warp_maps(**points, factor=factor, feather_px=12.0)
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    column = warped[:, 160, 0].astype(int)
    gap = np.flatnonzero(column < 45)
    assert abs((gap.max() + 1 - gap.min()) - 20 * factor) <= 1
    assert abs(gap.min() - 150) <= 2                          # the upper lip stays (but for the edge margin)
    # The lips keep their thickness but for the stretched margin (a quarter of the gap) at their edge.
    lips = np.flatnonzero((column > 50) & (column < 70))
    assert abs(len(lips[lips < gap.min()]) - 10) <= 2
    assert abs(len(lips[lips > gap.max()]) - (12 + 5 * (factor - 1))) <= 1.5
    assert abs(np.flatnonzero(column == 90).min() - (228 + 30 * (factor - 1))) <= 1          # the jaw moves as one
    rim = crop.inner_mask(12.0) < 1
    assert np.array_equal(warped[rim], image[rim])            # nothing moves where paste-back blends


def test_warp_leaves_closed_mouths_and_factor_one_alone():
    image, points = synthetic_mouth()
    assert opening_warp_maps(**{**points, "lower": (160, 150.5)}, factor=1.3, feather_px=12.0) is None
    map_x, map_y = opening_warp_maps(**points, factor=1.0, feather_px=12.0)
    same = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert np.array_equal(same, image)


class RecordingMouth:
    """Stand-in for the U-Net that paints back the frame's own mouth: a perfect copy model.

    The tiny model's blurry mouths make the face mesh's reading of a 20 % change
    noisy; through this stand-in the same render path (stream, controls, warp,
    paste-back) works on the recording's sharp mouths.
    """

    def __call__(self, crops, audio):
        return np.ascontiguousarray(crops[:, crop.INNER, crop.INNER])


@pytest.fixture(scope="module")
def scale_renders(make_renderer):
    samples = load_audio(HELDOUT_WAV)                         # 2 s of unseen speech: 50 frames
    renders = {}
    for mouths in ("recording", "trained"):
        for factor in (1.0, 1.2, 0.8):
            renderer = make_renderer(mouth_scale=factor, silence_hold=False)
            if mouths == "recording":
                renderer.unet = RecordingMouth()
            frames = list(renderer.render(samples))
            renders[mouths, factor] = SimpleNamespace(frames=frames, opening=openings(frames),
                                                      scaler=renderer.controls.scaler, renderer=renderer)
    return renders


def opening_change(renders, mouths, factor):
    base, scaled = renders[mouths, 1.0].opening, renders[mouths, factor].opening
    assert len(base) == len(scaled) == 50
    open_frames = np.isfinite(base) & np.isfinite(scaled) & (base > OPEN_MOUTH)
    assert open_frames.sum() >= 30                            # the render's mouth does open
    change = SimpleNamespace(open_ratio=scaled[open_frames].mean() / base[open_frames].mean(),
                             ratio=np.nanmean(scaled) / np.nanmean(base), **offset_correlation(scaled, base))
    print(f"{mouths} mouths, --mouth_scale {factor}: opening ratio {change.ratio:.3f} "
          f"({change.open_ratio:.3f} on open frames), r {change.correlation:.3f}, best offset {change.best_offset}")
    return change


@pytest.mark.parametrize("factor", [1.2, 0.8])
def test_mouth_scale_scales_the_opening_and_keeps_sync(scale_renders, factor):
    change = opening_change(scale_renders, "recording", factor)
    assert abs(change.ratio / factor - 1) <= 0.15
    assert abs(change.open_ratio / factor - 1) <= 0.15
    assert change.correlation >= 0.9 and change.best_offset == 0
    assert scale_renders["recording", factor].scaler.frames_scaled >= 0.8 * 50


@pytest.mark.parametrize("factor", [1.2, 0.8])
def test_mouth_scale_acts_on_what_the_trained_model_draws(scale_renders, factor):
    """The tiny model's mouths: the opening moves the right way and stays in time."""
    change = opening_change(scale_renders, "trained", factor)
    assert (change.open_ratio - 1) / (factor - 1) > 0.25       # at least a quarter of the change is seen
    assert change.best_offset == 0
    assert scale_renders["trained", factor].scaler.frames_scaled >= 0.8 * 50


def test_mouth_scale_changes_only_the_inside_of_the_repainted_region(scale_renders):
    renderer = scale_renders["trained", 1.0].renderer
    sources = pingpong_indices(0, 50, renderer.frame_count)
    feather = renderer.options.feather_px
    # The feathered rim, less the 3 pixels next to the moving part that resampling reaches.
    still = np.ones((crop.CROP_SIZE, crop.CROP_SIZE), bool)
    still[crop.INNER, crop.INNER] = crop.inner_mask(feather - 3) < 1
    changed = 0
    for index, (base, wider) in enumerate(zip(scale_renders["trained", 1.0].frames,
                                              scale_renders["trained", 1.2].frames)):
        box = renderer.boxes[sources[index]]
        x0, y0, x1, y1 = box
        outside = np.ones(base.shape[:2], bool)
        outside[max(y0, 0):y1, max(x0, 0):x1] = False
        assert np.array_equal(base[outside], wider[outside])
        difference = np.abs(crop.cut_crop(base, box).astype(int) - crop.cut_crop(wider, box))
        assert difference[still].max() <= 2                   # resampling: a grey level or two
        changed += int(difference.max() > 20)
    assert changed >= 30


def test_mouth_scale_outside_its_range_is_one_line(person, capsys):
    low, high = MOUTH_SCALE_LIMITS
    with pytest.raises(SystemExit) as stopped:
        inference_main(["--name", NAME, "--audio_path", str(HELDOUT_WAV), "--mouth_scale", "3",
                        "--dataset_root", str(person.dataset_root), "--checkpoint_root", str(person.checkpoint_root)])
    assert stopped.value.code == 2
    assert f"error: --mouth_scale must be between {low:g} and {high:g}, got 3" in capsys.readouterr().err


# ---------------------------------------------------------------------------- frames without a face

FACELESS_S = ((3.36, 3.68),)    # the face is covered in frames 84 .. 91 (25 fps)


@pytest.fixture(scope="module")
def faceless(tmp_path_factory):
    """The bundled clip with the face covered by a black box for a moment, processed with relaxed limits."""
    from data_utils.preprocess import process_video

    root = tmp_path_factory.mktemp("faceless") / "covered"
    root.mkdir()
    video = root / "covered.mp4"
    enable = "+".join(f"between(t,{start},{stop})" for start, stop in FACELESS_S)
    ffmpeg("-i", CLIP, "-vf", f"drawbox=x=96:y=40:w=320:h=430:color=black:t=fill:enable='{enable}'",
           "-c:v", "libx264", "-crf", "18", "-c:a", "copy", video)
    process_video(video, show_progress=False, max_missing_fraction=0.5, max_missing_seconds=1.0)
    return root


def test_frames_without_a_face_pass_through_untouched(make_renderer, faceless):
    layout = DatasetLayout(faceless)
    found = np.load(layout.face_found)
    missing = np.flatnonzero(~found)
    assert len(found) == 100 and 6 <= len(missing) <= 10 and missing.min() >= 83 and missing.max() <= 92
    renderer = make_renderer(dataset_dir=faceless)
    samples = load_audio(HELDOUT_WAV)[:int(1.6 * SAMPLE_RATE)]  # 40 frames from frame 75: 75..99, 98..85
    frames = list(renderer.render(samples, start_frame=75))
    assert len(frames) == frame_count_for_samples(len(samples)) == 40
    sources = pingpong_indices(75, 40, 100)
    assert list(sources[:27]) == list(range(75, 100)) + [98, 97]
    fade = renderer.options.faceless_fade
    distance = np.array([np.abs(missing - source).min() for source in sources])
    passed = 0
    for frame, source, away in zip(frames, sources, distance):
        original = cv2.imread(str(layout.frame_path(source)))
        if away == 0:
            assert np.array_equal(frame, original)           # bit-identical, on the way out and back
            passed += 1
        elif away > fade:
            assert np.abs(frame.astype(int) - original).max() > 10   # the mouth is painted
    assert passed == int((distance == 0).sum()) > len(missing)     # met on the way out and on the way back
    # Fading: the share of the generated mouth grows with the distance from the covered stretch.
    weights = presence_weights(found, fade)
    assert weights[missing].max() == 0 and 0 < weights[missing.min() - 1] < weights[missing.min() - fade] < 1

    # --paint_faceless: every frame gets the whole generated mouth, the covered ones and their neighbours too.
    painter = make_renderer(dataset_dir=faceless, paint_faceless=True)
    assert (painter.controls.presence == 1).all()
    painted = list(painter.render(samples, start_frame=75))
    for frame, passed_through, away in zip(painted, frames, distance):
        if 0 < away <= fade:
            assert not np.array_equal(frame, passed_through)   # no fade-out next to the covered frames


def test_script_renders_a_recording_with_faceless_frames(person, faceless, tmp_path, capsys):
    audio = tmp_path / "short.wav"
    ffmpeg("-i", HELDOUT_WAV, "-t", "0.6", audio)
    output = tmp_path / "out.mp4"
    inference_main(["--name", NAME, "--dataset_dir", str(faceless), "--checkpoint", str(person.checkpoint),
                    "--audio_path", str(audio), "--output", str(output), "--start_frame", "80", "--device", "cpu",
                    "--no_progress", "--mouth_scale", "1.2", "--faceless_fade", "0", "--vad", "energy"])
    assert len(video_packet_times(output)) == 15
    assert f"wrote {output}" in capsys.readouterr().out


def test_script_options_reach_the_render_api(monkeypatch):
    import inference_328

    seen = {}

    def fake_load_renderer(name, options):
        seen.update(options.as_dict())
        raise UserError("stop here")

    monkeypatch.setattr(inference_328, "load_renderer", fake_load_renderer)
    with pytest.raises(SystemExit):
        inference_main(["--name", NAME, "--audio_path", str(HELDOUT_WAV)])
    assert (seen["silence_hold"], seen["vad"], seen["mouth_scale"], seen["paint_faceless"], seen["faceless_fade"]) \
        == (True, None, 1.0, False, 3)                        # the defaults
    with pytest.raises(SystemExit):
        inference_main(["--name", NAME, "--audio_path", str(HELDOUT_WAV), "--no_silence_hold", "--vad", "energy",
                        "--mouth_scale", "0.8", "--paint_faceless", "--faceless_fade", "5"])
    assert (seen["silence_hold"], seen["vad"], seen["mouth_scale"], seen["paint_faceless"], seen["faceless_fade"]) \
        == (False, "energy", 0.8, True, 5)


def test_datasets_without_face_found_paint_every_frame(tmp_path):
    layout = DatasetLayout(tmp_path)
    assert load_face_found(layout, 5).all()
    np.save(layout.face_found, np.ones(4, bool))
    with pytest.raises(UserError, match="face_found.npy has 4 frames but crop_boxes.npy has 5"):
        load_face_found(layout, 5)
