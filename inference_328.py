"""Make a trained person speak new audio: result/<NAME>_<audio>_<epoch>.mp4.

    python inference_328.py --name May --audio_path demo/new.wav
    python inference_328.py --name May --audio_path speech.mp3 --checkpoint 120 --output result/talk.mp4
    python inference_328.py --name May --export_onnx                 # checkpoint/May/<epoch>.onnx
    python inference_328.py --name May --audio_path new.wav --backend onnx
    python inference_328.py --name May --audio_path new.wav --mouth_scale 1.2   # open the mouth wider

The work lives in lipsync/render/renderer.py (importable: render, load_renderer,
render_to_file); this script only parses options.
"""
import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipsync.core.errors import UserError, exit_on_user_error
from data_utils.layout import CHECKPOINT_ROOT, DATASET_ROOT, RESULT_ROOT
from lipsync.render.mouth_control import DEFAULT_FACELESS_FADE_FRAMES, MOUTH_SCALE_LIMITS
from lipsync.render.renderer import (BACKENDS, DEFAULT_BATCH_SIZE, DEFAULT_FEATHER_PX, DEVICES, checkpoint_label,
                                  default_output_path, load_renderer, locate_run,
                                  render_to_file)
from lipsync.render.silence import VAD_CHOICES
from data_utils.timebase import ASR_CHOICES
from lipsync.render.video_writer import DEFAULT_CRF, DEFAULT_PRESET, X264_PRESETS

log = logging.getLogger("inference")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the person: dataset/NAME and checkpoint/NAME")
    parser.add_argument("--audio_path", help="new audio (wav, mp3, m4a, flac, or a video with sound)")
    parser.add_argument("--asr", choices=ASR_CHOICES,
                        help="audio encoder; default: the one the checkpoint was trained with (a different one is an error)")
    parser.add_argument("--checkpoint", help="an epoch number, best, latest, or a .pth path (default: the newest epoch)")
    parser.add_argument("--start_frame", type=int, default=0, help="recording frame the video starts from")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="frames per model call")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--output", help="output mp4 (default: result/<NAME>_<audio stem>_<epoch>.mp4)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch, or onnx (onnxruntime; exported next to the checkpoint on first use)")
    parser.add_argument("--export_onnx", action="store_true",
                        help="export the checkpoint to <epoch>.onnx (and render too when --audio_path is given)")
    parser.add_argument("--colour_match", "--color_match", dest="colour_match", action="store_true",
                        help="match the generated mouth region's colours to the frame before pasting")
    parser.add_argument("--feather", type=float, default=DEFAULT_FEATHER_PX,
                        help="crop pixels over which the generated region fades into the frame")
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF, help="H.264 quality: lower is better and larger")
    parser.add_argument("--x264_preset", default=DEFAULT_PRESET, choices=X264_PRESETS,
                        help="x264 speed preset; faster presets give larger files")
    parser.add_argument("--fp16", action="store_true", help="half precision on CUDA (torch backend)")
    parser.add_argument("--no_silence_hold", dest="silence_hold", action="store_false",
                        help="keep the model's mouth in pauses (default: pauses show the person's own closed mouth)")
    parser.add_argument("--vad", choices=VAD_CHOICES,
                        help="pause detector: silero (default) or energy (a speech-band energy gate, for clean audio)")
    parser.add_argument("--mouth_scale", type=float, default=1.0,
                        help="how wide the mouth opens: 1.2 = 20%% wider, 0.8 = 20%% less "
                             f"({MOUTH_SCALE_LIMITS[0]:g}-{MOUTH_SCALE_LIMITS[1]:g})")
    parser.add_argument("--paint_faceless", action="store_true",
                        help="paint the mouth on frames where preprocessing found no face (default: leave them untouched)")
    parser.add_argument("--faceless_fade", type=int, default=DEFAULT_FACELESS_FADE_FRAMES,
                        help="frames over which the mouth fades out before a frame without a face (0: cut)")
    parser.add_argument("--dataset_dir", help="processed recording (default: dataset/NAME)")
    parser.add_argument("--ave_checkpoint", help="AVE encoder for --asr ave (default: the one training used)")
    parser.add_argument("--hubert_model", help="HuBERT folder or hub id for --asr hubert (default: the one training used)")
    parser.add_argument("--wenet_model", help="WeNet encoder ONNX for --asr wenet (default: the one training used)")
    parser.add_argument("--onnx_threads", type=int, help="onnxruntime CPU threads (default: all usable cores)")
    parser.add_argument("--workers", type=int, help="threads for frame decoding and paste-back")
    parser.add_argument("--dataset_root", default=str(DATASET_ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint_root", default=str(CHECKPOINT_ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--result_root", default=str(RESULT_ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def export(args) -> Path:
    """checkpoint/NAME/<epoch>.onnx for the chosen checkpoint (kept when already up to date)."""
    from lipsync.core.checkpoints import load_unet
    from lipsync.core.onnx_runtime import ensure_onnx

    _, checkpoint_path = locate_run(args.name, args.dataset_dir, args.checkpoint, args.dataset_root,
                                    args.checkpoint_root)
    model, config = load_unet(checkpoint_path, "cpu", asr=args.asr)
    return ensure_onnx(checkpoint_path, model, config)


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.audio_path is None and not args.export_onnx:
        raise UserError("give --audio_path (the new audio to speak), or --export_onnx to export the model")
    if args.export_onnx:
        exported = export(args)
        print(f"exported {exported}")
        if args.audio_path is None:
            return exported
    renderer = load_renderer(
        args.name, dataset_dir=args.dataset_dir, checkpoint=args.checkpoint, asr=args.asr, device=args.device,
        backend=args.backend, half=args.fp16, ave_checkpoint=args.ave_checkpoint, hubert_model=args.hubert_model,
        wenet_model=args.wenet_model, onnx_threads=args.onnx_threads, dataset_root=args.dataset_root,
        checkpoint_root=args.checkpoint_root, batch_size=args.batch_size, feather_px=args.feather,
        colour_match=args.colour_match, workers=args.workers, silence_hold=args.silence_hold, vad=args.vad,
        mouth_scale=args.mouth_scale, paint_faceless=args.paint_faceless, faceless_fade=args.faceless_fade)
    with renderer:
        label = checkpoint_label(renderer.checkpoint_path)
        output = Path(args.output) if args.output else \
            default_output_path(args.name, args.audio_path, label, args.result_root)
        result = render_to_file(renderer, args.audio_path, output, args.start_frame, progress=not args.no_progress,
                                crf=args.crf, preset=args.x264_preset)
    print(f"wrote {result.path} ({result.frames} frames, {result.frames_per_second:.1f} frames/s)")
    return result.path


if __name__ == "__main__":
    main()
