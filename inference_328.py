"""Make a trained person speak new audio: result/<NAME>_<audio>_<epoch>.mp4.

    python inference_328.py --name May --audio_path demo/new.wav
    python inference_328.py --name May --audio_path speech.mp3 --checkpoint 120 --output result/talk.mp4
    python inference_328.py --name May --export_onnx                 # checkpoint/May/<epoch>.onnx
    python inference_328.py --name May --audio_path new.wav --backend onnx
    python inference_328.py --name May --audio_path new.wav --mouth_scale 1.2   # open the mouth wider

The work lives in lipsync/render/ (importable: from lipsync.render import render,
load_renderer, render_to_file); this script only parses options.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipsync.core.checkpoints import load_unet
from lipsync.core.commands import render_again
from lipsync.core.console import configure_console_logging
from lipsync.core.errors import UserError, exit_on_user_error
from lipsync.render import load_renderer, render_to_file
from lipsync.render.onnx_export import ensure_onnx
from lipsync.render.options import RenderOptions, build_parser
from lipsync.render.run_lookup import checkpoint_label, default_output_path, free_output_path, locate_run


def export(name: str, options: RenderOptions) -> Path:
    """checkpoint/NAME/<epoch>.onnx for the chosen checkpoint (kept when already up to date)."""
    _, checkpoint_path = locate_run(name, options.dataset_dir, options.checkpoint, options.dataset_root,
                                    options.checkpoint_root)
    model, config = load_unet(checkpoint_path, "cpu", asr=options.asr)
    return ensure_onnx(checkpoint_path, model, config)


@exit_on_user_error(how_to_continue=render_again)
def main(argv=None):
    args = build_parser(__doc__).parse_args(argv)
    configure_console_logging()
    if args.audio_path is None and not args.export_onnx:
        raise UserError("give --audio_path (the new audio to speak), or --export_onnx to export the model")
    options = RenderOptions.from_args(args)
    if args.export_onnx:
        exported = export(args.name, options)
        print(f"exported {exported}")
        if args.audio_path is None:
            return exported
    with load_renderer(args.name, options) as renderer:
        label = checkpoint_label(renderer.checkpoint_path)
        wanted = Path(args.output) if args.output else \
            default_output_path(args.name, args.audio_path, label, args.result_root)
        output = wanted if args.overwrite else free_output_path(wanted)
        if output != wanted:
            print(f"{wanted} exists: writing {output} instead (--overwrite replaces it)")
        result = render_to_file(renderer, args.audio_path, output, args.start_frame, progress=not args.no_progress,
                                crf=args.crf, preset=args.x264_preset)
    print(f"wrote {result.path} ({result.frames} frames, {result.frames_per_second:.1f} frames/s)")
    return result.path


if __name__ == "__main__":
    main()
