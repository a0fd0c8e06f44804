"""Settings for every script: YAML files with dotted `key=value` overrides, the device, mixed precision.

The settings of a run (training, dubbing, evaluation) have their defaults in a YAML file under configs/; the
scripts read it through `load_config`, which refuses keys the file does not have, so a typo on the command line
is an error rather than a silently ignored setting. Paths, the device, shards and preprocess.py's options are
command-line flags with their defaults in each script's argparse.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import torch
import yaml

from data.errors import InputError, one_line

REPO = Path(__file__).resolve().parent
INFERENCE_CONFIG = REPO / "configs" / "inference.yaml"  # dubbing's settings (inference.py, evaluate.py)


def config_path(path: str | Path) -> Path:
    """`path` as given when it exists or is absolute; else the same relative path inside this repository (so
    `configs/x.yaml` works from any folder)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.is_file():
        return path
    packaged = REPO / path
    return packaged if packaged.is_file() else path


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file (see `config_path`), with one-line errors."""
    path = config_path(path)
    if not path.is_file():
        raise InputError(path, "no such config file")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError(path, f"not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(config, dict):
        raise InputError(path, "a config file holds a mapping of keys to values")
    return config


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), base: str | Path | None = None
                ) -> dict:
    """The YAML file at `path` with `dotted.key=value` overrides applied; an override of a key the file does not
    have is a one-line InputError. With `base` (the repository's file for this script), `path` may hold only
    some keys: it is laid over `base`, and a key that `base` does not have is refused."""
    path = config_path(path)
    config = read_yaml(path)
    if base is not None and config_path(base).resolve() != path.resolve():
        defaults = read_yaml(base)
        check_keys(config, defaults, path)
        config = _merged(defaults, config)
    for item in overrides:
        if "=" not in item:
            raise InputError(item, "overrides take the form dotted.key=value")
        key, text = item.split("=", 1)
        node, parts = config, key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise InputError(path, f"unknown config key '{'.'.join(parts[:depth + 1])}' (from '{item}')")
            if depth < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = parse_value(text)
    return config


def check_keys(config: dict, defaults: dict, path: str | Path, prefix: str = "") -> None:
    """Every key of `config` must be one of `defaults` (the repository's file), at every depth."""
    for key, value in config.items():
        if key not in defaults:
            raise InputError(path, f"unknown config key '{prefix}{key}' (known: {', '.join(defaults)})")
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            check_keys(value, defaults[key], path, f"{prefix}{key}.")


def _merged(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base[key], dict) else value
    return merged


def parse_value(text: str):
    """A command-line value as YAML would read it, plus numbers YAML 1.1 leaves as strings (5e-5)."""
    value = yaml.safe_load(text) if text else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def pick_device(name: str | None = None) -> torch.device:
    """'auto' (or nothing): CUDA when torch can use a GPU, the CPU when the machine has none; otherwise the named
    device ('cpu', 'cuda', 'cuda:1'). A GPU that this torch build cannot drive (a driver older than its CUDA, a
    GPU it was not compiled for, a CPU-only build on a GPU machine) is a one-line error, never a silent CPU run."""
    if name not in (None, "", "auto"):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise InputError(f"device={name}", "not a device (cpu, cuda, cuda:N or auto)") from None
        if device.type != "cuda":
            return device
    with warnings.catch_warnings(record=True) as caught:  # torch says why CUDA failed only in a warning
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    setting = f"device={name or 'auto'}"
    if not available:
        if name in (None, "", "auto") and not gpu_present():
            return torch.device("cpu")
        reason = one_line(caught[-1].message) if caught else ""
        if name in (None, "", "auto"):
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            raise InputError(setting, f"this machine has an NVIDIA GPU but this torch ({build}) cannot use it"
                                      f"{': ' + reason if reason else ''}; install a torch build for its driver, "
                                      "or set device=cpu")
        raise InputError(setting, f"CUDA was asked for but torch sees no GPU{': ' + reason if reason else ''}")
    device = torch.device("cuda") if name in (None, "", "auto") else torch.device(name)
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise InputError(setting, f"there are only {torch.cuda.device_count()} GPUs")
    problem = unsupported_gpu(torch.cuda.get_device_capability(index), torch.cuda.get_arch_list())
    if problem:
        raise InputError(setting, f"{torch.cuda.get_device_name(index)}: {problem}")
    return device


def gpu_present() -> bool:
    """True when the machine has an NVIDIA driver and a GPU device node, whatever torch makes of them."""
    return Path("/proc/driver/nvidia/version").is_file() or Path("/dev/nvidia0").exists()


def unsupported_gpu(capability: tuple[int, int], arch_list: list[str]) -> str | None:
    """Why a GPU of this compute capability cannot run this torch build's kernels (None when it can): it runs
    sm_XY binaries of its own major version and minor at most its own, and compute_XY (PTX) of XY at most its own."""
    major, minor = capability
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        arch_major, arch_minor = int(number[:-1]), int(number[-1])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return None
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return None
    return (f"compute capability {major}.{minor} is not among this torch build's ({', '.join(arch_list)}); "
            "install a torch build that supports it")


def usable_bf16(device: torch.device, bf16: bool | str, warn: bool = True) -> bool | str:
    """The `bf16` setting this device can honour: on a GPU without native bf16 (before capability 8.0, a T4 or
    V100) bf16 becomes False with one warning, since emulated bf16 is slower than float32 there."""
    if device.type == "cuda" and bf16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        if warn:
            major, minor = torch.cuda.get_device_capability(device)
            print(f"warning: bf16={bf16} but {torch.cuda.get_device_name(device)} (capability {major}.{minor}) has no "
                  "native bf16; running in float32", file=sys.stderr)
        return False
    return bf16


def autocast(device: torch.device, bf16: bool | str):
    """The mixed-precision context for a config's `bf16` setting: true, bf16 on CUDA (float32 elsewhere);
    'always', bf16 on the CPU too (slow on most CPUs: it exists to run the mixed-precision path anywhere);
    false, float32 everywhere."""
    if bf16 not in (True, False, "always"):
        raise InputError(f"bf16={bf16}", "bf16 takes true (on CUDA), always (on CPU too) or false")
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and bf16 == "always":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
