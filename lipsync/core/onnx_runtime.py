"""onnxruntime sessions for every ONNX model the project runs (the U-Net, WeNet, AVE):
provider choice with a CPU fallback, thread count and graph optimisation level.

Execution provider: the onnxruntime-gpu wheel lists CUDAExecutionProvider even
on machines without a GPU, so the list of available providers says nothing.
CUDA is used only when the device resolves to cuda (torch sees a GPU, or the
user asked for it); if the CUDA session cannot be created the run falls back to
the CPU with a one-line warning.
"""
import logging
import os
from pathlib import Path
from typing import Optional

from lipsync.core.errors import UserError

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def cpu_thread_count() -> int:
    """CPU cores this process may use (respects taskset / cgroup affinity where visible)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def session_options(threads: Optional[int] = None, optimization: str = "all"):
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise UserError(f"unknown onnxruntime optimisation level {optimization!r} — "
                        f"choose one of: {', '.join(OPTIMIZATION_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.intra_op_num_threads = threads or cpu_thread_count()
    # One graph, run node after node: parallelism comes from inside each conv.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3          # errors only: no provider chatter on stdout
    return options


def open_session(path: Path, device: str, options=None, *, what_to_do: str):
    """An onnxruntime session for ``path``: on CUDA when ``device`` is cuda and it works, else the CPU.

    A CUDA session that cannot be created (no driver, missing CUDA libraries)
    falls back to the CPU with a one-line warning; a file onnxruntime cannot
    load is a UserError ending with ``what_to_do``.
    """
    import onnxruntime as ort

    wants_cuda = str(device).startswith("cuda")
    providers = [CPU_PROVIDER]
    if wants_cuda:
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()      # CUDA/cuDNN libraries from the nvidia wheels, when present
            except Exception:  # a missing library shows up below as a failed CUDA session
                pass
        providers = [CUDA_PROVIDER, CPU_PROVIDER]
    try:
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:
            if not wants_cuda:
                raise
            log.warning("onnxruntime could not use CUDA (%s); running on the CPU", _first_line(error))
            session = ort.InferenceSession(str(path), options, providers=[CPU_PROVIDER])
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        raise UserError(f"{path} is not a loadable ONNX model ({_first_line(error)}) — {what_to_do}") from None
    if wants_cuda and CUDA_PROVIDER not in session.get_providers():
        log.warning("onnxruntime could not use CUDA for %s; running on the CPU", Path(path).name)
    return session


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__
