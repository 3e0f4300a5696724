"""Every option of the live server (ServeOptions) and serve_328.py's parser.

ServeOptions holds how the server listens and shares its one loaded model
(address, token, session limit, upload limit, how far rendering runs ahead,
the idle loop, recordings, text-to-speech, which addresses WebRTC media uses).
How the person is loaded and rendered is RenderOptions (lipsync/render/options.py);
the parser offers both, with ``dest`` names equal to the field names, so
``ServeOptions.from_args(args)`` and ``RenderOptions.from_args(args)`` read them back.
"""
import argparse
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from data_utils.layout import RESULT_ROOT
from lipsync.core.errors import UserError
from lipsync.core.options import Options
from lipsync.render.options import RenderOptions, add_person_arguments

DEFAULT_HOST = "127.0.0.1"            # only this machine can connect unless told otherwise
DEFAULT_PORT = 8328
TOKEN_ENVIRONMENT_VARIABLE = "LIPSYNC_SERVE_TOKEN"
DEFAULT_MAX_SESSIONS = 4              # viewers sharing the one loaded model
DEFAULT_MAX_UPLOAD_MB = 25.0          # a few minutes of wav
DEFAULT_QUEUE_SECONDS = 2.0           # rendered speech waiting to be shown, per session
DEFAULT_IDLE_FRAMES = 50              # the idle loop plays recording frames 0..49 back and forth
TTS_CHOICES = ("auto", "none", "espeak")   # or "package.module:function" (lipsync/serve/tts.py)


@dataclass
class ServeOptions(Options):
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT               # 0: any free port (printed at start)
    token: Optional[str] = None            # when set, every API call must carry it
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    queue_seconds: float = DEFAULT_QUEUE_SECONDS
    idle_frames: int = DEFAULT_IDLE_FRAMES  # 0: the whole recording (every frame is kept in memory)
    record_dir: Path = RESULT_ROOT / "serve"
    tts: str = "auto"                      # auto: espeak-ng when installed; none; espeak; module:function
    # Addresses WebRTC media may use on this machine; None: every interface and the loopback.
    ice_addresses: Optional[Tuple[str, ...]] = None

    def check(self) -> "ServeOptions":
        """The options themselves, or a UserError naming the first bad one."""
        if not 0 <= int(self.port) <= 65535:
            raise UserError(f"--port must be 0 .. 65535, got {self.port}")
        if int(self.max_sessions) < 1:
            raise UserError(f"--max_sessions must be at least 1, got {self.max_sessions}")
        if self.max_upload_mb <= 0:
            raise UserError(f"--max_upload_mb must be more than 0, got {self.max_upload_mb:g}")
        if self.queue_seconds <= 0:
            raise UserError(f"--queue_seconds must be more than 0, got {self.queue_seconds:g}")
        if int(self.idle_frames) < 0:
            raise UserError(f"--idle_frames must be 0 (the whole recording) or more, got {self.idle_frames}")
        if self.tts not in TTS_CHOICES and ":" not in self.tts:
            raise UserError(f"unknown --tts {self.tts!r} — choose one of: {', '.join(TTS_CHOICES)}, "
                            "or give package.module:function")
        for address in self.ice_addresses or ():
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise UserError(f"--ice_address {address!r} is not an IP address of this machine") from None
        return self

    @property
    def is_loopback(self) -> bool:
        """Only this machine can reach the HTTP server."""
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def build_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """serve_328.py's options: the person and how it renders (RenderOptions), then how it is served."""
    render, serve = RenderOptions(), ServeOptions()
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    person = parser.add_argument_group("the person (as inference_328.py)")
    add_person_arguments(person, render)
    server = parser.add_argument_group("serving")
    server.add_argument("--host", default=serve.host,
                        help="address to listen on (default: this machine only; 0.0.0.0 for the network)")
    server.add_argument("--port", type=int, default=serve.port, help="HTTP port (0: any free port)")
    server.add_argument("--token", default=os.environ.get(TOKEN_ENVIRONMENT_VARIABLE),
                        help=f"every API call must carry this token (default: ${TOKEN_ENVIRONMENT_VARIABLE})")
    server.add_argument("--max_sessions", type=int, default=serve.max_sessions,
                        help="viewers at once; one more gets 503")
    server.add_argument("--max_upload_mb", type=float, default=serve.max_upload_mb, help="largest audio upload")
    server.add_argument("--queue_seconds", type=float, default=serve.queue_seconds,
                        help="how far rendering runs ahead of playback, per session")
    server.add_argument("--idle_frames", type=int, default=serve.idle_frames,
                        help="recording frames the idle loop plays back and forth (0: all; all are kept in memory)")
    server.add_argument("--record_dir", type=Path, default=serve.record_dir, help="where session recordings go")
    server.add_argument("--tts", default=serve.tts,
                        help="text to speech: auto (espeak-ng when installed), none, espeak, or package.module:function")
    server.add_argument("--ice_address", dest="ice_addresses", action="append", metavar="ADDRESS",
                        help="an address WebRTC media may use (repeat; default: every interface and the loopback)")
    server.add_argument("--quiet", action="store_true", help="log warnings only")
    return parser
