"""benchmarks/ablate_objective.py end to end on a tiny budget, so the ablation behind the
objective's defaults cannot rot: two arms (L1 only and the fixed sync weight, which has no
warm-up and so runs the sync term in its first epoch) train side by side, pinned one per
core, are scored on held-out speech against its true video, and land in one table, one
JSON and one strip. The person is the bundled clip cut to 24 frames with a small random AVE
encoder (as in test_gpu_check.py); its "held-out" speech is the first 0.48 s."""
import json

import pytest
import torch

from benchmarks.ablate_objective import main as ablate
from data_utils.audio import load_audio
from data_utils.dataset import open_person
from data_utils.timebase import SAMPLES_PER_FRAME
from lipsync.core import checkpoints as ckpt
from lipsync.render.video_writer import write_wav
from models.syncnet import SYNC_WIDTHS, SyncNet
from tests.conftest import ffmpeg
from tests.training_helpers import cut_to_frames, person_with_ave_features, run_main

FRAMES, HELDOUT_FRAMES = 24, 12
AVE_WIDTH = 0.25


def harness_options(dataset_dir, *extra):
    from benchmarks.ablate_objective import build_parser

    options = build_parser().parse_args(["--name", "talker", "--syncnet_checkpoint", "s.pth", "--heldout_audio",
                                         "h.wav", *extra])
    options.dataset_dir = dataset_dir
    return options


def parse_train_args(command):
    """train_328.py's options as a command of the harness gives them."""
    from lipsync.train.options import build_unet_parser

    assert all(isinstance(part, str) for part in command)           # what subprocess takes
    return build_unet_parser("train_328.py").parse_args(command[2:])


@pytest.fixture(scope="module")
def ablation(processed_clip, tmp_path_factory):
    base = tmp_path_factory.mktemp("ablation") / "a folder"
    person = person_with_ave_features(processed_clip, base, "talker", AVE_WIDTH)
    cut_to_frames(person.layout, FRAMES)
    audio = write_wav(base / "held out.wav", load_audio(person.layout.audio_wav)[:HELDOUT_FRAMES * SAMPLES_PER_FRAME])
    truth = base / "held out_truth.mp4"
    ffmpeg("-framerate", 25, "-start_number", 0, "-i", person.layout.frames_dir / "%d.jpg",
           "-frames:v", HELDOUT_FRAMES, "-c:v", "libx264", "-crf", 12, "-pix_fmt", "yuv420p", truth)
    data = open_person(person.root, "ave", show_progress=False)
    audio_shape = tuple(data.audio_shape)
    torch.manual_seed(3)
    syncnet_path = base / "syncnet.pth"
    ckpt.save_checkpoint(syncnet_path, SyncNet("ave", audio_shape, "tiny").state_dict(),
                         ckpt.model_config(ckpt.SYNCNET_KIND, "ave", "tiny", SYNC_WIDTHS["tiny"], audio_shape,
                                           data.describe_features()), 1)
    output = base / "out"
    person_and_scoring = ["--dataset_dir", str(person.root), "--syncnet_checkpoint", str(syncnet_path),
                          "--heldout_audio", str(audio), "--truth_video", str(truth), "--batch_size", "4"]
    results = ablate(person_and_scoring + ["--arms", "l1", "sync_fixed", "--minutes", "0.001", "--parallel", "2",
                                           "--output_dir", str(output)])
    return results, output, person_and_scoring


def test_every_arm_trains_for_the_budget_and_is_scored_against_the_truth(ablation):
    results, output, _ = ablation
    assert [result["arm"] for result in results] == ["l1", "sync_fixed"]
    for result in results:
        assert "failed" not in result, result.get("failed")
        assert result["epochs"] == 1 and result["train_cpu_min"] > 0
        for name in ("mouth_psnr", "lmd", "opening_correlation", "opening_ratio", "own_opening_correlation",
                     "own_opening_ratio"):
            assert isinstance(result["scores"][name], float), name
        # The own-motion scores come from a render without the silence hold.
        own = json.loads((output / result["arm"] / "evaluation_own_motion" / "epoch_1.json").read_text())
        assert own["key"]["render_options"] == {"silence_hold": False}
    assert "train_sync" not in results[0]["last_epoch"] and results[1]["last_epoch"]["train_sync"] > 0
    assert results[1]["last_epoch"]["train_sync_weight"] == 10
    assert json.loads((output / "ablation.json").read_text())[1]["arm"] == "sync_fixed"


def test_the_table_states_the_budget_and_the_strip_shows_the_truth_above_each_arm(ablation):
    import cv2

    results, output, _ = ablation
    table = (output / "ablation.md").read_text()
    assert "Budget: 0.001 min of training per arm" in table and "against held out_truth.mp4" in table
    rows = [line for line in table.splitlines() if line.startswith("| l1 ") or line.startswith("| sync_fixed ")]
    assert len(rows) == 2 and all("n/a" not in row.split("|")[7] for row in rows)      # mouth PSNR
    assert all(row.split("|")[5].strip() == "1" for row in rows)         # one epoch trained, so one scored
    assert "the mean over the last 3 epochs' checkpoints" in table
    strip = cv2.imread(str(output / "strip.png"))
    single = cv2.imread(results[0]["strip"])
    assert strip.shape[0] == 3 * (single.shape[0] // 2)       # truth, l1, sync_fixed


def test_the_tails_mouth_scale_is_tried_on_the_new_speech_reusing_the_harness_scoring(ablation, tmp_path,
                                                                                        monkeypatch):
    from benchmarks.mouth_scale_calibration import main as calibrate
    from lipsync.evaluate import motion_check

    results, output, person_and_scoring = ablation
    scoring = dict(zip(person_and_scoring[::2], person_and_scoring[1::2]))
    # Every timing passes and every opening counts as too narrow, so that a scale is suggested and tried.
    monkeypatch.setattr(motion_check, "MIN_OPENING_CORRELATION", -1.0)
    monkeypatch.setattr(motion_check, "OPENING_RATIO_RANGE", (50.0, 60.0))
    argv = ["--dataset_dir", scoring["--dataset_dir"], "--syncnet_checkpoint", scoring["--syncnet_checkpoint"],
            "--heldout_audio", scoring["--heldout_audio"], "--truth_video", scoring["--truth_video"],
            "--runs", f"plain L1={output / 'l1' / 'run'}", "--val_fraction", "0.5",
            "--output_dir", str(tmp_path / "out")]
    (row,) = calibrate(argv)
    assert row["unscaled_reused"]                                   # the harness scored this speech at scale 1
    assert row["new_speech"]["opening_ratio"] == pytest.approx(results[0]["scores"]["opening_ratio"])
    tail = json.loads((tmp_path / "out" / "plain L1" / "tail" / "scores.json").read_text())
    assert tail["mode"] == "heldout" and row["tail"]["opening_ratio"] == pytest.approx(
        tail["checkpoints"][-1]["scores"]["opening_ratio"])
    scale = row["suggested_mouth_scale"]
    assert scale == motion_check.suggested_mouth_scale(row["tail"]["opening_ratio"]) and scale > 1
    scaled = json.loads((tmp_path / "out" / "plain L1" / f"new_speech_scale_{scale:g}" / "scores.json").read_text())
    assert scaled["render_options"] == {"mouth_scale": scale} and scaled["truth"].endswith("held out_truth.mp4")
    # (The one-epoch mouth is shut, under the warp's smallest gap, so the scale cannot show in its scores.)
    assert row["new_speech_scaled"]["opening_ratio"] == pytest.approx(
        scaled["checkpoints"][-1]["scores"]["opening_ratio"])
    assert json.loads((tmp_path / "out" / "calibration.json").read_text())[0]["run"] == "plain L1"


def test_the_calibration_refuses_a_missing_run_or_a_run_without_a_label_in_one_line(tmp_path, capsys):
    from benchmarks.mouth_scale_calibration import main as calibrate

    for name in ("s.pth", "h.wav", "t.mp4"):
        (tmp_path / name).write_bytes(b"")
    given = ["--dataset_dir", str(tmp_path), "--syncnet_checkpoint", str(tmp_path / "s.pth"), "--heldout_audio",
             str(tmp_path / "h.wav"), "--truth_video", str(tmp_path / "t.mp4"), "--output_dir", str(tmp_path / "o")]
    missing = tmp_path / "no such run"
    code, lines = run_main(calibrate, given + ["--runs", f"seed 0={missing}"], capsys)
    assert code == 2 and lines == [f"error: {missing} does not exist"]
    code, lines = run_main(calibrate, given + ["--runs", str(missing)], capsys)
    assert code == 2 and lines[-1].endswith(f"expected LABEL=RUN_DIR, got {str(missing)!r}")


def test_an_arm_whose_schedule_spreads_over_the_budget_trains_for_budget_epochs(tmp_path):
    from benchmarks.ablate_objective import ARMS, train_command

    options = harness_options(tmp_path, "--budget_epochs", "11")
    config = parse_train_args(train_command(ARMS["l1_lips4_cosine"], options, tmp_path / "run"))
    assert (config.lr_schedule, config.epochs, config.lip_weight) == ("cosine", 11, 4)
    assert config.max_minutes == options.minutes                    # the clock still stops it
    # Every other arm runs until the clock stops it.
    assert parse_train_args(train_command(ARMS["l1_lips4"], options, tmp_path)).epochs > 1000


def test_a_scheduled_arm_without_budget_epochs_is_refused_before_training(tmp_path, capsys):
    code, lines = run_main(ablate, ["--dataset_dir", str(tmp_path), "--syncnet_checkpoint", "s.pth", "--heldout_audio",
                                    "h.wav", "--arms", "l1_lips4_cosine", "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and lines == ["error: l1_lips4_cosine need --budget_epochs: the epochs 30 minutes hold on this "
                                   "machine (from an L1 arm's epoch time)"]
    assert not (tmp_path / "out").exists()


def test_the_late_sync_arm_holds_the_sync_term_back_for_five_epochs(tmp_path):
    from benchmarks.ablate_objective import ARMS, train_command

    options = harness_options(tmp_path)
    late, early = (parse_train_args(train_command(ARMS[name], options, tmp_path))
                   for name in ("adaptive_r3_lips4_warm5", "adaptive_r3_lips4"))
    assert (late.sync_warmup_epochs, early.sync_warmup_epochs) == (5, 2)
    # Everything else is the arm it is measured against.
    assert all(getattr(late, name) == getattr(early, name)
               for name in ("use_syncnet", "sync_balance", "sync_ratio", "lip_weight", "syncnet_checkpoint"))
    assert late.use_syncnet and late.sync_ratio == 3 and late.lip_weight == 4


def test_every_l1_arm_trains_without_the_sync_term_and_every_other_arm_with_it(tmp_path):
    from benchmarks.ablate_objective import ARMS, train_command

    options = harness_options(tmp_path)
    options.budget_epochs = 10          # what main() sets for the arms with a schedule
    for name, arm in ARMS.items():
        config = parse_train_args(train_command(arm, options, tmp_path))
        assert config.use_syncnet == (not name.startswith("l1")), name


def test_arms_measured_before_the_wider_head_keep_training_the_old_head(tmp_path):
    from benchmarks.ablate_objective import ARMS, train_command
    from models.unet_328 import HEAD_LEVELS

    options = harness_options(tmp_path)
    assert HEAD_LEVELS != 1     # else the pin pins nothing
    levels = {name: parse_train_args(train_command(ARMS[name], options, tmp_path)).head_levels
              for name in ("adaptive_r3_lips4", "l1_lips4", "adaptive_r3_lips4_head2", "l1_lips4_head3")}
    assert levels == {"adaptive_r3_lips4": 1, "l1_lips4": 1, "adaptive_r3_lips4_head2": 2, "l1_lips4_head3": 3}


def test_an_epoch_budget_replaces_the_clock(tmp_path):
    from benchmarks.ablate_objective import ARMS, train_command

    options = harness_options(tmp_path, "--epochs", "10")
    config = parse_train_args(train_command(ARMS["l1_lips4"], options, tmp_path))
    assert (config.epochs, config.max_minutes, config.resume) == (10, 0, False)
    assert parse_train_args(train_command(ARMS["l1_lips4"], options, tmp_path, resume=True)).resume


def test_the_arms_train_the_widths_the_harness_is_given(tmp_path):
    from benchmarks.ablate_objective import ARMS, table, train_command

    options = harness_options(tmp_path, "--epochs", "9", "--widths", "4", "8", "16", "64", "128")
    for arm in ("l1", "adaptive_r3_lips4"):
        assert parse_train_args(train_command(ARMS[arm], options, tmp_path)).widths == [4, 8, 16, 64, 128]
    assert parse_train_args(train_command(ARMS["l1"], harness_options(tmp_path), tmp_path)).widths is None
    averaged = parse_train_args(train_command(ARMS["adaptive_r3_lips4_ema990"], options, tmp_path))
    plain = parse_train_args(train_command(ARMS["adaptive_r3_lips4"], options, tmp_path))
    assert averaged.ema_decay == 0.99 and vars(averaged) == {**vars(plain), "ema_decay": 0.99}
    assert "Budget: 9 epochs per arm on one pinned core (one torch thread), widths 4 8 16 64 128, batch 8" \
        in table([], options)


def test_resumed_arms_continue_their_run_to_the_epoch_budget(ablation, tmp_path):
    import shutil

    results, output, person_and_scoring = ablation
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    first_epoch = ckpt.read_checkpoint(copy / "l1" / "run" / ckpt.LATEST)["history"][0]
    resumed = ablate(person_and_scoring + ["--arms", "l1", "--epochs", "2", "--resume_arms",
                                           "--output_dir", str(copy)])[0]
    assert "failed" not in resumed, resumed.get("failed")
    history = ckpt.read_checkpoint(copy / "l1" / "run" / ckpt.LATEST)["history"]
    assert resumed["epochs"] == 2 and history[0] == first_epoch      # continued, not started over
    assert resumed["sittings"] == 2 and resumed["train_cpu_min"] > results[0]["train_cpu_min"]
    assert isinstance(resumed["scores"]["own_opening_ratio"], float)
    # Both epochs' checkpoints are scored (every epoch is kept) and the arm's figure is their mean.
    assert resumed["scored_epochs"] == [1, 2] and ckpt.numbered_epochs(copy / "l1" / "run").keys() == {1, 2}
    by_epoch = resumed["scores_by_epoch"]
    assert resumed["scores"]["mouth_psnr"] == pytest.approx((by_epoch[1]["mouth_psnr"] + by_epoch[2]["mouth_psnr"]) / 2)
    assert resumed["sd"]["opening_ratio"] == pytest.approx(
        abs(by_epoch[1]["opening_ratio"] - by_epoch[2]["opening_ratio"]) / 2 ** 0.5)
    table = (copy / "ablation.md").read_text()
    assert "Budget: 2 epochs per arm" in table
    row = next(line for line in table.splitlines() if line.startswith("| l1 "))
    assert row.split("|")[5].strip() == "1-2" and f"{resumed['scores']['opening_ratio']:.2f} ±" in row
    # The arm not resumed keeps its row and figures.
    kept = json.loads((copy / "ablation.json").read_text())
    assert [result["arm"] for result in kept] == ["sync_fixed", "l1"] and kept[0] == json.loads(
        json.dumps(results[1], default=str))


def test_an_arm_killed_before_its_figures_were_written_resumes_counting_its_epochs_seconds(ablation, tmp_path):
    import shutil

    _, output, person_and_scoring = ablation
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    (copy / "ablation.json").unlink()       # the sitting was killed before it wrote its figures
    trained = ckpt.read_checkpoint(copy / "l1" / "run" / ckpt.LATEST)["history"]
    resumed = ablate(person_and_scoring + ["--arms", "l1", "--epochs", "2", "--resume_arms",
                                           "--output_dir", str(copy)])[0]
    assert "failed" not in resumed, resumed.get("failed")
    history = ckpt.read_checkpoint(copy / "l1" / "run" / ckpt.LATEST)["history"]
    assert len(history) == 2 and history[0] == trained[0]       # continued, not started over
    assert resumed["sittings"] == 2 and resumed["earlier_minutes_from"] == "history"
    earlier_minutes = trained[0]["seconds"] / 60
    assert resumed["train_cpu_min"] > earlier_minutes and resumed["train_wall_min"] > earlier_minutes


def test_epochs_of_a_killed_sitting_count_towards_an_arm_with_figures(tmp_path):
    """An arm with figures for 1 epoch was continued, killed after epochs 2 and 3, and is resumed again:
    the figures count epoch 1, the history's seconds the other two."""
    from benchmarks.ablate_objective import figures_from_history, trained_run

    run = trained_run(tmp_path, "l1")
    run.parent.mkdir(parents=True)
    torch.save({"model": {}, "config": {}, "history": [{"seconds": 60.0}, {"seconds": 120.0}, {"seconds": 180.0}]},
               run)
    recorded = {"arm": "l1", "epochs": 1, "train_cpu_min": 1.25, "train_wall_min": 1.5}
    continued = figures_from_history(tmp_path, "l1", recorded)
    assert continued["train_cpu_min"] == pytest.approx(1.25 + 5) and continued["train_wall_min"] == pytest.approx(6.5)
    assert continued["minutes_from"] == "figures for epochs 1-1, history after" and recorded["train_cpu_min"] == 1.25
    assert figures_from_history(tmp_path, "l1", {**recorded, "epochs": 3}) == {**recorded, "epochs": 3}
    unrecorded = figures_from_history(tmp_path, "l1")
    assert unrecorded["train_cpu_min"] == pytest.approx(6.0) and unrecorded["minutes_from"] == "history"


def test_every_epoch_is_kept_only_when_the_last_few_are_averaged(tmp_path, capsys):
    from benchmarks.ablate_objective import ARMS, NO_EPOCH_LIMIT, evaluate_command, train_command

    averaged, last_only = harness_options(tmp_path), harness_options(tmp_path, "--score_last", "1")
    assert parse_train_args(train_command(ARMS["l1_lips4"], averaged, tmp_path)).save_interval == 1
    assert parse_train_args(train_command(ARMS["l1_lips4"], last_only, tmp_path)).save_interval == NO_EPOCH_LIMIT
    scoring = evaluate_command(averaged, tmp_path / "run", tmp_path / "evaluation")
    assert scoring[scoring.index("--last") + 1] == "3" and "--no_select" in scoring
    code, lines = run_main(ablate, ["--dataset_dir", str(tmp_path), "--syncnet_checkpoint", "s.pth", "--heldout_audio",
                                    "h.wav", "--score_last", "0", "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and lines == ["error: --score_last must be at least 1, got 0"]
    assert not (tmp_path / "out").exists()


def test_an_epoch_budget_below_one_is_refused_before_training(tmp_path, capsys):
    code, lines = run_main(ablate, ["--dataset_dir", str(tmp_path), "--syncnet_checkpoint", "s.pth", "--heldout_audio",
                                    "h.wav", "--arms", "l1_lips4_cosine", "--epochs", "0", "--output_dir",
                                    str(tmp_path / "out")], capsys)
    assert code == 2 and lines == ["error: --epochs must be at least 1, got 0"]
    assert not (tmp_path / "out").exists()
