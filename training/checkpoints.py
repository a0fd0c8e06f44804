"""A run's checkpoints: one dict per step_<step>.pt, written atomically, listed, read back, resumed from.

A checkpoint holds the network ('model', what model_files.checkpoints.load_* rebuild it from), further networks
('others', the discriminator), the optimisers, the step, the resolved config and every rank's RNG states.
"""
from __future__ import annotations

import copy
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from data.errors import DiskError, InputError, disk_problem, one_line
from data.face_size import FACE_SIZE
from training.distributed import Distributed, bare
from training.stopping import check_finite_parameters

CHECKPOINT = re.compile(r"step_(\d+)\.pt$")
RESUME_KEYS = ("model", "step", "optimisers", "rng")


def save_config(config: dict, run_dir: Path) -> None:
    """run_dir/config.yaml: the run's resolved config, every key."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


# ---------------------------------------------------------------- RNG states
def rng_state(device: torch.device) -> dict:
    """This process's RNG states in types torch.load(weights_only=True) accepts; on CUDA, its own GPU's only."""
    name, keys, position, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position,
                                                    has_gauss, gauss], "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(env: Distributed) -> list[dict]:
    """Every rank's rng_state, in rank order (a collective: every rank calls it)."""
    state = rng_state(env.device)
    if env.world == 1:
        return [state]
    states = [None] * env.world
    dist.all_gather_object(states, state)
    return [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in states]


def restore_rng(saved: dict, env: Distributed) -> None:
    """Restore this rank's RNG states from a checkpoint's 'rng'.

    Rank r takes saved rank r mod the saved world size, so a run resumed on more processes repeats the saved
    ranks' streams in turn and one on fewer takes the first ones. The CUDA state is restored only on CUDA and only
    for this process's own GPU. Checkpoints written before per-rank states ({'python', ..., 'cuda': [one per
    visible GPU]}) give every rank their one state and each GPU the entry of its index, when the list has one.
    """
    if "ranks" in saved:
        state = saved["ranks"][env.rank % len(saved["ranks"])]
        cuda = state.get("cuda")
    else:
        state = saved
        per_gpu = state.get("cuda") or []
        index = (env.device.index or 0) if env.device.type == "cuda" else len(per_gpu)
        cuda = per_gpu[index] if index < len(per_gpu) else None
    random.setstate(state["python"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if cuda is not None and env.device.type == "cuda":
        torch.cuda.set_rng_state(cuda, env.device)


# ---------------------------------------------------------------- writing
def training_state(model: torch.nn.Module, optimisers: dict, step: int, config: dict, kind: str,
                   model_args: dict, others: dict | None, rng: list[dict]) -> dict:
    """One dict holds everything a resume needs, and what load_* needs to rebuild the network ('model')."""
    return {"kind": kind, "model": bare(model).state_dict(), "model_args": model_args, "step": step,
            "others": {name: bare(net).state_dict() for name, net in (others or {}).items()},
            "optimisers": {name: opt.state_dict() for name, opt in optimisers.items()},
            "config": copy.deepcopy(config), "rng": {"ranks": rng}}


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write step_<step>.pt atomically (temporary name, then rename; the temporary file is removed on any
    failure), then keep only the newest `keep`: an older checkpoint is removed only once the new one is whole.
    A full, read-only or failing disk is a DiskError naming the file and the newest complete checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"step_{step:09d}.pt"
    temp = path.with_suffix(".pt.tmp")
    try:
        with open(temp, "wb") as file:  # a file of ours, so that a full disk's OSError reaches us through torch's
            torch.save(state, file)
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        problem = disk_problem(error)
        if problem is None:
            raise
        newest = list_checkpoints(run_dir)
        kept = f"{newest[-1].name} is the newest complete one" if newest else "the run has no complete one yet"
        raise DiskError(path, f"{problem} (checkpoint not written; {kept})") from None
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def save(config: dict, env: Distributed, step: int, kind: str, model: torch.nn.Module, optimisers: dict,
         model_args: dict, others: dict | None = None, alone: bool = False) -> None:
    """The run's step_<step>.pt, called on every rank: gathers the ranks' RNG states, then on the main rank
    refuses non-finite parameters and writes the checkpoint, pruning to schedule.keep_last.

    alone=True, called on one rank only (a rank that cannot go on, such as one whose data loader met a bad record):
    no collective; this rank writes the checkpoint with its own RNG states, which every rank then resumes with
    (under DDP the replicas hold the same parameters and optimiser states, so any rank can)."""
    rng = [rng_state(env.device)] if alone else gather_rng_states(env)
    if env.main or alone:
        check_finite_parameters({kind: model, **(others or {})}, step)
        state = training_state(model, optimisers, step, config, kind, model_args, others, rng)
        save_checkpoint(Path(config["run_dir"]), step, state, config["schedule"]["keep_last"])


# ---------------------------------------------------------------- reading and resuming
def list_checkpoints(run_dir: Path) -> list[Path]:
    """step_*.pt files in run_dir, oldest first."""
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.iterdir() if CHECKPOINT.search(p.name)),
                  key=lambda p: int(CHECKPOINT.search(p.name).group(1)))


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint's state, or a one-line InputError naming the file and what is wrong with it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated zip, a foreign pickle, an empty file: all mean "damaged"
        raise InputError(path, f"damaged checkpoint ({one_line(error)[:120]})") from None
    missing = [key for key in RESUME_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise InputError(path, f"not a training checkpoint of this project (no {', '.join(missing)})")
    return state


def find_resume(resume: str | None, run_dir: Path, warn: bool = True) -> tuple[Path, dict] | None:
    """What --resume names, loaded: 'auto' takes the newest step_*.pt of the run that loads, skipping (never
    deleting) damaged ones with a one-line warning, and None when the run has none; a path must load."""
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise InputError(path, "no such checkpoint to resume from")
        return path, read_checkpoint(path)
    found = list_checkpoints(run_dir)
    for path in reversed(found):
        try:
            return path, read_checkpoint(path)
        except InputError as error:
            if warn:
                print(f"warning: {error}; skipped, trying an older checkpoint", file=sys.stderr)
    if found:
        raise InputError(run_dir, f"no checkpoint loads ({', '.join(p.name for p in found)} are all damaged); "
                                  "move them away to start afresh")
    return None


def resume(resume: str | None, config: dict, env: Distributed, model: torch.nn.Module, optimisers: dict,
           others: dict | None = None) -> int:
    """The step to start from: 0, or that of the checkpoint --resume names, loaded into the networks and
    optimisers with this rank's RNG states. A checkpoint of another network or configuration is a one-line
    InputError. A new run (nothing to resume) starts from config init.source's weights when it names a model
    (training/initialise.py)."""
    found = find_resume(resume, Path(config["run_dir"]), warn=env.main)
    if found is None:
        from training.initialise import initialise  # a new run: from init.source's weights, when it names one

        initialise(config, env, model, others)
        return 0
    path, state = found
    if "init" in config:  # a resumed run keeps the record of the weights it started from
        config["init"] = (state.get("config") or {}).get("init", config["init"])
    saved, wanted = state.get("model_args", {}).get("face_size"), getattr(bare(model), "face_size", None)
    if wanted is not None and (saved or FACE_SIZE) != wanted:
        raise InputError(path, f"holds a renderer of {saved or FACE_SIZE}x{saved or FACE_SIZE} faces where the "
                               f"config asks for {wanted}x{wanted} (face_size)")
    weights = state["model"]
    if state.get("kind") == "renderer":  # a run saved before the renderer's submodules got their current names
        from model_files.checkpoints import renamed_renderer_state

        weights = renamed_renderer_state(weights)
    try:
        bare(model).load_state_dict(weights)
        for name, net in (others or {}).items():
            bare(net).load_state_dict(state["others"][name])
        for name, optimiser in optimisers.items():
            optimiser.load_state_dict(state["optimisers"][name])
    except (RuntimeError, KeyError, ValueError) as error:
        raise InputError(path, f"does not fit this network and config ({one_line(error)[:160]})") from None
    restore_rng(state["rng"], env)
    if env.main:
        print(f"resumed from {path} at step {state['step']}", file=sys.stderr)
    return int(state["step"])
