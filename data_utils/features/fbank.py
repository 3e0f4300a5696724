"""The Kaldi log mel filterbank WeNet encoders are trained on: 80 bins, 25 ms window, 10 ms shift.

Kaldi's defaults as WeNet computes them (no dither, no energy, snip edges):
int16-range samples, DC removed per frame, pre-emphasis 0.97, the "povey"
window (Hann ** 0.85) zero-padded to 512, Kaldi's mel scale 1127 ln(1 + f/700).
"""
import numpy as np

from data_utils.timebase import SAMPLE_RATE

FBANK_BINS = 80
FBANK_FRAME_LENGTH = 400        # 25 ms
FBANK_FRAME_SHIFT = 160         # 10 ms
FBANK_FFT = 512                 # window zero-padded to a power of two, as Kaldi does
FBANK_LOW_HZ = 20.0
FBANK_PREEMPHASIS = 0.97
FBANK_POVEY_POWER = 0.85        # Kaldi's default "povey" window: Hann ** 0.85
FBANK_INT16_SCALE = 32768.0     # WeNet computes fbank on int16-range samples
FBANK_EPSILON = float(np.finfo(np.float32).eps)
FBANK_BLOCK_FRAMES = 8192       # frames per FFT call: memory stays bounded for long audio


def _kaldi_mel_banks() -> np.ndarray:
    """(80, FBANK_FFT // 2 + 1) triangular filters on Kaldi's mel scale (1127 ln(1 + f/700))."""
    def mel(frequency):
        return 1127.0 * np.log1p(np.asarray(frequency, dtype=np.float64) / 700.0)

    nyquist = SAMPLE_RATE / 2
    low, high = mel(FBANK_LOW_HZ), mel(nyquist)
    step = (high - low) / (FBANK_BINS + 1)
    bin_mels = mel(np.arange(FBANK_FFT // 2) * SAMPLE_RATE / FBANK_FFT)
    banks = np.zeros((FBANK_BINS, FBANK_FFT // 2 + 1), dtype=np.float64)
    for band in range(FBANK_BINS):
        left, centre, right = low + band * step, low + (band + 1) * step, low + (band + 2) * step
        rising = (bin_mels - left) / (centre - left)
        falling = (right - bin_mels) / (right - centre)
        banks[band, :FBANK_FFT // 2] = np.maximum(0.0, np.minimum(rising, falling))
    return banks


def kaldi_fbank(samples: np.ndarray) -> np.ndarray:
    """(frames, 80) float32 Kaldi-style log mel filterbank (no dither, no energy, snip edges).

    Frame j covers samples [160 j, 160 j + 400); samples are scaled to the
    int16 range first, as WeNet does.
    """
    samples = np.asarray(samples, dtype=np.float64) * FBANK_INT16_SCALE
    count = 0 if len(samples) < FBANK_FRAME_LENGTH else 1 + (len(samples) - FBANK_FRAME_LENGTH) // FBANK_FRAME_SHIFT
    if count == 0:
        return np.zeros((0, FBANK_BINS), dtype=np.float32)
    n = np.arange(FBANK_FRAME_LENGTH)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * n / (FBANK_FRAME_LENGTH - 1))) ** FBANK_POVEY_POWER
    banks = _kaldi_mel_banks()
    output = np.empty((count, FBANK_BINS), dtype=np.float32)
    for start in range(0, count, FBANK_BLOCK_FRAMES):
        stop = min(start + FBANK_BLOCK_FRAMES, count)
        index = np.arange(start, stop)[:, None] * FBANK_FRAME_SHIFT + n[None, :]
        frames = samples[index]
        frames = frames - frames.mean(axis=1, keepdims=True)              # remove DC offset
        frames = np.concatenate([frames[:, :1] * (1 - FBANK_PREEMPHASIS),   # Kaldi's first sample rule
                                 frames[:, 1:] - FBANK_PREEMPHASIS * frames[:, :-1]], axis=1)
        power = np.abs(np.fft.rfft(frames * window, n=FBANK_FFT, axis=1)) ** 2
        output[start:stop] = np.log(np.maximum(power @ banks.T, FBANK_EPSILON))
    return output
