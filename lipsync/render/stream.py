"""Audio arriving piece by piece in, the person's frames out in order, with bounded latency
and memory (``LipSyncRenderer.stream``; ``LipSyncRenderer.render`` feeds a whole file through it).

Audio features are computed piece by piece, with enough audio context around
each piece that the rows equal those of the whole file (AVE is exact;
HuBERT/WeNet see ``FEATURE_CONTEXT_FRAMES`` of context, lipsync/render/featurizer.py),
frames go through the model in batches and come out as soon as the audio after
them that their window needs has arrived. Nothing holds more than a few batches
of frames, so a 10-minute audio renders in the same memory as a 10-second one.
"""
from collections import deque
from concurrent.futures import Future
from typing import Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np

from data_utils import crop as crop_geometry
from data_utils.timebase import (SAMPLES_PER_FRAME, WINDOW_AFTER, WINDOW_BEFORE, frame_count_for_samples,
                                 model_audio_input)
from lipsync.core.errors import UserError
from lipsync.render.frames import pingpong_index


class RenderStream:
    """Audio pieces in, frames out, in order; see ``LipSyncRenderer.stream``.

    ``push(samples)`` takes the next 16 kHz mono float32 samples and returns an
    iterator over the frames that became ready (iterate it before the next
    push); ``finish()`` says the audio ended and returns the remaining frames.
    A frame comes out once the audio ``latency_frames`` frames after it has
    arrived: its window needs WINDOW_AFTER frames of audio ahead, the feature
    encoder ``context_frames`` more, and frames are made a batch at a time.
    """

    def __init__(self, renderer, start_frame: int):      # a LipSyncRenderer (it imports this module)
        self.renderer = renderer
        self.start_frame = start_frame
        self.batch_size = int(renderer.options.batch_size)
        self.context = renderer.featurizer.context_frames
        self.frames_out = 0                       # output frames yielded so far
        self.samples_in = 0                       # samples received so far
        self.finished = False
        self._samples = np.zeros(0, np.float32)   # received audio from sample _samples_start on
        self._samples_start = 0
        self._features: Optional[np.ndarray] = None   # rows for frames _features_start .. _features_stop-1
        self._features_start = 0
        self._features_stop = 0
        self._loads: Dict[int, Future] = {}       # output frame -> pending (frame, crop)
        self._next_render = 0                     # next output frame to go through the model
        self._composing: Deque[Tuple[int, List[Future]]] = deque()
        self._hold = renderer.controls.new_silence_hold()   # None when the silence hold is off
        self.held_frames = 0                      # output frames with some of the closed mouth in them
        self.model_frames = 0                     # frames the model drew (fully held ones skip it)

    @property
    def latency_frames(self) -> int:
        """Most frames of audio that can arrive after frame i's audio before frame i is yielded."""
        return WINDOW_AFTER + self.context + self.batch_size

    # ------------------------------------------------------------------ input

    def push(self, samples) -> Iterator[np.ndarray]:
        if self.finished:
            raise RuntimeError("push() after finish()")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size and not np.all(np.isfinite(samples)):
            raise UserError("the audio contains NaN or infinite samples")
        self._samples = np.concatenate([self._samples, samples])
        self.samples_in += samples.size
        if self._hold is not None:
            self._hold.push(samples)
        return self._drain(final=False)

    def finish(self) -> Iterator[np.ndarray]:
        if self.finished:
            return iter(())
        if self.samples_in == 0:
            raise UserError("the audio contains no samples — give a recording with sound")
        self.finished = True
        if self._hold is not None:
            self._hold.finish()
        return self._drain(final=True)

    @property
    def total_frames(self) -> Optional[int]:
        """Output frames of the whole audio, once it has finished."""
        return frame_count_for_samples(self.samples_in) if self.finished else None

    # ------------------------------------------------------------------ work

    def _piece_start(self) -> int:
        """First frame of the next feature piece: the left context, on the encoder's grid."""
        first = max(0, self._features_stop - self.context)
        return first - first % self.renderer.featurizer.piece_alignment_frames

    def _update_features(self, final: bool) -> None:
        if final:
            target = frame_count_for_samples(self.samples_in)
        else:
            # Rows up to here have all the audio their encoder window sees.
            target = self.samples_in // SAMPLES_PER_FRAME - self.context
            # Each call pays for 2 x context frames of margin, so compute only when
            # the new rows complete a batch for the model (frame i needs rows to i + 7).
            if target - (WINDOW_AFTER - 1) - self._next_render < self.batch_size:
                return
        if target <= self._features_stop:
            return
        first = self._piece_start()
        end_sample = self.samples_in if final else (target + self.context) * SAMPLES_PER_FRAME
        segment = self._samples[first * SAMPLES_PER_FRAME - self._samples_start:end_sample - self._samples_start]
        rows = self.renderer.featurizer(segment)
        if len(rows) < target - first:
            raise UserError(f"the {self.renderer.asr} encoder returned {len(rows)} feature frames for "
                            f"{target - first} video frames")
        if self._features is None:
            self.renderer.check_features(rows)
        fresh = np.asarray(rows[self._features_stop - first:target - first], dtype=np.float32)
        keep_from = max(0, self._next_render - WINDOW_BEFORE)
        old = self._features[keep_from - self._features_start:] if self._features is not None \
            else np.zeros((0,) + fresh.shape[1:], np.float32)
        self._features = np.concatenate([old, fresh])
        self._features_start = keep_from
        self._features_stop = target
        # Audio before the next piece's left context is never read again.
        drop = max(0, self._piece_start() * SAMPLES_PER_FRAME - self._samples_start)
        if drop:
            self._samples = self._samples[drop:]
            self._samples_start += drop

    def _renderable(self, final: bool) -> int:
        if final:
            return self._features_stop - self._next_render
        # Frame i's window needs feature rows up to i + WINDOW_AFTER - 1.
        ready = self._features_stop - WINDOW_AFTER + 1
        if self._hold is not None:        # (its look-ahead is shorter than the window's: never the limit)
            ready = min(ready, self._hold.ready_frames)
        return max(0, ready - self._next_render)

    def _background(self, output_index: int) -> Future:
        """The pending (frame, crop) of output frame ``output_index``; prefetches what follows."""
        renderer = self.renderer
        prefetch_until = output_index + 2 * self.batch_size
        if self.finished:
            prefetch_until = min(prefetch_until, frame_count_for_samples(self.samples_in))
        for index in range(output_index, prefetch_until):
            if index not in self._loads:
                recording_frame = pingpong_index(self.start_frame + index, renderer.frame_count)
                self._loads[index] = renderer.thread_pool.submit(renderer.load_background, recording_frame)
        return self._loads.pop(output_index)

    def _run_batch(self, count: int) -> None:
        renderer = self.renderer
        indices = range(self._next_render, self._next_render + count)
        loaded = [self._background(index) for index in indices]
        backgrounds = [future.result() for future in loaded]
        crops = np.stack([crop_328 for _, crop_328 in backgrounds])
        audio = np.stack([model_audio_input(self._features, index - self._features_start, renderer.asr)
                          for index in indices])
        holds = self._hold.weights(indices.start, indices.stop) if self._hold is not None else np.zeros(count)
        self.held_frames += int(np.count_nonzero(holds))
        # A fully held frame shows the person's own closed mouth whatever the model draws: in pauses
        # the model does not run (the frame's own inner crop stands in for its output).
        drawn = np.flatnonzero(holds < 1)
        generated = np.ascontiguousarray(crops[:, crop_geometry.INNER, crop_geometry.INNER])
        if len(drawn):
            generated[drawn] = renderer.unet(crops[drawn], audio[drawn])
        self.model_frames += len(drawn)
        jobs = []
        for (frame, crop_328), image, index, hold in zip(backgrounds, generated, indices, holds):
            recording_frame = pingpong_index(self.start_frame + index, renderer.frame_count)
            jobs.append(renderer.thread_pool.submit(renderer.compose_output, frame, crop_328, image, recording_frame,
                                              float(hold)))
        self._composing.append((self._next_render, jobs))
        self._next_render += count

    def _yield_composed(self, keep: int) -> Iterator[np.ndarray]:
        while len(self._composing) > keep:
            _, jobs = self._composing.popleft()
            for job in jobs:
                self.frames_out += 1
                yield job.result()

    def _drain(self, final: bool) -> Iterator[np.ndarray]:
        self._update_features(final)
        while True:
            ready = self._renderable(final)
            if ready == 0 or (not final and ready < self.batch_size):
                break
            self._run_batch(min(ready, self.batch_size))
            # One batch is pasted back in worker threads while the next goes through the model.
            yield from self._yield_composed(keep=1)
        yield from self._yield_composed(keep=0)
        if final:
            for future in self._loads.values():
                future.cancel()
            self._loads.clear()
