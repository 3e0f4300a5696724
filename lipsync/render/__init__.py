"""Rendering a trained person speaking new audio (inference_328.py), with the mouth controls.

api.py           load_renderer / render / render_stream / render_to_file: the importable API
options.py       RenderOptions (every loading and rendering option) and inference_328.py's parser
run_lookup.py    dataset/NAME + checkpoint/NAME -> the run to render; result/ file names
renderer.py      LipSyncRenderer: a recording + a trained U-Net -> output frames
stream.py        RenderStream: audio pieces in, frames out, bounded latency and memory
featurizer.py    audio features of new audio with the encoder the model was trained on
backends.py      the U-Net behind one call: eager PyTorch or onnxruntime
onnx_export.py   the U-Net exported to ONNX next to its checkpoint, and run from there
frames.py        ping-pong background order, colour matching, feathered paste-back
mouth_control.py faceless frames, mouth opening, silence hold (issue 7)
silence.py       pauses in the audio (silero / energy gate) -> hold weights
video_writer.py  frames + audio -> H.264/AAC mp4 through FFmpeg
"""
from lipsync.render.api import RenderResult, load_renderer, render, render_stream, render_to_file
from lipsync.render.options import RenderOptions
from lipsync.render.renderer import LipSyncRenderer
from lipsync.render.stream import RenderStream

__all__ = ["LipSyncRenderer", "RenderOptions", "RenderResult", "RenderStream", "load_renderer", "render",
           "render_stream", "render_to_file"]
