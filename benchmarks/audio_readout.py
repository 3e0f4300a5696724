"""How much the U-Net's audio embedding knows about the mouth, next to what the drawn mouth shows.

    python benchmarks/audio_readout.py --name talker_a \
        --checkpoints checkpoint/talker_a/13.pth [...] \
        --heldout_audio ../shared/fixtures/talker_a/heldout_a.wav \
        --truth_video ../shared/fixtures/talker_a/heldout_a_truth.mp4

For each checkpoint: the audio branch's embedding of every frame of the recording and of the
unseen audio; a ridge regression from the embedding to the recording's mouth opening (its
landmarks' inner-lip gap), fitted on the training frames; its prediction on the unseen audio
scored against the true video's openings exactly as evaluate_328.py scores a drawn mouth
(lipsync.evaluate.metrics.opening_scores: r at offset 0, the best offset, the mean opening's
ratio). A read-out far above the drawn mouth's scores means the audio evidence reaches the
bottleneck and is lost on the way to the pixels; a read-out as low means the audio branch (or
the features) is what limits the motion. No training, no rendering: seconds per checkpoint.
"""
import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from data_utils.audio import load_audio  # noqa: E402
from data_utils.dataset import DEFAULT_VAL_FRACTION, load_crop_boxes, load_features, split_frames  # noqa: E402
from data_utils.layout import DatasetLayout, chosen_dataset_dir  # noqa: E402
from data_utils.timebase import frame_count_for_samples, model_audio_input  # noqa: E402
from lipsync.core.checkpoints import load_unet  # noqa: E402
from lipsync.core.errors import UserError, exit_on_user_error  # noqa: E402
from lipsync.evaluate.landmark_track import detect_landmarks  # noqa: E402
from lipsync.evaluate.metrics import mouth_opening, opening_scores  # noqa: E402
from lipsync.evaluate.reference import video_frames  # noqa: E402
from lipsync.render.featurizer import AudioFeaturizer, feature_encoder_source  # noqa: E402

# The embedding is standardised per dimension first, so one small ridge suits every width:
# the scores hardly move between 0.01 and 100 (talker_a, tiny and base widths).
RIDGE = 1.0
MIN_READOUT_FRAMES = 8          # the ridge fits fewer frames than dimensions, but not a handful
EMBEDDING_BATCH = 64


@torch.no_grad()
def audio_embeddings(model, features: np.ndarray, asr: str) -> np.ndarray:
    """(N, D) the U-Net's audio-branch embedding of every frame's window of ``features``."""
    rows = []
    for start in range(0, len(features), EMBEDDING_BATCH):
        windows = np.stack([model_audio_input(features, index, asr)
                            for index in range(start, min(start + EMBEDDING_BATCH, len(features)))])
        rows.append(model.audio(torch.from_numpy(windows)).numpy())
    return np.concatenate(rows).astype(np.float64)


def fit_readout(embeddings: np.ndarray, openings: np.ndarray):
    """A ridge map embedding -> opening fitted on the rows where the opening is known."""
    known = np.isfinite(openings)
    if known.sum() < MIN_READOUT_FRAMES:
        raise UserError(f"{int(known.sum())} frames with a face are too few to fit a read-out")
    mean, scale = embeddings[known].mean(axis=0), embeddings[known].std(axis=0) + 1e-8
    inputs = (embeddings[known] - mean) / scale
    targets = openings[known]
    weights = np.linalg.solve(inputs.T @ inputs + RIDGE * np.eye(inputs.shape[1]),
                              inputs.T @ (targets - targets.mean()))
    return lambda rows: ((rows - mean) / scale) @ weights + targets.mean()


def truth_openings(truth_video: Path, frame_count: int) -> np.ndarray:
    return mouth_opening(detect_landmarks(video_frames(truth_video, frame_count)))


class Inputs:
    """What every checkpoint's read-out needs, each loaded or computed once: the recording's features
    and mouth openings per encoder, the unseen audio's features per encoder source."""

    def __init__(self, layout: DatasetLayout, heldout_samples: np.ndarray, truth: np.ndarray):
        self.layout, self.heldout_samples, self.truth = layout, heldout_samples, truth

    @functools.cached_property
    def openings(self) -> np.ndarray:
        return mouth_opening(np.load(self.layout.landmarks_array))

    @functools.lru_cache(maxsize=None)
    def recording(self, asr: str) -> np.ndarray:
        return load_features(self.layout, asr, len(load_crop_boxes(self.layout)))

    @functools.lru_cache(maxsize=None)
    def unseen(self, asr: str, source: str) -> np.ndarray:
        return AudioFeaturizer(asr, source)(self.heldout_samples, len(self.truth))


def readout(checkpoint: Path, inputs: Inputs, val_fraction: float) -> Dict:
    model, config = load_unet(checkpoint)
    asr = config["asr"]
    recording = inputs.recording(asr)
    unseen = inputs.unseen(asr, feature_encoder_source(config, inputs.layout))
    train_frames, _ = split_frames(len(recording), val_fraction)
    predict = fit_readout(audio_embeddings(model, recording, asr)[train_frames], inputs.openings[train_frames])
    scores = opening_scores(predict(audio_embeddings(model, unseen, asr)), inputs.truth)
    return {"checkpoint": str(checkpoint), "epoch": config.get("epoch"), **scores}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="dataset/NAME (or --dataset_dir)")
    parser.add_argument("--dataset_dir")
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--heldout_audio", type=Path, required=True, help="speech the recording does not contain")
    parser.add_argument("--truth_video", type=Path, required=True, help="the person really saying --heldout_audio")
    parser.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="the held-out tail the U-Net did not train on (not used to fit the read-out)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] = None) -> int:
    options = build_parser().parse_args(argv)
    layout = DatasetLayout(chosen_dataset_dir(options.name, options.dataset_dir, "score"))
    samples = load_audio(options.heldout_audio)
    truth = truth_openings(options.truth_video, frame_count_for_samples(len(samples)))
    inputs = Inputs(layout, samples, truth)
    results = []
    print("checkpoint | read-out r | offset | ratio")
    for checkpoint in options.checkpoints:
        result = readout(checkpoint, inputs, options.val_fraction)
        results.append(result)
        print(f"{checkpoint} | {result['opening_correlation']:.2f} | {result['opening_offset']:+.0f} | "
              f"{result['opening_ratio']:.2f}")
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
