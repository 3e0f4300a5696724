"""Audio feature speed: real-time factor of each encoder, and the AVE training stage.

    python benchmarks/bench_audio_features.py                  # the 40 s fixture when ../shared is there
    python benchmarks/bench_audio_features.py --skip_training --skip_hubert

Targets on 2 CPU cores: AVE feature extraction at least 50x faster than real
time; learning a person's AVE encoder in under 10 minutes on CPU for a
5-minute recording. Training is measured on the given clip and extrapolated
to 5 minutes from the measured per-frame preparation time and per-step
training time (the number of steps for 5 minutes comes from AveTrainConfig).

Speed does not depend on weight values, so the HuBERT figure uses a randomly
initialised model with hubert-large's configuration (no download), and the
WeNet figure a WeNet-sized stand-in (conv2d 4x subsampling + 12-layer,
256-wide transformer, exported to ONNX with the full-utterance signature).
With CUDA available the extraction timings are repeated on the GPU.
"""
import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from data_utils.audio import load_audio, melspectrogram
from data_utils.features.ave import ave_features, ave_mel_windows
from data_utils.features.ave_training import AveTrainConfig, load_mouth_crops, split_frames, train_sync_model
from data_utils.features.dataset_audio import count_video_frames, frame_aligned_samples
from data_utils.features.fbank import kaldi_fbank
from data_utils.features.hubert import hubert_features
from data_utils.features.wenet import WenetEncoder, wenet_features
from data_utils.layout import DatasetLayout
from data_utils.preprocess import process_video
from lipsync.core.onnx_runtime import open_session, session_options
from models.audio_encoders import AveAudioEncoder

FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "talker_a" / "talker_a.mp4"
BUNDLED = REPO_ROOT / "tests" / "data" / "talker_a_4s.mp4"
AVE_EXTRACTION_TARGET_RTF = 50.0
AVE_TRAINING_TARGET_S = 600.0
RECORDING_FOR_TARGET_S = 300.0      # "a 5-minute recording"


def best_time(function, repeats: int) -> float:
    """Fastest wall-clock time of ``repeats`` runs, in seconds (on a shared machine the minimum is the
    least disturbed run); the CPU time of that run is kept in CPU_SECONDS."""
    times = []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        function()
        times.append((time.perf_counter() - started, time.process_time() - cpu_started))
    wall, cpu = min(times)
    CPU_SECONDS.append(cpu)
    return wall


CPU_SECONDS = []     # CPU time of the run each best_time() reported, for the per-core figures


def bench_ave_extraction(samples, device, repeats):
    seconds = len(samples) / 16000
    results = {"mel_rtf": seconds / best_time(lambda: melspectrogram(samples), repeats)}
    for label, width in (("person-trained (default width %.2g)" % AveTrainConfig.width, AveTrainConfig.width),
                         ("released SyncTalk layout (width 1)", 1.0)):
        encoder = AveAudioEncoder(width).eval()
        ave_features(samples[:16000], encoder, device)                      # warm-up
        results[label] = {"rtf": seconds / best_time(lambda: ave_features(samples, encoder, device), repeats),
                          "audio_seconds_per_cpu_second": seconds / CPU_SECONDS[-1]}
    return results


def bench_hubert(samples, device, seconds_limit):
    import torch
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                          feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    torch.manual_seed(0)
    model = HubertModel(config).eval().to(device)
    clip = samples[:int(seconds_limit * 16000)]
    hubert_features(clip[:16000], model, True, device)                        # warm-up
    elapsed = best_time(lambda: hubert_features(clip, model, True, device), 1)
    features = hubert_features(clip[:32000], model, True, device)
    return {"rtf": len(clip) / 16000 / elapsed, "seconds": len(clip) / 16000, "per_frame": list(features.shape[1:])}


def wenet_sized_onnx(folder: Path) -> Path:
    """A WeNet-sized encoder (conv2d 4x subsampling + 12 pre-norm transformer blocks, 256 wide,
    feed-forward 2048, 4 heads; no conformer conv module) as full-utterance ONNX."""
    import warnings

    import torch
    from torch import nn

    class Block(nn.Module):
        """Pre-norm self-attention + feed-forward, reshapes written so any length exports."""

        def __init__(self, dim, heads, hidden):
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))

        def forward(self, x):
            batch, _, dim = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(batch, -1, 3, self.heads, dim // self.heads).permute(
                2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-1, -2) / (dim // self.heads) ** 0.5, dim=-1)
            x = x + self.out((attention @ v).transpose(1, 2).reshape(batch, -1, dim))
            return x + self.ff(self.norm2(x))

    class Encoder(nn.Module):
        def __init__(self, dim=256, layers=12):
            super().__init__()
            self.subsample = nn.Sequential(nn.Conv2d(1, dim, 3, 2), nn.ReLU(), nn.Conv2d(dim, dim, 3, 2), nn.ReLU())
            self.project = nn.Linear(dim * 19, dim)
            self.blocks = nn.Sequential(*[Block(dim, 4, 2048) for _ in range(layers)])

        def forward(self, speech, speech_lengths):
            x = self.subsample(speech[:, None])
            batch, channels, steps, bins = x.shape
            x = self.project(x.permute(0, 2, 1, 3).reshape(batch, steps, channels * bins))
            return self.blocks(x), ((speech_lengths - 1) // 2 - 1) // 2

    path = folder / "wenet_sized.onnx"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder().eval(), (torch.randn(1, 203, 80), torch.tensor([203], dtype=torch.int32)),
                          str(path), input_names=["speech", "speech_lengths"],
                          output_names=["encoder_out", "encoder_out_lens"],
                          dynamic_axes={"speech": {1: "T"}, "encoder_out": {1: "T_OUT"}}, opset_version=17,
                          dynamo=False)
    return path


def bench_wenet(samples, device, folder, threads):
    seconds = len(samples) / 16000
    results = {"fbank_rtf": seconds / best_time(lambda: kaldi_fbank(samples), 2)}
    encoder = WenetEncoder(wenet_sized_onnx(folder), device)
    if str(device) == "cpu":   # hold onnxruntime to the same core count as torch
        encoder.session = open_session(encoder.path, "cpu", session_options(threads),
                                       what_to_do="the benchmark's own WeNet-sized export failed")
    wenet_features(samples[:16000], encoder)                                     # warm-up
    results["encoder_rtf"] = seconds / best_time(lambda: wenet_features(samples, encoder), 2)
    results["providers"] = encoder.session.get_providers()
    return results


def bench_training(video: Path, dataset: Path, steps, device):
    layout = DatasetLayout(dataset)
    if not layout.crop_boxes.exists():
        dataset.mkdir(parents=True, exist_ok=True)
        target = dataset / f"{dataset.name}.mp4"
        shutil.copy(video, target)
        started = time.perf_counter()
        process_video(target, show_progress=False)
        print(f"  (preprocessed {video.name} in {time.perf_counter() - started:.1f} s, not counted below)")
    frames = count_video_frames(layout.frames_dir)
    started = time.perf_counter()
    samples = frame_aligned_samples(layout, frames)
    mel_windows = ave_mel_windows(samples, frames)
    crops = load_mouth_crops(layout, frames, progress=False)
    prepare = time.perf_counter() - started
    config = AveTrainConfig()
    model, report = train_sync_model(mel_windows, crops, config, device, progress=False, steps=steps)
    step_time = report["train_seconds"] / max(report["steps"], 1)
    target_frames = int(RECORDING_FOR_TARGET_S * 25)
    target_train_frames = split_frames(target_frames, config.heldout_fraction)[0]
    target_steps = config.steps_for(target_train_frames)
    estimate = prepare / frames * target_frames + step_time * target_steps
    return {"frames": frames, "prepare_seconds": prepare, "prepare_ms_per_frame": 1000 * prepare / frames,
            "report": report, "step_seconds": step_time, "batch_size": report["batch_size"],
            "five_minute_frames": target_frames, "five_minute_steps": target_steps,
            "five_minute_estimate_seconds": estimate}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=FIXTURE if FIXTURE.exists() else BUNDLED,
                        help="talking-head clip: its audio is timed, and it is the AVE training data")
    parser.add_argument("--dataset", type=Path, help="an already processed dataset folder of --video")
    parser.add_argument("--threads", default="1,2",
                        help="torch/onnxruntime CPU thread counts to time extraction with (the target is for 2 "
                             "cores; on a busy shared machine 2 OpenMP threads can be slower than 1)")
    parser.add_argument("--train_threads", type=int, default=1, help="CPU threads for the AVE training run")
    parser.add_argument("--train_steps", type=int, help="AVE training steps (default: what the clip gets)")
    parser.add_argument("--hubert_seconds", type=float, default=20.0, help="audio seconds timed for HuBERT")
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_hubert", action="store_true")
    parser.add_argument("--skip_wenet", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    thread_counts = [int(value) for value in str(args.threads).split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    busy = ": above the CPU count, other work is slowing every figure" if load > (os.cpu_count() or 1) else ""
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible "
          f"(load average {load:.1f} at start{busy}), "
          f"torch {torch.__version__}, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
    started = time.perf_counter()
    samples = load_audio(args.video)
    seconds = len(samples) / 16000
    print(f"audio: {args.video.name}, {seconds:.1f} s, decoded to 16 kHz mono in "
          f"{time.perf_counter() - started:.2f} s")
    runs = [("cpu", threads) for threads in thread_counts] + \
        ([("cuda", max(thread_counts))] if torch.cuda.is_available() else [])
    figures = {"audio_seconds": seconds, "load_average_start": load}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for device, threads in runs:
            torch.set_num_threads(threads)
            where = f"{device}, {threads} thread{'s' if threads > 1 else ''}" if device == "cpu" else device
            ave = bench_ave_extraction(samples, device, repeats=3)
            figures[f"ave_{device}_{threads}"] = ave
            print(f"[{where}] AVE mel spectrogram: {ave.pop('mel_rtf'):.0f}x real time")
            for label, result in ave.items():
                rtf = result["rtf"]
                verdict = "" if device != "cpu" else \
                    f" — target {AVE_EXTRACTION_TARGET_RTF:.0f}x: {'met' if rtf >= AVE_EXTRACTION_TARGET_RTF else 'NOT met'}"
                print(f"[{where}] AVE extraction, {label}: {rtf:.1f}x real time{verdict} "
                      f"({result['audio_seconds_per_cpu_second']:.1f} audio s per CPU s)")
            if not args.skip_hubert:
                hubert = bench_hubert(samples, device, args.hubert_seconds)
                figures[f"hubert_{device}_{threads}"] = hubert
                print(f"[{where}] HuBERT (hubert-large size, random weights) on {hubert['seconds']:.0f} s: "
                      f"{hubert['rtf']:.2f}x real time, {hubert['per_frame']} per frame")
            if not args.skip_wenet:
                wenet = bench_wenet(samples, device, scratch, threads)
                figures[f"wenet_{device}_{threads}"] = wenet
                print(f"[{where}] WeNet fbank: {wenet['fbank_rtf']:.0f}x real time; WeNet-sized ONNX encoder "
                      f"({wenet['providers'][0]}): {wenet['encoder_rtf']:.1f}x real time")
        if not args.skip_training:
            dataset = args.dataset or scratch / "dataset" / "bench"
            torch.set_num_threads(args.train_threads)
            training = bench_training(args.video, dataset, args.train_steps, "cpu")
            figures["ave_training_cpu"] = training
            report = training["report"]
            print(f"[cpu, {args.train_threads} thread(s)] AVE training on {training['frames']} frames ({training['frames'] / 25:.0f} s): "
                  f"prepare {training['prepare_seconds']:.1f} s ({training['prepare_ms_per_frame']:.1f} ms/frame), "
                  f"{report['steps']} steps x {training['batch_size']} in {report['train_seconds']:.0f} s "
                  f"({training['step_seconds']:.2f} s/step)")
            print(f"[cpu] held-out sync accuracy on the last {report['heldout_frames']} frames: "
                  f"{100 * report['heldout_sync_accuracy']:.1f}% of (in-sync, off-sync >= 5 frames) pairs ranked "
                  f"right (untrained {100 * report['heldout_sync_accuracy_untrained']:.1f}%, chance 50%); "
                  f"{100 * report['heldout_frames_in_sync_best']:.1f}% of frames beat most off-sync pairs; "
                  f"loss {report['loss_first']:.2f} -> {report['loss_last']:.2f}")
            estimate = training["five_minute_estimate_seconds"]
            print(f"[cpu] extrapolated to a 5-minute recording ({training['five_minute_frames']} frames, "
                  f"{training['five_minute_steps']} steps): {estimate / 60:.1f} min — target "
                  f"{AVE_TRAINING_TARGET_S / 60:.0f} min: {'met' if estimate <= AVE_TRAINING_TARGET_S else 'NOT met'}")
    figures["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"load average at the end: {figures['load_average_end']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return figures


if __name__ == "__main__":
    main()
