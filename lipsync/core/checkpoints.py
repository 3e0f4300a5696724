"""Where checkpoints are written and how they are found and loaded again.

checkpoint/NAME/ holds the U-Net run:
    10.pth, 20.pth, ...   every --save_interval epochs, and the final epoch:
                          model weights + config + epoch (what inference loads)
    best.pth              the epoch with the best held-out score so far
    latest.pth            everything needed to resume: model, optimizer, AMP
                          scaler, LR scheduler, epoch, args, RNG states, history
    training.log, loss_curve.png, samples/   (lipsync/train/trainer.py)
checkpoint/NAME/syncnet/ holds the SyncNet run in the same layout.

Every .pth is written atomically (lipsync.core.atomic.save_torch_atomic): a crash
never leaves a truncated file. A checkpoint's ``config`` says what the model
was trained with (kind, --asr, widths, audio input shape, feature metadata,
crop size), so loading can refuse a mismatch with one clear line.
"""
import functools
import pickle
import re
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from data_utils.crop import CROP_SIZE, INNER_SIZE
from data_utils.layout import CHECKPOINT_ROOT
from lipsync.core.atomic import save_torch_atomic
from lipsync.core.commands import train_command
from lipsync.core.errors import UserError
from lipsync.core.options import as_typed
from models.syncnet import SYNC_WIDTHS, SyncNet
from models.unet_328 import CUSTOM_WIDTHS, OPTIONS_BEFORE_THEY_EXISTED, LipSyncUNet, width_name

LATEST = "latest.pth"
BEST = "best.pth"
SYNCNET_SUBDIR = "syncnet"
UNET_KIND = "unet_328"
SYNCNET_KIND = "syncnet"
_EPOCH_FILE = re.compile(r"^(\d+)\.pth$")


def epoch_path(directory, epoch: int) -> Path:
    return Path(directory) / f"{int(epoch)}.pth"


def syncnet_dir(unet_dir) -> Path:
    return Path(unet_dir) / SYNCNET_SUBDIR


def model_config(kind: str, asr: str, model_size: str, widths, audio_shape, features: Dict) -> Dict:
    """The ``config`` entry of a checkpoint, less a U-Net's own options (unet_config adds them)."""
    return {"kind": kind, "asr": asr, "model_size": model_size, "widths": list(widths),
            "audio_shape": list(audio_shape), "features": dict(features),
            "crop_size": CROP_SIZE, "inner_size": INNER_SIZE}


def unet_config(model: LipSyncUNet, features: Dict) -> Dict:
    """The ``config`` entry of a checkpoint of U-Net ``model``: what load_unet builds it again from."""
    config = model_config(UNET_KIND, model.asr, width_name(model.widths), model.widths, model.audio_shape, features)
    config.update(model.options())
    return config


def unet_options_of(config: Dict) -> Dict:
    """The options a U-Net checkpoint's model was built with (LipSyncUNet's keyword arguments); an
    option the checkpoint predates has the value every U-Net had before it existed."""
    return {name: type(before)(config.get(name, before)) for name, before in OPTIONS_BEFORE_THEY_EXISTED.items()}


def save_checkpoint(path, model_state: Dict, config: Dict, epoch: int, **extra) -> Path:
    """Write ``{"model", "config", "epoch", **extra}`` to ``path`` atomically."""
    state = {"model": model_state, "config": config, "epoch": int(epoch), **extra}
    save_torch_atomic(path, state)
    return Path(path)


def numbered_epochs(directory) -> Dict[int, Path]:
    """{epoch: path} of the numbered checkpoints in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    found = {}
    for path in directory.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def resolve_checkpoint(name_or_dir: Union[str, Path], which: Union[None, int, str, Path] = None,
                       checkpoint_root=CHECKPOINT_ROOT) -> Path:
    """The checkpoint file meant by a run name / folder / file and ``which``.

    ``name_or_dir``: a .pth file, a checkpoint folder, or a NAME under
    checkpoint/. ``which``: None = the newest numbered epoch, an int (or digit
    string) = that epoch, "best" / "latest" = best.pth / latest.pth, or a path.
    """
    if which is not None and not isinstance(which, int) and str(which) not in ("best", "latest") \
            and not str(which).isdigit():
        path = Path(which)
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist — check the path")
        return path
    given = Path(name_or_dir)
    if given.suffix == ".pth" or given.is_file():
        if not given.is_file():
            raise UserError(f"checkpoint {given} does not exist — check the path")
        return given
    directory = given if given.is_dir() else Path(checkpoint_root) / str(name_or_dir)
    if not directory.is_dir():
        raise UserError(f"no checkpoints for {name_or_dir!s} ({directory} does not exist) — "
                        f"train first: {train_command(given.name)}")
    epochs = numbered_epochs(directory)
    if which is None:
        if not epochs:
            raise UserError(f"{directory} holds no numbered checkpoints (10.pth, 20.pth, ...) yet — "
                            "train longer or pick one with best/latest")
        return epochs[max(epochs)]
    if isinstance(which, int) or str(which).isdigit():
        path = epoch_path(directory, int(which))
        if not path.is_file():
            have = ", ".join(str(epoch) for epoch in epochs) or "none"
            raise UserError(f"{path} does not exist (epochs saved: {have})")
        return path
    path = directory / (BEST if which == "best" else LATEST)
    if not path.is_file():
        raise UserError(f"{path} does not exist — train first: {train_command(directory.name)}")
    return path


def _numpy_array_globals():
    """What a pickled numpy array needs (resume stores numpy's random state): data, no code.

    numpy 2 moved ``numpy.core`` to ``numpy._core``; a file written under either loads under either.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct as reconstruct       # numpy 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct as reconstruct        # numpy 1
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), reconstruct,
            (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct")]


@functools.lru_cache(maxsize=None)
def _allow_numpy_arrays() -> None:
    """Admit numpy arrays to torch's weights-only unpickler, once for the process.

    Not torch's per-call ``safe_globals`` context: it restores the list it found on exit, so
    one thread leaving it takes the permission from another still loading (the ablation reads
    two arms' latest.pth at once).
    """
    torch.serialization.add_safe_globals(_numpy_array_globals())


def load_torch_file(path, device="cpu", *, advice: str = "use another epoch or train again",
                    what: str = "checkpoint"):
    """The one torch.load of the project; it never runs code from the file.

    PyTorch's weights-only unpickler admits tensors, plain containers and numbers, plus numpy
    arrays (allow-listed above); a pickle that asks for anything else (a function to call, a
    foreign class) is refused with one UserError, as is a missing or damaged file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist — check the path or train first")
    try:
        _allow_numpy_arrays()
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise UserError(f"{what} {path} is damaged or not a {what} (UnpicklingError) — {advice}") from None
        refused = _refused_global(str(error))
        raise UserError(f"{what} {path} asks to run or build {refused} when loaded, which this project never "
                        f"does with a file (it may be malicious, or from another program) — {advice}") from None
    except Exception as error:  # truncated zip, garbage, ...: the same problem to a user
        raise UserError(f"{what} {path} is damaged or not a {what} ({type(error).__name__}) — {advice}") from None


def _refused_global(message: str) -> str:
    """The name PyTorch's weights-only unpickler refused, from its message (or a general phrase)."""
    match = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", message)
    return match.group(1) if match else "code"


def read_checkpoint(path, device="cpu") -> Dict:
    """A checkpoint of this project (a dict with model and config), or one clear error."""
    path = Path(path)
    state = load_torch_file(path, device)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path} is not a checkpoint of this project (no model/config inside)")
    return state


def check_config(path, config: Dict, kind: str, asr: Optional[str] = None,
                 model_size: Optional[str] = None) -> None:
    """Refuse a checkpoint of another kind, --asr or width than the caller asks for."""
    found_kind = config.get("kind", kind)
    if found_kind != kind:
        raise UserError(f"{path} is a {found_kind} checkpoint, not a {kind} one")
    if asr is not None and config.get("asr") != asr:
        raise UserError(f"{path} was trained with --asr {config.get('asr')}, not --asr {asr} — "
                        f"use --asr {config.get('asr')} or a checkpoint trained with --asr {asr}")
    if model_size is not None and config.get("model_size") != model_size:
        found_size, found_widths = config.get("model_size"), as_typed(config.get("widths") or ())
        keep = (f"--widths {found_widths}" if found_size == CUSTOM_WIDTHS
                else f"--model_size {found_size}" + (" without --widths" if model_size == CUSTOM_WIDTHS else ""))
        raise UserError(f"{path} has model size {found_size} (widths {found_widths}), not {model_size} — "
                        f"use {keep} or another checkpoint")


def load_unet(path, device="cpu", asr: Optional[str] = None,
              model_size: Optional[str] = None) -> Tuple[torch.nn.Module, Dict]:
    """The U-Net of checkpoint ``path`` in eval mode on ``device``, and its config."""
    state = read_checkpoint(path, device)
    config = state["config"]
    check_config(path, config, UNET_KIND, asr, model_size)
    model = LipSyncUNet(config["asr"], tuple(config["audio_shape"]), tuple(config["widths"]),
                        **unet_options_of(config))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise UserError(f"{path} does not match this version's U-Net "
                        f"({str(error).splitlines()[0]}) — train again") from None
    return model.to(device).eval(), config


def load_syncnet(path, device="cpu", asr: Optional[str] = None,
                 audio_shape=None) -> Tuple[torch.nn.Module, Dict]:
    """A trained SyncNet, frozen, in eval mode on ``device``, and its config."""
    state = read_checkpoint(path, device)
    config = state["config"]
    check_config(path, config, SYNCNET_KIND, asr)
    if audio_shape is not None and tuple(config["audio_shape"]) != tuple(audio_shape):
        raise UserError(f"{path} expects audio windows of shape {tuple(config['audio_shape'])} but the "
                        f"dataset's features give {tuple(audio_shape)} — train SyncNet on these features: "
                        "python train_syncnet.py --name NAME")
    if config.get("model_size") not in SYNC_WIDTHS:
        raise UserError(f"{path} has a SyncNet size this version does not know ({config.get('model_size')!r}) — "
                        "train it again: python train_syncnet.py --name NAME")
    model = SyncNet(config["asr"], tuple(config["audio_shape"]), config["model_size"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise UserError(f"{path} does not match this version's SyncNet "
                        f"({str(error).splitlines()[0]}) — train it again") from None
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, config
