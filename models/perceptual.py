"""VGG19 perceptual loss: L1 between ImageNet-VGG19 feature maps of the
prediction and the truth, at relu1_2, relu2_2, relu3_4 and relu4_4.

The weights are torchvision's IMAGENET1K_V1 file, read from a path or from
torch's hub cache where torchvision keeps it; nothing here downloads (training
machines may be offline). ``build_perceptual_loss`` decides what happens when
the file is missing: a warning and no perceptual term, unless the user asked
for it, then an error that says how to get the file.
"""
import logging
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lipsync.core.errors import UserError

log = logging.getLogger("perceptual")

# Indices in torchvision's vgg19().features of the ReLUs whose outputs are compared.
VGG19_LAYERS = (3, 8, 17, 26)          # relu1_2, relu2_2, relu3_4, relu4_4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PERCEPTUAL_MODES = ("auto", "on", "off")
DOWNLOAD_HINT = ("python -c \"import torchvision; "
                 "torchvision.models.vgg19(weights='IMAGENET1K_V1')\" on a machine with internet")


def default_weights_path() -> Path:
    """Where torchvision caches the IMAGENET1K_V1 VGG19 weights (~/.cache/torch/hub/checkpoints)."""
    from torchvision.models import VGG19_Weights

    filename = VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def vgg19_features(weights_path) -> nn.Sequential:
    """torchvision's VGG19 feature stack up to relu4_4, weights from ``weights_path``."""
    from torchvision.models.vgg import cfgs, make_layers

    weights_path = Path(weights_path)
    # torchvision's own VGG19 ("E") feature layers, without the 120M-parameter classifier.
    features = make_layers(cfgs["E"])[:VGG19_LAYERS[-1] + 1]
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the same problem to the user
        raise UserError(f"{weights_path} is not a readable VGG19 weights file ({type(error).__name__}) — "
                        f"download it again: {DOWNLOAD_HINT}") from None
    prefix = "features."
    wanted = {key[len(prefix):]: value for key, value in state.items()
              if key.startswith(prefix) and key[len(prefix):] in features.state_dict()}
    missing = set(features.state_dict()) - set(wanted)
    if missing:
        raise UserError(f"{weights_path} is not torchvision's VGG19 (missing {sorted(missing)[0]}) — "
                        f"download it again: {DOWNLOAD_HINT}")
    features.load_state_dict(wanted)
    return features


class VGGPerceptualLoss(nn.Module):
    """Mean L1 distance of VGG19 features; inputs (B, 3, H, W) RGB in [0, 1]."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features.eval()
        for parameter in self.features.parameters():
            parameter.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()          # frozen network: never update anything
        return self

    def _taps(self, image):
        x = (image - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG19_LAYERS:
                taps.append(x)
        return taps

    def forward(self, prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            truth_taps = self._taps(truth)
        prediction_taps = self._taps(prediction)
        return sum(F.l1_loss(p, t) for p, t in zip(prediction_taps, truth_taps)) / len(truth_taps)


def build_perceptual_loss(mode: str = "auto", weights_path=None) -> Optional[VGGPerceptualLoss]:
    """The perceptual loss, or None.

    mode "off": None. "auto" without a path: the cached torchvision weights if
    present, else a one-line warning and None. "on", or any explicit
    ``weights_path``: the weights must load, else a UserError.
    """
    if mode not in PERCEPTUAL_MODES:
        raise UserError(f"--perceptual must be one of {', '.join(PERCEPTUAL_MODES)}, not {mode!r}")
    if mode == "off":
        return None
    explicit = mode == "on" or weights_path is not None
    path = Path(weights_path) if weights_path is not None else default_weights_path()
    if not path.is_file():
        if explicit:
            raise UserError(f"VGG19 weights not found at {path} (needed for the perceptual loss) — "
                            f"get them with: {DOWNLOAD_HINT}, or pass --perceptual off")
        log.warning("VGG19 weights not found at %s: training without the perceptual loss "
                    "(get them with: %s)", path, DOWNLOAD_HINT)
        return None
    return VGGPerceptualLoss(vgg19_features(path))
