"""The server's life: load the person once, start the render engine and the HTTP/WebRTC app,
stop cleanly. ``serve`` blocks (serve_328.py); ``start_in_thread`` runs it beside the caller
(tests and benchmarks/bench_serve.py) and returns its URL.
"""
import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Optional

from aiohttp import web

from data_utils.timebase import FPS
from lipsync.core.devices import device_name
from lipsync.render.api import load_renderer
from lipsync.render.options import RenderOptions
from lipsync.serve.app import create_app
from lipsync.serve.engine import Engine
from lipsync.serve.ice import use_addresses
from lipsync.serve.options import ServeOptions
from lipsync.serve.tts import load_speech

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_SECONDS = 300     # loading a full-width model and composing the idle loop
CHATTY_LIBRARIES = ("aioice", "aiortc", "aiohttp.access")   # they log every ICE check and request at INFO


def describe(name: str, renderer, engine: Engine, render_options: RenderOptions) -> dict:
    """What /health and every offer's answer say about the person and the stream."""
    width, height = renderer.frame_size
    return {"person": name, "fps": FPS, "frame_size": [width, height], "mouth_region": list(engine.mouth_region),
            "model": {"asr": renderer.asr, "widths": renderer.config.get("widths"),
                      "checkpoint": str(renderer.checkpoint_path) if renderer.checkpoint_path else None,
                      "device": device_name(render_options.device), "backend": render_options.backend,
                      "batch_size": render_options.batch_size},
            "idle_frames": engine.idle.frame_count, "queue_frames": engine.queue_frames}


class LiveServer:
    """One loaded person served over HTTP + WebRTC; ``start`` on an event loop, ``stop`` to end."""

    def __init__(self, name: str, render_options: RenderOptions, serve_options: ServeOptions):
        self.name = name
        self.render_options = render_options
        self.options = serve_options.check()
        if not self.options.is_loopback and self.options.token is None:
            log.warning("listening on %s without --token: anyone who can reach this address can use the "
                        "server", self.options.host)
        for library in CHATTY_LIBRARIES:
            logging.getLogger(library).setLevel(max(logging.WARNING, logging.getLogger(library).level))
        self.speech = load_speech(self.options.tts)
        self.renderer = load_renderer(name, render_options)
        self.engine = Engine(self.renderer, max_sessions=self.options.max_sessions,
                             queue_seconds=self.options.queue_seconds, idle_frames=self.options.idle_frames)
        use_addresses(self.options.ice_addresses)
        self.app = create_app(self.engine, self.options, self.speech,
                              describe(name, self.renderer, self.engine, render_options))
        self._runner: Optional[web.AppRunner] = None
        self.port: Optional[int] = None

    @property
    def url(self) -> str:
        host = self.options.host if ":" not in self.options.host else f"[{self.options.host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("serving %s at %s (%d sessions at most)", self.name, self.url, self.options.max_sessions)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.engine.close()
        self.renderer.close()


def serve(name: str, render_options: RenderOptions, serve_options: ServeOptions) -> None:
    """Serve until Ctrl-C."""
    server = LiveServer(name, render_options, serve_options)

    async def run():
        url = await server.start()
        print(f"open {url}/ in a browser (Ctrl-C stops)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@dataclass
class RunningServer:
    """A LiveServer on its own thread and event loop."""
    server: LiveServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    url: str

    def call(self, coroutine, timeout: float = 60):
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def start_in_thread(name: str, render_options: RenderOptions, serve_options: ServeOptions) -> RunningServer:
    server = LiveServer(name, render_options, serve_options)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="live-server", daemon=True)
    thread.start()
    started.wait(STARTUP_TIMEOUT_SECONDS)
    url = asyncio.run_coroutine_threadsafe(server.start(), loop).result(STARTUP_TIMEOUT_SECONDS)
    return RunningServer(server, loop, thread, url)
