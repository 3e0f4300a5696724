"""One evaluation run (Evaluation): render each checkpoint, score it against the reference, choose.

    python evaluate_328.py --name May                  # every checkpoint on the held-out tail -> best.pth
    python evaluate_328.py --name May --checkpoint 120 --audio_path other_speaker.wav

Held-out tail: the last ``--val_fraction`` of the recording, the contiguous
stretch training never learned from (data_utils.dataset.split_frames, with the
fraction the run was trained with). Each checkpoint renders that stretch from
its own audio, through the same render path as inference_328.py
(lipsync.render.renderer), starting a little earlier so the first frames' audio
windows see the real audio before them, as they would in a full render.
Generated frame k is then compared with real frame k (lipsync.evaluate.metrics):
PSNR/SSIM of the frame and the mouth, LMD, the mouth-opening track and its
offset, SyncNet distance/confidence (when checkpoint/NAME/syncnet/best.pth
exists), stability, and mouth opening against loudness. The real frames get
the same measurements (the "recording" row), so each number has its ceiling
beside it.

New audio (``--audio_path``): there is no truth, so only the measures that need
none are reported: SyncNet distance/confidence and mouth opening against
loudness. When a video of the person really speaking that audio exists
(``--truth_video``, 25 fps, the recording's framing, frame k at the head pose
of recording frame start_frame + k, as the bundled fixture's
heldout_a_truth.mp4 is), every held-out measure is made against it instead.

Without mediapipe (a GPU box without it) the measures made from landmarks
(LMD, the mouth-opening track, opening against loudness, face found) are null
in scores.json and n/a in the table, and one warning says how to install it;
the mouth regions of the picture measures then come from preprocessing's
landmarks.npy, and everything else is measured as usual.

The pieces live beside this module (lipsync/evaluate/__init__.py lists them):
reference.py (what is compared with), clip_scorer.py (one clip), selection.py
(best.pth), report.py (the table), score_cache.py (reused scores).

Outputs, in checkpoint/NAME/evaluation/<heldout | audio_STEM>/:
    scores.json         every checkpoint's scores, the reference row, the choice
    table.md            the same as a table (also printed)
    epoch_E.json        one checkpoint's scores, reused by a re-run while the
                        checkpoint, the frames and the SyncNet are unchanged
    epoch_E_side_by_side.mp4   truth | generated with the audio
    epoch_E_strip.png   a few frames' crops: truth above, generated below
    strip.png           truth and every checkpoint's row, one above the other
and checkpoint/NAME/best.pth: a copy of the winning checkpoint (written
atomically) with a ``selection`` entry saying which metric it won on, its
value and every candidate's score; ``inference_328.py --checkpoint best`` uses it.
"""
import logging
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np

from data_utils.dataset import read_feature_metadata
from data_utils.features.ave import stored_heldout_accuracy
from data_utils.features.ave_training import WEAK_AVE_ACCURACY
from data_utils.timebase import FEATURE_SPECS, SAMPLES_PER_FRAME, WINDOW_BEFORE
from lipsync.core.atomic import write_json_atomic, write_text_atomic
from lipsync.core.commands import syncnet_command
from lipsync.core.devices import device_name
from lipsync.core.errors import UserError
from lipsync.core.progress import progress_bar
from lipsync.evaluate import metrics, score_cache
from lipsync.evaluate.clip_scorer import ClipScorer
from lipsync.evaluate.landmark_track import LANDMARK_SCORES, TRACK_SCORES, landmarks_unavailable
from lipsync.evaluate.motion_check import motion_check
from lipsync.evaluate.options import EvalOptions
from lipsync.evaluate.pictures import side_by_side_size, strip_picks, write_combined_strip, write_strip
from lipsync.evaluate.reference import (Reference, audio_reference, heldout_reference, measure_recording,
                                        recording_samples)
from lipsync.evaluate.report import describe_machine, format_scores, format_table
from lipsync.evaluate.results import CheckpointResult, finite_or_none, mean_over_checkpoints
from lipsync.evaluate.run_info import checkpoint_epoch, checkpoints_to_score, heldout_fraction
from lipsync.evaluate.selection import SELECTION_METRICS, choose_best, write_best
from lipsync.evaluate.sync_embedding import (MIN_INFORMATIVE_LSE_C, SYNCNET_METRICS, load_evaluation_syncnet,
                                             sync_embedder)
from lipsync.render.api import load_renderer, render
from lipsync.render.featurizer import FEATURE_CONTEXT_FRAMES
from lipsync.render.options import RenderOptions
from lipsync.render.video_writer import open_video_writer, write_wav

log = logging.getLogger("evaluation")

EVALUATION_SUBDIR = "evaluation"
HELDOUT_SUBDIR = "heldout"
# Picture measures can still be made without a landmark detector; choosing by them needs none.
LANDMARK_FREE_SELECT_BY = "mouth_psnr"


def preroll_frames(asr: str, first_frame: int) -> int:
    """Frames rendered before the first scored one, so its audio window sees the real
    audio before it (window + the encoder's context) rather than silence."""
    return int(min(first_frame, WINDOW_BEFORE + FEATURE_CONTEXT_FRAMES[asr]))


class Evaluation:
    """One evaluate_328.py run: a person, some checkpoints, the held-out tail or new audio."""

    def __init__(self, options: EvalOptions):
        self.options = options.check()
        self.layout = options.layout
        self.layout.require_processed(why="evaluation compares with the processed recording;")
        self.run_dir = options.run_dir
        self.checkpoints, self.complete = checkpoints_to_score(options)
        self.device = device_name(options.device)
        self.boxes = np.load(self.layout.crop_boxes)
        self.frame_count = len(self.boxes)
        self.heldout = options.audio_path is None
        self.has_truth = self.heldout or options.truth_video is not None
        if self.heldout:
            self.output_dir = Path(options.output_dir or self.run_dir / EVALUATION_SUBDIR / HELDOUT_SUBDIR)
        else:
            self.output_dir = Path(options.output_dir or
                                   self.run_dir / EVALUATION_SUBDIR / f"audio_{Path(options.audio_path).stem}")
        self.syncnet_path = Path(options.syncnet_checkpoint) if options.syncnet_checkpoint else \
            self.run_dir / "syncnet" / "best.pth"
        self.landmarks_missing = landmarks_unavailable()
        if self.landmarks_missing:
            self._warn_without_landmarks()
        self.val_fraction = None
        self.reference: Optional[Reference] = None
        self.syncnet = None
        self.syncnet_accuracy: Optional[float] = None
        self.asr: Optional[str] = None

    def _warn_without_landmarks(self) -> None:
        """The one warning of a run without a landmark detector: what is lost and how to get it."""
        if self.has_truth:
            lost = "LMD, the mouth-opening r/offset/ratio, loudness r and face found"
            kept = "mouth PSNR/SSIM, stability and the SyncNet scores"
        else:
            lost, kept = "loudness r, mean opening and face found", "the SyncNet scores"
        choice = ""
        if self.options.select and self.complete and self.options.select_by in LANDMARK_SCORES:
            choice = (f"; best.pth cannot be chosen by {self.options.select_by} "
                      f"(--select_by {LANDMARK_FREE_SELECT_BY} needs no landmarks)")
        log.warning("%s; until then %s are n/a (%s are still measured)%s", self.landmarks_missing, lost, kept, choice)

    # ------------------------------------------------------------------ setup that needs the first model
    def _renderer(self, path: Path):
        options = self.options
        return load_renderer(options=RenderOptions(
            dataset_dir=self.layout.root, checkpoint=str(path), device=self.device, batch_size=options.batch_size,
            ave_checkpoint=options.ave_checkpoint, hubert_model=options.hubert_model,
            wenet_model=options.wenet_model, checkpoint_root=options.checkpoint_root,
            dataset_root=options.dataset_root, **options.render_options))

    def _prepare(self, renderer) -> None:
        """SyncNet and the reference, once, from the first checkpoint's encoder and features."""
        if self.reference is not None:
            return
        asr = renderer.asr
        self.asr = asr
        if self.heldout:
            self.val_fraction = heldout_fraction(self.options.val_fraction, self.run_dir)
            self.reference = heldout_reference(self.layout, self.boxes, asr, self.val_fraction)
        else:
            self.reference = audio_reference(renderer, self.boxes, self.options.audio_path, self.options.start_frame,
                                             self.options.truth_video)
        audio_shape = None
        if self.reference.features is not None:
            audio_shape = FEATURE_SPECS[asr].window_shape(self.reference.features.shape[1:])
        self.syncnet, self.syncnet_accuracy = load_evaluation_syncnet(self.syncnet_path, asr, audio_shape,
                                                                      self.device)
        if self.options.select_by in SYNCNET_METRICS and self.syncnet is None and self.complete \
                and self.options.select:
            raise UserError(f"--select_by {self.options.select_by} needs a trained SyncNet at {self.syncnet_path} — "
                            f"train it ({syncnet_command('--name', self.layout.name)}) or choose --select_by lmd")
        if self.has_truth:
            self.reference = measure_recording(self.layout, self.reference, self.syncnet, asr, self.device,
                                               self.options.show_progress,
                                               track_landmarks=not self.landmarks_missing)
            real_confidence = self.reference.scores.get("lse_c")
            if real_confidence is not None and real_confidence < MIN_INFORMATIVE_LSE_C:
                log.warning("the SyncNet %s finds no sync point even in the real frames (LSE-C %.3f < %.2f): it has "
                            "not learned sync (too little data or training), so LSE-D/LSE-C say nothing here",
                            self.syncnet_path, real_confidence, MIN_INFORMATIVE_LSE_C)

    # ------------------------------------------------------------------ caching
    def _cache_key(self, path: Path) -> Dict:
        return score_cache.scores_key(
            path, self.options.render_options, self.reference.frames,
            self.syncnet_path if self.syncnet is not None else None,
            audio_path=None if self.heldout else Path(self.options.audio_path), start_frame=self.options.start_frame,
            truth_video=self.reference.truth_video, landmarks=not self.landmarks_missing)

    def _cached(self, path: Path, epoch: int) -> Optional[CheckpointResult]:
        if self.options.force:
            return None
        return score_cache.read_cached(score_cache.cache_file(self.output_dir, epoch), self._cache_key(path), path,
                                       epoch, need_video=self.options.write_video)

    # ------------------------------------------------------------------ scoring
    def score_checkpoint(self, path: Path) -> CheckpointResult:
        epoch = checkpoint_epoch(path)
        renderer = self._renderer(path)
        try:
            self._prepare(renderer)
            if renderer.asr != self.asr:
                raise UserError(f"{path} was trained with --asr {renderer.asr} but {self.checkpoints[0]} "
                                f"with --asr {self.asr} — evaluate them separately (--checkpoint)")
            cached = self._cached(path, epoch)
            if cached is not None:
                log.info("epoch %d: scores of an unchanged checkpoint reused from %s", epoch, self.output_dir)
                return cached
            return self._render_and_score(renderer, path, epoch)
        finally:
            renderer.close()

    def _generated_frames(self, renderer) -> Iterator[np.ndarray]:
        reference = self.reference
        if not self.heldout:
            yield from render(renderer, reference.samples, int(reference.frames[0]))
            return
        first = int(reference.frames[0])
        preroll = preroll_frames(renderer.asr, first)
        samples = recording_samples(self.layout, self.frame_count)[(first - preroll) * SAMPLES_PER_FRAME:]
        for k, frame in enumerate(render(renderer, samples, first - preroll)):
            if k >= preroll:
                yield frame

    def _render_and_score(self, renderer, path: Path, epoch: int) -> CheckpointResult:
        reference = self.reference
        count = len(reference.frames)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        embedder = sync_embedder(self.syncnet, reference.features, self.asr, self.device)
        labels = ("truth", f"epoch {epoch}") if self.has_truth else ("recording", f"epoch {epoch}")
        video_path = self.output_dir / f"epoch_{epoch}_side_by_side.mp4"
        audio_file = self.output_dir / ".scored_audio.wav"
        writer = None
        if self.options.write_video:
            write_wav(audio_file, reference.samples)
            width, height = side_by_side_size(*renderer.frame_size)
            writer = open_video_writer(video_path, width, height, audio=audio_file)
        scorer = ClipScorer(reference.crop_boxes, reference.mouth_boxes, embedder, reference.feature_rows,
                            writer, labels, strip_picks(count), track_landmarks=not self.landmarks_missing)
        frames = progress_bar(self._generated_frames(renderer), enabled=self.options.show_progress, total=count,
                              desc=f"epoch {epoch}", unit="frame", leave=False)
        real_frames = reference.real_frames(self.layout) if self.has_truth else None
        try:
            for generated in frames:
                scorer.add(generated, next(real_frames) if real_frames is not None else None)
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            audio_file.unlink(missing_ok=True)
        if scorer.count != count:
            raise RuntimeError(f"rendered {scorer.count} frames for {count} scored frames")
        scores = self._summarise(scorer.finish())
        strip = write_strip(self.output_dir / f"epoch_{epoch}_strip.png", scorer.tiles, f"epoch {epoch}",
                            scorer.real_tiles)
        result = CheckpointResult(path, epoch, scores, video_path if writer is not None else None, strip)
        score_cache.store(score_cache.cache_file(self.output_dir, epoch), self._cache_key(path), result)
        return result

    def _summarise(self, measured: Dict) -> Dict:
        reference = self.reference
        scores = dict(measured["scores"])
        landmarks = measured["landmarks"]
        if landmarks is None:      # no landmark detector here: the lip and track scores are not measured
            scores.update(dict.fromkeys(LANDMARK_SCORES if self.has_truth else TRACK_SCORES, float("nan")))
            if self.has_truth:
                scores.update(metrics.stability(measured["changes"], reference.real_changes))
        else:
            opening = metrics.mouth_opening(landmarks)
            found = np.isfinite(opening)
            scores["face_found"] = float(found.mean())
            scores["mouth_opening"] = float(np.nanmean(opening)) if found.any() else float("nan")
            if self.has_truth:
                scores.update(metrics.lip_sync_scores(landmarks, reference.landmarks))
                scores.update(metrics.stability(measured["changes"], reference.real_changes))
            scores.update(metrics.opening_energy_scores(opening, reference.energy))
        if measured["embeddings"] is not None:
            scores.update(metrics.sync_confidence(*measured["embeddings"]))
        return scores

    # ------------------------------------------------------------------ the whole run
    def run(self) -> Dict:
        results = []
        for path in self.checkpoints:
            result = self.score_checkpoint(path)
            log.info("epoch %d: %s", result.epoch, format_scores(result.scores, self.has_truth))
            results.append(result)
        best = None
        if self.options.select and self.complete:
            best = choose_best(results, self.options.select_by)
            if best is not None:
                write_best(self.run_dir, best, self.options.select_by, results, self.describe())
            elif self.landmarks_missing and self.options.select_by in LANDMARK_SCORES:
                log.info("no %s without a landmark detector: best.pth left as it was", self.options.select_by)
            elif self.has_truth:
                log.warning("no checkpoint has a %s score: best.pth left as it was", self.options.select_by)
            else:
                log.info("new audio without --truth_video has no %s: best.pth left as it was "
                         "(choose with --select_by lse_c or energy_correlation)", self.options.select_by)
        report = self.report(results, best)
        report["motion_check"] = self.check_motion(results, best, report["mean"])
        write_json_atomic(self.output_dir / "scores.json", finite_or_none(report))
        table = format_table(report)
        if report["motion_check"]:
            table += f"\n\nMotion ({report['motion_check']['judged']}): {report['motion_check']['says']}."
        write_text_atomic(self.output_dir / "table.md", table + "\n")
        combined = write_combined_strip(self.output_dir / "strip.png", [result.strip for result in results],
                                        self.has_truth)
        report["table"] = table
        report["strip"] = str(combined) if combined else None
        return report

    def check_motion(self, results: List[CheckpointResult], best: Optional[CheckpointResult],
                     mean: Optional[Dict]) -> Optional[Dict]:
        """The chosen checkpoint's (or the scored epochs' mean's, or the one checkpoint's) opening against the
        truth's targets, logged in one line; None without a truth or a landmark detector."""
        if not self.has_truth or not results:
            return None
        if best is not None:
            judged, scores = f"best.pth, epoch {best.epoch}", best.scores
        elif mean is not None:
            judged, scores = f"the mean of epochs {', '.join(map(str, mean['epochs']))}", mean["scores"]
        else:
            judged, scores = f"epoch {results[-1].epoch}", results[-1].scores
        verdict = motion_check(scores, self.options.render_options.get("mouth_scale", RenderOptions().mouth_scale),
                               self.weak_encoder_accuracy())
        if verdict is None:
            return None
        verdict["judged"] = judged
        (log.info if verdict["meets_targets"] else log.warning)("motion, %s: %s", judged, verdict["says"])
        return verdict

    def weak_encoder_accuracy(self) -> Optional[float]:
        """The held-out sync accuracy of the person's own AVE encoder that drew these features (the dataset's,
        as its features' metadata records it, or --ave_checkpoint's for new audio), when it is below
        preprocessing's warning threshold; None otherwise (another encoder, released weights)."""
        if self.asr != "ave":
            return None
        chosen = self.options.ave_checkpoint
        if chosen and not self.heldout:
            accuracy = stored_heldout_accuracy(Path(chosen))
        else:
            accuracy = read_feature_metadata(self.layout, "ave").get("heldout_sync_accuracy")
        return accuracy if isinstance(accuracy, (int, float)) and accuracy < WEAK_AVE_ACCURACY else None

    def describe(self) -> Dict:
        reference = self.reference
        return {"name": self.layout.name, "dataset": str(self.layout.root), "run": str(self.run_dir),
                "mode": "heldout" if self.heldout else "audio",
                "audio": str(self.options.audio_path) if not self.heldout else str(self.layout.audio_wav),
                "truth": ("held-out tail" if self.heldout else
                          str(self.options.truth_video) if self.options.truth_video else None),
                "frames": {"first": int(reference.frames[0]), "last": int(reference.frames[-1]),
                           "count": int(len(reference.frames))},
                "val_fraction": self.val_fraction, "syncnet": str(self.syncnet_path) if self.syncnet else None,
                "syncnet_pair_accuracy": self.syncnet_accuracy,
                "render_options": dict(self.options.render_options),
                "landmarks_missing": self.landmarks_missing,
                "device": str(self.device), "machine": describe_machine(self.device)}

    def report(self, results: List[CheckpointResult], best: Optional[CheckpointResult]) -> Dict:
        report = self.describe()
        report.update({
            "reference": self.reference.scores,
            "checkpoints": [result.as_dict() for result in results],
            "mean": mean_over_checkpoints(results),
            "select_by": self.options.select_by,
            "best": ({"epoch": best.epoch, "checkpoint": str(best.path), "metric": self.options.select_by,
                      "value": best.scores[self.options.select_by],
                      "better": SELECTION_METRICS[self.options.select_by],
                      "path": str(self.run_dir / "best.pth")} if best is not None else None),
            "output_dir": str(self.output_dir),
        })
        return report


def evaluate(options: EvalOptions) -> Dict:
    """Score the checkpoints ``options`` names; returns the report (also written as JSON and a table)."""
    return Evaluation(options).run()
