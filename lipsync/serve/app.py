"""The HTTP API and the page (aiohttp): routes, JSON errors, the token check.

    GET    /                              the page (lipsync/serve/static/)
    GET    /health                        the person, the model, sessions in use, TTS
    POST   /offer                         {"sdp", "type"} WebRTC offer -> answer + session id
    GET    /sessions/{id}                 the session's status
    POST   /sessions/{id}/speak           an audio file (multipart field "audio", or the raw body)
    POST   /sessions/{id}/say             {"text": ...} through the local text to speech
    GET    /sessions/{id}/audio           WebSocket: 16 kHz mono s16le PCM chunks in, {"type": "end"} ends
    POST   /sessions/{id}/interrupt       back to the idle face now
    GET    /sessions/{id}/events          server-sent events: speaking_started/ended, interrupted, status
    POST   /sessions/{id}/recording       start recording the session to mp4
    DELETE /sessions/{id}/recording       stop; the mp4's path and its download URL
    GET    /sessions/{id}/recording       download the last finished recording
    DELETE /sessions/{id}                 close the session

Every error is a 4xx JSON ``{"error": "..."}`` with one line that says what to
do (503 when every session is in use); an unknown session id is 404
(lipsync/serve/guards.py).
"""
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np
from aiohttp import WSMsgType, web
from aiortc import RTCPeerConnection, RTCSessionDescription

from data_utils.audio import load_audio
from lipsync.core.errors import UserError
from lipsync.serve.engine import Engine
from lipsync.serve.events import server_sent_event
from lipsync.serve.guards import NotFound, json_errors, token_check
from lipsync.serve.ice import keep_candidates, peer_connection_configuration
from lipsync.serve.options import ServeOptions
from lipsync.serve.session import Session
from lipsync.serve.tracks import SlotAudioTrack, SlotVideoTrack
from lipsync.serve.tts import check_text

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PCM_SCALE = 32768.0                          # s16le chunk -> float samples in [-1, 1)
STATUS_SECONDS = 1.0                         # a status event this often
KEEP_ALIVE_SECONDS = 15.0
MAX_CHUNK_BYTES = 1 << 20                    # one WebSocket message: 32 s of 16 kHz PCM
UPLOAD_FIELD = "audio"
MEGABYTE = 1 << 20
CONNECT_TIMEOUT_SECONDS = 30                 # an offer whose peer never connects frees its session after this

ENGINE_KEY = web.AppKey("engine", Engine)
OPTIONS_KEY = web.AppKey("options", ServeOptions)
SPEECH_KEY = web.AppKey("speech", object)
PEERS_KEY = web.AppKey("peers", dict)
STATUS_TASKS_KEY = web.AppKey("status_tasks", dict)
DESCRIPTION_KEY = web.AppKey("description", dict)
RECORDINGS_KEY = web.AppKey("recordings", dict)


def _session(request: web.Request) -> Session:
    session_id = request.match_info["session_id"]
    try:
        return request.app[ENGINE_KEY].session(session_id)
    except KeyError:
        raise NotFound(f"unknown session {session_id!r} — it was closed or never opened; "
                       "open one with POST /offer") from None


async def _json_body(request: web.Request) -> Dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise UserError("the request body must be a JSON object")
    return body


# ---------------------------------------------------------------------------- page and health

async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    return web.json_response({**request.app[DESCRIPTION_KEY], "status": "ok", "sessions": len(engine.sessions),
                              "max_sessions": engine.max_sessions, "render_fps": round(engine.render_fps, 2),
                              "tts": getattr(request.app[SPEECH_KEY], "name", None)})


# ---------------------------------------------------------------------------- WebRTC

async def offer(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if not isinstance(body.get("sdp"), str) or body.get("type") != "offer":
        raise UserError('send the browser\'s offer as JSON: {"sdp": "...", "type": "offer"}')
    if "m=video" not in body["sdp"]:
        raise UserError("the offer has no video — add a receive-only video transceiver before createOffer()")
    app = request.app
    engine = app[ENGINE_KEY]
    session = engine.open_session()
    connection = RTCPeerConnection(peer_connection_configuration())
    app[PEERS_KEY][session.id] = connection

    @connection.on("connectionstatechange")
    async def closed_or_failed():
        if connection.connectionState in ("failed", "closed"):
            await close_session(app, session.id)

    try:
        await connection.setRemoteDescription(RTCSessionDescription(
            sdp=keep_candidates(body["sdp"], app[OPTIONS_KEY].ice_addresses), type="offer"))
        for transceiver in connection.getTransceivers():
            if transceiver.kind == "video":
                connection.addTrack(SlotVideoTrack(session))
            elif transceiver.kind == "audio":
                connection.addTrack(SlotAudioTrack(session))
        await connection.setLocalDescription(await connection.createAnswer())
    except (ValueError, RuntimeError) as error:   # aiortc's words for an SDP it cannot use
        await close_session(app, session.id)
        raise UserError(f"the offer cannot be answered ({error})") from None
    app[STATUS_TASKS_KEY][session.id] = asyncio.ensure_future(_publish_status(session))

    def give_up_unless_connected():
        if connection.connectionState != "connected" and session.id in engine.sessions:
            log.warning("session %s: the viewer never connected; closed", session.id)
            asyncio.ensure_future(close_session(app, session.id))

    asyncio.get_running_loop().call_later(CONNECT_TIMEOUT_SECONDS, give_up_unless_connected)
    answer = connection.localDescription
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": session.id,
                              **app[DESCRIPTION_KEY]})


async def _publish_status(session: Session) -> None:
    while not session.closed:
        session.events.publish("status", **session.status())
        await asyncio.sleep(STATUS_SECONDS)


async def close_session(app: web.Application, session_id: str) -> bool:
    task = app[STATUS_TASKS_KEY].pop(session_id, None)
    if task is not None:
        task.cancel()
    closed = app[ENGINE_KEY].close_session(session_id)
    connection = app[PEERS_KEY].pop(session_id, None)
    if connection is not None:
        await connection.close()
    return closed


# ---------------------------------------------------------------------------- speech in

async def _decode_upload(data: bytes, filename: str) -> np.ndarray:
    """Any audio FFmpeg reads, as 16 kHz mono float32; a UserError names the upload, not a temp file."""
    suffix = Path(filename).suffix[:10] if filename else ""
    with tempfile.TemporaryDirectory(prefix="lipsync-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return await asyncio.to_thread(load_audio, path)
        except UserError as error:
            raise UserError(str(error).replace(str(path), filename or "the upload")) from None


async def speak(request: web.Request) -> web.Response:
    session = _session(request)
    first_byte = time.monotonic()
    filename = ""
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        field = form.get(UPLOAD_FIELD)
        if not hasattr(field, "file"):
            raise UserError(f"send the audio file in the multipart field {UPLOAD_FIELD!r}")
        filename = field.filename or ""
        data = field.file.read()
    else:
        data = await request.read()
    if not data:
        raise UserError("the upload is empty — send a wav, mp3 or m4a file")
    samples = await _decode_upload(data, filename)
    utterance = session.speak(samples, "file", first_byte)
    return web.json_response({"session": session.id, "utterance": utterance.number,
                              "seconds": round(utterance.seconds, 3), "frames": utterance.total_frames,
                              "queued_utterances": session.queued}, status=202)


async def say(request: web.Request) -> web.Response:
    session = _session(request)
    first_byte = time.monotonic()
    speech = request.app[SPEECH_KEY]
    if speech is None:
        raise UserError("this server has no text to speech — install espeak-ng (apt-get install espeak-ng) "
                        "or start it with --tts package.module:function")
    text = check_text((await _json_body(request)).get("text"))
    samples = await asyncio.to_thread(speech, text)
    utterance = session.speak(samples, "text", first_byte)
    return web.json_response({"session": session.id, "utterance": utterance.number,
                              "seconds": round(utterance.seconds, 3), "frames": utterance.total_frames}, status=202)


async def audio_stream(request: web.Request) -> web.WebSocketResponse:
    """Binary messages: s16le PCM, 16 kHz mono, any length; text {"type": "end"} ends the utterance."""
    session = _session(request)
    socket = web.WebSocketResponse(max_msg_size=MAX_CHUNK_BYTES)
    await socket.prepare(request)
    utterance = None
    async for message in socket:
        if message.type == WSMsgType.BINARY:
            if len(message.data) % 2:
                await socket.send_json({"error": "PCM chunks are 16-bit samples: an even number of bytes"})
                continue
            if utterance is None or utterance.cancelled:
                utterance = session.begin_stream(time.monotonic())
                await socket.send_json({"event": "utterance", "utterance": utterance.number})
            utterance.add_audio(np.frombuffer(message.data, "<i2").astype(np.float32) / PCM_SCALE)
            session.wake_worker()
        elif message.type == WSMsgType.TEXT:
            try:
                command = json.loads(message.data)
            except json.JSONDecodeError:
                command = None
            if not isinstance(command, dict) or command.get("type") != "end":
                await socket.send_json({"error": 'text messages are {"type": "end"}; audio goes in binary ones'})
                continue
            if utterance is not None:
                utterance.finish_input()
                session.wake_worker()
                await socket.send_json({"event": "end", "utterance": utterance.number,
                                        "seconds": round(utterance.seconds, 3)})
                utterance = None
    if utterance is not None:
        utterance.finish_input()
        session.wake_worker()
    return socket


# ---------------------------------------------------------------------------- control

async def interrupt(request: web.Request) -> web.Response:
    requested = time.monotonic()
    session = _session(request)
    return web.json_response({"session": session.id, "interrupted": session.interrupt(requested)})


async def status(request: web.Request) -> web.Response:
    session = _session(request)
    return web.json_response({**session.status(), "events": session.events.history[-20:]})


async def events(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    queue = session.events.subscribe()
    try:
        while not session.closed:
            try:
                event = await asyncio.wait_for(queue.get(), KEEP_ALIVE_SECONDS)
            except asyncio.TimeoutError:
                event = None
            await response.write(server_sent_event(event))
            if event is not None and event["event"] == "closed":
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        session.events.unsubscribe(queue)
    return response


async def start_recording(request: web.Request) -> web.Response:
    session = _session(request)
    engine = request.app[ENGINE_KEY]
    folder = request.app[OPTIONS_KEY].record_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(folder) / f"{request.app[DESCRIPTION_KEY]['person']}_{session.id}_{stamp}.mp4"
    width, height = engine.renderer.frame_size
    session.start_recording(path, width, height)
    return web.json_response({"session": session.id, "recording": True, "path": str(session.recorder.path)})


async def stop_recording(request: web.Request) -> web.Response:
    session = _session(request)
    if session.recorder is None:
        raise UserError("this session is not recording — start with POST /sessions/ID/recording")
    path = await asyncio.to_thread(session.stop_recording)
    request.app[RECORDINGS_KEY][session.id] = path
    return web.json_response({"session": session.id, "recording": False, "path": str(path),
                              "url": f"/sessions/{session.id}/recording"})


async def download_recording(request: web.Request) -> web.FileResponse:
    session = _session(request)
    path = request.app[RECORDINGS_KEY].get(session.id)
    if path is None or not Path(path).is_file():
        raise NotFound("this session has no finished recording — POST then DELETE "
                       f"/sessions/{session.id}/recording")
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{Path(path).name}"'})


async def close(request: web.Request) -> web.Response:
    session = _session(request)
    if session.recorder is not None:
        await asyncio.to_thread(session.stop_recording)
    await close_session(request.app, session.id)
    return web.json_response({"session": session.id, "closed": True})


# ---------------------------------------------------------------------------- the app

def create_app(engine: Engine, options: ServeOptions, speech, description: Dict) -> web.Application:
    """The aiohttp application; ``description`` (person, model, frame size, mouth region) goes into
    /health and every offer's answer."""
    app = web.Application(middlewares=[json_errors(options.max_upload_mb), token_check(options.token)],
                          client_max_size=int(options.max_upload_mb * MEGABYTE))
    app[ENGINE_KEY] = engine
    app[OPTIONS_KEY] = options
    app[SPEECH_KEY] = speech
    app[PEERS_KEY] = {}
    app[STATUS_TASKS_KEY] = {}
    app[DESCRIPTION_KEY] = dict(description)
    app[RECORDINGS_KEY] = {}
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_get("/health", health)
    app.router.add_post("/offer", offer)
    app.router.add_get("/sessions/{session_id}", status)
    app.router.add_delete("/sessions/{session_id}", close)
    app.router.add_post("/sessions/{session_id}/speak", speak)
    app.router.add_post("/sessions/{session_id}/say", say)
    app.router.add_get("/sessions/{session_id}/audio", audio_stream)
    app.router.add_post("/sessions/{session_id}/interrupt", interrupt)
    app.router.add_get("/sessions/{session_id}/events", events)
    app.router.add_post("/sessions/{session_id}/recording", start_recording)
    app.router.add_delete("/sessions/{session_id}/recording", stop_recording)
    app.router.add_get("/sessions/{session_id}/recording", download_recording)
    app.on_shutdown.append(_close_all)
    return app


async def _close_all(app: web.Application) -> None:
    for session_id in list(app[PEERS_KEY]):
        await close_session(app, session_id)
