"""Text to speech for ``POST /sessions/{id}/say``: espeak-ng when installed, or any function of yours.

``--tts auto`` (default) uses espeak-ng (or espeak) when it is on PATH and
otherwise offers no text box; ``--tts espeak`` insists on it; ``--tts none``
turns speech from text off. ``--tts package.module:function`` is the hook for
other engines: the function takes the text (str) and returns either 16 kHz
mono float32 samples or the path of an audio file in any format FFmpeg reads
(it is resampled). It runs on a worker thread, so it may block.
"""
import importlib
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from data_utils.audio import as_samples, load_audio
from lipsync.core.errors import UserError

log = logging.getLogger(__name__)

ESPEAK_BINARIES = ("espeak-ng", "espeak")
MAX_TEXT_CHARACTERS = 2000       # about two minutes of speech
TTS_TIMEOUT_SECONDS = 60


def espeak_binary() -> Optional[str]:
    for name in ESPEAK_BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


class EspeakSpeech:
    """espeak-ng's voice: text in, 16 kHz mono float32 samples out."""

    def __init__(self, binary: str):
        self.binary = binary
        self.name = Path(binary).name

    def __call__(self, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="lipsync-tts-") as folder:
            wav = Path(folder) / "speech.wav"
            result = subprocess.run([self.binary, "-w", str(wav), "--stdin"], input=text.encode("utf-8"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TTS_TIMEOUT_SECONDS)
            if result.returncode != 0 or not wav.is_file():
                message = result.stderr.decode("utf-8", "replace").strip() or f"exit status {result.returncode}"
                raise UserError(f"{self.name} could not speak the text ({message})")
            return load_audio(wav)


class FunctionSpeech:
    """A user's function (text -> samples or an audio file path) as a speech engine."""

    def __init__(self, function: Callable, name: str):
        self.function = function
        self.name = name

    def __call__(self, text: str) -> np.ndarray:
        return as_samples(self.function(text))


def load_speech(choice: str):
    """The speech engine for ``--tts choice``, or None when there is none."""
    if choice == "none":
        return None
    if choice in ("auto", "espeak"):
        binary = espeak_binary()
        if binary is None:
            if choice == "espeak":
                raise UserError("--tts espeak needs espeak-ng — install it (apt-get install espeak-ng) "
                                "or use --tts auto")
            log.info("no text to speech: espeak-ng is not installed (apt-get install espeak-ng, "
                     "or --tts package.module:function)")
            return None
        return EspeakSpeech(binary)
    module_name, _, function_name = choice.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise UserError(f"--tts {choice}: cannot load {function_name!r} from {module_name!r} ({error})") from None
    if not callable(function):
        raise UserError(f"--tts {choice}: {function_name!r} is not a function")
    return FunctionSpeech(function, choice)


def check_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise UserError('give the text to speak as JSON: {"text": "Hello"}')
    if len(text) > MAX_TEXT_CHARACTERS:
        raise UserError(f"the text has {len(text)} characters; at most {MAX_TEXT_CHARACTERS} are spoken at once "
                        "— send it in parts")
    return text.strip()
