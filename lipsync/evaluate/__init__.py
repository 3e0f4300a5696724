"""Scoring rendered video against the truth and choosing a checkpoint (evaluate_328.py).

evaluation.py      Evaluation: one run (render each checkpoint, score it, choose); evaluate(options)
options.py         EvalOptions (every evaluation option) and evaluate_328.py's parser
run_info.py        which checkpoints of the run are scored, their epochs, the trained --val_fraction
reference.py       the real frames, audio and features generated frames are compared with
clip_scorer.py     one rendered clip scored frame by frame against the truth
metrics.py         the measures themselves: pure functions on frames, landmarks, embeddings, audio
landmark_track.py  face-mesh landmark tracks of a video; which scores need them (n/a without mediapipe)
sync_embedding.py  SyncNet embeddings of frames and audio windows (LSE-D / LSE-C)
pictures.py        side-by-side frames and PNG strips of crops
score_cache.py     epoch_E.json: scores of unchanged checkpoints reused
results.py         CheckpointResult, and NaN-free JSON
selection.py       choosing by a metric and writing best.pth
motion_check.py    whether the mouth moves like the truth's (issue 11's targets), and the --mouth_scale that matches it
report.py          the markdown table and log lines, the machine line

Imports nothing: lipsync.render.mouth_control imports lipsync.evaluate.metrics, and
evaluation imports the renderer.
"""
