"""Evaluation and checkpoint selection on the bundled clip (issue 6).

A tiny U-Net is trained a few steps on the clip (real crops, real audio
features from a small random AVE encoder, the training code's own loss; ten
steps are enough for a recognisable lower face), and a deliberately damaged
copy of it (its output layer pushed towards black) is saved as a later epoch. evaluate_328.py
must score both on the held-out tail through the inference render path, pick
the trained one, and write it to best.pth, which inference then loads.
"""
import itertools
import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lipsync.core import checkpoints as ckpt
from lipsync.evaluate import metrics, pictures
from data_utils.audio import load_audio
from lipsync.evaluate.evaluation import evaluate
from lipsync.evaluate.landmark_track import LANDMARKS_MISSING_CELL
from lipsync.evaluate.motion_check import motion_check
from lipsync.evaluate.options import EvalOptions
from lipsync.evaluate.report import format_table
from lipsync.evaluate.results import CheckpointResult
from lipsync.evaluate.selection import choose_best
from data_utils.ffmpeg import probe
from lipsync.render.video_writer import write_wav
from evaluate_328 import main as evaluate_main
from tests.conftest import HELDOUT_WAV, ffmpeg, cli_error_line

VAL_FRACTION = 0.2            # 20 held-out frames of the clip's 100
TRAIN_STEPS = 10
TRAIN_LR = 1e-2
TRAINED_EPOCH, DAMAGED_EPOCH = 10, 20
DAMAGE_BIAS = -4.0            # added to the RGB output layer's bias: sigmoid(-4) = 0.02, a near-black mouth
NEW_AUDIO_SECONDS = 0.8


def random_ave_encoder(path):
    """A small AVE audio encoder with random weights, saved like the released checkpoint."""
    from models.audio_encoders import AveAudioEncoder

    torch.manual_seed(0)
    encoder = AveAudioEncoder(0.25)
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(encoder.conv_stack.state_dict(), path)
    return path


def train_tiny_unet(root, run_dir):
    """TRAIN_STEPS steps of the training code's U-Net objective; returns (state, config)."""
    from data_utils.dataset import open_person
    from lipsync.train.options import TrainConfig
    from lipsync.train.unet_task import UNetTask
    from models.unet_328 import WIDTHS, LipSyncUNet

    torch.manual_seed(0)
    config = TrainConfig(dataset_dir=root, save_dir=run_dir, model_size="tiny", batch_size=2, lr=TRAIN_LR,
                         perceptual="off", num_workers=0, val_fraction=VAL_FRACTION, device="cpu")
    person = open_person(root, "ave", show_progress=False)
    model = LipSyncUNet("ave", person.audio_shape, WIDTHS["tiny"])
    task = UNetTask(model, person, config)
    loader = torch.utils.data.DataLoader(task.train_set, batch_size=config.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    model.train()
    losses = []
    for _, batch in zip(range(TRAIN_STEPS), itertools.cycle(loader)):
        loss = task.losses(model, batch, torch.device("cpu"))["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    return model.state_dict(), task.model_config(), person.audio_shape, person.describe_features()


def damaged(state):
    """The trained weights with the RGB output layer's bias lowered: the mouth region comes out dark."""
    broken = {key: value.clone() for key, value in state.items()}
    output_bias = [key for key, value in broken.items() if key.endswith("bias") and tuple(value.shape) == (3,)][-1]
    broken[output_bias] += DAMAGE_BIAS
    return broken


@pytest.fixture(scope="module")
def run(processed_clip, tmp_path_factory):
    """dataset/talker (with ave features) and checkpoint/talker: 10.pth trained, 20.pth damaged,
    syncnet/best.pth a tiny SyncNet, all under one temporary project root."""
    from data_utils.features.extract import prepare_dataset_features
    from models.syncnet import SYNC_WIDTHS, SyncNet

    project = tmp_path_factory.mktemp("project")
    root = project / "dataset" / "talker"
    shutil.copytree(processed_clip, root)
    encoder = random_ave_encoder(root / "ave_random.pth")
    prepare_dataset_features(root, "ave", ave_checkpoint=encoder, progress=False)
    run_dir = project / "checkpoint" / "talker"
    state, config, audio_shape, features = train_tiny_unet(root, run_dir)
    ckpt.save_checkpoint(ckpt.epoch_path(run_dir, TRAINED_EPOCH), state, config, TRAINED_EPOCH)
    ckpt.save_checkpoint(ckpt.epoch_path(run_dir, DAMAGED_EPOCH), damaged(state), config, DAMAGED_EPOCH)
    torch.manual_seed(2)
    syncnet = SyncNet("ave", audio_shape, "tiny").eval()
    ckpt.save_checkpoint(ckpt.syncnet_dir(run_dir) / ckpt.BEST, syncnet.state_dict(),
                         ckpt.model_config(ckpt.SYNCNET_KIND, "ave", "tiny", SYNC_WIDTHS["tiny"], audio_shape,
                                           features), 1)
    return project


def options(project, **changes):
    base = dict(name="talker", dataset_root=project / "dataset", checkpoint_root=project / "checkpoint",
                device="cpu", val_fraction=VAL_FRACTION, show_progress=False)
    base.update(changes)
    return EvalOptions(**base)


@pytest.fixture(scope="module")
def heldout(run):
    return evaluate(options(run))


# ---------------------------------------------------------------------------- held-out tail, every checkpoint

def test_every_checkpoint_is_scored_on_the_heldout_tail(run, heldout):
    assert heldout["mode"] == "heldout"
    assert heldout["frames"] == {"first": 80, "last": 99, "count": 20}
    assert [entry["epoch"] for entry in heldout["checkpoints"]] == [TRAINED_EPOCH, DAMAGED_EPOCH]
    expected = {"psnr", "ssim", "mouth_psnr", "mouth_ssim", "lmd", "opening_correlation", "opening_offset",
                "opening_ratio", "change_ratio", "energy_correlation", "lse_d", "lse_c", "sync_offset",
                "face_found"}
    for entry in heldout["checkpoints"]:
        scores = entry["scores"]
        assert expected <= set(scores), expected - set(scores)
        assert 0 < scores["ssim"] <= 1 and 0 < scores["psnr"] < metrics.MAX_PSNR_DB
        assert 0 <= scores["lse_d"] <= 2                  # distances of unit vectors
        assert scores["face_found"] > 0.5
    # the recording's own row: the ceiling every checkpoint is read against
    reference = heldout["reference"]
    assert reference["lmd"] == 0 and reference["change_ratio"] == 1
    assert np.isfinite(reference["lse_c"]) and np.isfinite(reference["energy_correlation"])
    assert heldout["machine"] and heldout["syncnet"].endswith("best.pth")
    # The chosen checkpoint's motion is judged against the truth's, in the JSON, the table and the log.
    best_epoch = heldout["best"]["epoch"]
    best_scores = next(entry["scores"] for entry in heldout["checkpoints"] if entry["epoch"] == best_epoch)
    check = heldout["motion_check"]
    assert check == {**motion_check(best_scores), "judged": f"best.pth, epoch {best_epoch}"}
    assert f"Motion (best.pth, epoch {best_epoch}): {check['says']}." in heldout["table"]


def test_selection_picks_the_trained_checkpoint_over_the_damaged_one(run, heldout):
    scores = {entry["epoch"]: entry["scores"] for entry in heldout["checkpoints"]}
    trained, broken = scores[TRAINED_EPOCH], scores[DAMAGED_EPOCH]
    for key in ("psnr", "ssim", "mouth_psnr", "mouth_ssim"):
        assert trained[key] > broken[key], key
    assert trained["lmd"] < broken["lmd"]
    best = heldout["best"]
    assert best["epoch"] == TRAINED_EPOCH and best["metric"] == "lmd" and best["better"] == "lower"
    assert best["value"] == pytest.approx(trained["lmd"])
    # best.pth: the trained weights, and why they won
    run_dir = run / "checkpoint" / "talker"
    chosen = torch.load(run_dir / "best.pth", weights_only=False)
    source = torch.load(run_dir / f"{TRAINED_EPOCH}.pth", weights_only=False)
    assert chosen["epoch"] == TRAINED_EPOCH and chosen["config"] == source["config"]
    assert all(torch.equal(chosen["model"][key], value) for key, value in source["model"].items())
    selection = chosen["selection"]
    assert selection["metric"] == "lmd" and selection["source"] == f"{TRAINED_EPOCH}.pth"
    assert selection["value"] == pytest.approx(trained["lmd"])
    assert set(selection["scores"]) == {str(TRAINED_EPOCH), str(DAMAGED_EPOCH)}
    assert not list(run_dir.glob(".*partial*")), "an atomic write left its temporary file"


def test_inference_loads_the_chosen_best_checkpoint(run, heldout):
    from lipsync.render import load_renderer

    with load_renderer("talker", checkpoint="best", device="cpu", dataset_root=run / "dataset",
                       checkpoint_root=run / "checkpoint") as renderer:
        assert renderer.checkpoint_path.name == "best.pth"
        frame = next(iter(renderer.render(np.zeros(640, np.float32))))
    assert frame.shape == (512, 512, 3)


def test_outputs_table_json_video_and_strips(run, heldout):
    out = run / "checkpoint" / "talker" / "evaluation" / "heldout"
    stored = json.loads((out / "scores.json").read_text())
    assert stored["best"]["epoch"] == TRAINED_EPOCH
    assert stored["checkpoints"][0]["scores"]["lmd"] == pytest.approx(heldout["checkpoints"][0]["scores"]["lmd"])
    table = (out / "table.md").read_text()
    assert table == heldout["table"] + "\n"
    lines = table.splitlines()
    assert lines[0].startswith("| checkpoint | PSNR | SSIM | mouth PSNR | mouth SSIM | LMD |")
    assert lines[2].startswith("| recording (truth) |")
    assert lines[3].startswith(f"| {TRAINED_EPOCH} * |") and lines[4].startswith(f"| {DAMAGED_EPOCH} |")
    # the run's two epochs summarised: their mean and spread, in the JSON and below them in the table
    both = [entry["scores"] for entry in heldout["checkpoints"]]
    mean = stored["mean"]
    assert mean["epochs"] == [TRAINED_EPOCH, DAMAGED_EPOCH]
    for key in ("mouth_psnr", "lmd", "opening_correlation"):
        assert mean["scores"][key] == pytest.approx((both[0][key] + both[1][key]) / 2)
        assert mean["sd"][key] == pytest.approx(abs(both[0][key] - both[1][key]) / 2 ** 0.5)
    assert lines[5].startswith(f"| mean of 2 epochs, {TRAINED_EPOCH}-{DAMAGED_EPOCH} | ")
    assert f"{mean['scores']['mouth_psnr']:.2f}" in lines[5] and lines[6].startswith("| ± sd | ")
    assert "machine:" in table and "best: epoch 10 by lmd" in table
    assert f"LSE-D/LSE-C by {run / 'checkpoint' / 'talker' / 'syncnet' / 'best.pth'}" in table
    video = out / f"epoch_{TRAINED_EPOCH}_side_by_side.mp4"
    info = probe(video)
    assert (info.width, info.height) == (1024, 512) and info.has_audio      # truth | generated
    assert info.duration == pytest.approx(20 / 25, abs=0.05)
    import cv2

    strip = cv2.imread(str(out / f"epoch_{TRAINED_EPOCH}_strip.png"))
    tile = pictures.STRIP_TILE_PX
    assert strip.shape == (2 * tile, pictures.STRIP_COLUMNS * tile, 3)     # truth row, generated row
    combined = cv2.imread(str(out / "strip.png"))
    assert combined.shape == (3 * tile, pictures.STRIP_COLUMNS * tile, 3)  # truth + both checkpoints
    # the top row is the real recording: its first tile is the held-out tail's first frame's crop
    first = cv2.imread(str(run / "dataset" / "talker" / "full_body_img" / "80.jpg"))
    boxes = np.load(run / "dataset" / "talker" / "crop_boxes.npy")
    expected = pictures.strip_tile(first, boxes[80])
    assert np.abs(strip[tile // 2:tile, :tile].astype(int) - expected[tile // 2:].astype(int)).mean() < 2


def test_rerun_reuses_scores_and_can_select_by_another_metric(run, heldout):
    again = evaluate(options(run, select_by="mouth_ssim"))
    assert all(entry["reused"] for entry in again["checkpoints"])
    assert again["checkpoints"][1]["scores"]["lmd"] == pytest.approx(heldout["checkpoints"][1]["scores"]["lmd"])
    assert again["best"]["epoch"] == TRAINED_EPOCH and again["best"]["metric"] == "mouth_ssim"
    chosen = torch.load(run / "checkpoint" / "talker" / "best.pth", weights_only=False)
    assert chosen["selection"]["metric"] == "mouth_ssim"
    # other render options are another video: scored again, and the options are on record
    other = evaluate(options(run, checkpoint=str(TRAINED_EPOCH), write_video=False,
                             render_options={"silence_hold": False}))
    assert not other["checkpoints"][0]["reused"] and other["render_options"] == {"silence_hold": False}
    assert other["best"] is None and other["mean"] is None        # one checkpoint: nothing chosen, no mean


def test_last_n_scores_only_the_newest_epochs_and_chooses_nothing(run, heldout):
    best_before = (run / "checkpoint" / "talker" / "best.pth").read_bytes()
    newest = evaluate(options(run, last=1, write_video=False))
    assert [entry["epoch"] for entry in newest["checkpoints"]] == [DAMAGED_EPOCH]
    assert newest["best"] is None and newest["mean"] is None
    assert (run / "checkpoint" / "talker" / "best.pth").read_bytes() == best_before     # a part of the run
    both = evaluate(options(run, last=5, write_video=False))                            # more than there are
    assert [entry["epoch"] for entry in both["checkpoints"]] == [TRAINED_EPOCH, DAMAGED_EPOCH]
    assert both["mean"]["epochs"] == [TRAINED_EPOCH, DAMAGED_EPOCH] and both["best"] is None
    assert both["motion_check"]["judged"] == f"the mean of epochs {TRAINED_EPOCH}, {DAMAGED_EPOCH}"
    assert newest["motion_check"]["judged"] == f"epoch {DAMAGED_EPOCH}"
    assert (run / "checkpoint" / "talker" / "best.pth").read_bytes() == best_before


def test_a_missed_timing_from_a_weak_person_encoder_names_the_audio_not_the_seed(run, heldout, tmp_path):
    # The features' metadata records the held-out sync accuracy of the person's own encoder that made
    # them (preprocessing warned below 80 %); the verdict then sends the user to more speech, not a seed.
    metadata = run / "dataset" / "talker" / "aud_ave.json"
    original = metadata.read_text()
    try:
        metadata.write_text(json.dumps({**json.loads(original), "heldout_sync_accuracy": 0.6}))
        weak = evaluate(options(run, last=1, write_video=False, output_dir=tmp_path / "weak"))
    finally:
        metadata.write_text(original)
    scores = weak["checkpoints"][0]["scores"]
    assert scores["opening_correlation"] < 0.85                  # the tiny run misses the timing
    check = weak["motion_check"]
    assert check == {**motion_check(scores, weak_encoder_accuracy=0.6), "judged": f"epoch {DAMAGED_EPOCH}"}
    assert "60%" in check["says"] and "--asr hubert" in check["says"] and "--seed" not in check["says"]
    plain = evaluate(options(run, last=1, write_video=False, output_dir=tmp_path / "plain"))
    assert "--seed" in plain["motion_check"]["says"]             # the encoder it recorded is not weak


def test_table_shows_the_measures_against_the_truth_first(heldout):
    """Measures against the real frames cannot be pleased without looking like the person:
    they come first; the SyncNet and loudness scores follow, and their headings say so."""
    lines = heldout["table"].splitlines()
    headings = [cell.strip() for cell in lines[0].strip("|").split("|")][1:]
    without_truth = [heading.endswith("(no truth)") for heading in headings]
    assert without_truth == sorted(without_truth), headings            # every truth-based column first
    assert headings[-3:] == ["LSE-D (no truth)", "LSE-C (no truth)", "energy r (no truth)"]
    assert "change ratio" in headings and "LMD" in headings
    assert any(line.startswith("against the true frames: PSNR, SSIM") for line in lines)
    # without a truth the table says so, in one line
    no_truth = format_table(dict(heldout, mode="audio", truth=None, audio="other.wav"))
    said = [line for line in no_truth.splitlines() if line.startswith("no true video of this audio")]
    assert len(said) == 1 and "--truth_video" in said[0]
    assert "(no truth)" not in no_truth.splitlines()[0]


def test_without_mediapipe_the_other_measures_are_still_made(run, heldout, tmp_path, monkeypatch, caplog):
    """A GPU box without mediapipe: mouth PSNR/SSIM and the SyncNet scores are measured, the
    landmark measures are null / n/a, one warning says what is missing, best.pth is left alone."""
    monkeypatch.setitem(sys.modules, "mediapipe", None)          # "import mediapipe" raises ImportError
    best_before = (run / "checkpoint" / "talker" / "best.pth").read_bytes()
    out = tmp_path / "no mediapipe"
    with caplog.at_level(logging.INFO, logger="evaluation"):
        report = evaluate(options(run, output_dir=out, write_video=False))
    about = [record for record in caplog.records if "mediapipe" in record.getMessage()]
    assert len(about) == 1 and about[0].levelno == logging.WARNING
    assert "mediapipe is not installed" in about[0].getMessage() and "pip install" in about[0].getMessage()
    assert "--select_by mouth_psnr" in about[0].getMessage()
    with_landmarks = {entry["epoch"]: entry["scores"] for entry in heldout["checkpoints"]}
    stored = json.loads((out / "scores.json").read_text())
    for entry, saved in zip(report["checkpoints"], stored["checkpoints"]):
        scores, before = entry["scores"], with_landmarks[entry["epoch"]]
        for key in ("lmd", "opening_correlation", "opening_offset", "opening_ratio", "energy_correlation",
                    "face_found"):
            assert np.isnan(scores[key]) and saved["scores"][key] is None, key
        for key in ("psnr", "ssim", "lse_d", "lse_c"):                    # need no landmarks at all
            assert scores[key] == pytest.approx(before[key]), key
        # mouth regions from preprocessing's landmarks instead of a fresh track: nearly the same
        for key in ("mouth_psnr", "mouth_ssim", "change_ratio"):
            assert np.isfinite(scores[key]) and scores[key] == pytest.approx(before[key], rel=0.1), key
    assert np.isnan(report["reference"]["lmd"]) and np.isfinite(report["reference"]["lse_c"])
    assert report["best"] is None and report["landmarks_missing"].startswith("mediapipe is not installed")
    assert report["motion_check"] is None                                 # no opening measured
    assert (run / "checkpoint" / "talker" / "best.pth").read_bytes() == best_before
    assert f"LMD, open r, offset, open ratio, energy r: {LANDMARKS_MISSING_CELL}" in report["table"]
    # with mediapipe back, the scores cached without it are not reused
    monkeypatch.undo()
    again = evaluate(options(run, output_dir=out, write_video=False, checkpoint=str(TRAINED_EPOCH)))
    assert not again["checkpoints"][0]["reused"] and np.isfinite(again["checkpoints"][0]["scores"]["lmd"])
    assert again["landmarks_missing"] is None


# ---------------------------------------------------------------------------- new audio, one checkpoint

def test_new_audio_reports_sync_without_ground_truth(run, heldout, tmp_path, capsys):
    samples = load_audio(HELDOUT_WAV)[:int(NEW_AUDIO_SECONDS * 16000)]
    audio = write_wav(tmp_path / "other speaker.wav", samples)
    best_before = (run / "checkpoint" / "talker" / "best.pth").read_bytes()
    report = evaluate_main(["--name", "talker", "--checkpoint", str(TRAINED_EPOCH), "--audio_path", str(audio),
                            "--device", "cpu", "--quiet", "--dataset_root", str(run / "dataset"),
                            "--checkpoint_root", str(run / "checkpoint")])
    assert report["mode"] == "audio" and report["frames"]["count"] == 20
    (entry,) = report["checkpoints"]
    scores = entry["scores"]
    assert {"lse_d", "lse_c", "sync_offset", "energy_correlation", "energy_offset", "face_found"} <= set(scores)
    assert "lmd" not in scores and "psnr" not in scores      # nothing to compare with
    assert report["best"] is None and report["motion_check"] is None       # no truth to judge the motion by
    assert (run / "checkpoint" / "talker" / "best.pth").read_bytes() == best_before
    out = run / "checkpoint" / "talker" / "evaluation" / "audio_other speaker"
    assert probe(out / f"epoch_{TRAINED_EPOCH}_side_by_side.mp4").duration == pytest.approx(NEW_AUDIO_SECONDS, abs=0.05)
    printed = capsys.readouterr().out
    assert "| checkpoint | LSE-D | LSE-C |" in printed and "no ground truth" in printed


def test_new_audio_with_a_truth_video_gets_every_measure(run, heldout, tmp_path, capsys):
    """The recording's first 0.8 s as "new" audio, and its own frames as the video of
    the person speaking it: scored like the held-out tail, against that video."""
    dataset = run / "dataset" / "talker"
    frames = int(NEW_AUDIO_SECONDS * 25)
    audio = write_wav(tmp_path / "speech.wav", load_audio(dataset / "aud.wav")[:frames * 640])
    truth = tmp_path / "truth.mp4"
    ffmpeg("-framerate", 25, "-start_number", 0, "-i", dataset / "full_body_img" / "%d.jpg", "-frames:v", frames,
           "-c:v", "libx264", "-crf", 12, "-pix_fmt", "yuv420p", truth)
    roots = ["--name", "talker", "--dataset_root", str(run / "dataset"), "--checkpoint_root", str(run / "checkpoint"),
             "--device", "cpu", "--quiet", "--no_video", "--checkpoint", str(TRAINED_EPOCH), "--audio_path", str(audio)]
    report = evaluate_main([*roots, "--truth_video", str(truth)])
    assert report["truth"] == str(truth) and report["reference"]["lmd"] == 0
    scores = report["checkpoints"][0]["scores"]
    assert {"psnr", "mouth_ssim", "lmd", "opening_correlation", "change_ratio", "lse_c"} <= set(scores)
    assert 0 < scores["lmd"] < 0.1 and 0 < scores["mouth_ssim"] < 1
    assert f"speech.wav ({frames} frames, 0.8 s) against {truth}" in report["table"]
    # true frames without a face (here blacked out) are left out of the lip measures, not fatal
    covered = tmp_path / "covered.mp4"
    ffmpeg("-i", truth, "-vf", "drawbox=enable='between(n,5,7)':x=0:y=0:w=iw:h=ih:color=black:t=fill",
           "-c:v", "libx264", "-crf", 12, covered)
    partly = evaluate_main([*roots, "--truth_video", str(covered)])
    assert partly["reference"]["face_found"] == pytest.approx(17 / 20)
    assert np.isfinite(partly["checkpoints"][0]["scores"]["lmd"])
    assert partly["checkpoints"][0]["scores"]["mouth_psnr"] != pytest.approx(scores["mouth_psnr"])
    capsys.readouterr()
    # a truth video that cannot sit beside the generated frames: one line each
    for video_filter, message in (("fps=30", "runs at 30.0 fps, not 25"),
                                  ("scale=256:256", "is 256x256 but the recording is 512x512")):
        wrong = tmp_path / f"wrong {video_filter.split('=')[0]}.mp4"
        ffmpeg("-i", truth, "-vf", video_filter, "-c:v", "libx264", wrong)
        assert message in error_line(capsys, [*roots, "--truth_video", str(wrong)])
    short = tmp_path / "short.mp4"
    ffmpeg("-i", truth, "-frames:v", 5, "-c:v", "libx264", short)
    line = error_line(capsys, [*roots, "--truth_video", str(short), "--force"])
    assert "has 5 frames but the audio needs 20" in line


# ---------------------------------------------------------------------------- choosing

def result(epoch, **scores):
    return CheckpointResult(path=f"{epoch}.pth", epoch=epoch, scores={"face_found": 1.0, **scores})


def test_choose_best_direction_ties_and_faceless_checkpoints():
    results = [result(10, lmd=0.03, mouth_ssim=0.7), result(20, lmd=0.02, mouth_ssim=0.6),
               result(30, lmd=0.02, mouth_ssim=0.5)]
    assert choose_best(results, "lmd").epoch == 30                  # lower wins; a tie goes to the later epoch
    assert choose_best(results, "mouth_ssim").epoch == 10           # higher wins
    lost_face = [result(10, lmd=0.03), CheckpointResult("20.pth", 20, {"lmd": 0.001, "face_found": 0.3})]
    assert choose_best(lost_face, "lmd").epoch == 10                # few faces found: LMD of a handful of frames
    assert choose_best([result(10, lmd=float("nan"))], "lmd") is None


# ---------------------------------------------------------------------------- bad input, one line each

def error_line(capsys, argv) -> str:
    return cli_error_line(evaluate_main, capsys, argv)


def test_bad_input_gives_one_clear_line(run, tmp_path, capsys):
    roots = ["--dataset_root", str(run / "dataset"), "--checkpoint_root", str(run / "checkpoint"), "--device", "cpu"]
    line = error_line(capsys, ["--name", "nobody", *roots])
    assert "dataset/nobody does not exist" in line and "process.py" in line
    line = error_line(capsys, ["--name", "talker", "--checkpoint", "70", *roots])
    assert "70.pth does not exist" in line and "10, 20" in line
    empty = tmp_path / "empty run"
    empty.mkdir()
    line = error_line(capsys, ["--name", "talker", "--checkpoint_dir", str(empty), *roots])
    assert "nothing to evaluate" in line and "train_328.py --name talker" in line
    line = error_line(capsys, ["--name", "talker", "--val_fraction", "0.05", "--no_video", *roots])
    assert "only 5 frames" in line and "--val_fraction" in line
    line = error_line(capsys, ["--name", "talker", "--last", "0", *roots])
    assert "--last must be at least 1, got 0" in line
    line = error_line(capsys, ["--name", "talker", "--last", "2", "--checkpoint", "10", *roots])
    assert "--last" in line and "--checkpoint" in line and "one of them" in line
    line = error_line(capsys, ["--name", "talker", "--val_fraction", "1.5", *roots])
    assert "--val_fraction must be between 0 and 1" in line
    line = error_line(capsys, ["--name", "talker", "--audio_path", str(tmp_path / "missing.wav"), *roots])
    assert "missing.wav does not exist" in line
    line = error_line(capsys, ["--name", "talker", "--syncnet_checkpoint", str(tmp_path / "none.pth"),
                               "--select_by", "lse_c", "--val_fraction", str(VAL_FRACTION), *roots])
    assert "--select_by lse_c needs a trained SyncNet" in line and "train_syncnet.py" in line


def test_a_landmarker_that_is_installed_but_cannot_start_is_one_line_not_a_crash(monkeypatch):
    # mediapipe 0.10.21 declares numpy<2; on a box with numpy 2 it may import and then fail. The
    # landmark scores are then n/a with that line, and everything else is still measured.
    from lipsync.evaluate import landmark_track

    def broken(backend):
        raise RuntimeError("numpy.core.multiarray failed to import")

    monkeypatch.setattr(landmark_track, "create_landmarker", broken)
    reason = landmark_track.landmarks_unavailable()
    assert reason == ("mediapipe is installed but could not start (RuntimeError: numpy.core.multiarray failed to "
                      "import) — reinstall it")


def test_a_mediapipe_broken_by_a_new_protobuf_says_to_give_it_its_own_protobuf(monkeypatch):
    # On the GPU box mediapipe 0.10.21 imports under protobuf 7 and fails on its first graph;
    # reinstalling it would not help, its own protobuf 4.25 on PYTHONPATH does.
    import google.protobuf

    from lipsync.evaluate import landmark_track

    def broken(backend):
        raise AttributeError("'google._upb._message.FieldDescriptor' object has no attribute 'label'")

    monkeypatch.setattr(landmark_track, "create_landmarker", broken)
    monkeypatch.setattr(google.protobuf, "__version__", "7.36.2")
    reason = landmark_track.landmarks_unavailable()
    assert reason.startswith("mediapipe is installed but could not start (AttributeError: ")
    assert "needs protobuf<5 (here 7.36.2)" in reason and "wheels/landmarks" in reason and "PYTHONPATH" in reason
    assert "\n" not in reason
