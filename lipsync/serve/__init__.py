"""Live serving in the browser (serve_328.py): WebRTC video + audio of a trained person
speaking uploaded files, audio streams and text, with one loaded model for every viewer.

options.py      ServeOptions (address, token, limits, queue, idle loop, TTS) and serve_328.py's parser
server.py       load the person once, run the app; ``serve`` (the CLI) and ``start_in_thread`` (tests)
app.py          the HTTP API and the page (aiohttp routes)
guards.py       what every call passes through: the token check, errors as JSON
engine.py       the shared model: sessions, and the worker that renders ahead in batches
session.py      one viewer: queue, what each 40 ms slot shows, interrupt, events, recording
utterance.py    one piece of speech: audio in, rendered frames with their own sound out
idle.py         the idle face (the person's closed mouth, made once) and where the mouth is
media_clock.py  one clock for a session's video and audio timestamps
tracks.py       the aiortc video and audio tracks, paced by that clock
events.py       speaking started/ended, interrupted, status: server-sent events
recorder.py     a session's program recorded to mp4
tts.py          text to speech: espeak-ng, or a function of yours
ice.py          which addresses WebRTC media uses (no STUN: it stays on this machine's interfaces)
client.py       a Python viewer (aiortc) that keeps what arrives: the benchmark, the tests, the soak
measure.py      A/V offset, drift and frame rate from what a viewer received
static/         the page: index.html, app.js, style.css (no build step, works offline)
"""
