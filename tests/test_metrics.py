"""Metrics on known cases built from the real bundled clip (issue 6).

The clip's truth file says how open the mouth is in every 25 fps frame, so the
metric code runs on real frames and real face-mesh landmarks:
- the video against itself: LMD 0, offset 0, perfect image scores;
- against a copy delayed (or advanced) by 3 frames: offset +3 (-3);
- against a copy whose mouth never moves: no correlation, hardly any motion.
"""
import cv2
import numpy as np
import pytest

from data_utils import crop
from lipsync.evaluate import metrics
from data_utils.audio import load_audio
from lipsync.evaluate.landmark_track import detect_landmarks
from data_utils.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME
from tests.conftest import CLIP_FRAMES_25FPS, CLIP_TRUTH

SHIFT = 3


class Clip:
    """The processed clip's frames, crop boxes, audio, and landmarks of its variants."""

    def __init__(self, root):
        self.root = root
        self.frames = [cv2.imread(str(root / "full_body_img" / f"{index}.jpg"))
                       for index in range(CLIP_FRAMES_25FPS)]
        self.boxes = np.load(root / "crop_boxes.npy")
        self.samples = load_audio(root / "aud.wav")
        self.truth = np.load(CLIP_TRUTH)
        self.landmarks = detect_landmarks(self.frames)
        self.mouths = metrics.mouth_boxes(self.landmarks, self.frames[0].shape)

    def delayed(self, shift):
        """Frame t shows real frame t - shift (edges repeat the first/last frame)."""
        count = len(self.frames)
        return [self.frames[min(max(index - shift, 0), count - 1)] for index in range(count)]

    def frozen_mouth(self):
        """Every frame with frame 0's lower face (a closed mouth) pasted in, following the head."""
        still = crop.cut_crop(self.frames[0], self.boxes[0])
        return [crop.paste_crop(frame.copy(), still, box) for frame, box in zip(self.frames, self.boxes)]


@pytest.fixture(scope="module")
def clip(processed_clip):
    return Clip(processed_clip)


@pytest.fixture(scope="module")
def delayed(clip):
    frames = clip.delayed(SHIFT)
    return frames, detect_landmarks(frames)


@pytest.fixture(scope="module")
def frozen(clip):
    frames = clip.frozen_mouth()
    return frames, detect_landmarks(frames)


def changes(frames, boxes):
    return [metrics.mouth_change(frames[index - 1], frames[index], boxes[index]) for index in range(1, len(frames))]


# ---------------------------------------------------------------------------- the measures themselves

def test_mouth_opening_follows_the_known_jaw_of_the_clip(clip):
    opening = metrics.mouth_opening(clip.landmarks)
    assert opening.shape == (CLIP_FRAMES_25FPS,)
    assert np.all(np.isfinite(opening)) and opening.min() >= 0
    jaw = clip.truth["jaw_open"]
    assert metrics.correlation(opening, jaw) > 0.85
    # closed at the start (silence), clearly open at the widest phoneme
    assert opening[:4].max() < 0.01 and opening[np.argmax(jaw)] > 0.05
    scores = metrics.offset_correlation(opening, jaw)
    assert scores["best_offset"] == 0


def test_lip_landmarks_match_the_clip_truth(clip):
    """The scheme's lip indices are the truth's mediapipe lip indices, and LMD
    of the detected lips against the true ones is a small fraction of the face."""
    truth_index = [int(index) for index in clip.truth["lips_idx"]]
    assert sorted(truth_index) == sorted(crop.MEDIAPIPE.lips)
    true_landmarks = clip.landmarks.copy()
    true_landmarks[:, truth_index] = clip.truth["lips_xy"]
    per_frame = metrics.lip_distance(clip.landmarks, true_landmarks)
    assert 0 < per_frame.mean() < 0.02
    moved = true_landmarks.copy()
    moved[:, truth_index] += np.array([0.05, 0.0]) * crop.face_width(true_landmarks)[:, None, None]
    assert metrics.lip_distance(true_landmarks, moved) == pytest.approx(0.05, rel=1e-4)


def test_psnr_and_ssim_known_values(clip):
    frame = clip.frames[10]
    assert metrics.psnr(frame, frame) == metrics.MAX_PSNR_DB
    assert metrics.ssim(frame, frame) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    sigma = 4.0
    noisy = np.clip(frame + rng.normal(0, sigma, frame.shape), 0, 255).astype(np.uint8)
    expected = 10 * np.log10(255 ** 2 / np.mean((noisy.astype(float) - frame) ** 2))
    assert metrics.psnr(noisy, frame) == pytest.approx(expected)
    assert 10 * np.log10(255 ** 2 / sigma ** 2) - 1 < metrics.psnr(noisy, frame) < 10 * np.log10(255 ** 2 / sigma ** 2) + 1
    noisier = np.clip(frame + rng.normal(0, 4 * sigma, frame.shape), 0, 255).astype(np.uint8)
    assert 1 > metrics.ssim(noisy, frame) > metrics.ssim(noisier, frame) > 0
    # a region: only the mouth box is compared
    box = clip.mouths[10]
    damaged = frame.copy()
    damaged[:box[1]] = 0                          # everything above the mouth box destroyed
    assert metrics.psnr(damaged, frame, box) == metrics.MAX_PSNR_DB
    assert metrics.psnr(damaged, frame) < 20
    with pytest.raises(ValueError, match="differ in size"):
        metrics.psnr(frame[:100], frame)


def test_mouth_boxes_hold_the_lips_inside_the_frame(clip):
    boxes = clip.mouths
    assert boxes.shape == (CLIP_FRAMES_25FPS, 4) and boxes.dtype == np.int32
    lips = clip.landmarks[:, list(crop.MEDIAPIPE.lips)]
    assert np.all(lips[..., 0] > boxes[:, None, 0]) and np.all(lips[..., 0] < boxes[:, None, 2])
    assert np.all(lips[..., 1] > boxes[:, None, 1]) and np.all(lips[..., 1] < boxes[:, None, 3])
    height, width = clip.frames[0].shape[:2]
    assert boxes[:, [0, 1]].min() >= 0 and boxes[:, 2].max() <= width and boxes[:, 3].max() <= height
    # the mouth, not the face: narrower than the face, wider than the lips alone
    face = crop.face_width(clip.landmarks)
    assert np.all(boxes[:, 2] - boxes[:, 0] < 0.8 * face)
    # a landmark far outside the frame is clipped
    wild = clip.landmarks[:1].copy()
    wild[0, crop.MEDIAPIPE.lips[0]] = (-500, 5000)
    x0, y0, x1, y1 = metrics.mouth_boxes(wild, (512, 512))[0]
    assert (x0, y1) == (0, 512)


def test_correlation_edge_cases():
    assert metrics.correlation([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert metrics.correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert metrics.correlation([1, 2, 3, 4], [5, 5, 5, 5]) == 0.0       # a mouth that never moves
    assert np.isnan(metrics.correlation([1, np.nan, 3, np.nan], [1, 2, 3, 4]))  # 2 pairs only
    assert metrics.correlation([1, np.nan, 3, 4, 6], [1, 2, 3, 4, 6]) == pytest.approx(1.0)
    assert metrics.max_offset_for(100) == metrics.MAX_SYNC_OFFSET_FRAMES
    assert metrics.max_offset_for(30) == 10 and metrics.max_offset_for(2) == 0


# ---------------------------------------------------------------------------- known cases on real video

def test_video_against_itself(clip):
    frame_scores = [(metrics.psnr(frame, frame, box), metrics.ssim(frame, frame, box))
                    for frame, box in zip(clip.frames[::10], clip.mouths[::10])]
    assert all(value == (metrics.MAX_PSNR_DB, pytest.approx(1.0)) for value in frame_scores)
    again = detect_landmarks(clip.frames)                # a second, independent detection pass
    scores = metrics.lip_sync_scores(again, clip.landmarks)
    assert scores["lmd"] == 0.0
    assert scores["opening_offset"] == 0
    assert scores["opening_correlation"] == pytest.approx(1.0)
    assert scores["opening_ratio"] == pytest.approx(1.0)
    assert scores["face_found"] == 1.0
    real = changes(clip.frames, clip.mouths)
    assert metrics.stability(real, real)["change_ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("shift", [SHIFT, -SHIFT])
def test_video_against_a_shifted_copy(clip, delayed, shift):
    if shift == SHIFT:
        frames, landmarks = delayed
    else:
        frames = clip.delayed(shift)
        landmarks = detect_landmarks(frames)
    scores = metrics.lip_sync_scores(landmarks, clip.landmarks)
    assert scores["opening_offset"] == shift
    assert scores["opening_best_correlation"] > 0.95
    assert scores["opening_correlation"] < 0.2              # out of sync at offset 0
    assert scores["lmd"] > 0.01
    # the same lips, only late: as wide open and as much motion as the real video
    assert scores["opening_ratio"] == pytest.approx(1.0, abs=0.1)
    ratio = metrics.stability(changes(frames, clip.mouths), changes(clip.frames, clip.mouths))["change_ratio"]
    assert ratio == pytest.approx(1.0, abs=0.15)


def test_video_whose_mouth_never_moves(clip, frozen, delayed):
    frames, landmarks = frozen
    assert np.isfinite(landmarks).all(), "the face must still be found"
    scores = metrics.lip_sync_scores(landmarks, clip.landmarks)
    assert abs(scores["opening_correlation"]) < 0.3
    assert abs(scores["opening_best_correlation"]) < 0.5
    assert scores["opening_ratio"] < 0.2                      # the mouth stays shut
    assert scores["lmd"] > metrics.lip_sync_scores(delayed[1], clip.landmarks)["lmd"] / 2
    stable = metrics.stability(changes(frames, clip.mouths), changes(clip.frames, clip.mouths))
    assert stable["change_ratio"] < 0.6                       # only the head moves
    # image quality: the mouth region carries the whole error
    full = np.mean([metrics.psnr(a, b) for a, b in zip(frames, clip.frames)])
    mouth = np.mean([metrics.psnr(a, b, box) for a, b, box in zip(frames, clip.frames, clip.mouths)])
    assert mouth < full - 5
    mouth_ssim = np.mean([metrics.ssim(a, b, box) for a, b, box in zip(frames, clip.frames, clip.mouths)])
    assert mouth_ssim < 0.97


def test_flicker_shows_as_excess_change(clip):
    rng = np.random.default_rng(1)
    flickering = []
    for frame, box in zip(clip.frames, clip.mouths):
        x0, y0, x1, y1 = box
        noisy = frame.copy()
        region = noisy[y0:y1, x0:x1].astype(np.int16) + rng.integers(-12, 13, (y1 - y0, x1 - x0, 1))
        noisy[y0:y1, x0:x1] = np.clip(region, 0, 255).astype(np.uint8)
        flickering.append(noisy)
    ratio = metrics.stability(changes(flickering, clip.mouths), changes(clip.frames, clip.mouths))["change_ratio"]
    assert ratio > 1.5


# ---------------------------------------------------------------------------- sync confidence (LSE-D / LSE-C)

def unit_rows(array):
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def speech_embeddings(clip):
    """Stand-in embeddings that carry the clip's speech: its log-mel frames per video
    frame under a fixed random projection (what a SyncNet audio encoder's output looks like)."""
    from data_utils.audio import melspectrogram

    mel = melspectrogram(clip.samples)
    per_frame = np.stack([mel[int(index * 3.2):int(index * 3.2) + 4].mean(axis=0)
                          for index in range(CLIP_FRAMES_25FPS)])
    projection = np.random.default_rng(5).standard_normal((per_frame.shape[1], 16))
    return unit_rows(per_frame @ projection)


def test_sync_confidence_finds_the_shift(clip):
    audio = speech_embeddings(clip)
    in_sync = metrics.sync_confidence(audio.copy(), audio)
    assert in_sync["sync_offset"] == 0 and in_sync["lse_d"] == pytest.approx(0.0, abs=1e-9)
    assert in_sync["lse_c"] > 0.1
    # faces delayed by 3 frames: face t shows what audio t - 3 says
    late = np.concatenate([np.repeat(audio[:1], SHIFT, axis=0), audio[:-SHIFT]])
    shifted = metrics.sync_confidence(late, audio)
    assert shifted["sync_offset"] == SHIFT
    assert shifted["lse_d"] < 1e-9 and shifted["lse_c"] == pytest.approx(in_sync["lse_c"], rel=0.2)
    # faces that carry nothing about the audio: low confidence
    unrelated = unit_rows(np.random.default_rng(7).standard_normal(audio.shape))
    confused = metrics.sync_confidence(unrelated, audio)
    assert confused["lse_c"] < in_sync["lse_c"] / 3
    assert confused["lse_d"] > in_sync["lse_d"] + 0.5


# ---------------------------------------------------------------------------- audio energy

def test_audio_energy_is_aligned_to_frames():
    samples = np.zeros(50 * SAMPLES_PER_FRAME, dtype=np.float32)
    time = np.arange(10 * SAMPLES_PER_FRAME) / SAMPLE_RATE
    samples[20 * SAMPLES_PER_FRAME:30 * SAMPLES_PER_FRAME] = 0.5 * np.sin(2 * np.pi * 220 * time)
    energy = metrics.audio_energy(samples)
    assert energy.shape == (50,)
    # frames 21..29 lie inside the tone; 20 and 30 straddle its edges (half their window)
    assert np.allclose(energy[21:30], 0.5 / np.sqrt(2), rtol=0.02)
    assert energy[20] == pytest.approx(energy[25] / np.sqrt(2), rel=0.05)
    assert energy[30] == pytest.approx(energy[25] / np.sqrt(2), rel=0.05)
    assert np.all(energy[:19] == 0) and np.all(energy[32:] == 0)
    assert metrics.audio_energy(samples, 60)[55] == 0          # past the end: silence


def test_mouth_opening_follows_audio_energy_of_real_speech(clip, frozen):
    energy = metrics.audio_energy(clip.samples, CLIP_FRAMES_25FPS)
    real = metrics.opening_energy_scores(metrics.mouth_opening(clip.landmarks), energy)
    assert real["energy_correlation"] > 0.4 and abs(real["energy_offset"]) <= 2
    still = metrics.opening_energy_scores(metrics.mouth_opening(frozen[1]), energy)
    assert still["energy_correlation"] < real["energy_correlation"] - 0.3
