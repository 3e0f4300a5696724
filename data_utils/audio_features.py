"""Audio features of a recording for ``--asr ave|hubert|wenet``: aud_<asr>.npy, one row per 25 fps frame.

    python data_utils/audio_features.py --asr ave --wav dataset/May/aud.wav
    python data_utils/audio_features.py --asr hubert --wav dataset/May/aud.wav
    python data_utils/audio_features.py --asr wenet --wav dataset/May/aud.wav --wenet_model encoder.onnx
    python -m data_utils.audio_features ...                      # the same

A preprocessed dataset's aud.wav gets one row per extracted frame (and, for
ave, the person's encoder ave.pth learned first); any other audio file gets
features next to it. The work is done in data_utils/features/ (extract.py is
the entry point, options.py the parser).
"""
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_utils.features.extract import (check_asr, metadata_path, prepare_dataset_features,
                                         write_audio_features)
from data_utils.features.options import EncoderOptions, build_parser
from data_utils.layout import DatasetLayout
from lipsync.core.console import configure_console_logging
from lipsync.core.devices import device_name
from lipsync.core.errors import exit_on_user_error


@exit_on_user_error
def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    configure_console_logging()
    check_asr(args.asr)
    wav = Path(args.wav)
    device = device_name(args.device)
    encoder = EncoderOptions.from_args(args).as_dict()
    layout = DatasetLayout(wav.parent)
    if args.output is None and wav.name == layout.audio_wav.name and layout.is_processed():
        # a preprocessed dataset: one row per extracted frame, ave.pth learned if needed, metadata for reuse
        output = prepare_dataset_features(wav.parent, args.asr, device=device, force=args.force, **encoder)
        metadata = json.loads(metadata_path(output).read_text())
    else:
        output, metadata = write_audio_features(wav, args.asr, args.output, device=device, **encoder)
    accuracy = metadata.get("heldout_sync_accuracy")
    timing = f" from {metadata['audio_seconds']:.2f} s of audio in {metadata['seconds']:.1f} s" \
        if "audio_seconds" in metadata else ""
    print(f"{output}: {metadata['frames']} frames x {tuple(metadata['per_frame_shape'])} ({args.asr}, "
          f"{metadata['encoder']}){timing}"
          + ("" if accuracy is None else f"; AVE held-out sync accuracy {100 * accuracy:.1f}%"))
    return output


if __name__ == "__main__":
    main()
