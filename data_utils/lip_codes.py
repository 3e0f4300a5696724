"""Lip codes: a few numbers per frame that say how the lips are shaped.

The principal components of the training frames' lip shapes (data_utils.lip_twins.lip_shapes:
the lips around their centre, in face widths), each scaled to unit spread over those frames.
On the 40 s fixture the first two carry 94 % of the lips' variance: the first is the opening
(r 0.99 with the inner-lip gap), the second the width; the rest are head pose and noise, and
the audio cannot predict them (benchmarks/RESULTS.md, "Lip codes").

Why a U-Net wants them (train_328.py --lip_code_dims): trained on the audio alone, the decoder
hedges between the mouths that one window of speech may come with and draws some runs' mouths
a third too wide, others half as wide, although its own audio embedding predicts the opening
at r 0.93. Given the target's true lip code while it trains, the decoder has nothing to hedge
about: it learns to draw the shape it is told. The U-Net's audio branch learns to predict the
code, and at inference the prediction is what the decoder is told.
"""
from typing import Sequence

import numpy as np

from data_utils.lip_twins import lip_shapes

MIN_COMPONENT_SPREAD = 1e-8      # a component with no spread over the training frames stays 0, not inf


def lip_codes(landmarks: np.ndarray, fit_frames: Sequence[int], dims: int) -> np.ndarray:
    """(N, dims) float32: every frame's lip shape on the first ``dims`` principal components of
    ``fit_frames``' lip shapes, centred and scaled so that each has unit spread over those frames.

    The components' signs are fixed (each one's largest loading positive), so the same
    landmarks always give the same codes.
    """
    shapes = lip_shapes(landmarks).astype(np.float64)
    fit = shapes[np.asarray(fit_frames, dtype=np.int64)]
    if len(fit) < 2:
        raise ValueError(f"lip codes need at least 2 frames to fit, got {len(fit)}")
    if not 1 <= dims <= fit.shape[1]:
        raise ValueError(f"lip codes: dims must be 1..{fit.shape[1]}, got {dims}")
    mean = fit.mean(axis=0)
    _, _, components = np.linalg.svd(fit - mean, full_matrices=False)
    components = components[:dims]
    largest = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(dims), largest])[:, None]
    codes = (shapes - mean) @ components.T
    spread = codes[np.asarray(fit_frames, dtype=np.int64)].std(axis=0)
    codes = np.where(spread > MIN_COMPONENT_SPREAD, codes / np.maximum(spread, MIN_COMPONENT_SPREAD), 0.0)
    return codes.astype(np.float32)
