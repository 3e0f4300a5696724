"""Audio loading and the three audio encoders (ave, hubert, wenet), aligned to 25 fps.

Everything runs on CPU with models the tests build themselves: a random AVE
conv stack saved in the released checkpoint format, a tiny random HuBERT saved
with save_pretrained, tiny WeNet-signature encoders exported to ONNX. Nothing
is downloaded.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from data_utils import audio_features
from data_utils.features import ave, ave_training, extract as af, hubert, wenet
from data_utils.audio import MEL_BANDS, MEL_FMAX, MEL_FMIN, SILENCE_MEL_VALUE, load_audio, melspectrogram
from data_utils.features.ave_training import AveTrainConfig, train_ave_encoder
from data_utils.features.fbank import FBANK_FRAME_LENGTH, FBANK_FRAME_SHIFT, kaldi_fbank
from lipsync.core.errors import UserError
from data_utils.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME, frame_count_for_samples, model_audio_input
from models.audio_encoders import AveAudioEncoder
from tests.conftest import CLIP, HELDOUT_WAV, REPO_ROOT, ffmpeg
from tests.wenet_helpers import (FULL_EXAMPLE_FRAMES, LEFT_CHUNKS, STREAMING_META, WENET_DIM, TinyFullEncoder,
                                 TinyStreamingEncoder, export_full_encoder, export_onnx, export_streaming)

TINY_HIDDEN = 32          # per-frame 2 x 32 = 64 values: a 16-frame window fills one 32x32 plane


@pytest.fixture(scope="module")
def reference_samples():
    return load_audio(HELDOUT_WAV)


# ---------------------------------------------------------------------------------------------
# Loading audio
# ---------------------------------------------------------------------------------------------

def test_reference_wav_loads_as_16k_mono(reference_samples):
    assert reference_samples.dtype == np.float32 and reference_samples.ndim == 1
    assert abs(len(reference_samples) - 2 * SAMPLE_RATE) < 0.01 * SAMPLE_RATE
    assert 0.005 < np.sqrt(np.mean(reference_samples ** 2)) < 1.0   # real speech, not silence


@pytest.mark.parametrize("suffix, rate, channels", [
    ("flac", 22050, 1), ("wav", 44100, 2), ("mp3", 44100, 2), ("m4a", 48000, 2), ("wav", 8000, 1)])
def test_any_format_rate_and_channel_count_loads_as_16k_mono(tmp_path, reference_samples, suffix, rate, channels):
    path = tmp_path / f"speech {rate}.{suffix}"       # a space in the name on purpose
    ffmpeg("-i", HELDOUT_WAV, "-ar", rate, "-ac", channels, path)
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - len(reference_samples)) < 0.06 * SAMPLE_RATE   # codec padding at most
    if suffix in ("flac", "wav") and rate > SAMPLE_RATE:
        # lossless up- and down-sampling: the same waveform comes back
        n = min(len(samples), len(reference_samples))
        assert np.corrcoef(samples[:n], reference_samples[:n])[0, 1] > 0.99
    reference_rms = np.sqrt(np.mean(reference_samples ** 2))
    assert np.sqrt(np.mean(samples ** 2)) == pytest.approx(reference_rms, rel=0.35)


def test_stereo_is_averaged_to_mono(tmp_path, reference_samples):
    same = tmp_path / "same.wav"
    opposite = tmp_path / "opposite.wav"
    ffmpeg("-i", HELDOUT_WAV, "-filter_complex", "[0:a]asplit[l][r];[l][r]amerge=inputs=2", "-ar", 16000, same)
    ffmpeg("-i", HELDOUT_WAV, "-filter_complex",
           "[0:a]asplit[l][r];[r]volume=-1[n];[l][n]amerge=inputs=2", "-ar", 16000, opposite)
    np.testing.assert_allclose(load_audio(same), reference_samples, atol=2e-4)
    assert np.abs(load_audio(opposite)).max() < 1e-3      # L + (-L) averages to silence


def test_audio_track_of_a_video_loads():
    samples = load_audio(CLIP)
    assert abs(len(samples) - 4 * SAMPLE_RATE) < 0.05 * SAMPLE_RATE


def test_bad_audio_files_give_one_clear_line(tmp_path):
    cases = {}
    cases["missing"] = (tmp_path / "nope.wav", "does not exist")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    cases["empty"] = (empty, "is empty (0 bytes)")
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"this is not audio at all" * 50)
    cases["garbage"] = (garbage, "is not a readable audio file")
    silent_video = tmp_path / "no_audio.mp4"
    ffmpeg("-i", CLIP, "-an", "-t", 1, "-c:v", "copy", silent_video)
    cases["no track"] = (silent_video, "has no audio track")
    cases["folder"] = (tmp_path, "is a folder")
    header_only = tmp_path / "header_only.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", 0, header_only)
    cases["no samples"] = (header_only, "contains no audio samples")
    for name, (path, expected) in cases.items():
        with pytest.raises(UserError) as error:
            load_audio(path)
        message = str(error.value)
        assert expected in message and str(path) in message and "\n" not in message, name


# ---------------------------------------------------------------------------------------------
# AVE: mel spectrogram and windows
# ---------------------------------------------------------------------------------------------

def test_mel_spectrogram_range_frames_and_pitch():
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    mel = melspectrogram(silence)
    assert mel.shape == (1 + SAMPLE_RATE // 200, MEL_BANDS)
    assert np.all(mel == SILENCE_MEL_VALUE)
    time = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = melspectrogram((0.5 * np.sin(2 * np.pi * 1000 * time)).astype(np.float32))
    assert tone.min() >= -4 and tone.max() <= 4 and tone.max() > 2
    # the loudest band is the one whose centre is nearest 1 kHz on the 55..7600 Hz mel scale
    import librosa

    centres = librosa.mel_frequencies(MEL_BANDS + 2, fmin=MEL_FMIN, fmax=MEL_FMAX)[1:-1]
    peak = int(np.argmax(tone[10:-10].mean(axis=0)))
    assert abs(peak - int(np.argmin(np.abs(centres - 1000)))) <= 1


def test_ave_window_is_centred_on_the_frame_instant():
    frames = np.arange(500)
    starts = ave.ave_window_start(frames)
    middle = starts + (ave.AVE_WINDOW_MEL_FRAMES - 1) / 2            # in mel frames
    instant = frames * SAMPLES_PER_FRAME / 200                          # frame i at mel position 3.2 i
    assert np.all(np.abs(middle - instant) <= 0.5)
    assert starts[0] == -7 and starts[5] == 9                          # 3.2*5 - 7 = 9


def click_at(frame: int, seconds: float, width: int, amplitude: float) -> np.ndarray:
    """``seconds`` of silence with a ``width``-sample Hann click centred on frame ``frame``'s instant."""
    samples = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    centre = frame * SAMPLES_PER_FRAME
    samples[centre - width // 2:centre + width // 2] = amplitude * np.hanning(width)
    return samples


def click_response(asr: str, frame: int, amplitude: float, **model) -> np.ndarray:
    """|features of 2 s with a click at ``frame``'s instant - features of 2 s of silence|."""
    click = click_at(frame, 2, 40, amplitude)
    base = af.extract_features(np.zeros_like(click), asr, **model)
    return np.abs(af.extract_features(click, asr, **model) - base)


def test_ave_windows_follow_a_click_to_its_frame():
    frame = 40
    samples = click_at(frame, 3, 80, 0.9)
    windows = ave.ave_mel_windows(samples)
    assert windows.shape == (frame_count_for_samples(len(samples)), 1, 80, 16)
    energy = windows[:, 0].mean(axis=1)                                  # (N, 16) loudness per mel column
    assert int(np.argmax(energy[frame])) in (7, 8)                       # the middle of frame 40's window
    # in the neighbouring frames' windows the click sits 3.2 mel frames further along per frame
    for other in range(frame - 2, frame + 3):
        expected_column = 7.5 + 3.2 * (frame - other)
        assert abs(int(np.argmax(energy[other])) - expected_column) <= 1, other
    hearing = np.nonzero(energy.max(axis=1) > SILENCE_MEL_VALUE + 1)[0]
    assert hearing.min() >= frame - 3 and hearing.max() <= frame + 3   # a 0.2 s window spans 5 frames
    # frames far from the click and past the audio's end see only silence
    assert np.all(windows[0] == SILENCE_MEL_VALUE) and np.all(windows[-1, 0, :, 12:] == SILENCE_MEL_VALUE)


@pytest.mark.parametrize("samples", [1, 639, 640, 641, 16000, 16001])
def test_feature_rows_follow_the_timebase(samples):
    audio = np.random.default_rng(0).normal(0, 0.1, samples).astype(np.float32)
    assert len(ave.ave_mel_windows(audio)) == frame_count_for_samples(samples)


# ---------------------------------------------------------------------------------------------
# AVE: encoder checkpoints
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def released_ave_checkpoint(tmp_path_factory):
    """A random AVE conv stack saved like the released SyncTalk checkpoint (bare state dict)."""
    torch.manual_seed(0)
    encoder = AveAudioEncoder(1.0)
    for module in encoder.modules():       # non-trivial batch-norm statistics, as trained weights have
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ave") / "ave released.pth"
    torch.save(encoder.conv_stack.state_dict(), path)
    return path


def test_released_checkpoint_keys_and_round_trip(released_ave_checkpoint):
    state = torch.load(released_ave_checkpoint, weights_only=True)
    assert "0.conv_block.0.weight" in state and "12.conv_block.1.running_var" in state
    assert not any(key.startswith("audio_encoder.") for key in state)
    assert state["11.conv_block.0.weight"].shape == (512, 256, 3, 3)
    assert len({key.split(".")[0] for key in state}) == 13
    encoder = ave.load_ave_encoder(released_ave_checkpoint)
    assert encoder.width == 1.0 and not encoder.training
    mel = torch.randn(3, 1, 80, 16)
    with torch.no_grad():
        reference = AveAudioEncoder(1.0)
        reference.conv_stack.load_state_dict(state)
        np.testing.assert_allclose(encoder(mel).numpy(), reference.eval()(mel).numpy(), atol=1e-6)


def test_ave_features_with_a_checkpoint(released_ave_checkpoint, reference_samples):
    features = af.extract_features(HELDOUT_WAV, "ave", ave_checkpoint=released_ave_checkpoint)
    assert features.shape == (frame_count_for_samples(len(reference_samples)), 512)
    assert features.dtype == np.float32 and np.all(np.isfinite(features))
    assert features.std(axis=0).mean() > 0                                  # rows differ with the speech
    from_array = af.extract_features(reference_samples, "ave", ave_checkpoint=released_ave_checkpoint)
    np.testing.assert_allclose(from_array, features, atol=1e-5)
    assert model_audio_input(features, 0, "ave").shape == (32, 16, 16)


def test_onnxruntime_and_pytorch_give_the_same_ave_features(released_ave_checkpoint, reference_samples,
                                                            monkeypatch):
    encoder = ave.load_ave_encoder(released_ave_checkpoint)
    fast = ave.ave_features(reference_samples, encoder)
    session = ave._AVE_SESSIONS[encoder][1]
    assert session is not None                                                # the CPU path really used ORT
    assert ave.ave_features(reference_samples[:8000], encoder) is not None and \
        ave._AVE_SESSIONS[encoder][1] is session                              # built once, reused
    monkeypatch.setattr(ave, "AVE_ONNX_ON_CPU", False)
    np.testing.assert_allclose(fast, ave.ave_features(reference_samples, encoder), atol=1e-5)
    monkeypatch.setattr(ave, "AVE_ONNX_ON_CPU", True)
    with torch.no_grad():                                                     # new weights: a new session
        encoder.conv_stack[12].conv_block[0].bias.add_(1.0)
    changed = ave.ave_features(reference_samples, encoder)
    assert ave._AVE_SESSIONS[encoder][1] is not session and not np.allclose(changed, fast)
    import copy

    copy.deepcopy(encoder)                                                    # the cache does not ride along


def test_prefixed_audio_visual_state_dict_is_accepted(tmp_path, released_ave_checkpoint):
    state = torch.load(released_ave_checkpoint, weights_only=True)
    whole = {f"audio_encoder.{key}": value for key, value in state.items()}
    whole["face_encoder.0.weight"] = torch.zeros(3)
    path = tmp_path / "whole.pth"
    torch.save(whole, path)
    assert ave.load_ave_encoder(path).width == 1.0


def test_wrong_ave_checkpoints_give_one_clear_line(tmp_path, released_ave_checkpoint):
    state = torch.load(released_ave_checkpoint, weights_only=True)
    cases = {}
    other = tmp_path / "unet.pth"
    torch.save({"down1.conv.weight": torch.zeros(3, 3), "up1.bias": torch.zeros(3)}, other)
    cases[other] = "is not an AVE audio encoder checkpoint"
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    cases[text] = "is not a PyTorch checkpoint"
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(4), tensor)
    cases[tensor] = "holds a Tensor"
    broken = dict(state)
    broken["5.conv_block.0.weight"] = torch.zeros(64, 64, 5, 5)
    mismatched = tmp_path / "mismatched.pth"
    torch.save(broken, mismatched)
    cases[mismatched] = "does not match the AVE audio encoder layout"
    foreign = tmp_path / "foreign.pth"
    torch.save({"format": "lipsync-unet/1", "model": {}}, foreign)
    cases[foreign] = "not an AVE encoder"
    cases[tmp_path / "missing.pth"] = "does not exist"
    cases[tmp_path] = "is a folder"
    for path, expected in cases.items():
        with pytest.raises(UserError) as error:
            ave.load_ave_encoder(path)
        assert expected in str(error.value) and str(path) in str(error.value), path


def test_ave_without_any_encoder_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="needs an AVE encoder.*--ave_checkpoint"):
        af.extract_features(HELDOUT_WAV, "ave", dataset_dir=tmp_path)


def test_unknown_asr_lists_the_choices():
    with pytest.raises(UserError, match=r"unknown --asr 'deepspeech' — choose one of: ave, hubert, wenet"):
        af.extract_features(HELDOUT_WAV, "deepspeech")


@pytest.mark.parametrize("seconds", [0.0, 0.1, 0.5, 1.5])
def test_silent_and_very_short_audio_give_finite_ave_features(released_ave_checkpoint, seconds):
    samples = np.zeros(max(1, int(seconds * SAMPLE_RATE)), dtype=np.float32)
    features = af.extract_features(samples, "ave", ave_checkpoint=released_ave_checkpoint)
    assert features.shape == (frame_count_for_samples(len(samples)), 512)
    assert np.all(np.isfinite(features))


def test_empty_array_is_rejected(released_ave_checkpoint):
    with pytest.raises(UserError, match="contains no samples"):
        af.extract_features(np.zeros(0, np.float32), "ave", ave_checkpoint=released_ave_checkpoint)


# ---------------------------------------------------------------------------------------------
# HuBERT
# ---------------------------------------------------------------------------------------------

def _save_tiny_hubert(folder: Path, layers: int, pos_kernel: int, local: bool = False) -> Path:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(1)
    config = HubertConfig(hidden_size=TINY_HIDDEN, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=pos_kernel,
                          num_conv_pos_embedding_groups=4, vocab_size=12, feat_extract_norm="layer")
    model = HubertModel(config).eval()
    if local:
        # no positional conv (its gain and bias zeroed) and no input normalisation: every state
        # then depends only on the 400 samples under its own receptive field
        with torch.no_grad():
            for name, parameter in model.encoder.pos_conv_embed.named_parameters():
                if name.endswith(("bias", "original0")):
                    parameter.zero_()
        Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    return _save_tiny_hubert(tmp_path_factory.mktemp("hubert") / "tiny hubert", layers=2, pos_kernel=16)


@pytest.fixture(scope="module")
def local_hubert(tmp_path_factory):
    """No transformer layers, no positional conv, no normalisation: each state sees only its own audio."""
    return _save_tiny_hubert(tmp_path_factory.mktemp("hubert") / "local", layers=0, pos_kernel=8, local=True)


def test_hubert_gives_two_states_per_frame(tiny_hubert, reference_samples):
    features = af.extract_features(HELDOUT_WAV, "hubert", hubert_model=tiny_hubert)
    assert features.shape == (frame_count_for_samples(len(reference_samples)), 2, TINY_HIDDEN)
    assert features.dtype == np.float32 and np.all(np.isfinite(features))
    assert not np.allclose(features[:, 0], features[:, 1])                 # two different 20 ms states
    assert model_audio_input(features, 10, "hubert").shape == (1, 32, 32)


def test_hubert_saved_in_half_precision_gives_the_float32_features(tiny_hubert, tmp_path, reference_samples):
    # GPU users often keep HuBERT in float16; transformers then loads it as float16
    from transformers import HubertModel

    half = tmp_path / "half hubert"
    HubertModel.from_pretrained(tiny_hubert).half().save_pretrained(half)
    samples = reference_samples[:SAMPLE_RATE]
    features = af.extract_features(samples, "hubert", hubert_model=half)
    reference = af.extract_features(samples, "hubert", hubert_model=tiny_hubert)
    assert features.dtype == np.float32 and features.shape == reference.shape
    np.testing.assert_allclose(features, reference, atol=0.05)      # weights rounded to float16


@pytest.mark.parametrize("seconds", [0.02, 0.3, 1.0])
def test_silent_and_short_audio_give_finite_hubert_features(tiny_hubert, seconds):
    samples = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    features = af.extract_features(samples, "hubert", hubert_model=tiny_hubert)
    assert features.shape == (frame_count_for_samples(len(samples)), 2, TINY_HIDDEN)
    assert np.all(np.isfinite(features))


def test_hubert_chunks_stitch_exactly(local_hubert, reference_samples, monkeypatch):
    whole = af.extract_features(reference_samples, "hubert", hubert_model=local_hubert)
    monkeypatch.setattr(hubert, "HUBERT_CHUNK_STATES", 14)   # 14 states per call, 7 of context each side
    monkeypatch.setattr(hubert, "HUBERT_CONTEXT_STATES", 7)
    calls = []
    original = hubert.run_in_segments
    monkeypatch.setattr(hubert, "run_in_segments", lambda *a: calls.append(a[:3]) or original(*a))
    chunked = af.extract_features(reference_samples, "hubert", hubert_model=local_hubert)
    assert calls and calls[0][1] == 14
    np.testing.assert_allclose(chunked, whole, atol=1e-4)


def test_hubert_states_are_centred_on_their_frame(local_hubert):
    frame = 23
    response = click_response("hubert", frame, 0.8, hubert_model=local_hubert).max(axis=2)
    # a state sees 25 ms; states 2i and 2i+1 are centred 10 ms before and after frame i's instant,
    # so a click at that instant reaches exactly those two states (one state off would reach 2i-1 or 2i+2)
    changed = np.argwhere(response.reshape(-1) > 1e-5).ravel()
    assert changed.tolist() == [2 * frame, 2 * frame + 1]


def test_wrong_hubert_models_give_one_clear_line(tmp_path, released_ave_checkpoint):
    from transformers import Wav2Vec2Config

    no_config = tmp_path / "empty model"
    no_config.mkdir()
    wav2vec = tmp_path / "wav2vec"
    Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(wav2vec)
    cases = {no_config: "has no config.json", wav2vec: "is a 'wav2vec2' model, not HuBERT",
             released_ave_checkpoint: "is a file"}
    for model, expected in cases.items():
        with pytest.raises(UserError) as error:
            af.extract_features(HELDOUT_WAV, "hubert", hubert_model=model)
        assert expected in str(error.value) and str(model) in str(error.value), model


# ---------------------------------------------------------------------------------------------
# WeNet (ONNX)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wenet_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wenet")
    torch.manual_seed(2)
    full = TinyFullEncoder()
    export_full_encoder(full, folder / "full.onnx")
    streaming = TinyStreamingEncoder()
    export_streaming(streaming, folder / "encoder.onnx", STREAMING_META)
    windowed = TinyStreamingEncoder(left_chunks=LEFT_CHUNKS)
    export_streaming(windowed, folder / "windowed.onnx", {**STREAMING_META, "left_chunks": LEFT_CHUNKS})
    return {"full": (full, folder / "full.onnx"), "streaming": (streaming, folder / "encoder.onnx"),
            "windowed": (windowed, folder / "windowed.onnx"), "folder": folder}


def test_kaldi_fbank_frames_and_pitch():
    time = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    fbank = kaldi_fbank((0.3 * np.sin(2 * np.pi * 2000 * time)).astype(np.float32))
    assert fbank.shape == (1 + (SAMPLE_RATE - 400) // 160, 80)
    centres_mel = np.linspace(1127 * np.log1p(20 / 700), 1127 * np.log1p(8000 / 700), 82)[1:-1]
    centres_hz = 700 * (np.exp(centres_mel / 1127) - 1)
    assert abs(int(np.argmax(fbank.mean(axis=0))) - int(np.argmin(np.abs(centres_hz - 2000)))) <= 1
    silent = kaldi_fbank(np.zeros(4000, np.float32))
    assert np.all(np.isfinite(silent)) and silent.max() < -10                  # log of the energy floor
    assert kaldi_fbank(np.zeros(399, np.float32)).shape == (0, 80)


@pytest.mark.parametrize("kind", ["full", "streaming", "windowed"])
def test_wenet_rows_match_frames_and_the_torch_model(wenet_models, reference_samples, kind):
    model, path = wenet_models[kind]
    features = af.extract_features(HELDOUT_WAV, "wenet", wenet_model=path)
    count = frame_count_for_samples(len(reference_samples))
    assert features.shape == (count, WENET_DIM) and np.all(np.isfinite(features))
    # the same numbers as the torch model run once over the same (shifted) fbank
    encoder = wenet.WenetEncoder(path)
    padded = np.zeros(FBANK_FRAME_SHIFT * (encoder.fbank_frames_for(count) - 1) + FBANK_FRAME_LENGTH,
                      np.float32)
    padded[encoder.lead_samples:encoder.lead_samples + len(reference_samples)] = reference_samples
    fbank = torch.from_numpy(kaldi_fbank(padded))[None]
    with torch.no_grad():
        if kind == "full":
            expected = model(fbank, torch.tensor([fbank.shape[1]]))[0][0]
        else:     # chunk by chunk through ONNX == the definition computed in one pass
            expected = model.reference(fbank, STREAMING_META["chunk_size"])
    np.testing.assert_allclose(features, expected[:count].numpy(), atol=1e-4)
    assert model_audio_input(features, 3, "wenet").shape == (1, 16, 16)


def test_wenet_folder_with_encoder_onnx_is_accepted(wenet_models, reference_samples):
    features = af.extract_features(reference_samples[:8000], "wenet", wenet_model=wenet_models["folder"])
    assert features.shape == (frame_count_for_samples(8000), WENET_DIM)


def test_wenet_segments_stitch_exactly(wenet_models, reference_samples, monkeypatch):
    path = wenet_models["full"][1]
    whole = af.extract_features(reference_samples, "wenet", wenet_model=path)
    monkeypatch.setattr(wenet, "WENET_SEGMENT_OUTPUTS", 9)
    monkeypatch.setattr(wenet, "WENET_CONTEXT_OUTPUTS", 2)
    np.testing.assert_allclose(af.extract_features(reference_samples, "wenet", wenet_model=path), whole, atol=1e-5)


@pytest.mark.parametrize("kind", ["full", "streaming"])
def test_wenet_outputs_are_centred_on_their_frame(tmp_path, kind):
    # a probe encoder whose front end averages with equal positive weights: an output then
    # responds most to audio at the centre of the 7 fbank frames it sees
    torch.manual_seed(4)
    model = TinyFullEncoder() if kind == "full" else TinyStreamingEncoder()
    with torch.no_grad():
        for layer in (model.subsampling.conv1, model.subsampling.conv2, model.subsampling.proj):
            layer.weight.fill_(1.0 / layer.weight[0].numel())
            layer.bias.zero_()
    if kind == "full":
        path = export_full_encoder(model, tmp_path / "probe.onnx")
    else:
        path = export_streaming(model, tmp_path / "probe.onnx", STREAMING_META)
    frame = 31
    response = click_response("wenet", frame, 0.5, wenet_model=path).max(axis=1)
    changed = np.argwhere(response > 1e-5).ravel()
    if kind == "full":      # local and symmetric: the click's own frame responds most
        assert set(changed.tolist()) <= {frame - 1, frame, frame + 1} and int(np.argmax(response)) == frame
    else:                   # the same front end; the causal layers only carry it forward in time
        assert changed.min() == frame and len(changed) > 1


@pytest.mark.parametrize("seconds", [0.0, 0.05, 0.5])
def test_silent_and_short_audio_give_finite_wenet_features(wenet_models, seconds):
    samples = np.zeros(max(1, int(seconds * SAMPLE_RATE)), dtype=np.float32)
    for kind in ("full", "streaming", "windowed"):
        features = af.extract_features(samples, "wenet", wenet_model=wenet_models[kind][1])
        assert features.shape == (frame_count_for_samples(len(samples)), WENET_DIM)
        assert np.all(np.isfinite(features))


def test_wrong_wenet_models_give_one_clear_line(tmp_path, wenet_models, released_ave_checkpoint):
    other = export_onnx(nn.Linear(80, 4), (torch.randn(2, 80),), tmp_path / "other.onnx", ["x"], ["y"], {})
    no_meta = export_streaming(TinyStreamingEncoder(), tmp_path / "no_meta.onnx", {**STREAMING_META})
    import onnx

    stripped = onnx.load(str(no_meta))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(no_meta))
    six = export_onnx(TinyFullEncoder(), (torch.randn(1, FULL_EXAMPLE_FRAMES, 80),
                                          torch.tensor([FULL_EXAMPLE_FRAMES], dtype=torch.int32)),
                      tmp_path / "six.onnx", ["speech", "speech_lengths"], ["encoder_out"], {"speech": {1: "T"}},
                      {"subsampling_rate": 6})
    cases = {released_ave_checkpoint: "is not a loadable ONNX model",
             other: "not a WeNet encoder's",
             no_meta: "without the metadata",
             six: "subsamples 6x",
             tmp_path / "missing.onnx": "does not exist",
             tmp_path: "is a folder without encoder.onnx"}
    for path, expected in cases.items():
        with pytest.raises(UserError) as error:
            af.extract_features(HELDOUT_WAV, "wenet", wenet_model=path)
        assert expected in str(error.value) and str(path) in str(error.value), path
    with pytest.raises(UserError, match="--asr wenet needs --wenet_model"):
        af.extract_features(HELDOUT_WAV, "wenet")


# ---------------------------------------------------------------------------------------------
# Dataset features: one row per video frame, metadata, reuse
# ---------------------------------------------------------------------------------------------

def _video_frames(dataset: Path) -> int:
    return len(list((dataset / "full_body_img").glob("*.jpg")))


def test_dataset_features_have_exactly_one_row_per_video_frame(processed_copy, released_ave_checkpoint,
                                                             tiny_hubert, wenet_models):
    frames = _video_frames(processed_copy)
    assert frames == 100
    # an aud.wav a few ms short of the video must still give one row per frame
    import soundfile

    samples = load_audio(processed_copy / "aud.wav")
    soundfile.write(processed_copy / "aud.wav", samples[:-250], SAMPLE_RATE, subtype="PCM_16")
    for asr, options, name, shape in [
            ("ave", {"ave_checkpoint": released_ave_checkpoint}, "aud_ave", (512,)),
            ("hubert", {"hubert_model": tiny_hubert}, "aud_hu", (2, TINY_HIDDEN)),
            ("wenet", {"wenet_model": wenet_models["streaming"][1]}, "aud_wenet", (WENET_DIM,))]:
        path = af.prepare_dataset_features(processed_copy, asr, progress=False, **options)
        assert path == processed_copy / f"{name}.npy"
        features = np.load(path)
        assert features.shape == (frames,) + shape and np.all(np.isfinite(features))
        metadata = json.loads((processed_copy / f"{name}.json").read_text())
        assert metadata["asr"] == asr and metadata["frames"] == frames
        assert metadata["per_frame_shape"] == list(shape)
        assert metadata["encoder"] == str(next(iter(options.values())))
    assert not list(processed_copy.glob(".*partial*"))                        # atomic writes left nothing


def test_dataset_features_are_reused_until_the_encoder_changes(processed_copy, tiny_hubert, local_hubert,
                                                              monkeypatch):
    path = af.prepare_dataset_features(processed_copy, "hubert", hubert_model=tiny_hubert, progress=False)
    first = np.load(path)
    calls = []
    original = af.extract_features
    monkeypatch.setattr(af, "extract_features", lambda *a, **k: calls.append(k["hubert_model"]) or original(*a, **k))
    af.prepare_dataset_features(processed_copy, "hubert", hubert_model=tiny_hubert, progress=False)
    assert calls == []                                                         # up to date: nothing redone
    af.prepare_dataset_features(processed_copy, "hubert", hubert_model=tiny_hubert, force=True, progress=False)
    assert calls == [tiny_hubert]
    np.testing.assert_allclose(np.load(path), first)                          # deterministic
    af.prepare_dataset_features(processed_copy, "hubert", hubert_model=local_hubert, progress=False)
    assert calls == [tiny_hubert, local_hubert]                                # another model: recomputed
    assert json.loads(path.with_suffix(".json").read_text())["encoder"] == str(local_hubert)


def test_dataset_without_audio_says_to_preprocess(tmp_path):
    with pytest.raises(UserError, match=r"aud.wav does not exist — run: python data_utils/process.py"):
        af.prepare_dataset_features(tmp_path, "hubert")


# ---------------------------------------------------------------------------------------------
# Learning the person's AVE encoder
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def one_torch_thread():
    """Train on one thread: on a shared 2-core machine two OpenMP threads that keep being
    preempted run several times slower than one (measured: 70 s vs 9 s for this test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ave_training_saves_a_loadable_encoder_and_its_report(processed_copy, one_torch_thread, caplog):
    config = AveTrainConfig(batch_size=48, seed=3)
    with caplog.at_level("WARNING"):
        report = train_ave_encoder(processed_copy, config, steps=40, progress=False)
    # 4 s of speech teaches a weak encoder: preprocessing says so, with what to do, in one line
    weak = [record.getMessage() for record in caplog.records if "tells in-sync from off-sync" in record.getMessage()]
    assert report["heldout_sync_accuracy"] < ave_training.WEAK_AVE_ACCURACY and len(weak) == 1
    assert "record a longer video" in weak[0] and "--asr hubert" in weak[0] and "--ave_checkpoint" in weak[0]
    assert report["steps"] == 40 and report["frames"] == 100
    assert report["train_frames"] + af_gap() + report["heldout_frames"] == 100
    assert report["loss_last"] < report["loss_first"] * 0.8                 # it fits the training frames
    # and it learned something that holds on the unseen last 0.8 s: in-sync pairs beat off-sync
    # pairs clearly more often than chance (untrained ~0.5; seeds 0-4 gave 0.65-0.76, this one 0.70)
    assert abs(report["heldout_sync_accuracy_untrained"] - 0.5) < 0.1
    assert report["heldout_sync_accuracy"] > 0.6
    checkpoint = torch.load(processed_copy / "ave.pth", weights_only=True)
    assert checkpoint["format"] == ave.AVE_CHECKPOINT_FORMAT and checkpoint["report"] == report
    assert "0.conv_block.0.weight" in checkpoint["conv_stack"]
    # the dataset's own encoder is what extraction uses by default, and the JSON records its accuracy
    path = af.prepare_dataset_features(processed_copy, "ave", progress=False)
    features = np.load(path)
    assert features.shape == (100, 512) and np.all(np.isfinite(features))
    metadata = json.loads(path.with_suffix(".json").read_text())
    assert metadata["encoder"] == str(processed_copy / "ave.pth")
    assert metadata["heldout_sync_accuracy"] == report["heldout_sync_accuracy"]
    np.testing.assert_allclose(af.extract_features(processed_copy / "aud.wav", "ave", dataset_dir=processed_copy),
                               features, atol=1e-5)


def af_gap():
    from data_utils.features.ave_training import HELDOUT_GAP

    return HELDOUT_GAP


def test_too_short_recording_cannot_train_ave(processed_copy):
    for index in range(40, 100):
        (processed_copy / "full_body_img" / f"{index}.jpg").unlink()
    np.save(processed_copy / "crop_boxes.npy", np.load(processed_copy / "crop_boxes.npy")[:40])
    with pytest.raises(UserError, match="has only 40 frames .* record a longer video"):
        train_ave_encoder(processed_copy, progress=False)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def _run_cli(arguments, module=False, env=None):
    command = [sys.executable, "-m", "data_utils.audio_features"] if module else \
        [sys.executable, str(REPO_ROOT / "data_utils" / "audio_features.py")]
    return subprocess.run(command + [str(argument) for argument in arguments], capture_output=True, text=True,
                          cwd=REPO_ROOT if module else "/", env={**os.environ, **(env or {})})


def test_cli_as_a_script_writes_features_next_to_the_wav(tmp_path, released_ave_checkpoint):
    wav = tmp_path / "my voice.wav"
    ffmpeg("-i", HELDOUT_WAV, "-ar", 44100, wav)
    result = _run_cli(["--asr", "ave", "--wav", wav, "--ave_checkpoint", released_ave_checkpoint, "--device", "cpu"])
    assert result.returncode == 0, result.stderr
    features = np.load(tmp_path / "my voice_ave.npy")          # named after the wav, as upstream does
    assert features.shape == (50, 512)
    assert json.loads((tmp_path / "my voice_ave.json").read_text())["frames"] == 50
    assert "my voice_ave.npy: 50 frames" in result.stdout
    other = tmp_path / "other.wav"
    shutil.copy(wav, other)
    second = _run_cli(["--asr", "ave", "--wav", other, "--ave_checkpoint", released_ave_checkpoint, "--device", "cpu"])
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "other_ave.npy").is_file()                # two wavs in one folder keep their own
    np.testing.assert_array_equal(np.load(tmp_path / "my voice_ave.npy"), features)


def test_cli_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_code:
        audio_features.main(["--asr", "deepspeech", "--wav", str(HELDOUT_WAV)])
    assert exit_code.value.code == 2
    assert capsys.readouterr().err.strip() == "error: unknown --asr 'deepspeech' — choose one of: ave, hubert, wenet"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_code:
        audio_features.main(["--asr", "hubert", "--wav", str(empty)])
    assert exit_code.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {empty} is empty (0 bytes) — record or copy the audio again"
    # as a module, offline, with a hub id that is not cached: one line, no traceback
    offline = _run_cli(["--asr", "hubert", "--wav", HELDOUT_WAV, "--hubert_model", "no-such-org/no-such-model"],
                       module=True, env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and len(offline.stderr.strip().splitlines()) == 1
    assert "could not load HuBERT model 'no-such-org/no-such-model'" in offline.stderr


def test_cli_on_a_datasets_aud_wav_fills_the_dataset(processed_copy, tiny_hubert, capsys):
    audio_features.main(["--asr", "hubert", "--wav", str(processed_copy / "aud.wav"),
                         "--hubert_model", str(tiny_hubert), "--device", "cpu"])
    assert np.load(processed_copy / "aud_hu.npy").shape == (_video_frames(processed_copy), 2, TINY_HIDDEN)
    assert json.loads((processed_copy / "aud_hu.json").read_text())["encoder"] == str(tiny_hubert)
    assert f"aud_hu.npy: {_video_frames(processed_copy)} frames" in capsys.readouterr().out


def test_ave_audio_augmentation_changes_level_masks_a_band_and_frames_and_stays_in_range(reference_samples):
    from data_utils.audio import SILENCE_MEL_VALUE
    from data_utils.features.ave_training import MAX_MASKED_BANDS, _augment_audio

    windows = torch.from_numpy(ave.ave_mel_windows(reference_samples)[:64])
    augmented = _augment_audio(windows, torch.Generator().manual_seed(0))
    assert augmented.shape == windows.shape and torch.isfinite(augmented).all()
    assert augmented.min() >= SILENCE_MEL_VALUE and augmented.max() <= -SILENCE_MEL_VALUE
    changed = (augmented - windows).abs().mean(dim=(1, 2, 3))
    assert (changed > 0).all() and float(changed.mean()) < 1.0          # every window, none beyond recognition
    # masked bands sit at silence (up to the noise): a band of <= MAX_MASKED_BANDS rows per window
    near_silence = ((augmented - SILENCE_MEL_VALUE).abs() < 0.2).all(dim=3)[:, 0]    # (B, 80) rows fully silent
    originally_silent = ((windows - SILENCE_MEL_VALUE).abs() < 0.2).all(dim=3)[:, 0]
    masked_rows = (near_silence & ~originally_silent).sum(dim=1)
    assert int(masked_rows.max()) <= MAX_MASKED_BANDS and int(masked_rows.sum()) > 0


@pytest.mark.parametrize("frames", [250, 1004])
def test_ave_learning_folds_hold_out_each_part_once_apart_from_training(frames):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from bench_ave_learning import fold_orders

    orders = fold_orders(frames, 4, AveTrainConfig().heldout_fraction)
    starts = []
    for order, fraction in orders:
        assert len(set(order.tolist())) == len(order)                     # no frame twice
        train_end, heldout_start = ave_training.split_frames(len(order), fraction)
        held, train = order[heldout_start:], order[:train_end]
        assert np.array_equal(held, np.arange(held[0], held[0] + len(held)))     # one contiguous part
        assert np.abs(held[:, None] - train[None, :]).min() > ave_training.HELDOUT_GAP
        assert len(held) == len(orders[0][0][ave_training.split_frames(len(orders[0][0]), orders[0][1])[1]:])
        starts.append(held[0])
    assert starts[0] == 0 and starts[-1] + len(held) == frames              # from the start to the end
    assert fold_orders(frames, 1, 0.15)[0][0].tolist() == list(range(frames))
