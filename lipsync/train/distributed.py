"""This process's place in a training job: torchrun ranks, its device, its random state.

Without torchrun a run is one process of world size 1. Under torchrun every
rank seeds, saves and restores its own random streams (latest.pth keeps one
state per rank), and ``peak_memory_mb`` is what the epoch log reports.
"""
import datetime
import os
import random
import resource
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch

from lipsync.core.devices import resolve_device

DISTRIBUTED_TIMEOUT = datetime.timedelta(hours=2)   # longest a rank waits for the others (cache build)


@dataclass
class Distributed:
    """This process's place in a torchrun job (world size 1 without torchrun)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def syncs_batch_norm(self) -> bool:
        """Whether BatchNorm statistics are pooled over all GPUs of the job.

        Each GPU sees only its own few samples (batch 8 by default), so unsynced
        BatchNorm would normalise with noisier statistics than one GPU with the
        whole batch and the running averages would differ per rank. torch's
        SyncBatchNorm runs on GPUs only; gloo/CPU jobs keep per-process statistics.
        """
        return self.enabled and self.device.type == "cuda"

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def gather(self, value) -> List:
        """``value`` of every rank, in rank order (on every rank)."""
        if not self.enabled:
            return [value]
        values = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def broadcast(self, value):
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def setup_distributed(requested_device: str) -> Distributed:
    """Read torchrun's environment; join the process group when there are several ranks."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # nccl between GPUs, gloo between CPU processes (tests, CPU-only machines). The other
        # ranks wait while rank 0 builds the crop cache on a first run, which can outlast
        # NCCL's 10-minute default.
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=DISTRIBUTED_TIMEOUT)
    return Distributed(rank, world_size, local_rank, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> Dict:
    """This process's random state; on a GPU only its own GPU's, so a run resumes on fewer GPUs."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    saved = state.get("cuda")
    if device.type == "cuda" and isinstance(saved, torch.Tensor):
        torch.cuda.set_rng_state(saved.cpu(), device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB
