"""Process-group set-up for ``torchrun``: one process per GPU (NCCL) or per CPU share (gloo).

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything runs in a single process.
Multi-node runs use torchrun's usual rendezvous flags; nothing here is node-specific.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..models import select_device

__all__ = ["Context", "setup", "barrier", "shutdown"]


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and logs."""
        return self.rank == 0


def setup(device: str = "auto") -> Context:
    """Join the process group torchrun described (if any) and pick this process's device.

    ``device="auto"`` gives ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; the backend is
    NCCL for CUDA devices and gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    chosen = select_device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Context(rank, world, local_rank, local_world, chosen)


def barrier(ctx: Context) -> None:
    """Wait for every process (no-op in a single process)."""
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: Context) -> None:
    """Leave the process group."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
