"""The pictures a training run leaves beside its checkpoints.

    samples/epoch_N.png   --see_res: reference | masked | prediction | truth per row
    loss_curve.png        train loss and held-out scores per epoch
"""
import io
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from lipsync.core.atomic import write_bytes_atomic

PLOT_SIZE_INCHES = (8, 4.5)
PLOT_DPI = 100


def sample_grid(image6: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """BGR uint8 picture, one row per sample: reference | masked | prediction | truth."""
    columns = [image6[:, :3], image6[:, -3:], prediction, truth]     # the first reference, the masked target
    rows = torch.cat([torch.cat(list(column), dim=2) for column in zip(*columns)], dim=1)
    picture = (rows.float().clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(picture[:, :, ::-1])


def plot_history(history: List[Dict], path: Path, title: str) -> None:
    """Loss-curve PNG of the per-epoch history (train loss, held-out scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [entry["epoch"] for entry in history]
    figure, left = plt.subplots(figsize=PLOT_SIZE_INCHES)
    left.plot(epochs, [entry["train_loss"] for entry in history], label="train loss")
    for key in ("val_l1", "val_loss"):
        values = [entry.get(key) for entry in history]
        if any(value is not None for value in values):
            left.plot(epochs, values, label=key.replace("_", " "))
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.set_yscale("log")
    right_key = "val_psnr" if any("val_psnr" in entry for entry in history) else "val_accuracy"
    if any(right_key in entry for entry in history):
        right = left.twinx()
        right.plot(epochs, [entry.get(right_key) for entry in history], color="tab:red",
                   label=right_key.replace("_", " "))
        right.set_ylabel("held-out PSNR (dB)" if right_key == "val_psnr" else "held-out sync accuracy")
        right.legend(loc="upper right")
    left.legend(loc="upper left")
    left.set_title(title)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
