"""Audio in: any file FFmpeg reads becomes 16 kHz mono float32, and the one
definition of the AVE mel spectrogram.

Loading pipes raw little-endian float32 out of FFmpeg, which decodes, downmixes
and resamples in one pass, so wav, mp3, m4a, flac and video files with an
audio track all take the same path. The downmix averages the channels: FFmpeg's
plain ``-ac 1`` adds stereo channels at -3 dB each, which makes a stereo copy of
a mono recording 3 dB louder (and can exceed full scale); capping the mixing
matrix's gain at 1 turns it into an average.

A recording's own sound track is loaded on the video's clock
(``clock="video"``): sample 0 is heard with the first video frame. Cameras,
screen recorders and editors often start the audio stream a little after (or
before) the picture, and a player keeps them in sync by their timestamps;
decoding the audio alone from its first sample would shift every training
frame's sound by that gap. FFmpeg pads the gap with silence (or trims the
audio that plays before the first frame) from the streams' timestamps.

The mel spectrogram is the one the released SyncTalk AVE encoder was trained
on (16 kHz, 800-sample FFT and window, 200-sample hop, 80 mel bands from 55 to
7600 Hz, pre-emphasis 0.97, decibels normalised symmetrically to [-4, 4]).
Mel frame m is centred on sample m * MEL_HOP (the signal is zero-padded by half
a window at both ends), i.e. at time m / 80 s.
"""
import logging
import math
import subprocess
import wave
from pathlib import Path
from typing import List, Optional

import numpy as np

from lipsync.core.errors import UserError
from data_utils.ffmpeg import ffmpeg_available, ffmpeg_binary, first_decoded_time, last_error_line
from data_utils.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

# sample width (bytes) -> (dtype, full scale, zero offset) of PCM wav data
PCM_SCALES = {1: ("u1", 128.0, 128.0), 2: ("<i2", 32768.0, 0.0), 4: ("<i4", 2147483648.0, 0.0)}

DOWNMIX_MAX_GAIN = 1           # rematrix gains normalised to sum to 1: the mono mix is an average
AUDIO_CLOCKS = ("audio", "video", "file")   # what sample 0 of a loaded array is (see load_audio)

# --- AVE mel spectrogram ---------------------------------------------------------
MEL_N_FFT = 800                 # 50 ms analysis window
MEL_WINDOW = 800
MEL_HOP = 200                   # 12.5 ms: 80 mel frames per second
MEL_BANDS = 80
MEL_FMIN = 55.0                 # Hz
MEL_FMAX = 7600.0               # Hz
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0           # everything quieter is clipped to the bottom of the range
REF_LEVEL_DB = 20.0             # subtracted after converting magnitude to dB
MEL_MAX_ABS = 4.0               # normalised values lie in [-MEL_MAX_ABS, MEL_MAX_ABS]
AMPLITUDE_FLOOR = 1e-5          # -100 dB: log of silence stays finite
MEL_FRAMES_PER_SECOND = SAMPLE_RATE / MEL_HOP   # 80
SILENCE_MEL_VALUE = -MEL_MAX_ABS                 # what a silent mel frame normalises to

# Frames per block when computing the STFT, so long recordings need bounded memory.
STFT_BLOCK_FRAMES = 4096


def load_audio(path, clock: str = "audio") -> np.ndarray:
    """``path`` decoded to a float32 array of 16 kHz mono samples (any format FFmpeg reads).

    ``clock`` says what sample 0 is: "audio", the audio stream's first sample;
    "video", the sound at the first video frame's time, as a player shows a
    recording's picture and sound together; "file", the file's time 0 (the
    earliest stream's start), so the array's length tells where the sound ends.
    Missing, empty, unreadable or silent-stream-less files raise a UserError
    naming the file.
    """
    if clock not in AUDIO_CLOCKS:
        raise ValueError(f"clock must be one of {AUDIO_CLOCKS}, not {clock!r}")
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist — check the audio path")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an audio file — give the path of a .wav/.mp3/.m4a/.flac file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes) — record or copy the audio again")
    samples = _decode(path, clock) if ffmpeg_available() else _load_wav_without_ffmpeg(path)
    if samples.size == 0:
        raise UserError(f"{path} contains no audio samples — record or export the audio again")
    if not np.all(np.isfinite(samples)):
        raise UserError(f"{path} decodes to invalid (NaN/inf) samples — re-export it as a normal wav")
    declared = declared_wav_seconds(path)
    if declared is not None and samples.size / SAMPLE_RATE < declared - 1 / FPS:
        log.warning("%s is cut short: its header says %.2f s but only %.2f s could be decoded — "
                    "the video ends there; copy or export the audio again", path, declared,
                    samples.size / SAMPLE_RATE)
    log.debug("loaded %s: %d samples (%.2f s)", path, samples.size, samples.size / SAMPLE_RATE)
    return samples


def _decode(path: Path, clock: str) -> np.ndarray:
    """FFmpeg decodes, downmixes and resamples ``path`` in one pass (see the module docstring)."""
    command = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error",
               "-i", str(path), "-map", "0:a:0", "-vn", "-ac", "1", "-rematrix_maxval", str(DOWNMIX_MAX_GAIN),
               "-ar", str(SAMPLE_RATE),
               *_clock_filter(path, clock),
               "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = result.stderr.decode("utf-8", "replace")
    if result.returncode != 0:
        if "matches no streams" in stderr:
            raise UserError(f"{path} has no audio track — give a file that contains speech")
        raise UserError(f"{path} is not a readable audio file ({last_error_line(stderr)}) — "
                        "check that it is a real wav/mp3/m4a/flac file")
    return np.frombuffer(result.stdout, dtype="<f4").astype(np.float32)


def _load_wav_without_ffmpeg(path: Path) -> np.ndarray:
    """A PCM wav read with the standard library, channels averaged, resampled to 16 kHz: what a
    machine without ffmpeg can decode. Other formats need ffmpeg."""
    from scipy.signal import resample_poly  # only this fallback resamples in Python

    try:
        with wave.open(str(path), "rb") as reader:
            channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
            data = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as error:
        raise UserError(f"{path} needs ffmpeg to be decoded ({error}) and there is no ffmpeg here — "
                        "convert it to a PCM .wav, or install ffmpeg") from None
    if width not in PCM_SCALES:
        raise UserError(f"{path} is a {8 * width}-bit wav; without ffmpeg only 8/16/32-bit PCM is read — "
                        "convert it to 16-bit PCM, or install ffmpeg")
    kind, scale, offset = PCM_SCALES[width]
    samples = (np.frombuffer(data, dtype=kind).astype(np.float32) - offset) / scale
    samples = samples[:len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE:
        divisor = math.gcd(rate, SAMPLE_RATE)
        samples = resample_poly(samples, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def declared_wav_seconds(path: Path) -> Optional[float]:
    """The duration a PCM wav's header promises (None for other files or headers it cannot read)."""
    try:
        with wave.open(str(path), "rb") as reader:
            return reader.getnframes() / reader.getframerate()
    except (wave.Error, EOFError, OSError, ZeroDivisionError):
        return None


def _clock_filter(path: Path, clock: str) -> List[str]:
    """FFmpeg audio filter arguments that put ``clock``'s time 0 at sample 0.

    ``aresample`` with ``first_pts=0`` fills from the file's time 0 to where
    the audio really starts (by its timestamps, so encoder priming that a
    muxer left in the timeline stays where a player puts it); for the video
    clock, ``atrim`` then drops what plays before the first video frame.
    """
    if clock == "audio":
        return []
    from_file_start = "aresample=async=1:first_pts=0"
    if clock == "file":
        return ["-af", from_file_start]
    video_start = first_decoded_time(path, "v")
    if video_start is None:
        return []
    return ["-af", f"{from_file_start},atrim=start={float(video_start):.6f},asetpts=PTS-STARTPTS"]


def as_samples(audio) -> np.ndarray:
    """A path or a 1-D float array of 16 kHz samples, as float32 samples."""
    if isinstance(audio, (str, Path)):
        return load_audio(audio)
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        raise UserError(f"audio must be a 1-D array of 16 kHz mono samples, got shape {samples.shape}")
    if samples.size == 0:
        raise UserError("the audio contains no samples — give a recording with sound")
    if not np.all(np.isfinite(samples)):
        raise UserError("the audio contains NaN or infinite samples")
    return samples


def fit_to_frames(samples: np.ndarray, frames: int, source=None) -> np.ndarray:
    """Exactly ``frames`` x 640 samples: a short tail is padded with silence, extra audio dropped.

    With ``source`` (the file the samples came from) a gap of a frame or more is logged as a warning.
    """
    wanted = frames * SAMPLES_PER_FRAME
    if source is not None and abs(len(samples) - wanted) >= SAMPLES_PER_FRAME:
        log.warning("%s has %.3f s of audio for %d frames (%.3f s); aligning to the frames",
                    source, len(samples) / SAMPLE_RATE, frames, frames / FPS)
    fitted = np.zeros(wanted, dtype=np.float32)
    fitted[:min(wanted, len(samples))] = samples[:wanted]
    return fitted


# The Slaney mel scale (Auditory Toolbox; librosa's default, htk=False): linear
# below 1 kHz at 200/3 Hz per mel, logarithmic above with 27 mels per factor 6.4.
SLANEY_HZ_PER_MEL = 200.0 / 3
SLANEY_LOG_START_HZ = 1000.0
SLANEY_LOG_START_MEL = SLANEY_LOG_START_HZ / SLANEY_HZ_PER_MEL     # 15
SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hz_to_slaney_mel(hz) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / SLANEY_HZ_PER_MEL
    logarithmic = SLANEY_LOG_START_MEL + np.log(np.maximum(hz, SLANEY_LOG_START_HZ) / SLANEY_LOG_START_HZ) \
        / SLANEY_LOG_STEP
    return np.where(hz >= SLANEY_LOG_START_HZ, logarithmic, linear)


def slaney_mel_to_hz(mel) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * SLANEY_HZ_PER_MEL
    logarithmic = SLANEY_LOG_START_HZ * np.exp(SLANEY_LOG_STEP * (np.maximum(mel, SLANEY_LOG_START_MEL)
                                                                    - SLANEY_LOG_START_MEL))
    return np.where(mel >= SLANEY_LOG_START_MEL, logarithmic, linear)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular mel filters, Slaney scale and area normalisation.

    The same matrix as ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` with its
    defaults (htk=False, norm="slaney"), in numpy alone so that feature extraction
    and inference need no librosa: filter i rises from mel point i to i + 1 and
    falls to i + 2, scaled by 2 / its width in Hz so every filter has the same area.
    """
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    points_hz = slaney_mel_to_hz(np.linspace(hz_to_slaney_mel(fmin), hz_to_slaney_mel(fmax), n_mels + 2))
    widths = np.diff(points_hz)
    distance = points_hz[:, None] - fft_hz[None, :]          # (n_mels + 2, bins): point minus bin
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (points_hz[2:] - points_hz[:-2]))[:, None]
    return filters.astype(np.float32)


def _mel_basis() -> np.ndarray:
    """(MEL_BANDS, MEL_N_FFT // 2 + 1) Slaney-normalised triangular filters of the AVE mel spectrogram."""
    return slaney_mel_filterbank(SAMPLE_RATE, MEL_N_FFT, MEL_BANDS, MEL_FMIN, MEL_FMAX)


def mel_frame_count(num_samples: int) -> int:
    """Mel frames of ``num_samples`` samples: one per hop, centred on sample m * MEL_HOP."""
    return 1 + num_samples // MEL_HOP


def melspectrogram(samples: np.ndarray) -> np.ndarray:
    """(frames, MEL_BANDS) float32 normalised log-mel spectrogram of 16 kHz samples.

    Frame m is centred on sample m * MEL_HOP; silence gives SILENCE_MEL_VALUE.
    """
    from scipy.signal import get_window, lfilter

    samples = np.asarray(samples, dtype=np.float64)
    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], samples)
    padded = np.pad(emphasised, MEL_N_FFT // 2)
    window = get_window("hann", MEL_WINDOW, fftbins=True)
    basis = _mel_basis()
    count = mel_frame_count(len(samples))
    mel = np.empty((count, MEL_BANDS), dtype=np.float32)
    for start in range(0, count, STFT_BLOCK_FRAMES):
        stop = min(start + STFT_BLOCK_FRAMES, count)
        offsets = np.arange(start, stop)[:, None] * MEL_HOP + np.arange(MEL_N_FFT)[None, :]
        magnitude = np.abs(np.fft.rfft(padded[offsets] * window, n=MEL_N_FFT, axis=1)).astype(np.float32)
        mel[start:stop] = magnitude @ basis.T
    decibels = 20.0 * np.log10(np.maximum(AMPLITUDE_FLOOR, mel)) - REF_LEVEL_DB
    normalised = 2 * MEL_MAX_ABS * (decibels - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MEL_MAX_ABS
    return np.clip(normalised, -MEL_MAX_ABS, MEL_MAX_ABS).astype(np.float32)
