"""Lip codes: a few numbers per frame that say how the lips are shaped.

The principal components of the training frames' lip shapes (data_utils.lip_twins.lip_shapes:
the lips around their centre, in face widths), each scaled to unit spread over those frames.
On the 40 s fixture the first two carry 94 % of the lips' variance: the first is the opening
(r 0.99 with the inner-lip gap), the second the width; the third and fourth (3.5 %) a ridge
regression from the audio features predicts at r 0.02-0.46 only (benchmarks/RESULTS.md, "Lip
codes, and the colour head").

What a U-Net does with them (train_328.py --lip_code_dims): in training its decoder is told the
target's true code, so the shape of the mouth is given rather than guessed from the audio; its
audio branch learns to predict the code, and at inference the prediction is what the decoder is
told. The code is also a handle on the drawn mouth: a larger first code opens it. Measured on the
fixture (RESULTS.md, "Lip codes, and the colour head"): the prediction follows unseen frames' code
at r 0.97, the mouth is drawn 0.2 dB sharper, and how wide a run draws a given code still depends
on its seed, so the option is off by default.
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
    fit_index = np.asarray(fit_frames, dtype=np.int64)
    shapes = lip_shapes(landmarks).astype(np.float64)
    fit = shapes[fit_index]
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
    spread = codes[fit_index].std(axis=0)
    codes = np.where(spread > MIN_COMPONENT_SPREAD, codes / np.maximum(spread, MIN_COMPONENT_SPREAD), 0.0)
    return codes.astype(np.float32)
