"""WeNet features (``--asr wenet``): a WeNet encoder exported to ONNX, one output per video frame.

80-dim Kaldi fbank (fbank.py, 25 ms window, 10 ms shift) goes into the encoder,
whose conv front end subsamples 4x (40 ms per output = one per 25 fps video
frame); the audio is shifted so that output i is centred on frame i's instant.
(The upstream project ran WeNet at 20 fps; here it is 25 fps like the rest.)
"""
from pathlib import Path
from typing import Optional

import numpy as np

from data_utils.audio import as_samples
from data_utils.features.fbank import FBANK_BINS, FBANK_FRAME_LENGTH, FBANK_FRAME_SHIFT, kaldi_fbank
from data_utils.features.segments import run_in_segments
from data_utils.timebase import frame_count_for_samples
from lipsync.core.errors import UserError
from lipsync.core.onnx_runtime import open_session

WENET_SUBSAMPLING = 4           # conv2d front end: 10 ms fbank -> 40 ms = one output per video frame
WENET_RIGHT_CONTEXT = 6         # fbank frames beyond the first that one output sees (two 3x3 convs)
WENET_SEGMENT_OUTPUTS = 750     # 30 s per call for full-utterance encoders: bounded memory
WENET_CONTEXT_OUTPUTS = 25      # 1 s of extra frames each side of a segment, outputs discarded
WENET_STREAMING_INPUTS = ("chunk", "offset", "required_cache_size", "att_cache", "cnn_cache", "att_mask")
WENET_STREAMING_METADATA = ("output_size", "num_blocks", "head", "cnn_module_kernel", "chunk_size",
                            "left_chunks", "subsampling_rate", "right_context")
WENET_FULL_INPUTS = ("speech", "speech_lengths")


class WenetEncoder:
    """A WeNet encoder exported to ONNX, in either accepted signature.

    - streaming (wenet/bin/export_onnx_cpu.py): inputs ``chunk`` (1, T, 80),
      ``offset``, ``required_cache_size``, ``att_cache``, ``cnn_cache``,
      ``att_mask`` (ONNX drops the ones a mode does not use), outputs
      ``output``, ``r_att_cache``, ``r_cnn_cache``, and the metadata that script
      writes (chunk_size, left_chunks, subsampling_rate, right_context, ...).
      It is run chunk by chunk exactly as WeNet's runtime does.
    - full utterance (e.g. wenet/bin/export_onnx_gpu.py): inputs ``speech``
      (B, T, 80) and ``speech_lengths`` (B,), first output ``encoder_out``;
      run on overlapping 30 s segments.
    Both must subsample 4x (conv2d front end: 40 ms per output).
    """

    def __init__(self, path, device="cpu"):
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path} does not exist — --wenet_model needs a WeNet encoder exported to ONNX "
                            "(wenet/bin/export_onnx_cpu.py writes encoder.onnx)")
        if path.is_dir():
            candidate = path / "encoder.onnx"
            if not candidate.exists():
                raise UserError(f"{path} is a folder without encoder.onnx — give the encoder's .onnx file")
            path = candidate
        self.path = path
        self.session = open_session(path, str(device), what_to_do="--wenet_model needs a WeNet encoder "
                                    "exported to ONNX")
        self.inputs = {node.name: node for node in self.session.get_inputs()}
        self.output_names = [node.name for node in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if "chunk" in self.inputs:
            self.mode = "streaming"
            missing = [key for key in WENET_STREAMING_METADATA if key not in self.metadata]
            if missing:
                raise UserError(f"{path} is a streaming WeNet encoder without the metadata "
                                f"{', '.join(missing)} — export it with wenet/bin/export_onnx_cpu.py")
            self.config = {key: int(self.metadata[key]) for key in WENET_STREAMING_METADATA}
            subsampling = self.config["subsampling_rate"]
            right_context = self.config["right_context"]
        elif all(name in self.inputs for name in WENET_FULL_INPUTS):
            self.mode = "full"
            subsampling = int(self.metadata.get("subsampling_rate", WENET_SUBSAMPLING))
            right_context = int(self.metadata.get("right_context", WENET_RIGHT_CONTEXT))
        else:
            raise UserError(f"{path} has inputs {sorted(self.inputs)}, not a WeNet encoder's — expected "
                            f"({', '.join(WENET_STREAMING_INPUTS)}) from export_onnx_cpu.py or "
                            f"({', '.join(WENET_FULL_INPUTS)})")
        if subsampling != WENET_SUBSAMPLING:
            raise UserError(f"{path} subsamples {subsampling}x; 25 fps features need a 4x-subsampling "
                            "(conv2d) WeNet encoder (40 ms per output)")
        self.subsampling, self.right_context = subsampling, right_context
        feature_input = self.inputs["chunk" if self.mode == "streaming" else "speech"]
        feature_size = feature_input.shape[-1] if feature_input.shape else None
        if isinstance(feature_size, int) and feature_size != FBANK_BINS:
            raise UserError(f"{path} expects {feature_size}-dim input features; WeNet here uses "
                            f"{FBANK_BINS}-dim fbank")

    @property
    def lead_samples(self) -> int:
        """Audio shift that centres output i on sample 640 i.

        Output k sees fbank frames 4k .. 4k + right_context, centred on frame
        4k + right_context / 2, i.e. sample 160 (4k + rc/2) + 200 of the padded audio.
        """
        return FBANK_FRAME_SHIFT * self.right_context // 2 + FBANK_FRAME_LENGTH // 2

    def fbank_frames_for(self, outputs: int) -> int:
        return self.subsampling * (outputs - 1) + self.right_context + 1

    def _typed(self, name, value):
        node = self.inputs[name]
        dtype = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
                 "tensor(float)": np.float32, "tensor(float16)": np.float16}.get(node.type, np.float32)
        array = np.asarray(value, dtype=dtype)
        if array.ndim == 0 and len(node.shape) == 1:
            array = array.reshape(1)
        return array

    def run_full(self, fbank: np.ndarray) -> np.ndarray:
        """Encoder outputs of one (T, 80) stretch of fbank, all at once."""
        feed = {"speech": self._typed("speech", fbank[None]),
                "speech_lengths": self._typed("speech_lengths", [len(fbank)])}
        for name in self.inputs:
            if name not in feed:
                raise UserError(f"{self.path} needs an input {name!r} that a full-utterance WeNet encoder "
                                "does not have")
        return self.session.run(self.output_names[:1], feed)[0][0]

    def run_streaming(self, fbank: np.ndarray, progress: bool = False) -> np.ndarray:
        """Encoder outputs of (T, 80) fbank, chunk by chunk with the attention and conv caches."""
        from tqdm import tqdm

        config = self.config
        chunk_size, left_chunks = config["chunk_size"], config["left_chunks"]
        heads, blocks, size = config["head"], config["num_blocks"], config["output_size"]
        context = self.right_context + 1
        if chunk_size <= 0:          # exported for full attention: one call over everything
            window = stride = max(len(fbank), context)
        else:
            stride = self.subsampling * chunk_size
            window = (chunk_size - 1) * self.subsampling + context
        if left_chunks > 0 and chunk_size > 0:
            required_cache = chunk_size * left_chunks
        else:
            required_cache = -1 if left_chunks < 0 else 0
        offset = max(required_cache, 0)
        att_cache = np.zeros((blocks, heads, max(required_cache, 0), size // heads * 2), dtype=np.float32)
        cnn_cache = np.zeros((blocks, 1, size, config["cnn_module_kernel"] - 1), dtype=np.float32)
        outputs = []
        starts = range(0, len(fbank) - context + 1, stride)
        for chunk_index, start in enumerate(tqdm(starts, desc="wenet chunks", disable=not progress)):
            values = {"chunk": fbank[None, start:start + window], "offset": offset,
                      "required_cache_size": required_cache, "att_cache": att_cache, "cnn_cache": cnn_cache}
            if required_cache > 0:
                mask = np.ones((1, 1, required_cache + chunk_size), dtype=bool)
                if chunk_index < left_chunks:   # the cache is still zeros: do not attend to it
                    mask[:, :, :(left_chunks - chunk_index) * chunk_size] = False
                values["att_mask"] = mask
            else:
                values["att_mask"] = np.ones((0, 0, 0), dtype=bool)
            feed = {name: self._typed(name, values[name]) for name in self.inputs if name in values}
            unknown = [name for name in self.inputs if name not in values]
            if unknown:
                raise UserError(f"{self.path} has unexpected inputs {unknown} for a streaming WeNet encoder")
            result = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
            output = result.get("output", next(iter(result.values())))
            outputs.append(output[0])
            offset += output.shape[1]
            att_cache = result.get("r_att_cache", att_cache)
            cnn_cache = result.get("r_cnn_cache", cnn_cache)
        if not outputs:
            return np.zeros((0, size), dtype=np.float32)
        return np.concatenate(outputs)


def wenet_features(samples, encoder: WenetEncoder, frame_count: Optional[int] = None,
                   progress: bool = False) -> np.ndarray:
    """(N, output_size) float32 WeNet encoder outputs, output i centred on frame i."""
    samples = as_samples(samples)
    count = frame_count_for_samples(len(samples)) if frame_count is None else int(frame_count)
    lead = encoder.lead_samples
    frames_needed = encoder.fbank_frames_for(count)
    total = FBANK_FRAME_SHIFT * (frames_needed - 1) + FBANK_FRAME_LENGTH
    padded = np.zeros(max(total, lead + len(samples)), dtype=np.float32)
    padded[lead:lead + len(samples)] = samples
    fbank = kaldi_fbank(padded)
    if encoder.mode == "streaming":
        output = encoder.run_streaming(fbank, progress)
    else:
        sub, span = encoder.subsampling, encoder.right_context + 1
        output = run_in_segments(count, WENET_SEGMENT_OUTPUTS, WENET_CONTEXT_OUTPUTS,
                                 lambda first, stop: encoder.run_full(fbank[sub * first:sub * (stop - 1) + span]))
    if len(output) < count:
        raise UserError(f"{encoder.path} returned {len(output)} frames for {count} video frames — "
                        "it is not a 4x-subsampling WeNet encoder")
    return np.ascontiguousarray(output[:count]).astype(np.float32)
