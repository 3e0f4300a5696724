"""Shared test fixtures: the bundled clip, processed once per session, and
helpers that make variants of it with ffmpeg."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TEST_DATA = REPO_ROOT / "tests" / "data"
CLIP = TEST_DATA / "talker_a_4s.mp4"            # 4 s, 512x512, 30 fps, AAC 16 kHz mono
CLIP_TRUTH = TEST_DATA / "talker_a_4s_truth.npz"  # true lip landmarks per 25 fps frame
HELDOUT_WAV = TEST_DATA / "heldout_2s.wav"      # 2 s of unseen speech, same voice
CLIP_FRAMES_25FPS = 100


def ffmpeg(*arguments) -> None:
    """Run ffmpeg to build a test input; fails the test with ffmpeg's message."""
    from data_utils.ffmpeg import ffmpeg_binary

    result = subprocess.run([ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                             *map(str, arguments)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def processed_clip(tmp_path_factory) -> Path:
    """dataset folder made from the bundled clip (100 frames at 25 fps), no audio features.

    Shared by many tests: copy it before writing into it.
    """
    from data_utils.preprocess import process_video

    root = tmp_path_factory.mktemp("dataset") / "talker"
    root.mkdir()
    video = root / "talker.mp4"
    shutil.copy(CLIP, video)
    process_video(video, show_progress=False)
    return root


@pytest.fixture
def processed_copy(processed_clip, tmp_path) -> Path:
    """A private copy of the processed clip that a test may change."""
    target = tmp_path / processed_clip.name
    shutil.copytree(processed_clip, target)
    return target


def cli_error_line(main, capsys, argv) -> str:
    """Run a script's ``main(argv)`` expecting bad input: it must exit 2 with exactly
    one ``error:`` line on stderr and no traceback; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    return errors[0]


@pytest.fixture
def one_cpu_thread():
    """Tiny models gain nothing from threads: on a shared machine OpenMP threads spinning against
    other processes slow them 5-10x. Files use it with pytest.mark.usefixtures."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small(processed_clip, tmp_path) -> Path:
    """The processed clip cut to its first SMALL_FRAMES frames: a CPU epoch of the tiny U-Net in seconds."""
    from tests.training_helpers import SMALL_FRAMES, make_small_dataset

    return make_small_dataset(processed_clip, tmp_path / "talker", SMALL_FRAMES)
