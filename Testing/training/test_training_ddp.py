"""DistributedDataParallel on the CPU: two gloo processes train with different pairs but identical weights."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rcreg.cascade import RecursiveCascadeNetwork
from rcreg.training.trainer import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    result = train(config)
    torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, f"{folder}/rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_parameters(tiny_config, tmp_path):
    config = tiny_config(iterations=3, threads=1, val=None, device="cpu")
    mp.spawn(_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # Training happened (weights moved from the seeded initialisation) and only rank 0 wrote files.
    torch.manual_seed(config.seed)
    initial = RecursiveCascadeNetwork(config.base, config.cascades, config.affine, config.width).state_dict()
    assert any(not torch.equal(initial[k], rank0[k]) for k in initial)
    last = torch.load(os.path.join(config.output, "last.pt"), weights_only=True)
    assert all(torch.equal(last["state_dict"][k], rank0[k]) for k in rank0)
