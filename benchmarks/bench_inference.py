"""Inference speed: end-to-end frames/s (audio file -> finished mp4) and model-only
frames/s, for eager PyTorch and onnxruntime, on the CPU and (when present) the GPU.

    python benchmarks/bench_inference.py                           # full width, CPU (+ GPU if any)
    python benchmarks/bench_inference.py --model_size mobile --seconds 4
    python benchmarks/bench_inference.py --ort_sweep               # onnxruntime levels x threads
    python benchmarks/bench_inference.py --dataset_dir dataset/May --devices cuda \
        --model_batch_sizes 1 8 32 --json out.json                 # a processed person; figures as JSON

Targets (issue 5): on one H100, end to end at least 100 frames/s (4x real time)
at full width; on 2 CPU cores, onnxruntime at least 1.5x faster than eager torch.

The person is the bundled clip (512x512), processed into a temporary folder,
or --dataset_dir, a processed dataset (read only; its own ave.pth is used when
it has one); the U-Net and the AVE audio encoder have random weights of the real
layouts (speed does not depend on the values). Model only is timed at
--batch_size, or at each of --model_batch_sizes. End to end covers everything the CLI
does after loading: decoding the audio, AVE features, the model in batches,
frame decoding, paste-back, H.264 + AAC encoding. On the CPU it is also timed
with the U-Net replaced by a copy of the input crop: the ceiling the rest of the
pipeline allows.
"""
import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np
import torch
from torch import nn

from data_utils.audio import load_audio
from data_utils.crop import CROP_SHAPE, INNER
from data_utils.layout import DatasetLayout
from data_utils.preprocess import process_video
from data_utils.timebase import FEATURE_SPECS, SAMPLE_RATE
from lipsync.core.checkpoints import load_unet, save_checkpoint, unet_config
from lipsync.core.console import configure_console_logging
from lipsync.core.onnx_runtime import OPTIMIZATION_LEVELS, cpu_thread_count
from lipsync.evaluate.results import finite_or_none
from lipsync.render import load_renderer, render_to_file
from lipsync.render.onnx_export import OnnxUNet, ensure_onnx
from lipsync.render.video_writer import write_wav
from models.audio_encoders import AVE_FEATURES, AveAudioEncoder
from models.unet_328 import MODEL_SIZES, WIDTHS, LipSyncUNet

BUNDLED = REPO_ROOT / "tests" / "data" / "talker_a_4s.mp4"
SPEECH = REPO_ROOT / "tests" / "data" / "heldout_2s.wav"
NAME = "bench"
EPOCH = 1
H100_TARGET_FPS = 100.0
CPU_ORT_SPEEDUP_TARGET = 1.5
WARMUP_CALLS = 2


def cpu_description() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_person(scratch: Path, video: Path, model_size: str, batch_norm_seed: int = 0, dataset_dir=None):
    """A processed dataset (``video`` processed under ``scratch``, or ``dataset_dir`` as it is), an AVE
    encoder and a random-weight checkpoint under ``scratch``: (dataset folder, checkpoint, frames)."""
    checkpoint_root = scratch / "checkpoint"
    torch.manual_seed(batch_norm_seed)
    if dataset_dir is None:
        layout = DatasetLayout(scratch / "dataset" / NAME)
        layout.root.mkdir(parents=True)
        shutil.copy(video, layout.source_video())
        process_video(layout.source_video(), show_progress=False)
        encoder = layout.ave_encoder
        torch.save(AveAudioEncoder(1.0).conv_stack.state_dict(), encoder)
    else:
        layout = DatasetLayout(Path(dataset_dir))
        layout.require_processed(needed=(layout.crop_boxes, layout.frames_dir))
        encoder = layout.ave_encoder
        if not encoder.is_file():           # never written into the user's dataset
            encoder = scratch / "ave_random.pth"
            torch.save(AveAudioEncoder(1.0).conv_stack.state_dict(), encoder)
    audio_shape = FEATURE_SPECS["ave"].window_shape((AVE_FEATURES,))
    model = LipSyncUNet("ave", audio_shape, WIDTHS[model_size])
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_var.uniform_(0.5, 1.5)
    features = {"asr": "ave", "encoder": str(encoder), "per_frame_shape": [AVE_FEATURES]}
    config = unet_config(model, features)
    checkpoint = save_checkpoint(checkpoint_root / NAME / f"{EPOCH}.pth", model.state_dict(), config, EPOCH)
    frames = len(np.load(layout.crop_boxes))
    return layout.root, checkpoint, frames


def speech_file(scratch: Path, seconds: float) -> Path:
    """``seconds`` of the bundled held-out speech, repeated, as a wav (what a user passes)."""
    speech = load_audio(SPEECH)
    wanted = int(seconds * SAMPLE_RATE)
    samples = np.tile(speech, wanted // len(speech) + 1)[:wanted]
    return write_wav(scratch / "speech.wav", samples)


def timed(call, repeats: int) -> float:
    """Seconds per call, after warm-up calls."""
    for _ in range(WARMUP_CALLS):
        call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def model_inputs(batch_size: int, audio_shape):
    rng = np.random.default_rng(0)
    image6 = rng.random((batch_size, 6, 320, 320), dtype=np.float32)
    audio = rng.standard_normal((batch_size, *audio_shape)).astype(np.float32)
    return image6, audio


def torch_model_fps(model, image6, audio, device: str, repeats: int, half: bool = False) -> float:
    model = model.to(device).eval()
    image_tensor = torch.from_numpy(image6).to(device)
    audio_tensor = torch.from_numpy(audio).to(device)

    def call():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
            model(image_tensor, audio_tensor)
        if device == "cuda":
            torch.cuda.synchronize()

    return len(image6) / timed(call, repeats)


def onnx_model_fps(onnx_path, image6, audio, device: str, repeats: int, threads=None,
                   optimization: str = "all") -> float:
    session = OnnxUNet(onnx_path, device, threads, optimization)
    if device == "cuda" and session.device != "cuda":
        return float("nan")
    return len(image6) / timed(lambda: session(image6, audio), repeats)


class CopyCrop:
    """Stands in for the U-Net to time everything around it: returns the crop's own centre."""

    def __call__(self, crops_u8, audio):
        return crops_u8[:, INNER, INNER].copy()


def warm_up(unet, batch_size: int, audio_shape) -> None:
    """One untimed full batch: cuDNN tunes its kernels (seconds for the full width) and CUDA
    loads them before the clock starts, as they would be a few frames into any long render."""
    crops = np.zeros((batch_size, *CROP_SHAPE), np.uint8)
    unet(crops, np.zeros((batch_size, *audio_shape), np.float32))


def end_to_end_fps(args, dataset_dir, checkpoint, audio_path, output, device, backend, half=False,
                   threads=None, without_model=False):
    """(frames/s, frames, loading seconds, the device the U-Net really ran on) of one render to a file."""
    started = time.perf_counter()
    with load_renderer(dataset_dir=dataset_dir, checkpoint=str(checkpoint), checkpoint_root=checkpoint.parent.parent,
                       device=device, backend=backend, half=half, batch_size=args.batch_size,
                       onnx_threads=threads) as renderer:
        loading = time.perf_counter() - started
        ran_on = renderer.unet.device
        if without_model:
            renderer.unet = CopyCrop()
        elif ran_on == "cuda":
            warm_up(renderer.unet, args.batch_size, renderer.config["audio_shape"])
        result = render_to_file(renderer, audio_path, output, progress=False)
    return result.frames_per_second, result.frames, loading, ran_on


def write_figures(path, figures) -> None:
    """The figures so far as JSON (NaN as null), rewritten after every measurement: a crash keeps them."""
    if path is None:
        return
    Path(path).write_text(json.dumps(finite_or_none(figures), indent=2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_size", default="full", choices=MODEL_SIZES)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--model_batch_sizes", type=int, nargs="+",
                        help="batch sizes of the model-only figures (default: --batch_size)")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio length for the end-to-end runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed model calls (after warm-up)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime (default: all usable)")
    parser.add_argument("--video", type=Path, default=BUNDLED)
    parser.add_argument("--dataset_dir", type=Path,
                        help="a processed dataset to render, read only (default: --video, processed into a temp dir)")
    parser.add_argument("--devices", default="auto", help="cpu, cuda, or auto (cpu, and cuda when present)")
    parser.add_argument("--skip_end_to_end", action="store_true")
    parser.add_argument("--skip_pipeline_ceiling", action="store_true",
                        help="on the CPU, leave out the end-to-end run with the U-Net replaced by a copy")
    parser.add_argument("--ort_sweep", action="store_true",
                        help="also time onnxruntime at every graph optimisation level and 1..N threads")
    parser.add_argument("--json", type=Path, help="also write the figures here (rewritten after each one)")
    args = parser.parse_args(argv)
    import onnxruntime

    configure_console_logging(quiet=True)
    threads = args.threads or cpu_thread_count()
    torch.set_num_threads(threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" \
        else args.devices.split(",")
    batch_sizes = args.model_batch_sizes or [args.batch_size]
    # The onnxruntime/torch ratios below compare the model-only figures at this batch size.
    summary_batch = args.batch_size if args.batch_size in batch_sizes else batch_sizes[-1]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    providers = onnxruntime.get_available_providers()
    print(f"machine: {cpu_description()}, {threads} of {os.cpu_count()} cores used; GPU: {gpu}; "
          f"torch {torch.__version__}; onnxruntime {onnxruntime.__version__} ({', '.join(providers)}); "
          f"model {args.model_size}, batch {args.batch_size}")
    figures = {"machine": cpu_description(), "threads": threads, "gpu": gpu, "torch": torch.__version__,
               "onnxruntime": onnxruntime.__version__, "onnxruntime_providers": providers,
               "model_size": args.model_size, "batch_size": args.batch_size, "seconds": args.seconds, "rows": []}
    rows = []

    def record(device, what, backend, fps, batch_size=args.batch_size, note=None):
        rows.append((device, what, backend, batch_size, fps))
        figures["rows"].append({"device": device, "what": what, "backend": backend, "batch_size": batch_size,
                                "frames_per_second": fps, "note": note})
        write_figures(args.json, figures)

    no_ort_cuda = f"onnxruntime has no CUDA provider here (providers: {', '.join(providers)})"
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        dataset_dir, checkpoint, frames = build_person(scratch, args.video, args.model_size,
                                                       dataset_dir=args.dataset_dir)
        figures["frames"] = frames
        model, config = load_unet(checkpoint, "cpu")
        onnx_path = ensure_onnx(checkpoint, model, config)
        audio_path = None           # made before the first end-to-end run: the model-only figures need no FFmpeg
        for device in devices:
            for batch_size in batch_sizes:
                image6, audio = model_inputs(batch_size, config["audio_shape"])
                torch_fps = torch_model_fps(model, image6, audio, device, args.repeats)
                record(device, "model only", "torch eager fp32", torch_fps, batch_size)
                if device == "cuda":
                    record(device, "model only", "torch fp16 autocast",
                           torch_model_fps(model, image6, audio, device, args.repeats, half=True), batch_size)
                ort_fps = onnx_model_fps(onnx_path, image6, audio, device, args.repeats, threads)
                record(device, "model only", "onnxruntime", ort_fps, batch_size,
                       note=no_ort_cuda if math.isnan(ort_fps) else None)
                print(f"[{device}] model only, batch {batch_size}: torch {torch_fps:.2f} frames/s, "
                      f"onnxruntime {ort_fps:.2f} frames/s -> onnxruntime/torch {ort_fps / torch_fps:.2f}x",
                      flush=True)
            if args.ort_sweep and device == "cpu":
                image6, audio = model_inputs(args.batch_size, config["audio_shape"])
                for level in OPTIMIZATION_LEVELS:
                    for count in sorted({1, threads}):
                        fps = onnx_model_fps(onnx_path, image6, audio, device, args.repeats, count, level)
                        print(f"[cpu] onnxruntime optimisation {level:9s} threads {count}: {fps:.2f} frames/s",
                              flush=True)
                for count in sorted({1, threads}):
                    torch.set_num_threads(count)
                    print(f"[cpu] torch eager threads {count}: "
                          f"{torch_model_fps(model, image6, audio, device, args.repeats):.2f} frames/s", flush=True)
                torch.set_num_threads(threads)
            if args.skip_end_to_end:
                continue
            audio_path = audio_path or speech_file(scratch, args.seconds)
            if device == "cpu" and not args.skip_pipeline_ceiling:
                fps, rendered, _, _ = end_to_end_fps(args, dataset_dir, checkpoint, audio_path,
                                                     scratch / "out_pipeline.mp4", "cpu", "torch", threads=threads,
                                                     without_model=True)
                record(device, "end to end", "no U-Net (pipeline)", fps)
                print(f"[cpu] end to end without the U-Net (audio, features, decoding, paste-back, encoding): "
                      f"{fps:.2f} frames/s", flush=True)
            variants = [("torch", False), ("onnx", False)] + ([("torch", True)] if device == "cuda" else [])
            for backend, half in variants:
                fps, rendered, loading, ran_on = end_to_end_fps(args, dataset_dir, checkpoint, audio_path,
                                                                scratch / f"out_{device}_{backend}.mp4", device,
                                                                backend, half, threads)
                label = f"{backend}{' fp16' if half else ''}"
                note = None if ran_on == device else f"the U-Net ran on {ran_on} ({no_ort_cuda})"
                record(device, "end to end", label, fps, note=note)
                print(f"[{device}] end to end ({label}): {fps:.2f} frames/s "
                      f"({rendered} frames of {args.seconds:g} s audio; {loading:.1f} s loading not counted)"
                      + (f"; {note}" if note else ""), flush=True)
        print()
        print(f"{'device':6s}  {'what':10s}  {'backend':20s}  batch  frames/s  x real time")
        for device, what, backend, batch_size, fps in rows:
            print(f"{device:6s}  {what:10s}  {backend:20s}  {batch_size:5d}  {fps:8.2f}  {fps / 25:6.2f}")
        for device in devices:
            model_rows = {backend: fps for dev, what, backend, batch_size, fps in rows
                          if dev == device and what == "model only" and batch_size == summary_batch}
            end_rows = {backend: fps for dev, what, backend, _, fps in rows
                        if dev == device and what == "end to end" and backend in ("torch", "onnx", "torch fp16")}
            ratio = model_rows["onnxruntime"] / model_rows["torch eager fp32"]
            line = f"[{device}] onnxruntime / eager torch: model only {ratio:.2f}x (batch {summary_batch})"
            if end_rows:
                line += f", end to end {end_rows['onnx'] / end_rows['torch']:.2f}x"
            if device == "cpu":
                line += f" (target on 2 cores: >= {CPU_ORT_SPEEDUP_TARGET}x)"
            else:
                best = max(end_rows.values()) if end_rows else float("nan")
                line += f"; best end to end {best:.1f} frames/s (H100 target at full width: >= {H100_TARGET_FPS:g})"
            print(line)
        source = args.dataset_dir or args.video
        print(f"(recording: {frames} frames of {source.name})")
    return figures


if __name__ == "__main__":
    main()
