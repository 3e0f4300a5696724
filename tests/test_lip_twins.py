"""Lip twins (data_utils/lip_twins.py, train_328.py --twin_audio_share): on the bundled clip's real
landmarks, each frame's twins are the frames far enough away whose lips are shaped most like its own,
wherever the head is; with the option a training sample hears a twin's audio, and only then."""
import numpy as np
import pytest
import torch

import train_328
from data_utils.crop import face_width
from data_utils.dataset import LipSyncDataset, load_lip_twins, open_person
from data_utils.layout import DatasetLayout
from data_utils.lip_twins import NO_TWIN, TWIN_MIN_GAP_FRAMES, lip_shapes, lip_twins
from lipsync.evaluate.metrics import mouth_opening
from tests.conftest import CLIP_FRAMES_25FPS
from tests.training_helpers import base_args, make_small_dataset, run_main

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TWIN_TEST_FRAMES = 40      # some frames 12 apart share a lip shape, and an epoch takes seconds


def _landmarks(processed_clip):
    return np.load(DatasetLayout(processed_clip).landmarks_array).astype(np.float64)


def test_twins_are_the_nearest_lip_shapes_far_enough_away(processed_clip):
    landmarks = _landmarks(processed_clip)
    frames = np.arange(len(landmarks))
    twins = lip_twins(landmarks, frames)
    shapes = lip_shapes(landmarks).astype(np.float64)
    limit = np.median(np.linalg.norm(np.diff(shapes, axis=0), axis=1))
    assert (twins != NO_TWIN).any(axis=1).mean() > 0.5
    for frame in frames:
        found = twins[frame][twins[frame] != NO_TWIN]
        distances = np.linalg.norm(shapes - shapes[frame], axis=1)
        eligible = (np.abs(frames - frame) >= TWIN_MIN_GAP_FRAMES) & (distances <= limit)
        expected = frames[eligible][np.argsort(distances[eligible], kind="stable")][:twins.shape[1]]
        assert np.allclose(distances[found], distances[expected])
        assert np.all(np.abs(found - frame) >= TWIN_MIN_GAP_FRAMES)


def test_a_twin_opens_its_mouth_like_its_frame_wherever_the_head_is(processed_clip):
    landmarks = _landmarks(processed_clip)
    frames = np.arange(len(landmarks))
    twins = lip_twins(landmarks, frames)
    # The same lips with the head moved and nearer the camera in every other frame.
    moved = landmarks.copy()
    moved[::2] = moved[::2] * 1.4 + np.array([37.0, -21.0])
    assert np.array_equal(lip_twins(moved, frames), twins)
    assert not np.allclose(face_width(moved), face_width(landmarks))

    opening = mouth_opening(landmarks)
    has_twin = twins[:, 0] != NO_TWIN
    twin_gap = np.abs(opening[has_twin] - opening[twins[has_twin, 0]]).mean()
    rng = np.random.default_rng(0)
    far = [rng.choice(frames[np.abs(frames - frame) >= TWIN_MIN_GAP_FRAMES]) for frame in frames[has_twin]]
    any_gap = np.abs(opening[has_twin] - opening[far]).mean()
    assert twin_gap < 0.5 * any_gap, (twin_gap, any_gap)


def test_a_sample_hears_a_twin_with_the_chosen_chance_and_keeps_its_reference(processed_clip, tmp_path):
    dataset = make_small_dataset(processed_clip, tmp_path / "talker", CLIP_FRAMES_25FPS)
    person = open_person(dataset, "ave", show_progress=False)
    train, _ = person.split(0.05)
    twins = load_lip_twins(person, train)
    plain = LipSyncDataset(person, train, train, seed=3)
    always = LipSyncDataset(person, train, train, seed=3, twins=twins, twin_share=1.0)
    half = LipSyncDataset(person, train, train, seed=3, twins=twins, twin_share=0.5)
    unused = LipSyncDataset(person, train, train, seed=3, twins=twins, twin_share=0.0)
    own_audio = 0
    for item, frame in enumerate(train):
        sample = plain[item]
        for other in (always[item], half[item], unused[item]):
            assert torch.equal(other["reference"], sample["reference"]) and other["frame"] == frame
        assert torch.equal(unused[item]["audio"], sample["audio"])
        heard = always[item]["audio"]
        found = twins[item][twins[item] != NO_TWIN]
        if len(found):
            assert any(torch.equal(heard, torch.from_numpy(person.audio(twin))) for twin in found)
        else:
            assert torch.equal(heard, sample["audio"])
        own_audio += int(torch.equal(half[item]["audio"], sample["audio"]))
    with_twins = int((twins != NO_TWIN).any(axis=1).sum())
    assert with_twins >= len(train) // 2
    assert 0.25 * with_twins < own_audio - (len(train) - with_twins) < 0.75 * with_twins


def test_training_with_lip_twins_and_without_their_landmarks(processed_clip, tmp_path, capsys):
    dataset = make_small_dataset(processed_clip, tmp_path / "talker", TWIN_TEST_FRAMES)
    save = tmp_path / "run"
    train_328.main(base_args(dataset, save, "--epochs", 1, "--twin_audio_share", "0.5"))
    state = torch.load(save / "latest.pth", weights_only=False)
    assert state["args"]["twin_audio_share"] == 0.5 and state["history"][0]["train_l1"] > 0

    landmarks_file = DatasetLayout(dataset).landmarks_array
    np.save(landmarks_file, np.load(landmarks_file)[:-1])
    code, lines = run_main(train_328.main, base_args(dataset, tmp_path / "short", "--epochs", 1,
                                                     "--twin_audio_share", "0.5"), capsys)
    assert code == 2 and len(lines) == 1 and f"{TWIN_TEST_FRAMES - 1} frames of landmarks" in lines[0], lines
    assert "process.py" in lines[0]
    landmarks_file.unlink()
    code, lines = run_main(train_328.main, base_args(dataset, tmp_path / "again", "--epochs", 1,
                                                     "--twin_audio_share", "0.5"), capsys)
    assert code == 2 and len(lines) == 1 and "landmarks.npy" in lines[0] and "process.py" in lines[0], lines
    code, lines = run_main(train_328.main, base_args(dataset, tmp_path / "bad", "--twin_audio_share", "1.5"), capsys)
    assert code == 2 and len(lines) == 1 and "--twin_audio_share" in lines[0], lines
