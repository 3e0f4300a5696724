"""A Python viewer of the live server (aiortc): open a session, speak, interrupt, and keep
what arrives (lipsync/serve/measure.py turns it into A/V offset, drift and frame rate).

    async with Viewer("http://127.0.0.1:8328") as viewer:
        await viewer.speak_file("new.wav")
        await asyncio.sleep(5)
        print(measure.av_offsets(viewer.video, viewer.audio))

It gathers candidates on the same addresses as a server in this process would
(lipsync/serve/ice.py) and asks no STUN server.
"""
import asyncio
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from lipsync.serve.ice import peer_connection_configuration
from lipsync.serve.measure import AudioSample, VideoSample, mouth_threshold, soak_summary

PCM_FULL_SCALE = 32768.0
UTTERANCE_TIMEOUT_SECONDS = 180
PAUSE_BETWEEN_UTTERANCES_SECONDS = 1.0
SETTLE_SECONDS = 0.5             # after an interrupt, before looking for the idle face


class Viewer:
    """One session seen from a client. ``video``/``audio``: samples as they arrived; ``events``: SSE events."""

    def __init__(self, url: str, token: Optional[str] = None, keep_frames: bool = False):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.keep_frames = keep_frames            # keep every decoded frame (BGR) too, for tests
        self.frames: List[np.ndarray] = []
        self.video: List[VideoSample] = []
        self.audio: List[AudioSample] = []
        self.events: List[Dict] = []              # each with "arrival" (monotonic seconds) added
        self.session_id: Optional[str] = None
        self.description: Dict = {}
        self._connection: Optional[RTCPeerConnection] = None
        self._http: Optional[aiohttp.ClientSession] = None
        self._tasks: List[asyncio.Task] = []
        self._reference: Optional[np.ndarray] = None
        self._region = None

    async def __aenter__(self) -> "Viewer":
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------------ session

    async def open(self) -> Dict:
        self._http = aiohttp.ClientSession(headers=self.headers)
        connection = self._connection = RTCPeerConnection(peer_connection_configuration())
        connection.addTransceiver("video", direction="recvonly")
        connection.addTransceiver("audio", direction="recvonly")

        @connection.on("track")
        def on_track(track):
            consume = self._consume_video if track.kind == "video" else self._consume_audio
            self._tasks.append(asyncio.ensure_future(consume(track)))

        await connection.setLocalDescription(await connection.createOffer())
        offer = connection.localDescription
        answer = await self.request("POST", "/offer", json={"sdp": offer.sdp, "type": offer.type})
        self.session_id = answer["session"]
        self.description = answer
        self._region = answer["mouth_region"]
        await connection.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        self._tasks.append(asyncio.ensure_future(self._follow_events()))
        return answer

    async def request(self, method: str, path: str, expect: int = None, **arguments) -> Dict:
        """An API call; raises RuntimeError with the server's error unless the status is 2xx (or ``expect``)."""
        async with self._http.request(method, self.url + path, **arguments) as response:
            body = await response.json(content_type=None)
            if (expect is None and response.status >= 300) or (expect is not None and response.status != expect):
                raise RuntimeError(f"{method} {path}: {response.status} {body}")
            return body

    @property
    def session_path(self) -> str:
        return f"/sessions/{self.session_id}"

    async def speak_file(self, path) -> Dict:
        path = Path(path)
        form = aiohttp.FormData()
        form.add_field("audio", path.read_bytes(), filename=path.name)
        return await self.request("POST", self.session_path + "/speak", data=form)

    async def interrupt(self) -> Dict:
        return await self.request("POST", self.session_path + "/interrupt")

    async def speak_and_wait(self, path, interrupt_after: Optional[float] = None) -> Dict:
        """Speak ``path`` to its end, or interrupt it ``interrupt_after`` seconds after it starts.

        Returns its latency (server: first byte to first speaking frame) and, when
        interrupted, the interrupt's latency at the server and here (request to the
        first idle frame received).
        """
        asked = time.monotonic()
        await self.speak_file(path)
        started = await self.wait_for_event("speaking_started", after=asked, timeout=UTTERANCE_TIMEOUT_SECONDS)
        if interrupt_after is None:
            await self.wait_for_event("speaking_ended", after=asked, timeout=UTTERANCE_TIMEOUT_SECONDS)
            return {"latency_ms": started["latency_ms"]}
        await asyncio.sleep(interrupt_after)
        requested = time.monotonic()
        await self.interrupt()
        event = await self.wait_for_event("interrupted", after=requested, timeout=30)
        await asyncio.sleep(SETTLE_SECONDS)
        threshold = mouth_threshold(self.video)
        idle = next((sample for sample in self.video if sample.arrival >= requested
                     and sample.mouth_change < threshold), None)
        return {"latency_ms": started["latency_ms"], "interrupt_server_ms": event["latency_ms"],
                "interrupt_viewer_ms": 1000 * (idle.arrival - requested) if idle else float("nan")}

    async def wait_for_event(self, name: str, after: float = 0.0, timeout: float = 60.0) -> Dict:
        """The first event ``name`` that arrived after monotonic time ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event["event"] == name and event["arrival"] >= after:
                    return event
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {name!r} event within {timeout:g} s")

    async def close(self) -> None:
        if self._http is not None and self.session_id is not None:
            try:
                await self.request("DELETE", self.session_path)
            except (RuntimeError, aiohttp.ClientError):
                pass
        for task in self._tasks:
            task.cancel()
        if self._connection is not None:
            await self._connection.close()
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------ what arrives

    def _mouth_change(self, luma: np.ndarray) -> float:
        x0, y0, x1, y1 = self._region
        mouth = luma[y0:y1, x0:x1].astype(np.float32)
        if self._reference is None:               # the first frame: the idle face
            self._reference = mouth
        return float(np.mean(np.abs(mouth - self._reference)))

    async def _consume_video(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrival = time.monotonic()
            luma = frame.to_ndarray(format="gray")
            self.video.append(VideoSample(arrival, int(frame.pts), self._mouth_change(luma)))
            if self.keep_frames:
                self.frames.append(frame.to_ndarray(format="bgr24"))

    async def _consume_audio(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrival = time.monotonic()
            samples = frame.to_ndarray().astype(np.float32) / PCM_FULL_SCALE
            rms = float(np.sqrt(np.mean(samples ** 2))) if samples.size else 0.0
            self.audio.append(AudioSample(arrival, int(frame.pts), rms))

    async def _follow_events(self) -> None:
        async with self._http.get(self.url + self.session_path + "/events",
                                  timeout=aiohttp.ClientTimeout(total=None)) as response:
            async for line in response.content:
                text = line.decode("utf-8", "replace").strip()
                if text.startswith("data: "):
                    event = json.loads(text[len("data: "):])
                    event["arrival"] = time.monotonic()
                    self.events.append(event)


async def soak(url: str, audio_path, minutes: float, progress=None) -> Dict:
    """One viewer speaking ``audio_path`` over and over (a second of silence between) for
    ``minutes``: lipsync.serve.measure.soak_summary of what arrived, plus counts."""
    async with Viewer(url) as viewer:
        began = time.monotonic()
        utterances = 0
        while time.monotonic() - began < minutes * 60:
            await viewer.speak_and_wait(audio_path)
            utterances += 1
            await asyncio.sleep(PAUSE_BETWEEN_UTTERANCES_SECONDS)
            if progress is not None:
                progress(utterances, (time.monotonic() - began) / 60)
        status = await viewer.request("GET", viewer.session_path)
        summary = soak_summary(viewer.video, viewer.audio)
        summary.update(utterances=utterances, repeated_frames=status["repeated_frames"],
                       speaking_frames=status["speaking_frames"])
        return summary
