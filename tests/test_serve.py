"""Live serving (issue 12): the clock, slot decisions, the HTTP API's answers, and a real
WebRTC session driven by the Python viewer (aiortc) over 127.0.0.1.

The person is the bundled clip with a tiny random U-Net (as tests/test_inference.py
builds it); rendering uses onnxruntime, the fastest CPU path. WebRTC candidates
are 127.0.0.1 only (--ice_address) and no STUN server is asked: every packet
stays on the loopback. The browser test is tests/test_serve_browser.py, the
10-minute drift soak tests/test_serve_soak.py; both reuse what is here.
"""
import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest

from data_utils.audio import load_audio
from data_utils.ffmpeg import probe
from data_utils.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from lipsync.render.options import RenderOptions
from lipsync.serve import measure
from lipsync.serve.client import Viewer
from lipsync.serve.ice import keep_candidates
from lipsync.serve.media_clock import AUDIO_SAMPLES_PER_FRAME, MediaClock
from lipsync.serve.options import ServeOptions
from lipsync.serve.server import start_in_thread
from lipsync.serve.session import IDLE, SPEAKING, WAITING, Session
from lipsync.serve.tts import espeak_binary
from lipsync.serve.utterance import Utterance
from models.unet_328 import WIDTHS, LipSyncUNet
from serve_328 import main as serve_main
from tests.conftest import HELDOUT_WAV, cli_error_line
from tests.training_helpers import (person_with_ave_features, randomise_batch_norm, responsive_random_weights,
                                    save_tiny_unet_checkpoint)

NAME = "talker"
EPOCH = 10
AVE_TEST_WIDTH = 0.125
LOOPBACK = "127.0.0.1"
MAX_SESSIONS = 2
MAX_UPLOAD_MB = 1.0
INTERRUPT_LIMIT_SECONDS = 0.2    # the issue: the idle face within 200 ms of the request
ONE_FRAME = 1 / FPS


# ---------------------------------------------------------------------------- shared by the serve tests

def build_person(processed_clip, base):
    """dataset_root/talker and checkpoint_root/talker/10.pth: a tiny random U-Net whose mouth follows the audio."""
    person = person_with_ave_features(processed_clip, base, NAME, AVE_TEST_WIDTH)
    audio_shape = (32, 16, 16)
    model = LipSyncUNet("ave", audio_shape, WIDTHS["tiny"])
    responsive_random_weights(model)             # its mouth follows the audio: the tests watch it move
    randomise_batch_norm(model)
    person.checkpoint = save_tiny_unet_checkpoint(model, person, NAME, EPOCH)
    return person


def render_options(person) -> RenderOptions:
    return RenderOptions(dataset_root=person.dataset_root, checkpoint_root=person.checkpoint_root, device="cpu",
                         backend="onnx")


def run(coroutine):
    return asyncio.run(coroutine)


async def call(url, method, path, **arguments):
    """(status, JSON body) of one plain HTTP call."""
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url + path, **arguments) as response:
            return response.status, await response.json(content_type=None)


def upload(data: bytes, filename: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("audio", data, filename=filename)
    return form


@pytest.fixture(scope="module")
def person(processed_clip, tmp_path_factory):
    return build_person(processed_clip, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(person, tmp_path_factory):
    options = ServeOptions(port=0, max_sessions=MAX_SESSIONS, max_upload_mb=MAX_UPLOAD_MB,
                           record_dir=tmp_path_factory.mktemp("recordings"), ice_addresses=(LOOPBACK,))
    running = start_in_thread(NAME, render_options(person), options)
    yield running
    running.stop()


# ---------------------------------------------------------------------------- the clock

def test_the_clock_counts_from_one_start_and_never_accumulates():
    now = [100.0]
    clock = MediaClock(now=lambda: now[0])
    assert clock.video_due(0) == 100.0 and clock.audio_due(0) == 100.0
    now[0] = 250.0                                   # the start is fixed by the first call
    assert clock.video_due(15000) == pytest.approx(100.0 + 600.0, abs=1e-9)   # 10 minutes
    assert clock.audio_due(30000) == clock.video_due(15000)                 # audio frames 2n, 2n+1 = slot n
    assert MediaClock.slot_of_audio_frame(30001) == 15000
    assert MediaClock.video_pts(15000) == 15000 * 3600 and MediaClock.audio_pts(2) == 2 * AUDIO_SAMPLES_PER_FRAME
    assert clock.current_slot() == int(150.0 * FPS)


# ---------------------------------------------------------------------------- utterances and slots

def test_an_utterance_pairs_each_frame_with_its_own_sound():
    utterance = Utterance(1, "file", 0.0, queue_frames=50, preroll_frames=2)
    samples = np.arange(3 * SAMPLES_PER_FRAME - 100, dtype=np.float32)     # 2 frames and most of a third
    utterance.add_audio(samples)
    utterance.finish_input()
    assert utterance.total_frames == 3
    piece = utterance.take_piece(SAMPLES_PER_FRAME + 7)
    np.testing.assert_array_equal(piece, samples[:SAMPLES_PER_FRAME + 7])
    rest = utterance.take_piece(10 ** 6)
    assert len(rest) == len(samples) - SAMPLES_PER_FRAME - 7 and utterance.take_piece(10) is None
    frames = [np.full((2, 2, 3), index, np.uint8) for index in range(3)]
    utterance.deliver(frames, final=True)
    for index in range(3):
        frame, sound = utterance.pop()
        assert frame[0, 0, 0] == index
        expected = samples[index * SAMPLES_PER_FRAME:(index + 1) * SAMPLES_PER_FRAME]
        np.testing.assert_array_equal(sound[:len(expected)], expected)
        assert len(sound) == SAMPLES_PER_FRAME and not sound[len(expected):].any()   # the tail padded with silence
    assert utterance.done and utterance.pop() is None


def test_a_file_waits_for_enough_frames_that_a_slow_machine_does_not_stall():
    utterance = Utterance(1, "file", 0.0, queue_frames=100, preroll_frames=8)
    utterance.add_audio(np.zeros(50 * SAMPLES_PER_FRAME, np.float32))
    utterance.finish_input()
    utterance.deliver([np.zeros((1, 1, 3), np.uint8)] * 8, final=False)
    assert utterance.ready_to_start(render_fps=FPS)          # real time: one batch is enough
    assert not utterance.ready_to_start(render_fps=FPS / 2)  # half speed: half of the 50 frames first
    utterance.deliver([np.zeros((1, 1, 3), np.uint8)] * 17, final=False)
    assert utterance.ready_to_start(render_fps=FPS / 2)
    stream = Utterance(2, "stream", 0.0, queue_frames=100, preroll_frames=8)
    stream.add_audio(np.zeros(SAMPLES_PER_FRAME * 8, np.float32))
    stream.deliver([np.zeros((1, 1, 3), np.uint8)] * 8, final=False)
    assert stream.ready_to_start(render_fps=1.0)             # a stream cannot wait for its end


class FakeIdle:
    """Idle frames whose pixel value is their phase."""

    def __init__(self):
        self.frame_count = 10

    def frame(self, phase):
        return np.full((2, 2, 3), 100 + phase % 10, np.uint8)

    def recording_frame(self, phase):
        return phase % 10

    def phase_near(self, frame):
        return min(frame, 9)


def fake_session(rate=float(FPS)):
    return Session("s", FakeIdle(), 10, queue_frames=50, preroll_frames=2, render_rate=lambda: rate,
                   wake_worker=lambda: None)


def test_slots_go_idle_speaking_waiting_and_back_with_sound_only_in_speech():
    session = fake_session()
    assert session.slot(0).state == IDLE and not session.slot(0).pcm16.any()
    utterance = session.speak(np.full(4 * SAMPLES_PER_FRAME, 0.5, np.float32), "file", 0.0)
    assert session.slot(1).state == IDLE                        # nothing rendered yet: still idle
    utterance.take_piece(10 ** 6)
    utterance.deliver([np.full((2, 2, 3), 7, np.uint8)] * 2, final=False)
    speaking = session.slot(2)
    assert speaking.state == SPEAKING and speaking.image[0, 0, 0] == 7
    assert np.all(speaking.pcm16 == round(0.5 * 32767))
    assert session.slot(3).state == SPEAKING
    waiting = session.slot(4)                                   # frames 3-4 not rendered in time
    assert waiting.state == WAITING and waiting.image[0, 0, 0] == 7 and not waiting.pcm16.any()
    utterance.deliver([np.full((2, 2, 3), 8, np.uint8)] * 2, final=True)
    assert [session.slot(index).state for index in (5, 6, 7)] == [SPEAKING, SPEAKING, IDLE]
    assert session.slot(5) is session.slot(5)                   # decided once: both tracks read the same slot
    ended = [event for event in session.events.history if event["event"] == "speaking_ended"]
    assert ended[-1]["reason"] == "finished" and ended[-1]["frames"] == 4


def test_interrupt_makes_the_very_next_slot_idle():
    session = fake_session()
    utterance = session.speak(np.ones(20 * SAMPLES_PER_FRAME, np.float32) * 0.1, "file", 0.0)
    utterance.take_piece(10 ** 6)
    utterance.deliver([np.full((2, 2, 3), 7, np.uint8)] * 10, final=False)
    assert session.slot(0).state == SPEAKING
    assert session.interrupt() == 1
    after = session.slot(1)
    assert after.state == IDLE and not after.pcm16.any() and utterance.cancelled
    assert [event["reason"] for event in session.events.history if event["event"] == "speaking_ended"] == \
        ["interrupted"]


# ---------------------------------------------------------------------------- measurement helpers

def test_av_offsets_pair_each_sound_onset_with_the_mouth():
    video = [measure.VideoSample(index / FPS, index * 3600, 30.0 if 50 <= index < 75 else 1.0) for index in range(150)]
    audio = [measure.AudioSample(index / 50, index * 960, 0.2 if 102 <= index < 150 else 0.0) for index in range(300)]
    offsets = measure.av_offsets(video, audio)
    assert len(offsets) == 1
    start, offset = offsets[0]
    assert start == pytest.approx(2.04) and offset == pytest.approx(-0.04)   # the mouth one frame ahead
    times, lag = measure.lag_series(video, measure.VIDEO_CLOCK_RATE)
    assert np.allclose(lag, 0) and measure.robust_drift_ms_per_minute(times, lag) == pytest.approx(0, abs=1e-6)
    late = [measure.VideoSample(sample.arrival * 1.001, sample.pts, 0) for sample in video]   # 1 ms per second
    times, lag = measure.lag_series(late, measure.VIDEO_CLOCK_RATE)
    assert measure.robust_drift_ms_per_minute(times, lag) == pytest.approx(60.0, rel=1e-6)
    assert measure.frame_rate(video) == pytest.approx(FPS)


def test_candidates_on_other_addresses_and_mdns_names_are_dropped():
    sdp = "\r\n".join(["v=0", "a=candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host",
                       "a=candidate:2 1 udp 2113937151 192.0.2.2 5001 typ host",
                       "a=candidate:3 1 udp 2113937151 0b1c.local 5002 typ host", "a=end-of-candidates"]) + "\r\n"
    kept = keep_candidates(sdp, [LOOPBACK])
    assert "127.0.0.1 5000" in kept and "192.0.2.2" not in kept and ".local" not in kept
    assert "a=end-of-candidates" in kept and keep_candidates(sdp, None) == sdp


# ---------------------------------------------------------------------------- the script

def test_bad_serve_options_are_one_line_each(capsys, person):
    roots = ["--dataset_root", str(person.dataset_root), "--checkpoint_root", str(person.checkpoint_root)]
    assert cli_error_line(serve_main, capsys, ["--name", NAME, "--max_sessions", "0", *roots]) == \
        "error: --max_sessions must be at least 1, got 0"
    assert cli_error_line(serve_main, capsys, ["--name", NAME, "--tts", "festival", *roots]) == \
        "error: unknown --tts 'festival' — choose one of: auto, none, espeak, or give package.module:function"
    assert cli_error_line(serve_main, capsys, ["--name", NAME, "--ice_address", "here", *roots]) == \
        "error: --ice_address 'here' is not an IP address of this machine"
    assert cli_error_line(serve_main, capsys, ["--name", "nobody", *roots]).startswith("error: unknown name 'nobody'")


# ---------------------------------------------------------------------------- plain HTTP

def test_health_and_the_page(server):
    status, health = run(call(server.url, "GET", "/health"))
    assert status == 200 and health["status"] == "ok" and health["person"] == NAME
    assert health["fps"] == FPS and health["frame_size"] == [512, 512] and health["max_sessions"] == MAX_SESSIONS
    x0, y0, x1, y1 = health["mouth_region"]
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    assert health["model"]["asr"] == "ave" and health["model"]["widths"] == list(WIDTHS["tiny"])
    assert health["tts"] == (Path(espeak_binary()).name if espeak_binary() else None)

    async def page():
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/") as response:
                html = await response.text()
            async with http.get(server.url + "/static/app.js") as response:
                script = await response.text()
            return html, script
    html, script = run(page())
    assert '<video id="video"' in html and "/static/app.js" in html and "RTCPeerConnection" in script


def test_unknown_sessions_are_404_with_one_message(server):
    for method, path in [("GET", "/sessions/nope"), ("POST", "/sessions/nope/interrupt"),
                         ("DELETE", "/sessions/nope"), ("POST", "/sessions/nope/recording"),
                         ("GET", "/sessions/nope/events")]:
        status, body = run(call(server.url, method, path))
        assert status == 404, (method, path)
        assert body == {"error": "unknown session 'nope' — it was closed or never opened; open one with POST /offer"}
    status, body = run(call(server.url, "POST", "/sessions/nope/speak", data=upload(b"RIFF", "a.wav")))
    assert status == 404 and "unknown session 'nope'" in body["error"]
    status, body = run(call(server.url, "GET", "/no/such/route"))
    assert status == 404 and body["error"].startswith("no such route: GET /no/such/route")


def test_bad_offers_are_400(server):
    status, body = run(call(server.url, "POST", "/offer", data=b"not json"))
    assert status == 400 and body == {"error": "the request body is not JSON"}
    status, body = run(call(server.url, "POST", "/offer", json={"sdp": 3}))
    assert status == 400 and body["error"].startswith("send the browser's offer as JSON")
    status, body = run(call(server.url, "POST", "/offer", json={"sdp": "v=0\r\nm=audio 9 UDP 0\r\n", "type": "offer"}))
    assert status == 400 and body["error"].startswith("the offer has no video")
    status, health = run(call(server.url, "GET", "/health"))
    assert health["sessions"] == 0                     # a rejected offer leaves no session behind


def test_bad_audio_oversized_uploads_and_too_many_sessions(server, tmp_path):
    async def scenario():
        viewers = [Viewer(server.url) for _ in range(MAX_SESSIONS)]
        for viewer in viewers:
            await viewer.open()
        try:
            path = viewers[0].session_path + "/speak"
            bad = await call(server.url, "POST", path, data=upload(b"this is not audio at all", "notes.wav"))
            empty = await call(server.url, "POST", path, data=upload(b"", "empty.wav"))
            large = await call(server.url, "POST", path,
                               data=upload(b"\0" * int((MAX_UPLOAD_MB + 0.5) * 2 ** 20), "long.wav"))
            wrong_field = aiohttp.FormData()
            wrong_field.add_field("file", b"RIFF", filename="a.wav")
            no_field = await call(server.url, "POST", path, data=wrong_field)
            extra = Viewer(server.url)
            try:
                await extra.open()
                full = None
            except RuntimeError as error:
                full = str(error)
            finally:
                await extra.close()
            return bad, empty, large, no_field, full
        finally:
            for viewer in viewers:
                await viewer.close()

    bad, empty, large, no_field, full = run(scenario())
    assert bad[0] == 400 and bad[1]["error"].startswith("notes.wav is not a readable audio file (")
    assert empty == (400, {"error": "the upload is empty — send a wav, mp3 or m4a file"})
    assert large == (413, {"error": f"the upload is larger than {MAX_UPLOAD_MB:g} MB — send a shorter file or "
                                    "start the server with a larger --max_upload_mb"})
    assert no_field == (400, {"error": "send the audio file in the multipart field 'audio'"})
    assert full.startswith("POST /offer: 503 {'error': 'all 2 sessions are in use")
    status, health = run(call(server.url, "GET", "/health"))
    assert health["sessions"] == 0                     # DELETE /sessions/ID freed them


def test_a_token_guards_the_api_but_not_the_page(person, tmp_path):
    options = ServeOptions(port=0, token="s3cret", record_dir=tmp_path, ice_addresses=(LOOPBACK,), idle_frames=4)
    running = start_in_thread(NAME, render_options(person), options)
    try:
        status, body = run(call(running.url, "GET", "/health"))
        assert status == 401 and body["error"].startswith("this server needs its token")
        assert run(call(running.url, "GET", "/health?token=wrong"))[0] == 401
        assert run(call(running.url, "GET", "/health?token=s3cret"))[0] == 200
        assert run(call(running.url, "GET", "/health", headers={"Authorization": "Bearer s3cret"}))[0] == 200

        async def page_status():
            async with aiohttp.ClientSession() as http:
                async with http.get(running.url + "/") as response:
                    return response.status
        assert run(page_status()) == 200
    finally:
        running.stop()


# ---------------------------------------------------------------------------- a real session (aiortc)

async def speak_and_interrupt(url):
    """Speak the held-out wav to its end, then again and interrupt it: what the viewer received."""
    async with Viewer(url) as viewer:
        await asyncio.sleep(1.0)                               # idle face first
        opened = time.monotonic()
        await viewer.speak_file(HELDOUT_WAV)
        started = await viewer.wait_for_event("speaking_started", after=opened, timeout=90)
        ended = await viewer.wait_for_event("speaking_ended", after=opened, timeout=90)
        await asyncio.sleep(1.0)
        second = time.monotonic()
        await viewer.speak_file(HELDOUT_WAV)
        await viewer.wait_for_event("speaking_started", after=second, timeout=90)
        await asyncio.sleep(0.3)
        requested = time.monotonic()
        answer = await viewer.interrupt()
        interrupted = await viewer.wait_for_event("interrupted", after=requested, timeout=10)
        await asyncio.sleep(1.0)
        status = await viewer.request("GET", viewer.session_path)
        return SimpleNamespace(viewer=viewer, started=started, ended=ended, requested=requested, answer=answer,
                               interrupted=interrupted, status=status)


@pytest.fixture(scope="module")
def session_run(server):
    return run(speak_and_interrupt(server.url))


def test_frames_arrive_at_25_per_second_and_sound_with_speech(session_run):
    viewer = session_run.viewer
    assert measure.frame_rate(viewer.video) == pytest.approx(FPS, rel=0.15)
    audio_rate = len(viewer.audio) / (viewer.audio[-1].arrival - viewer.audio[0].arrival)
    assert audio_rate == pytest.approx(50, rel=0.15)           # 20 ms packets
    assert max(sample.rms for sample in viewer.audio) > 0.05   # the speech arrived
    assert session_run.ended["reason"] == "finished" and session_run.ended["frames"] == 50
    assert session_run.started["latency_ms"] > 0


def test_the_mouth_moves_only_with_the_sound_and_they_stay_within_a_frame(session_run):
    viewer = session_run.viewer
    offsets = measure.av_offsets(viewer.video, viewer.audio)
    assert len(offsets) >= 1
    assert all(abs(offset) <= ONE_FRAME + 0.005 for _, offset in offsets), offsets
    changes = np.array([sample.mouth_change for sample in viewer.video])
    threshold = measure.mouth_threshold(viewer.video)
    idle_first = changes[:FPS // 2]                             # the first half second: idle
    assert np.all(idle_first < threshold) and changes.max() > threshold


def test_interrupt_returns_to_the_idle_face_within_200_ms(session_run):
    assert session_run.answer["interrupted"] == 1
    assert session_run.interrupted["latency_ms"] < 1000 * INTERRUPT_LIMIT_SECONDS
    viewer = session_run.viewer
    threshold = measure.mouth_threshold(viewer.video)
    after = [sample for sample in viewer.video if sample.arrival >= session_run.requested]
    first_idle = next(sample for sample in after if sample.mouth_change < threshold)
    assert first_idle.arrival - session_run.requested < INTERRUPT_LIMIT_SECONDS
    later = [sample.mouth_change for sample in after if sample.arrival > first_idle.arrival + 0.1]
    assert later and max(later) < threshold                     # and it stays idle
    assert session_run.status["interrupt_ms"] == session_run.interrupted["latency_ms"]


def test_audio_streamed_over_a_websocket_is_spoken(server):
    speech = load_audio(HELDOUT_WAV)
    pcm = np.round(speech * 32767).astype("<i2")

    async def scenario():
        async with Viewer(server.url) as viewer:
            opened = time.monotonic()
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(server.url + viewer.session_path + "/audio") as socket:
                    chunk = SAMPLE_RATE // 10                    # 100 ms chunks, as the page sends them
                    for begin in range(0, len(pcm), chunk):
                        await socket.send_bytes(pcm[begin:begin + chunk].tobytes())
                    first = await socket.receive_json()
                    await socket.send_bytes(b"\0")               # odd length: not 16-bit PCM
                    odd = await socket.receive_json()
                    await socket.send_str('{"type": "end"}')
                    end = await socket.receive_json()
            started = await viewer.wait_for_event("speaking_started", after=opened, timeout=90)
            ended = await viewer.wait_for_event("speaking_ended", after=opened, timeout=90)
            return first, odd, end, started, ended

    first, odd, end, started, ended = run(scenario())
    assert first == {"event": "utterance", "utterance": 1}
    assert odd == {"error": "PCM chunks are 16-bit samples: an even number of bytes"}
    assert end == {"event": "end", "utterance": 1, "seconds": round(len(pcm) / SAMPLE_RATE, 3)}
    assert started["source"] == "stream" and ended["reason"] == "finished"
    assert ended["frames"] == int(np.ceil(len(pcm) / SAMPLES_PER_FRAME))


@pytest.mark.skipif(espeak_binary() is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_text_is_spoken_through_espeak(server):
    async def scenario():
        async with Viewer(server.url) as viewer:
            opened = time.monotonic()
            answer = await viewer.request("POST", viewer.session_path + "/say", json={"text": "Hello there."})
            empty = await call(server.url, "POST", viewer.session_path + "/say", json={"text": " "})
            ended = await viewer.wait_for_event("speaking_ended", after=opened, timeout=90)
            return answer, empty, ended
    answer, empty, ended = run(scenario())
    assert answer["seconds"] > 0.3 and answer["frames"] == int(np.ceil(answer["seconds"] * FPS - 1e-6))
    assert empty == (400, {"error": 'give the text to speak as JSON: {"text": "Hello"}'})
    assert ended["reason"] == "finished"


def test_a_recorded_session_is_an_mp4_with_picture_and_sound(server):
    async def scenario():
        async with Viewer(server.url) as viewer:
            path = viewer.session_path + "/recording"
            not_recording = await call(server.url, "DELETE", path)
            started = await viewer.request("POST", path)
            opened = time.monotonic()
            await viewer.speak_file(HELDOUT_WAV)
            await viewer.wait_for_event("speaking_ended", after=opened, timeout=90)
            stopped = await viewer.request("DELETE", path)
            async with aiohttp.ClientSession() as http:
                async with http.get(server.url + stopped["url"]) as response:
                    downloaded = await response.read()
            return not_recording, started, stopped, downloaded
    not_recording, started, stopped, downloaded = run(scenario())
    assert not_recording[0] == 400 and "is not recording" in not_recording[1]["error"]
    assert started["recording"] is True
    recording = Path(stopped["path"])
    assert recording.is_file() and downloaded == recording.read_bytes()
    info = probe(recording)
    assert (info.width, info.height) == (512, 512) and info.has_audio
    assert info.duration > 2.0                                  # the whole utterance, at least
    sound = load_audio(recording)
    assert np.abs(sound).max() > 0.05                           # the speech is in it
