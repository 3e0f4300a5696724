"""Which device a stage runs on: the one list of ``--device`` choices and its resolution."""
import torch

from lipsync.core.errors import UserError

DEVICES = ("auto", "cpu", "cuda")     # every script's --device choices; "auto": cuda when torch sees a GPU


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """--device auto|cpu|cuda -> a torch.device (cuda:``local_rank``); cuda without a GPU is a UserError."""
    if requested not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but PyTorch sees no CUDA GPU "
                        f"(torch {torch.__version__}, CUDA build {torch.version.cuda}) — "
                        "use --device cpu, or check the driver and CUDA_VISIBLE_DEVICES")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def device_name(requested: str = "auto") -> str:
    """The resolved device as the plain string onnxruntime and the renderer take: "cpu" or "cuda"."""
    return resolve_device(requested).type
