"""Long audio through a sequence model in bounded memory: overlapping segments, stitched exactly.

HuBERT and full-utterance WeNet encoders attend over their whole input, so
memory grows with the audio; both run here a segment at a time with context
either side, and only each segment's own outputs are kept.
"""
from typing import Callable

import numpy as np

from lipsync.core.errors import UserError


def run_in_segments(total: int, segment: int, context: int,
                    run: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Outputs 0 .. total-1 of a sequence model, ``segment`` at a time.

    ``run(first, stop)`` returns the model's outputs ``first .. stop-1``
    computed from just the input they need; each segment is run with
    ``context`` extra outputs either side so attention sees past its edges,
    and only the segment's own outputs are kept.
    """
    pieces = []
    for first in range(0, total, segment):
        stop = min(first + segment, total)
        run_first, run_stop = max(0, first - context), min(total, stop + context)
        outputs = run(run_first, run_stop)
        if len(outputs) < run_stop - run_first:
            raise UserError(f"the encoder returned {len(outputs)} frames for {run_stop - run_first} "
                            "expected — it does not have the expected frame rate")
        pieces.append(outputs[first - run_first:stop - run_first])
    return np.concatenate(pieces)
