"""Tiny WeNet-signature encoders, exported to ONNX by the tests themselves.

They have the two input signatures a released WeNet ONNX export has
(export_onnx_gpu.py's full-utterance encoder, export_onnx_cpu.py's streaming
encoder with attention and conv caches), so data_utils/features/wenet.py reads
them exactly as it reads a real model. Nothing is downloaded.
"""
import torch
from torch import nn
from torch.nn import functional as F

from data_utils.features.wenet import WENET_STREAMING_INPUTS

WENET_DIM = 16            # a 16-frame window of 16 values fills one 16x16 plane
FULL_EXAMPLE_FRAMES = 67  # fbank frames of the example input the full encoder is traced with


class TinySubsampling(nn.Module):
    """WeNet's conv2d front end in miniature: (B, T, 80) fbank -> (B, (T-3)//4, dim)."""

    def __init__(self, dim):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 2)
        self.conv2 = nn.Conv2d(4, 4, 3, 2)
        self.proj = nn.Linear(4 * 19, dim)          # 80 mel bins -> 39 -> 19

    def forward(self, fbank):
        x = F.relu(self.conv2(F.relu(self.conv1((fbank[:, None] - 10.0) / 5.0))))
        batch, channels, steps, bins = x.shape
        return self.proj(x.permute(0, 2, 1, 3).reshape(batch, steps, channels * bins))


class TinyFullEncoder(nn.Module):
    """(speech, speech_lengths) -> (encoder_out, encoder_out_lens), like export_onnx_gpu.py's encoder."""

    def __init__(self):
        super().__init__()
        self.subsampling = TinySubsampling(WENET_DIM)

    def forward(self, speech, speech_lengths):
        return self.subsampling(speech), ((speech_lengths - 1) // 2 - 1) // 2


class TinyStreamingEncoder(nn.Module):
    """export_onnx_cpu.py's streaming signature with real caches.

    A causal depthwise conv keeps its last KERNEL-1 inputs in cnn_cache;
    positions come from offset; a causal attention keeps past keys/values in
    att_cache: all of them (left_chunks -1, "16/-1"), or the last
    required_cache_size of them with att_mask hiding the not-yet-filled part
    (left_chunks > 0, "16/4"). ``reference`` computes the same outputs in one
    pass from their definition, independently of any chunking.
    """
    KERNEL = 3

    def __init__(self, left_chunks=-1):
        super().__init__()
        self.left_chunks = left_chunks
        self.subsampling = TinySubsampling(WENET_DIM)
        self.depthwise = nn.Conv1d(WENET_DIM, WENET_DIM, self.KERNEL, groups=WENET_DIM)
        self.query = nn.Linear(WENET_DIM, WENET_DIM)

    def local(self, chunk, offset, cnn_cache):
        """(1, t, D) subsampled, position-coded, causally convolved features, and the new conv cache."""
        x = self.subsampling(chunk)
        positions = (offset + torch.arange(x.shape[1])).float()[None, :, None]
        x = x + 0.01 * torch.sin(positions * torch.arange(1, WENET_DIM + 1).float()[None, None] / 7.0)
        conv_input = torch.cat([cnn_cache[0], x.transpose(1, 2)], dim=2)     # (1, D, K-1+t)
        return self.depthwise(conv_input).transpose(1, 2), conv_input[:, :, -(self.KERNEL - 1):][None]

    def attend(self, y, keys, visible):
        scores = self.query(y) @ keys.T / 4.0
        return y + torch.softmax(scores.masked_fill(~visible, -1e9), dim=1) @ keys

    def forward(self, chunk, offset, required_cache_size, att_cache, cnn_cache, att_mask):
        y, new_cnn_cache = self.local(chunk, offset, cnn_cache)
        steps = y.shape[1]
        kv = torch.cat([att_cache, torch.cat([y, y], dim=-1)[:, None]], dim=2)   # (1, 1, past+t, 2D)
        past = att_cache.shape[2]
        visible = torch.arange(kv.shape[2])[None, :] <= (torch.arange(steps)[:, None] + past)
        if self.left_chunks > 0:
            visible = visible & att_mask[0, 0][None, :kv.shape[2]]
            kv_out = kv[:, :, kv.shape[2] - required_cache_size:]
        else:
            kv_out = kv
        return self.attend(y[0], kv[0, 0, :, :WENET_DIM], visible)[None], kv_out, new_cnn_cache

    def reference(self, fbank, chunk_size):
        """Outputs of the whole (1, T, 80) fbank: frame t attends to frames from the start of
        the left_chunks chunks before its own chunk (or from 0) up to itself."""
        cache = chunk_size * self.left_chunks if self.left_chunks > 0 else 0
        y, _ = self.local(fbank, torch.tensor(cache), torch.zeros(1, 1, WENET_DIM, self.KERNEL - 1))
        y = y[0]
        rows = []
        for t in range(len(y)):
            first = max(0, (t // chunk_size) * chunk_size - cache) if self.left_chunks > 0 else 0
            rows.append(self.attend(y[t:t + 1], y[first:t + 1], torch.ones(1, t + 1 - first, dtype=torch.bool)))
        return torch.cat(rows)


STREAMING_META = {"output_size": WENET_DIM, "num_blocks": 1, "head": 1, "cnn_module_kernel": 3,
                  "chunk_size": 4, "left_chunks": -1, "subsampling_rate": 4, "right_context": 6,
                  "decoding_window": 19}
LEFT_CHUNKS = 2


def export_streaming(model, path, metadata):
    cache = metadata["chunk_size"] * max(metadata["left_chunks"], 0)
    example = (torch.randn(1, metadata["decoding_window"], 80), torch.tensor(cache), torch.tensor(cache or -1),
               torch.zeros(1, 1, cache or 3, 2 * WENET_DIM), torch.zeros(1, 1, WENET_DIM, 2),
               torch.ones(1, 1, cache + metadata["chunk_size"], dtype=torch.bool) if cache
               else torch.ones(0, 0, 0, dtype=torch.bool))
    return export_onnx(model, example, path, list(WENET_STREAMING_INPUTS), ["output", "r_att_cache", "r_cnn_cache"],
                   {"chunk": {1: "T"}, "att_cache": {2: "T_CACHE"}, "att_mask": {2: "T_ADD_T_CACHE"},
                    "output": {1: "T"}, "r_att_cache": {2: "T_CACHE"}}, metadata)


def export_onnx(model, inputs, path, input_names, output_names, dynamic_axes, metadata=None):
    import warnings

    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), inputs, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=13, dynamo=False)
    if metadata:
        graph = onnx.load(str(path))
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save(graph, str(path))
    return path


def export_full_encoder(model, path):
    """A full-utterance encoder saved the way export_onnx_gpu.py saves one."""
    return export_onnx(model, (torch.randn(1, FULL_EXAMPLE_FRAMES, 80),
                           torch.tensor([FULL_EXAMPLE_FRAMES], dtype=torch.int32)), path,
                   ["speech", "speech_lengths"], ["encoder_out", "encoder_out_lens"],
                   {"speech": {0: "B", 1: "T"}, "speech_lengths": {0: "B"}, "encoder_out": {0: "B", 1: "T_OUT"},
                    "encoder_out_lens": {0: "B"}})
