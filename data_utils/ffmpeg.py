"""Finding and running FFmpeg, and reading what a media file contains.

FFmpeg comes from PATH when the system has it, else from the binary the
``imageio-ffmpeg`` wheel ships, so a fresh machine needs no system package.
Only ``ffmpeg`` itself is needed: probing parses its banner and packet dumps,
because the wheel ships no ``ffprobe``. Every call takes an argument list, so
paths with spaces and non-ASCII characters pass through untouched.
"""
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import List, Optional

from lipsync.core.errors import UserError
from lipsync.core.fingerprint import file_fingerprint

FFMPEG_ENV_VARIABLE = "LIPSYNC_FFMPEG"


@functools.lru_cache(maxsize=None)
def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable: $LIPSYNC_FFMPEG, PATH, then imageio-ffmpeg."""
    configured = os.environ.get(FFMPEG_ENV_VARIABLE)
    if configured:
        return configured
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UserError("ffmpeg was not found on PATH and imageio-ffmpeg is not installed — "
                        "run: pip install -r requirements.txt") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_available() -> bool:
    """Whether an ffmpeg executable can be found (a GPU server may have none; see the fallbacks)."""
    try:
        ffmpeg_binary()
    except UserError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def passthrough_timing() -> List[str]:
    """The options that keep every decoded frame's own timestamp (no copies, no drops).

    ``-fps_mode`` since FFmpeg 5.1; its older spelling ``-vsync`` was removed in later
    versions, so ask this binary which one it knows.
    """
    probe_command = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
                     "-i", "nullsrc=d=0.04", "-fps_mode", "passthrough", "-f", "null", "-"]
    known = subprocess.run(probe_command, capture_output=True).returncode == 0
    return ["-fps_mode", "passthrough"] if known else ["-vsync", "passthrough"]


def run_ffmpeg(arguments: List[str], what: str, path=None) -> subprocess.CompletedProcess:
    """Run ffmpeg with ``arguments``; a failure becomes a one-line UserError about ``path``."""
    command = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *arguments]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        detail = last_error_line(result.stderr.decode("utf-8", "replace"))
        subject = f"{path}: " if path is not None else ""
        raise UserError(f"{subject}ffmpeg could not {what} ({detail})")
    return result


def last_error_line(stderr_text: str) -> str:
    lines = [line.strip() for line in stderr_text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


@dataclass
class MediaInfo:
    """What ffmpeg reports about a file's first video and audio streams."""
    path: Path
    duration: Optional[float]
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    average_fps: Optional[float] = None
    rotation: int = 0
    audio_sample_rate: Optional[int] = None
    raw_banner: str = field(default="", repr=False)

    @property
    def display_size(self):
        """(width, height) after applying the rotation metadata."""
        if self.rotation % 180 == 90:
            return self.height, self.width
        return self.width, self.height


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (.*)")
_AUDIO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Audio: (.*)")
_SIZE = re.compile(r"\b(\d{2,5})x(\d{2,5})\b")
_FPS = re.compile(r"([\d.]+)(k?) fps")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees|rotate\s*:\s*(-?\d+)")
_SAMPLE_RATE = re.compile(r"(\d+) Hz")


def probe(path) -> MediaInfo:
    """Read stream information of ``path``; unreadable files raise a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist — check the path (put the recording at dataset/NAME/NAME.mp4)")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a video file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes) — copy the recording again")
    if not ffmpeg_available():
        return _probe_without_ffmpeg(path)
    command = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", str(path)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    banner = result.stderr.decode("utf-8", "replace")
    if "Stream #" not in banner:
        reason = last_error_line(banner)
        head = path.open("rb").read(512)
        if _looks_like_text(head):
            raise UserError(f"{path} is a text file, not a readable video — give the recording itself")
        if "moov atom not found" in banner and head[4:8] in _MP4_TOP_LEVEL_BOXES:
            raise UserError(f"{path} is truncated or damaged (moov atom not found) — "
                            "copy the complete file again or re-export it")
        raise UserError(f"{path} is not a readable video or audio file ({reason}) — "
                        "check that it is a real media file")
    duration = None
    match = _DURATION.search(banner)
    if match:
        hours, minutes, seconds = match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    info = MediaInfo(path=path, duration=duration, has_video=False, has_audio=False, raw_banner=banner)
    for line in banner.splitlines():
        video = _VIDEO_STREAM.search(line)
        if video and not info.has_video:
            description = video.group(1)
            if "attached pic" in line:
                continue  # cover art in an audio file is not a video
            info.has_video = True
            size = _SIZE.search(description)
            if size:
                info.width, info.height = int(size.group(1)), int(size.group(2))
            fps = _FPS.search(description)
            if fps:
                info.average_fps = float(fps.group(1)) * (1000 if fps.group(2) else 1)
        audio = _AUDIO_STREAM.search(line)
        if audio and not info.has_audio:
            info.has_audio = True
            rate = _SAMPLE_RATE.search(audio.group(1))
            if rate:
                info.audio_sample_rate = int(rate.group(1))
    rotation = _ROTATION.search(banner)
    if rotation:
        degrees = float(rotation.group(1) or rotation.group(2))
        info.rotation = int(round(degrees)) % 360
    return info


# The box types an MP4/MOV file can start with; an mp4 that starts with one of
# these but has no index was cut off, anything else was never a video.
_MP4_TOP_LEVEL_BOXES = {b"ftyp", b"mdat", b"moov", b"free", b"wide", b"skip", b"pnot"}


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(character.isprintable() or character in "\r\n\t" for character in text)


def video_packet_times(path) -> List[Fraction]:
    """Presentation times (seconds) of every packet of the first video stream, sorted.

    Demuxes without decoding (stream copy into a frame-CRC dump), so checking a
    long recording for a constant frame rate takes seconds, not minutes.
    """
    result = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
         "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise UserError(f"{path}: ffmpeg could not read the video packets "
                        f"({last_error_line(result.stderr.decode('utf-8', 'replace'))})")
    return sorted(_framecrc_times(result.stdout))


def _framecrc_times(dump: bytes) -> List[Fraction]:
    """Presentation times (seconds) of the entries of a one-stream framecrc dump, in file order."""
    time_base = Fraction(1)
    times = []
    for line in dump.decode("utf-8", "replace").splitlines():
        if line.startswith("#tb"):
            numerator, denominator = line.split(":")[1].strip().split("/")
            time_base = Fraction(int(numerator), int(denominator))
        elif line and not line.startswith("#"):
            columns = [column.strip() for column in line.split(",")]
            if len(columns) >= 3 and columns[2].lstrip("-").isdigit():
                times.append(int(columns[2]) * time_base)
    return times


def first_decoded_time(path, stream: str) -> Optional[Fraction]:
    """When (seconds) the first decoded frame of the first ``stream`` ("v" or "a") is shown.

    Times are on the file's common clock (ffmpeg starts it at the earliest
    stream), so the video and audio values of one file tell how far apart a
    player puts them. Decoding (not packet times) matters for audio: encoder
    priming that the container says to skip is skipped, as a player does.
    None when the file has no such stream. Asked once per file version
    (preprocessing asks it for the frame count, the audio and its offset).
    """
    try:
        version = file_fingerprint(path)
    except OSError:
        return _first_decoded_time(str(path), stream)          # ffmpeg says what is wrong with it
    return _cached_first_decoded_time(str(path), stream, version["bytes"], version["mtime_ns"])


@functools.lru_cache(maxsize=64)
def _cached_first_decoded_time(path: str, stream: str, size: int, modified_ns: int) -> Optional[Fraction]:
    return _first_decoded_time(path, stream)


def _first_decoded_time(path: str, stream: str) -> Optional[Fraction]:
    result = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
         "-map", f"0:{stream}:0", f"-frames:{stream}", "1", "-f", "framecrc", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace")
        if "matches no streams" in stderr:
            return None
        raise UserError(f"{path}: ffmpeg could not decode its first frame ({last_error_line(stderr)}) — "
                        "check that the file plays and is complete")
    times = _framecrc_times(result.stdout)
    return times[0] if times else None


def audio_start_offset(path) -> float:
    """Seconds by which the audio of ``path`` starts after its first video frame (negative: before)."""
    video, audio = first_decoded_time(path, "v"), first_decoded_time(path, "a")
    if video is None or audio is None:
        return 0.0
    return float(audio - video)


def is_constant_frame_rate(path, fps: int) -> bool:
    """True when every frame of ``path`` sits exactly on the 1/fps grid (to 1 ms)."""
    times = video_packet_times(path)
    if len(times) < 2:
        return False
    start = times[0]
    tolerance = Fraction(1, 1000)
    return all(abs((time - start) - Fraction(index, fps)) <= tolerance
               for index, time in enumerate(times))


def _probe_without_ffmpeg(path: Path) -> MediaInfo:
    """What a machine without ffmpeg can tell: a PCM wav from its header, a video from OpenCV's
    own decoder (size, frame rate, frame count; its sound is not seen)."""
    import wave

    try:
        with wave.open(str(path), "rb") as reader:
            return MediaInfo(path=path, duration=reader.getnframes() / reader.getframerate(), has_video=False,
                             has_audio=True, audio_sample_rate=reader.getframerate())
    except (wave.Error, EOFError, OSError):
        pass
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise UserError(f"{path}: there is no ffmpeg here and OpenCV cannot read it — install ffmpeg, "
                            "or give a .wav / an mp4 OpenCV reads")
        fps = capture.get(cv2.CAP_PROP_FPS) or None
        frames = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        return MediaInfo(path=path, duration=frames / fps if fps and frames else None, has_video=True,
                         has_audio=False, width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), average_fps=fps)
    finally:
        capture.release()
