"""One command for a GPU machine: is the CUDA path right, and how fast are the training steps?

  python -m bench.gpu [--device cuda] [--json gpu.json] [--records DIR] [--quick]

Needs only torch, torchvision, numpy, PyYAML, tqdm and tensorboard (no MediaPipe, OpenCV or PyAV), so it runs on
a bare GPU machine; weights are random (speed and device agreement do not depend on their values). Prints one
table and writes it as JSON:
  - the device line a training run prints;
  - both networks on the device against the CPU in float32, same weights and inputs (TF32 off);
  - the renderer under bf16 autocast against float32 (PSNR of the generated and the warped image);
  - one bf16 training step of each trainer, then a save and a resume that restores the same parameters;
  - steps/s of the landmark step at batch 128 and of the renderer step at batch 24 (warm-up and full loss);
  - with --records (and OpenCV present), loader samples/s of one process against the steps' appetite.
--quick shrinks every size so that the CPU runs it in about a minute (the test suite does, so it cannot rot).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.timing import seconds_per_call
from config import autocast, load_config, pick_device
from data.errors import InputError
from losses.perceptual import PerceptualLoss, load_vgg19_features
from metrics.image import psnr
from models.discriminator import MultiscaleDiscriminator
from models.landmark_generator import LandmarkGenerator
from models.renderer import Renderer
from train_landmark import landmark_step
from train_render import gan_step
from training import checkpoints
from training.distributed import Distributed, device_line
from training.stopping import LossGuard

LOSS_WEIGHTS = load_config("configs/render.yaml")["loss"]  # the paper's settings, from their one home
LANDMARK_ARGS = load_config("configs/landmark.yaml")["model"]


def landmark_batch(batch: int, device: torch.device, seed: int = 0) -> dict:
    """A landmark step's batch of random values in the dataset's shapes (T=5 steps, Nl=15 references)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"mels": (batch, 5, 1, 80, 16), "pose": (batch, 5, 2, 74), "content": (batch, 5, 2, 57),
              "ref_pose": (batch, 15, 2, 74), "ref_content": (batch, 15, 2, 57)}
    return {name: torch.rand(*shape, generator=g).to(device) for name, shape in shapes.items()}


def render_batch(batch: int, refs: int, size: int, device: torch.device, seed: int = 0) -> dict:
    """A renderer step's batch: random faces and references, sparse sketches, random mels."""
    g = torch.Generator().manual_seed(seed)
    def sketch(*shape):
        return (torch.rand(*shape, 1, size, size, generator=g) > 0.92).float().expand(*shape, 3, size, size)

    frames = {"face": torch.rand(batch, 3, size, size, generator=g), "sketches": sketch(batch, 5),
              "ref_images": torch.rand(batch, refs, 3, size, size, generator=g), "ref_sketches": sketch(batch, refs),
              "mels": torch.randn(batch, 1, 80, 16, generator=g)}
    return {name: tensor.to(device) for name, tensor in frames.items()}


def renderer_inputs(batch: dict) -> tuple:
    return batch["face"], batch["sketches"], batch["ref_images"], batch["ref_sketches"], batch["mels"]


def device_against_cpu(device: torch.device, size: int) -> dict:
    """Largest absolute difference of both networks' float32 outputs on the device against the CPU."""
    torch.manual_seed(0)
    generator, renderer = LandmarkGenerator(**LANDMARK_ARGS).eval(), Renderer().eval()
    marks, frames = landmark_batch(2, torch.device("cpu")), render_batch(2, 3, size, torch.device("cpu"))
    inputs = (marks["mels"], marks["pose"], marks["ref_pose"], marks["ref_content"])
    with torch.no_grad():
        cpu_marks, (cpu_face, cpu_warped) = generator(*inputs), renderer(*renderer_inputs(frames))
        generator.to(device), renderer.to(device)
        dev_marks = generator(*(t.to(device) for t in inputs))
        dev_face, dev_warped = renderer(*(t.to(device) for t in renderer_inputs(frames)))
    return {"landmark generator, device vs CPU (max abs)": (dev_marks.cpu() - cpu_marks).abs().max().item(),
            "renderer face, device vs CPU (max abs)": (dev_face.cpu() - cpu_face).abs().max().item(),
            "renderer warped, device vs CPU (max abs)": (dev_warped.cpu() - cpu_warped).abs().max().item()}


def bf16_against_float32(device: torch.device, size: int, refs: int) -> dict:
    """PSNR (dB) of the renderer's outputs under bf16 autocast against float32 on the device."""
    torch.manual_seed(0)
    renderer = Renderer().eval().to(device)
    inputs = renderer_inputs(render_batch(2, refs, size, device))
    with torch.no_grad():
        face, warped = renderer(*inputs)
        with autocast(device, "always"):
            half_face, half_warped = renderer(*inputs)
    return {"renderer bf16 vs float32, face (dB)": psnr(half_face.float(), face, 1e-10).mean().item(),
            "renderer bf16 vs float32, warped (dB)": psnr(half_warped.float(), warped, 1e-10).mean().item()}


def _networks(device: torch.device):
    torch.manual_seed(0)
    landmark = LandmarkGenerator(**LANDMARK_ARGS).to(device)
    renderer, discriminator = Renderer().to(device), MultiscaleDiscriminator().to(device)
    perceptual = PerceptualLoss(load_vgg19_features(allow_random=True)).to(device)
    optimisers = {"landmark": torch.optim.Adam(landmark.parameters(), lr=1e-4),
                  "generator": torch.optim.Adam(renderer.parameters(), lr=1e-4),
                  "discriminator": torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.5, 0.999))}
    return landmark, renderer, discriminator, perceptual, optimisers


def steps_and_resume(device: torch.device, sizes: dict) -> dict:
    """One bf16 step of each trainer (finite losses), a save, a resume into fresh networks (same parameters)."""
    env = Distributed(0, 1, 0, device)
    landmark, renderer, discriminator, perceptual, optimisers = _networks(device)
    guard = LossGuard(env, "stop")
    bf16 = lambda: autocast(device, True)  # noqa: E731  (bf16 on CUDA, float32 on the CPU, as training's default)
    marks = landmark_step(landmark, optimisers["landmark"], guard, landmark_batch(4, device), 1.0, bf16)
    frames = gan_step(renderer, discriminator, optimisers["generator"], optimisers["discriminator"], perceptual,
                      render_batch(2, 1, sizes["render_size"], device), LOSS_WEIGHTS, False, bf16, guard)
    guard.check()  # raises if any part was not finite
    with tempfile.TemporaryDirectory() as folder:
        config = {"run_dir": folder, "schedule": {"keep_last": 2}}
        checkpoints.save(config, env, 1, "renderer", renderer, {"generator": optimisers["generator"]}, {},
                         {"discriminator": discriminator})
        _, fresh, fresh_disc, _, fresh_optimisers = _networks(device)
        step = checkpoints.resume("auto", config, env, fresh, {"generator": fresh_optimisers["generator"]},
                                  {"discriminator": fresh_disc})
    same = all(torch.equal(a, b) for a, b in zip(renderer.state_dict().values(), fresh.state_dict().values()))
    return {"landmark step losses": {k: float(v) for k, v in marks.items()},
            "renderer step losses": {k: float(v) for k, v in frames.items()},
            "resumed at step": step, "resumed parameters equal": same}


def _rate(step, repeats: int, device: torch.device) -> float:
    return 1 / seconds_per_call(step, repeats, device)


def step_rates(device: torch.device, sizes: dict) -> dict:
    """Training steps per second under bf16 (float32 on the CPU), stop-mode guard, no host read inside a step."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = Distributed(0, 1, 0, device)
    landmark, renderer, discriminator, perceptual, optimisers = _networks(device)
    guard = LossGuard(env, "stop")
    bf16 = lambda: autocast(device, True)  # noqa: E731
    marks = landmark_batch(sizes["landmark_batch"], device)
    frames = render_batch(sizes["render_batch"], 3, sizes["render_size"], device)
    rates = {f"landmark steps/s, batch {sizes['landmark_batch']}": _rate(
        lambda: landmark_step(landmark, optimisers["landmark"], guard, marks, 1.0, bf16), sizes["repeats"], device)}
    for warm_up in (True, False):
        name = f"renderer steps/s, batch {sizes['render_batch']}, N=3, {'warm-up' if warm_up else 'full loss'}"
        rates[name] = _rate(lambda w=warm_up: gan_step(renderer, discriminator, optimisers["generator"],
                                                       optimisers["discriminator"], perceptual, frames, LOSS_WEIGHTS,
                                                       w, bf16, guard), sizes["repeats"], device)
    guard.check()
    return rates


def loader_rates(records: Path, sizes: dict, rates: tuple[float, float]) -> dict:
    """Samples/s of one loader process (dataset + collation) for each stage, beside what the steps take."""
    try:
        from data.datasets import LandmarkWindows, RenderFrames, records_under
    except ImportError as error:  # OpenCV or PyAV missing on a bare machine
        return {"loaders": f"not measured: {error} (carry its wheel, see README)"}
    stems = records_under(records)
    out = {}
    for name, dataset, batch, appetite in (
            ("landmark", LandmarkWindows(stems, repeats=64), sizes["landmark_batch"], rates[0]),
            ("renderer", RenderFrames(stems, refs=3, repeats=64), sizes["render_batch"], rates[1])):
        loader = torch.utils.data.DataLoader(dataset, batch, shuffle=True, num_workers=0)
        start, count = time.perf_counter(), 0
        for item in loader:
            count += len(next(iter(item.values())))
            if count >= sizes["loader_samples"]:
                break
        out[f"{name} loader samples/s, one process"] = count / (time.perf_counter() - start)
        out[f"{name} step appetite, samples/s"] = appetite * batch
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--records", type=Path, help="records (preprocess.py) for the loader rows")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a CPU check that the script runs")
    args = parser.parse_args(argv)
    try:
        device = pick_device(args.device)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # device-vs-CPU rows compare float32 with float32
    torch.backends.cudnn.allow_tf32 = False
    sizes = ({"render_size": 32, "bf16_size": 16, "bf16_refs": 1, "landmark_batch": 4, "render_batch": 2,
              "repeats": 1, "loader_samples": 8} if args.quick else
             {"render_size": 128, "bf16_size": 128, "bf16_refs": 3, "landmark_batch": 128, "render_batch": 24,
              "repeats": 10, "loader_samples": 512})
    table = {"device line": device_line(Distributed(0, 1, 0, device))}
    table.update(device_against_cpu(device, sizes["render_size"]) if device.type != "cpu" else
                 {"device vs CPU": "not measured: the device is the CPU"})
    table.update(bf16_against_float32(device, sizes["bf16_size"], sizes["bf16_refs"]))
    table.update(steps_and_resume(device, sizes))
    torch.backends.cuda.matmul.allow_tf32 = True  # the rates are for training as it runs (TF32 where autocast is off)
    torch.backends.cudnn.allow_tf32 = True
    rates = step_rates(device, sizes)
    table.update(rates)
    if args.records:
        landmark_rate, *render_rates = rates.values()
        table.update(loader_rates(args.records, sizes, (landmark_rate, max(render_rates))))
    width = max(len(name) for name in table)
    for name, value in table.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{name:<{width}}  {shown}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
