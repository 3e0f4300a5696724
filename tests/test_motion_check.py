"""The verdict evaluate_328.py gives on a checkpoint's mouth motion against the truth
(lipsync/evaluate/motion_check.py): timing first, then the opening's width, with the
--mouth_scale that would have matched the truth."""
import math

import pytest

from lipsync.evaluate.motion_check import (MIN_OPENING_CORRELATION, OPENING_RATIO_RANGE, motion_check,
                                           suggested_mouth_scale)
from lipsync.render.mouth_scale import MOUTH_SCALE_LIMITS


def test_a_mouth_within_the_targets_passes_with_no_suggestion():
    verdict = motion_check({"opening_correlation": 0.9, "opening_ratio": 1.05})
    assert verdict["meets_targets"] and verdict["suggested_mouth_scale"] is None
    assert verdict["says"].endswith("within the targets") and "r 0.90" in verdict["says"]


def test_a_mouth_that_opens_too_wide_is_told_the_scale_that_matches_the_truth():
    verdict = motion_check({"opening_correlation": 0.88, "opening_ratio": 1.28})
    assert not verdict["meets_targets"] and verdict["timing_ok"] and not verdict["opening_ok"]
    assert verdict["suggested_mouth_scale"] == pytest.approx(0.8)             # 1 / 1.28, to the step
    assert "--mouth_scale 0.80" in verdict["says"]
    # Measured at a scale already: the suggestion is relative to it.
    assert motion_check({"opening_correlation": 0.88, "opening_ratio": 1.28},
                        mouth_scale=1.2)["suggested_mouth_scale"] == pytest.approx(0.95)
    # Too narrow: wider, never past the option's limits.
    assert motion_check({"opening_correlation": 0.9, "opening_ratio": 0.76})["suggested_mouth_scale"] == \
        pytest.approx(1.3)
    assert suggested_mouth_scale(0.2) == MOUTH_SCALE_LIMITS[1] and suggested_mouth_scale(9) == MOUTH_SCALE_LIMITS[0]
    assert "as near the truth's width as the option goes" in motion_check(
        {"opening_correlation": 0.9, "opening_ratio": 0.3})["says"]
    assert "as wide as the truth" in motion_check({"opening_correlation": 0.9, "opening_ratio": 0.7})["says"]


def test_a_mouth_that_misses_the_timing_is_told_to_train_again_not_to_rescale():
    verdict = motion_check({"opening_correlation": 0.76, "opening_ratio": 0.46})
    assert not verdict["meets_targets"] and not verdict["timing_ok"]
    assert "--seed" in verdict["says"] and "--mouth_scale" not in verdict["says"]
    assert verdict["suggested_mouth_scale"] is None


def test_the_targets_edges_and_scores_without_an_opening_measure():
    low, high = OPENING_RATIO_RANGE
    assert motion_check({"opening_correlation": MIN_OPENING_CORRELATION, "opening_ratio": low})["meets_targets"]
    assert motion_check({"opening_correlation": MIN_OPENING_CORRELATION, "opening_ratio": high})["meets_targets"]
    assert motion_check({"lse_c": 3.0}) is None                                # new audio, no truth
    assert motion_check({"opening_correlation": math.nan, "opening_ratio": math.nan}) is None   # no detector
    assert motion_check({"opening_correlation": None, "opening_ratio": 1.0}) is None            # read from JSON


def test_a_missed_timing_from_a_weak_audio_encoder_is_blamed_on_the_audio_not_the_seed():
    scores = {"opening_correlation": 0.80, "opening_ratio": 0.84}
    verdict = motion_check(scores, weak_encoder_accuracy=0.668)
    assert not verdict["timing_ok"] and verdict["suggested_mouth_scale"] is None
    assert "67%" in verdict["says"] and "--asr hubert" in verdict["says"] and "longer video" in verdict["says"]
    assert "--seed" not in verdict["says"]
    # The encoder is only blamed for a missed timing: a timed mouth gets the usual verdict.
    timed = {"opening_correlation": 0.9, "opening_ratio": 1.28}
    assert motion_check(timed, weak_encoder_accuracy=0.668) == motion_check(timed)
