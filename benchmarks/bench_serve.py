"""Live serving: sustained frames/s, first-frame latency, interrupt latency, A/V offset, and CPU
and memory per session, for 1, 2 and 4 viewers at once; or a long soak that measures A/V drift.

    python benchmarks/bench_serve.py                                   # tiny width, CPU, 1/2/4 sessions
    python benchmarks/bench_serve.py --model_size full --device cuda --backend torch --sessions 1 4 8
    python benchmarks/bench_serve.py --soak_minutes 10                 # A/V drift over 10 minutes
    python benchmarks/bench_serve.py --dataset_dir dataset/May --json serve.json

The server (serve_328.py) runs in its own process on 127.0.0.1; each viewer is an
aiortc client in this process (lipsync/serve/client.py) with candidates on
127.0.0.1 only, and no STUN server is asked. The person is the bundled clip
(512x512) processed into a temporary folder, or --dataset_dir, with a random-weight
U-Net of --model_size and the full-width AVE encoder (speed does not depend on the
weights). Each viewer speaks the bundled 2 s held-out wav again and again, with a
second of silence between; once per run it interrupts an utterance half a second
in. Figures per run:

- received frames/s (the stream's rate: 25 when the server keeps up with its clock);
- speech frames/s: rendered frames shown per second while speaking (below 25 the
  server repeats frames, and speech pauses with the picture);
- latency from the upload's first byte to the first speaking frame (server-side);
- interrupt: request to first idle frame sent (server) and to the first idle
  frame received (viewer);
- A/V offset: mouth onset minus sound onset on the stream's timestamps;
- CPU (% of one core) and memory (MB) of the server process, above its idle
  level, per session.

Soak: one viewer for N minutes; reports the A/V offset per utterance and the drift
(ms per minute) of each track's arrival against its timestamps and of the gap
between the two tracks, plus first-minute vs last-minute medians.
"""
import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import numpy as np

from bench_inference import BUNDLED, NAME, SPEECH, build_person, cpu_description, write_figures
from lipsync.serve import measure
from lipsync.serve.client import PAUSE_BETWEEN_UTTERANCES_SECONDS, Viewer, soak
from lipsync.serve.ice import LOOPBACK, use_addresses
from models.unet_328 import MODEL_SIZES

SERVER_START_TIMEOUT_SECONDS = 600
INTERRUPT_AFTER_SECONDS = 0.5
WARM_UP_SECONDS = 8              # one viewer speaks first, so the model's working memory is not counted per session
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
URL_LINE = re.compile(r"open (http://\S+)/ in a browser")


# ---------------------------------------------------------------------------- the server process

class ServerProcess:
    """serve_328.py on 127.0.0.1 in a child process; its CPU time and memory from /proc."""

    def __init__(self, dataset_root: Path, checkpoint_root: Path, args, max_sessions: int):
        command = [sys.executable, str(REPO_ROOT / "serve_328.py"), "--name", NAME, "--port", "0",
                   "--dataset_root", str(dataset_root), "--checkpoint_root", str(checkpoint_root),
                   "--device", args.device, "--backend", args.backend, "--batch_size", str(args.batch_size),
                   "--max_sessions", str(max_sessions), "--ice_address", LOOPBACK, "--tts", "none"]
        if args.dataset_dir is not None:
            command += ["--dataset_dir", str(args.dataset_dir)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log = []
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        self.url = None
        while self.url is None:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("the server stopped while starting:\n" + "".join(self.log[-20:]))
            self.log.append(line)
            found = URL_LINE.search(line)
            if found:
                self.url = found.group(1)
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in time")
        self._reader = asyncio.get_running_loop().run_in_executor(None, self._read_rest)

    def _read_rest(self):
        for line in self.process.stdout:
            self.log.append(line)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS      # utime + stime

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def cpu_and_memory(server: ServerProcess, seconds: float):
    """(% of one core, MB) of the server over ``seconds``."""
    cpu, wall = server.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (server.cpu_seconds() - cpu) / (time.monotonic() - wall), server.rss_mb()


# ---------------------------------------------------------------------------- one viewer's workload

async def viewer_workload(viewer: Viewer, seconds: float, interrupt_at: float) -> list:
    """Utterances with pauses for ``seconds``; the first one after ``interrupt_at`` seconds is interrupted."""
    began, results, interrupted = time.monotonic(), [], False
    while time.monotonic() - began < seconds:
        cut = not interrupted and time.monotonic() - began >= interrupt_at
        results.append(await viewer.speak_and_wait(SPEECH, INTERRUPT_AFTER_SECONDS if cut else None))
        interrupted = interrupted or cut
        await asyncio.sleep(PAUSE_BETWEEN_UTTERANCES_SECONDS)
    return results


def median_of(results, key):
    values = [result[key] for result in results if key in result and np.isfinite(result[key])]
    return float(np.median(values)) if values else float("nan")


async def run_sessions(server: ServerProcess, count: int, seconds: float) -> dict:
    idle_cpu, idle_rss = await cpu_and_memory(server, 3.0)
    viewers = [Viewer(server.url) for _ in range(count)]
    for viewer in viewers:
        await viewer.open()
    await asyncio.sleep(2.0)                                     # connected, idle
    cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
    workloads = await asyncio.gather(*(viewer_workload(viewer, seconds, interrupt_at=seconds / 3)
                                       for viewer in viewers))
    busy_cpu = 100 * (server.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
    busy_rss = server.rss_mb()
    statuses = [await viewer.request("GET", viewer.session_path) for viewer in viewers]
    offsets = [offset for viewer in viewers for _, offset in measure.av_offsets(viewer.video, viewer.audio)]
    for viewer in viewers:
        await viewer.close()
    results = [result for workload in workloads for result in workload]
    speaking = sum(status["speaking_frames"] for status in statuses)
    repeated = sum(status["repeated_frames"] for status in statuses)
    return {"sessions": count, "seconds": seconds, "utterances": len(results),
            "received_fps": float(np.mean([measure.frame_rate(viewer.video) for viewer in viewers])),
            "speech_fps": 25 * speaking / max(1, speaking + repeated),
            "repeated_frames": repeated, "speaking_frames": speaking,
            "latency_ms": median_of(results, "latency_ms"),
            "interrupt_server_ms": median_of(results, "interrupt_server_ms"),
            "interrupt_viewer_ms": median_of(results, "interrupt_viewer_ms"),
            "av_offset_ms_median": 1000 * float(np.median(offsets)) if offsets else float("nan"),
            "av_offset_ms_max_abs": 1000 * float(np.max(np.abs(offsets))) if offsets else float("nan"),
            "cpu_percent_per_session": (busy_cpu - idle_cpu) / count, "cpu_percent_idle_server": idle_cpu,
            "memory_mb_per_session": (busy_rss - idle_rss) / count, "memory_mb_idle_server": idle_rss}


# ---------------------------------------------------------------------------- main

def soak_progress(utterances: int, minutes: float) -> None:
    if utterances % 20 == 0:
        print(f"  soak: {minutes:.1f} min, {utterances} utterances", flush=True)


def print_row(row: dict) -> None:
    print(f"{row['sessions']} session(s): received {row['received_fps']:.1f} frames/s, speech "
          f"{row['speech_fps']:.1f} frames/s ({row['repeated_frames']} repeated), latency {row['latency_ms']:.0f} ms, "
          f"interrupt {row['interrupt_server_ms']:.0f} ms server / {row['interrupt_viewer_ms']:.0f} ms viewer, "
          f"A/V offset median {row['av_offset_ms_median']:.0f} ms (max |{row['av_offset_ms_max_abs']:.0f}| ms), "
          f"CPU {row['cpu_percent_per_session']:.0f}% of a core and {row['memory_mb_per_session']:.0f} MB per session "
          f"(idle server {row['cpu_percent_idle_server']:.0f}%, {row['memory_mb_idle_server']:.0f} MB)", flush=True)


async def benchmark(args, dataset_root: Path, checkpoint_root: Path, figures: dict) -> None:
    counts = [1] if args.soak_minutes else args.sessions
    server = ServerProcess(dataset_root, checkpoint_root, args, max(counts))
    try:
        async with Viewer(server.url) as viewer:          # warm-up: arenas, caches, the VAD model
            await viewer_workload(viewer, WARM_UP_SECONDS, interrupt_at=float("inf"))
        if args.soak_minutes:
            figures["soak"] = await soak(server.url, SPEECH, args.soak_minutes, progress=soak_progress)
            print(json.dumps(figures["soak"], indent=2))
        for count in ([] if args.soak_minutes else counts):
            row = await run_sessions(server, count, args.seconds)
            figures["rows"].append(row)
            print_row(row)
            write_figures(args.json, figures)
    finally:
        server.stop()
    write_figures(args.json, figures)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_size", default="tiny", choices=MODEL_SIZES)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--backend", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4], help="viewers at once, one run each")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--soak_minutes", type=float, help="instead: one viewer for this long, measuring A/V drift")
    parser.add_argument("--video", type=Path, default=BUNDLED)
    parser.add_argument("--dataset_dir", type=Path, help="a processed dataset (default: --video, processed)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    use_addresses([LOOPBACK])
    load = os.getloadavg()
    print(f"machine: {cpu_description()}, {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} "
          f"(1 / 5 min); model {args.model_size}, {args.backend} on {args.device}, batch {args.batch_size}", flush=True)
    figures = {"machine": cpu_description(), "cores": os.cpu_count(), "load_average_at_start": load,
               "model_size": args.model_size, "device": args.device, "backend": args.backend,
               "batch_size": args.batch_size, "rows": []}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        dataset_dir, checkpoint, _ = build_person(scratch, args.video, args.model_size, dataset_dir=args.dataset_dir)
        if args.dataset_dir is None:
            dataset_root = Path(dataset_dir).parent
        else:
            dataset_root = scratch / "dataset"
        asyncio.run(benchmark(args, dataset_root, checkpoint.parent.parent, figures))
    figures["load_average_at_end"] = os.getloadavg()
    print(f"load average at the end: {figures['load_average_at_end'][0]:.1f}")
    write_figures(args.json, figures)


if __name__ == "__main__":
    main()
