"""The training package's parts on their own: no host sync inside a step, RNG states across world sizes and
devices, the device line and the GPU checks, the loss guard's deferred stop."""
from __future__ import annotations

import errno
import random
import sys

import numpy as np
import pytest
import torch

import config as settings
import train_landmark
import train_render
from conftest import REPO
from data.errors import DISK_STATUS, BadRecord, DiskError, InputError
from training import checkpoints, loop
from training.distributed import Distributed, device_line
from training.stopping import Diverged, LossGuard

CPU_ENV = Distributed(0, 1, 0, torch.device("cpu"))
READS = ("item", "__bool__", "cpu", "tolist")  # what makes the host wait for a GPU tensor


def _spy_reads(monkeypatch) -> dict:
    """Count reads of tensors made by this repository's code (torch's own, such as Adam's CPU step counters, aside)
    while spy['on'] is set."""
    spy = {"on": False, "calls": []}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if spy["on"] and caller.startswith(str(REPO)) and "site-packages" not in caller:
                spy["calls"].append(f"{_name} at {caller}:{sys._getframe(1).f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return spy


def test_no_host_read_between_sync_steps_in_the_landmark_trainer(records, tmp_path, monkeypatch):
    spy = _spy_reads(monkeypatch)
    steps_seen, syncs = [], []

    def spied(function, on: bool, note: list | None = None):  # runs `function` with the spy on (or off)
        def call(*args, **kwargs):
            was, spy["on"] = spy["on"], on
            try:
                return function(*args, **kwargs)
            finally:
                spy["on"] = was
                if note is not None:
                    note.append(len(spy["calls"]))

        return call

    # The step, its batch's move to the device and the run's per-step bookkeeping, but not the sync steps.
    monkeypatch.setattr(train_landmark, "landmark_step", spied(train_landmark.landmark_step, True, steps_seen))
    monkeypatch.setattr(loop.Run, "to_device", spied(loop.Run.to_device, True))
    monkeypatch.setattr(loop.Run, "after_step", spied(loop.Run.after_step, True))
    monkeypatch.setattr(loop.Run, "sync", spied(loop.Run.sync, False, syncs))
    args = ["--config", str(REPO / "configs" / "landmark_smoke.yaml"), f"data.records={records}",
            f"run_dir={tmp_path}", "data.val_list=null", "model.layers=1", "model.feed_forward=64",
            "optim.batch_size=4", "sample.epoch_repeats=4", "schedule.max_steps=8", "schedule.sync_every=4",
            "schedule.log_every=4", "schedule.save_every=8", "schedule.eval_every=1000"]
    assert train_landmark.main(args) == 0
    assert len(steps_seen) == 8 and spy["calls"] == [], spy["calls"][:5]
    assert len(syncs) == 2  # steps 4 and 8: one sync per schedule.sync_every


def test_no_host_read_in_a_renderer_gan_step(monkeypatch):
    from losses.perceptual import PerceptualLoss, load_vgg19_features
    from models.discriminator import MultiscaleDiscriminator
    from models.renderer import Renderer

    torch.manual_seed(0)
    generator, discriminator = Renderer(), MultiscaleDiscriminator()
    perceptual = PerceptualLoss(load_vgg19_features(allow_random=True))
    g = torch.Generator().manual_seed(0)
    size = 32  # fully convolutional: a small image runs the same step
    shapes = {"face": (2, 3), "sketches": (2, 5, 3), "ref_images": (2, 1, 3), "ref_sketches": (2, 1, 3)}
    batch = {name: torch.rand(*shape, size, size, generator=g) for name, shape in shapes.items()}
    batch["mels"] = torch.randn(2, 1, 80, 16, generator=g)
    weights = {"warp": 2.5, "reconstruction": 4.0, "style": 1000.0, "gan": 0.25, "feature_matching": 2.5}
    g_opt, d_opt = torch.optim.Adam(generator.parameters()), torch.optim.Adam(discriminator.parameters())
    guard = LossGuard(CPU_ENV, "stop")
    spy = _spy_reads(monkeypatch)
    spy["on"] = True
    parts = train_render.gan_step(generator, discriminator, g_opt, d_opt, perceptual, batch, weights, False,
                                  lambda: torch.autocast("cpu", enabled=False), guard)
    spy["on"] = False
    assert spy["calls"] == []
    assert sorted(parts) == ["discriminator", "feature_matching", "gan", "reconstruction", "style", "warp"]
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in parts.values())
    guard.check()  # all finite: nothing to raise


def test_the_stop_guard_names_the_first_bad_step_and_part_at_its_read():
    guard = LossGuard(CPU_ENV, "stop", step=10)
    finite, nan, inf = torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(float("inf"))
    guard.begin()
    assert guard.ok({"l1": finite, "velocity": finite})
    guard.check()
    guard.begin()
    assert guard.ok({"l1": finite, "velocity": inf})  # noted, not yet read
    guard.begin()
    assert guard.ok({"l1": nan, "velocity": finite})  # a later bad part does not replace the first
    with pytest.raises(Diverged, match=r"^step 12: loss part 'velocity' is inf$"):
        guard.check()


# ---------------------------------------------------------------- the run a trainer's loop calls
class _Indices(torch.utils.data.Dataset):
    """Ten samples, each its own index (the sampler's keys are (epoch, index) pairs)."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, key: tuple[int, int]) -> int:
        return key[1]


def _run_indices(tmp_path, start: int, max_steps: int, call_after_step: bool = True) -> tuple[list, list]:
    """The (epoch, sample indices) of each batch a loop in the trainers' shape sees from step `start`, and the
    steps saved: 10 samples, 2 a batch, so 5 batches an epoch."""
    config = {"run_dir": str(tmp_path), "seed": 3, "optim": {"batch_size": 2}, "data": {"num_workers": 0},
              "schedule": {"max_steps": max_steps, "sync_every": 4, "log_every": 4, "eval_every": 1000,
                           "save_every": 3, "on_nonfinite": "stop", "on_bad_record": "stop"}}
    loader = loop.train_loader(_Indices(), config, CPU_ENV)
    seen, saved = [], []
    with loop.Run(config, CPU_ENV, loader, start, lambda step, alone=False: saved.append(step),
                  lambda step, logger: None) as run:
        for epoch in run.epochs():
            for batch in loader:
                seen.append((epoch, batch.tolist()))
                if call_after_step:
                    run.after_step({"loss": torch.tensor(1.0)})
    return seen, saved


def test_a_run_resumed_mid_epoch_sees_the_batches_of_an_uninterrupted_one_and_stops_at_max_steps(tmp_path):
    straight, saved = _run_indices(tmp_path / "a", 0, 12)
    assert [epoch for epoch, _ in straight] == [0] * 5 + [1] * 5 + [2] * 2 and saved == [3, 6, 9, 12]
    assert sorted(sum((batch for epoch, batch in straight if epoch == 1), [])) == list(range(10))
    resumed, saved = _run_indices(tmp_path / "b", 7, 12)
    assert resumed == straight[7:] and saved == [9, 12]
    with pytest.raises(RuntimeError, match="calls run.after_step once per batch"):
        _run_indices(tmp_path / "c", 0, 12, call_after_step=False)


# ---------------------------------------------------------------- RNG states
def _draws() -> tuple:
    return random.random(), np.random.random(), torch.rand(1).item()  # noqa: NPY002


def test_rng_states_round_trip_and_ranks_take_their_own():
    torch.manual_seed(1)
    states = [checkpoints.rng_state(torch.device("cpu"))]
    expected = _draws()
    checkpoints.restore_rng({"ranks": states}, CPU_ENV)
    assert _draws() == expected
    torch.manual_seed(2)
    states.append(checkpoints.rng_state(torch.device("cpu")))
    second = _draws()
    checkpoints.restore_rng({"ranks": states}, Distributed(3, 4, 3, torch.device("cpu")))  # rank 3 of 4 <- 3 mod 2
    assert _draws() == second


class _FakeCuda:
    """torch.cuda.set_rng_state stood in for: records which state went to which GPU."""

    def __init__(self):
        self.set = []

    def __call__(self, state, device):
        self.set.append((int(state[0]), str(device)))


def test_a_checkpoint_of_eight_gpus_resumes_on_one_gpu_or_the_cpu(monkeypatch):
    torch.manual_seed(3)
    saved = checkpoints.rng_state(torch.device("cpu"))
    saved["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]  # per-GPU layout: every visible GPU
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake)
    checkpoints.restore_rng(saved, CPU_ENV)  # on the CPU: no CUDA state is touched
    assert fake.set == []
    checkpoints.restore_rng(saved, Distributed(0, 1, 0, torch.device("cuda", 0)))
    checkpoints.restore_rng(saved, Distributed(1, 2, 1, torch.device("cuda", 1)))
    assert fake.set == [(0, "cuda:0"), (1, "cuda:1")]  # each GPU its own entry
    fake.set.clear()
    per_rank = {"ranks": [{**saved, "cuda": torch.full((16,), 5, dtype=torch.uint8)}]}
    checkpoints.restore_rng(per_rank, Distributed(0, 1, 0, torch.device("cuda", 0)))
    cpu_written = {"ranks": [checkpoints.rng_state(torch.device("cpu"))]}
    checkpoints.restore_rng(cpu_written, Distributed(0, 1, 0, torch.device("cuda", 0)))  # CPU -> GPU: no CUDA state
    assert fake.set == [(5, "cuda:0")]


def test_a_resumed_run_saves_the_new_layout_and_resumes_from_the_old(records, tmp_path):
    args = ["--config", str(REPO / "configs" / "landmark_smoke.yaml"), f"data.records={records}",
            f"run_dir={tmp_path}", "data.val_list=null", "model.layers=1", "model.feed_forward=64",
            "optim.batch_size=4", "sample.epoch_repeats=4", "schedule.max_steps=2", "schedule.save_every=2"]
    assert train_landmark.main(args) == 0
    path = tmp_path / "step_000000002.pt"
    state = torch.load(path, weights_only=True)
    assert len(state["rng"]["ranks"]) == 1 and "cuda" not in state["rng"]["ranks"][0]
    state["rng"] = {**state["rng"]["ranks"][0], "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8}  # per-GPU layout
    torch.save(state, path)
    assert train_landmark.main(["--resume", "auto", *args[:-2], "schedule.max_steps=3", "schedule.save_every=3"]) == 0
    assert (tmp_path / "step_000000003.pt").is_file()


# ---------------------------------------------------------------- the device said out loud
def test_gpus_this_build_cannot_drive_are_named():
    built = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    assert settings.unsupported_gpu((8, 0), built) is None
    assert settings.unsupported_gpu((8, 9), built) is None  # sm_86 binaries run on 8.9
    assert settings.unsupported_gpu((12, 1), built) is None
    assert "compute capability 7.0" in settings.unsupported_gpu((7, 0), built)  # a V100 under CUDA 13
    assert settings.unsupported_gpu((7, 0), ["sm_80", "compute_70"]) is None  # PTX is compiled for it at load


def test_auto_refuses_a_gpu_torch_cannot_use_and_takes_the_cpu_without_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(settings, "gpu_present", lambda: False)
    assert settings.pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(settings, "gpu_present", lambda: True)
    with pytest.raises(InputError, match="has an NVIDIA GPU but this torch .* cannot use it"):
        settings.pick_device("auto")
    with pytest.raises(InputError, match="CUDA was asked for but torch sees no GPU"):
        settings.pick_device("cuda")


def test_bf16_on_a_gpu_without_it_warns_once_and_runs_float32(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert settings.usable_bf16(torch.device("cuda", 0), True) is False
    assert capsys.readouterr().err.strip() == ("warning: bf16=True but Tesla T4 (capability 7.5) has no native bf16; "
                                               "running in float32")
    assert settings.usable_bf16(torch.device("cpu"), "always") == "always"


def test_the_first_line_of_a_run_names_the_device(records, tmp_path, capsys):
    line = device_line(CPU_ENV)
    assert line.startswith("device: cpu (") and f"torch {torch.__version__.split('+')[0]}" in line
    args = ["--config", str(REPO / "configs" / "landmark_smoke.yaml"), f"data.records={records}",
            f"run_dir={tmp_path}", "data.val_list=null", "model.layers=1", "model.feed_forward=64",
            "optim.batch_size=4", "sample.epoch_repeats=4", "schedule.max_steps=1"]
    assert train_landmark.main(args) == 0
    assert capsys.readouterr().err.splitlines()[0] == line


# ---------------------------------------------------------------- a full disk, errors from loader workers
class _FullDisk:
    """open() for checkpoints on a disk that fills up: the `allowed`-th file opened and later ones take 1000 bytes,
    then writing raises OSError(ENOSPC), as a full volume does."""

    def __init__(self, allowed: int):
        self.opened, self.allowed = 0, allowed

    def __call__(self, path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        self.opened += 1
        if self.opened < self.allowed:
            return file
        write, written = file.write, [0]

        def full_write(data):
            written[0] += len(data)
            if written[0] > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(data)

        file.write = full_write
        return file


def test_a_full_disk_at_a_checkpoint_is_one_line_and_exit_74_with_the_older_one_intact(records, tmp_path,
                                                                                      monkeypatch, capsys):
    monkeypatch.setattr(checkpoints, "open", _FullDisk(allowed=2), raising=False)
    args = ["--config", str(REPO / "configs" / "landmark_smoke.yaml"), f"data.records={records}",
            f"run_dir={tmp_path}", "data.val_list=null", "model.layers=1", "model.feed_forward=64",
            "optim.batch_size=4", "sample.epoch_repeats=4", "schedule.max_steps=4", "schedule.save_every=2",
            "schedule.keep_last=1"]
    assert train_landmark.main(args) == DISK_STATUS
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'step_000000004.pt'}: no space left on device (checkpoint not written; "
                      "step_000000002.pt is the newest complete one)"] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000000002.pt"]  # no .tmp, the older one kept
    assert (tmp_path / "last_exit").read_text() == "74\n"  # a job script does not requeue this
    assert checkpoints.read_checkpoint(tmp_path / "step_000000002.pt")["step"] == 2


class _Damaged(torch.utils.data.Dataset):
    def __init__(self, error: type):
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index):
        if index == 2:
            raise self.error("records/a/b.npz", "damaged record: landmarks has shape (3,), expected (9, 131, 2)")
        return torch.zeros(1)


@pytest.mark.parametrize("error", [InputError, BadRecord, DiskError])
def test_the_project_errors_raised_in_a_loader_worker_reach_the_main_process_as_themselves(error):
    loader = torch.utils.data.DataLoader(_Damaged(error), batch_size=1, num_workers=2)
    with pytest.raises(error) as caught:
        list(loader)
    assert type(caught.value) is error
    assert str(caught.value) == "records/a/b.npz: damaged record: landmarks has shape (3,), expected (9, 131, 2)"
    assert caught.value.path == "records/a/b.npz"
