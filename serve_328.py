"""Serve a trained person live in the browser: WebRTC video + audio, speaking what you upload,
stream, or type.

    python serve_328.py --name May                     # then open http://127.0.0.1:8328/
    python serve_328.py --name May --backend onnx --max_sessions 2
    python serve_328.py --name May --host 0.0.0.0 --token SECRET   # reachable from the network

The work lives in lipsync/serve/ (the HTTP API is listed in lipsync/serve/app.py);
this script only parses options.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipsync.core.console import configure_console_logging
from lipsync.core.errors import exit_on_user_error
from lipsync.render.options import RenderOptions
from lipsync.serve.options import ServeOptions, build_parser
from lipsync.serve.server import serve


@exit_on_user_error
def main(argv=None):
    args = build_parser(__doc__).parse_args(argv)
    configure_console_logging(args.quiet)
    serve(args.name, RenderOptions.from_args(args).check(), ServeOptions.from_args(args).check())


if __name__ == "__main__":
    main()
