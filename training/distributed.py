"""The process's device and group: torchrun's environment when present, else one process; DDP wrapping.

On CUDA each process takes the GPU of its LOCAL_RANK (or the one the config names), says which in its first log
line, and refuses a GPU that this torch build cannot drive instead of falling back to the CPU.
"""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from config import pick_device, usable_bf16


@dataclass
class Distributed:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Distributed:
    """Device and process group. On CUDA, cudnn.benchmark is on: a run's convolution shapes repeat every step."""
    target = pick_device(device)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if target.type == "cuda":
        target = torch.device("cuda", local_rank if target.index is None else target.index)
        torch.cuda.set_device(target)
        torch.backends.cudnn.benchmark = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Distributed(rank, world, local_rank, target)


def begin(config: dict) -> Distributed:
    """setup() from the config, the device line on the main rank, bf16 resolved for this device (config['bf16']
    becomes False, with one warning, on a GPU without bf16), and the seeds (the same initial weights on every
    rank; DDP also broadcasts them)."""
    env = setup(config["device"])
    if env.main:
        print(device_line(env), file=sys.stderr)
    config["bf16"] = usable_bf16(env.device, config["bf16"], warn=env.main)
    seed_everything(config["seed"])
    return env


def device_line(env: Distributed) -> str:
    """'device: cuda:0 (NVIDIA H200, capability 9.0), 4 processes, torch 2.11.0, CUDA 13.0' and the like."""
    if env.device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(env.device)
        what = f"{env.device} ({torch.cuda.get_device_name(env.device)}, capability {major}.{minor})"
    else:
        what = f"{env.device} ({torch.get_num_threads()} threads)"
    processes = f", {env.world} processes" if env.world > 1 else ""
    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ""
    return f"device: {what}{processes}, torch {torch.__version__.split('+')[0]}{cuda}"


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the global RNG that library code draws from)
    torch.manual_seed(seed)


def bare(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DDP wrapper (or the network itself)."""
    return model.module if hasattr(model, "module") else model


def wrap(network: torch.nn.Module, env: Distributed, find_unused: bool = False) -> torch.nn.Module:
    """The network under DDP when there are several processes (on the device it lives on); itself otherwise.
    find_unused costs a graph traversal per step: ask for it only while some parameters get no gradient."""
    if env.world == 1:
        return network
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids, find_unused_parameters=find_unused)


def check_replicas(model: torch.nn.Module, env: Distributed) -> bool:
    """True when every rank holds the same parameters (compared through a float64 fingerprint)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    weights = torch.arange(1, len(flat) + 1, dtype=torch.float64, device=flat.device).sin()
    fingerprint = torch.stack([flat.sum(), (flat * weights).sum()])
    gathered = [torch.zeros_like(fingerprint) for _ in range(env.world)]
    dist.all_gather(gathered, fingerprint)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])
