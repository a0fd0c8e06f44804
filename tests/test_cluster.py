"""What clusters do to runs: damaged checkpoints and records, preemption signals, diverging losses, reruns of the
evaluation into the same folder. The trainers run the landmark smoke config, made tiny."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_landmark
import train_render
from conftest import REPO
from data.records import is_complete, record_paths
from losses.landmark import landmark_loss
from training.distributed import Distributed
from training.stopping import DIVERGED, PREEMPTED, Diverged, LossGuard

CONFIG = str(REPO / "configs" / "landmark_smoke.yaml")
TINY = ["data.val_list=null", "model.layers=1", "model.feed_forward=64", "optim.batch_size=4", "sample.epoch_repeats=4",
        "schedule.log_every=1", "schedule.keep_last=5", "schedule.eval_every=1000"]


def _train(records, run_dir, steps, *extra, resume=False) -> int:
    args = ["--config", CONFIG, f"data.records={records}", f"run_dir={run_dir}", f"schedule.max_steps={steps}", *TINY,
            *extra]
    return train_landmark.main((["--resume", "auto"] if resume else []) + args)


def _model(path):
    return torch.load(path, weights_only=True)["model"]


def _assert_same(a, b):
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=0, atol=0, msg=name)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(("error:", "warning:"))]


# ---------------------------------------------------------------- damaged checkpoints
def test_a_truncated_newest_checkpoint_is_skipped_and_the_run_goes_on_from_the_previous(records, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(records, run, 4, "schedule.save_every=2") == 0
    newest = run / "step_000000004.pt"
    newest.write_bytes(newest.read_bytes()[:5000])
    capsys.readouterr()
    assert _train(records, run, 6, "schedule.save_every=2", resume=True) == 0
    err = capsys.readouterr().err
    warnings = [line for line in _error_lines(err) if line.startswith("warning:")]
    assert len(warnings) == 1 and "step_000000004.pt: damaged checkpoint" in warnings[0], err
    assert "resumed from" in err and "step_000000002.pt at step 2" in err
    assert not [line for line in _error_lines(err) if line.startswith("error:")]
    # From step 2 the run is the uninterrupted one: same parameters at step 6.
    assert _train(records, tmp_path / "straight", 6, "schedule.save_every=2") == 0
    _assert_same(_model(tmp_path / "straight" / "step_000000006.pt"), _model(run / "step_000000006.pt"))


def test_when_no_checkpoint_loads_resume_is_one_line_and_exit_2(records, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for step in (2, 4):
        (run / f"step_{step:09d}.pt").write_bytes(b"PK\x03\x04 cut short")
    assert _train(records, run, 6, resume=True) == 2
    errors = [line for line in _error_lines(capsys.readouterr().err) if line.startswith("error:")]
    assert len(errors) == 1 and "no checkpoint loads" in errors[0] and "step_000000002.pt" in errors[0]
    assert sorted(p.name for p in run.glob("step_*.pt")) == ["step_000000002.pt", "step_000000004.pt"]  # kept


def test_an_explicit_damaged_checkpoint_is_one_line(records, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"")
    args = ["--config", CONFIG, f"data.records={records}", f"run_dir={tmp_path / 'run'}", *TINY, "--resume", str(bad)]
    assert train_landmark.main(args) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: damaged checkpoint")


# ---------------------------------------------------------------- damaged records
def _damaged_copy(records, tmp_path, damage: str):
    root = tmp_path / "records"
    shutil.copytree(records, root)
    npz, faces = record_paths(root / "talk_a")
    if damage == "truncated_npz":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
        return root, npz
    if damage == "npz_missing_a_key":
        import numpy as np

        with np.load(npz) as arrays:
            kept = {name: arrays[name] for name in arrays.files if name != "landmarks"}
        with open(npz, "wb") as handle:
            np.savez(handle, **kept)
        return root, npz
    if damage == "npz_wrong_shape":
        import numpy as np

        with np.load(npz) as arrays:
            kept = {name: arrays[name] for name in arrays.files}
        kept["landmarks"] = kept["landmarks"][:, :100]
        with open(npz, "wb") as handle:
            np.savez(handle, **kept)
        return root, npz
    faces.write_bytes(faces.read_bytes()[:-1000])  # faces_cut_short
    return root, faces


@pytest.mark.parametrize("damage", ["truncated_npz", "npz_missing_a_key", "npz_wrong_shape", "faces_cut_short"])
def test_a_damaged_record_stops_training_before_it_starts_with_one_line(damage, records, tmp_path):
    root, damaged = _damaged_copy(records, tmp_path, damage)
    result = subprocess.run([sys.executable, str(REPO / "train_landmark.py"), "--config", CONFIG,
                             f"data.records={root}", f"run_dir={tmp_path / 'run'}", "schedule.max_steps=2", *TINY],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {damaged}: damaged record"), result.stderr[-2000:]
    assert "preprocess" in errors[0]
    assert not list((tmp_path / "run").glob("step_*.pt"))


def test_preprocessing_redoes_a_damaged_record(records, samples, tmp_path, capsys):
    import preprocess

    root, _ = _damaged_copy(records, tmp_path, "truncated_npz")
    assert not is_complete(root / "talk_a") and is_complete(root / "talk_b")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("talk_a.mp4", "talk_b.mp4"):
        (inputs / name).symlink_to(samples / name)
    assert preprocess.main(["--input-root", str(inputs), "--output-root", str(root), "--workers", "0"]) == 0
    assert "1 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert is_complete(root / "talk_a")


# ---------------------------------------------------------------- records that vanish or break mid-run
def _record_trainer(damage_at: int, damage):
    """train(config, resume) for cli.main: the renderer's dataset (which reads .faces files per sample), the loop,
    loader workers, checkpoints and exit statuses, with a one-weight network instead of the renderer's cost;
    `damage()` runs in the damage_at-th step."""
    from data.datasets import RenderFrames
    from training import checkpoints, distributed, loop

    def train(config: dict, resume: str | None) -> int:
        env = distributed.begin(config)
        dataset = RenderFrames(loop.record_list(config["data"], "train"), refs=1, min_face_frames=25,
                               repeats=config["sample"]["epoch_repeats"],
                               on_bad_record=config["schedule"]["on_bad_record"])
        model = torch.nn.Linear(1, 1)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
        step = checkpoints.resume(resume, config, env, model, {"model": optimiser})
        loader = loop.train_loader(dataset, config, env)

        def save(step: int, alone: bool = False) -> None:
            checkpoints.save(config, env, step, "test", model, {"model": optimiser}, {}, alone=alone)

        calls = 0
        with loop.Run(config, env, loader, step, save, lambda step, logger: None) as run:
            for _epoch in run.epochs():
                for batch in loader:
                    calls += 1
                    if calls == damage_at:
                        damage()
                    loss = model(run.to_device(batch)["face"].mean().reshape(1, 1)).square().mean()
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    run.after_step({"loss": loss.detach()})
        loop.finish(env, [model])
        return 0

    return train


def _tiny_records(tmp_path, damage: str):
    """Two small records, and what damages the first: its .faces file deleted, or cut short."""
    from test_packs import write_records

    stems = write_records(tmp_path / "records")
    faces = record_paths(stems[0])[1]
    if damage == "deleted":
        return tmp_path / "records", faces, faces.unlink
    return tmp_path / "records", faces, lambda: faces.write_bytes(faces.read_bytes()[:1000])


def _run_on_records(root, run_dir, damage_at, damage, workers, *extra, resume=False) -> int:
    from training import cli

    args = ["--config", str(REPO / "configs" / "render_smoke.yaml"), f"data.records={root}", f"run_dir={run_dir}",
            "data.val_list=null", f"data.num_workers={workers}", "optim.batch_size=2", "sample.epoch_repeats=12",
            "schedule.max_steps=12", "schedule.save_every=1000", "schedule.eval_every=1000", "schedule.log_every=4",
            "schedule.sync_every=4", *extra]
    return cli.main("test trainer", _record_trainer(damage_at, damage), (["--resume", "auto"] if resume else []) + args,
                    base=train_render.BASE_CONFIG)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_record_that_breaks_mid_run_stops_it_with_a_checkpoint_of_the_step_reached(damage, workers, tmp_path,
                                                                                     capsys):
    root, faces, spoil = _tiny_records(tmp_path, damage)
    kept = faces.read_bytes()
    run = tmp_path / "run"
    assert _run_on_records(root, run, 2, spoil, workers) == PREEMPTED
    err = capsys.readouterr().err
    errors = _error_lines(err)
    assert len(errors) == 1 and errors[0].startswith(f"error: {faces}: ") and "Traceback" not in err, err
    assert ("vanished during training" if damage == "deleted" else "cut short during training") in errors[0]
    saved = list(run.glob("step_*.pt"))
    assert len(saved) == 1 and (run / "last_exit").read_text() == "75\n"
    step = torch.load(saved[0], weights_only=True)["step"]
    assert 2 <= step < 12 and f"stopped at step {step} after writing its checkpoint" in errors[0]
    if damage == "deleted" and workers == 0:  # the record mended, --resume auto goes on from there
        faces.write_bytes(kept)
        assert _run_on_records(root, run, 0, None, workers, resume=True) == 0
        assert f"resumed from {saved[0]} at step {step}" in capsys.readouterr().err
        assert (run / "step_000000012.pt").is_file()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_skip_mode_replaces_samples_of_a_record_that_breaks_and_counts_them(damage, workers, tmp_path, monkeypatch,
                                                                            capsys):
    from training import loop

    logged = {}
    scalars = loop.Logger.scalars
    monkeypatch.setattr(loop.Logger, "scalars", lambda self, values, step, prefix="": logged.update(
        {f"{prefix}{name}": value for name, value in values.items()}) or scalars(self, values, step, prefix))
    root, faces, spoil = _tiny_records(tmp_path, damage)
    assert _run_on_records(root, tmp_path / "run", 2, spoil, workers, "schedule.on_bad_record=skip") == 0
    err = capsys.readouterr().err
    warnings = [line for line in _error_lines(err) if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {faces}: ") and "Traceback" not in err, err
    assert "replaced by another" in warnings[0] and not [line for line in _error_lines(err) if "error" in line[:6]]
    assert logged["train/skipped_samples"] > 0 and (tmp_path / "run" / "step_000000012.pt").is_file()


# ---------------------------------------------------------------- a full disk for TensorBoard
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # the writer thread's traceback
@pytest.mark.parametrize("where", ["add_scalar", "event_thread"])
def test_a_full_disk_for_tensorboard_warns_once_and_training_goes_on(where, tmp_path, monkeypatch, capsys):
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard import SummaryWriter

    owner, name = (SummaryWriter, "add_scalar") if where == "add_scalar" else (RecordWriter, "write")
    original, calls = getattr(owner, name), {"n": 0}

    def full(self, *args, **kwargs):  # the third write and all after it meet a full disk
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, full)
    root, _, _ = _tiny_records(tmp_path, "deleted")
    run = tmp_path / "run"
    assert _run_on_records(root, run, 0, None, 0, "schedule.log_every=1", "schedule.save_every=6") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {run}: no space left on device; TensorBoard logging stopped here, training goes "
                        "on (checkpoints are still written)"] and "Traceback" not in err, err
    assert calls["n"] >= 3 and sorted(p.name for p in run.glob("step_*.pt")) == ["step_000000006.pt",
                                                                                 "step_000000012.pt"]


# ---------------------------------------------------------------- preemption
def _signal_at_call(monkeypatch, module, number: int, sig: int):
    """Make the trainer's loss send `sig` to this process during its `number`-th call (mid-step)."""
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == number:
            os.kill(os.getpid(), sig)
        return landmark_loss(*args, **kwargs)

    monkeypatch.setattr(module, "landmark_loss", loss)


def test_sigterm_mid_run_saves_the_step_reached_and_resuming_equals_an_uninterrupted_run(records, tmp_path,
                                                                                        monkeypatch, capsys):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _signal_at_call(patch, train_landmark, 4, signal.SIGTERM)
        assert _train(records, run, 7, "schedule.save_every=100") == PREEMPTED
    assert sorted(p.name for p in run.glob("step_*.pt")) == ["step_000000004.pt"]
    assert "stopped by SIGTERM at step 4" in capsys.readouterr().err
    assert (run / "last_exit").read_text() == "75\n"  # for job scripts behind torchrun
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the loop
    assert _train(records, run, 7, "schedule.save_every=100", resume=True) == 0
    assert (run / "last_exit").read_text() == "0\n"
    assert _train(records, tmp_path / "straight", 7, "schedule.save_every=100") == 0
    _assert_same(_model(tmp_path / "straight" / "step_000000007.pt"), _model(run / "step_000000007.pt"))


def test_sigusr1_to_a_running_trainer_process_exits_75_with_a_checkpoint(records, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(REPO / "train_landmark.py"), "--config", CONFIG,
                                f"data.records={records}", f"run_dir={run}", "schedule.max_steps=100000",
                                "schedule.save_every=100000", *TINY], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run / "config.yaml").is_file() and time.monotonic() < deadline:  # written just before the loop
        time.sleep(0.2)
    time.sleep(3)
    process.send_signal(signal.SIGUSR1)
    _, err = process.communicate(timeout=240)
    assert process.returncode == PREEMPTED, err[-2000:]
    saved = list(run.glob("step_*.pt"))
    assert len(saved) == 1 and "Traceback" not in err
    step = torch.load(saved[0], weights_only=True)["step"]
    assert step > 0 and f"stopped by SIGUSR1 at step {step}" in err


# ---------------------------------------------------------------- divergence
def _poison_at_call(monkeypatch, number: int):
    calls = {"n": 0}

    def loss(pred, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == number:
            pred = pred * float("nan")
        return landmark_loss(pred, *args, **kwargs)

    monkeypatch.setattr(train_landmark, "landmark_loss", loss)


def test_a_nan_loss_stops_the_run_without_a_nan_checkpoint_and_resume_goes_on(records, tmp_path, monkeypatch,
                                                                              capsys):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _poison_at_call(patch, 5)
        assert _train(records, run, 8, "schedule.save_every=2") == DIVERGED
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith("error: step 5: loss part 'l1' is nan"), errors
    assert sorted(p.name for p in run.glob("step_*.pt")) == ["step_000000002.pt", "step_000000004.pt"]
    for path in run.glob("step_*.pt"):
        assert all(torch.isfinite(t).all() for t in _model(path).values() if t.is_floating_point())
    assert _train(records, run, 8, "schedule.save_every=2", resume=True) == 0
    assert (run / "step_000000008.pt").is_file()


def test_skip_mode_leaves_a_nan_step_out_and_counts_it(records, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _poison_at_call(monkeypatch, 3)
    assert _train(records, run, 4, "schedule.save_every=4", "schedule.on_nonfinite=skip") == 0
    err = capsys.readouterr().err
    assert "warning: step 3: a loss part is not finite; step skipped (1 so far)" in err
    assert all(torch.isfinite(t).all() for t in _model(run / "step_000000004.pt").values() if t.is_floating_point())


def test_the_renderer_step_checks_both_losses_before_their_updates(records):
    from data.datasets import RenderFrames, records_under
    from losses.perceptual import PerceptualLoss, load_vgg19_features
    from models.discriminator import MultiscaleDiscriminator
    from models.renderer import Renderer

    torch.manual_seed(0)
    generator, discriminator = Renderer(), MultiscaleDiscriminator()
    perceptual = PerceptualLoss(load_vgg19_features(allow_random=True))
    dataset = RenderFrames(records_under(records), refs=1)
    batch = dataset.to_device({k: torch.stack([dataset[i][k] for i in range(2)]) for k in dataset[0]},
                              torch.device("cpu"))
    batch["face"][0, 0, 0, 0] = float("nan")  # a poisoned target: every loss that sees it is NaN
    g_opt, d_opt = torch.optim.Adam(generator.parameters()), torch.optim.Adam(discriminator.parameters())
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    env = Distributed(0, 1, 0, torch.device("cpu"))
    guard = LossGuard(env, "skip")
    weights = {"warp": 2.5, "reconstruction": 4.0, "style": 1000.0, "gan": 0.25, "feature_matching": 2.5}
    parts = train_render.gan_step(generator, discriminator, g_opt, d_opt, perceptual, batch, weights, False,
                                  lambda: torch.autocast("cpu", enabled=False), guard)
    assert parts == {} and guard.skipped == 1
    _assert_same(before, generator.state_dict())
    stop = LossGuard(env, "stop")  # notes the bad part on the device; the loop's next sync step reads it
    train_render.gan_step(generator, discriminator, g_opt, d_opt, perceptual, batch, weights, False,
                          lambda: torch.autocast("cpu", enabled=False), stop)
    with pytest.raises(Diverged, match="loss part 'generator warp' is nan"):
        stop.check()


# ---------------------------------------------------------------- evaluation reruns
@pytest.mark.slow  # 55 s on a 2-core CPU: keeps the default suite under 15 minutes; run with -m slow
def test_generation_reuses_a_video_only_for_the_same_checkpoints_and_settings(samples, random_checkpoints, tmp_path):
    import itertools

    import cv2

    import evaluate
    from data.audio import load_audio
    from data.video import VideoReader, VideoWriter
    from models.landmark_generator import LandmarkGenerator

    with VideoReader(samples / "talk_a.mp4") as reader:
        frames = [cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in itertools.islice(reader, 6)]
    video = tmp_path / "talk_a.mp4"
    with VideoWriter(video, audio=load_audio(samples / "talk_a.mp4")[: 6 * 640]) as writer:
        for frame in frames:
            writer.write(frame)
    dub_config = tmp_path / "dub.yaml"
    dub_config.write_text((REPO / "configs" / "inference.yaml").read_text().replace("refs: 25 ", "refs: 1 "))
    landmark, renderer = random_checkpoints
    out = tmp_path / "out"

    def generate(landmark_ckpt, config=dub_config):
        outputs, reused = evaluate.generate_videos([video], [video], ["set/talk_a"], out, landmark_ckpt, renderer,
                                                   "cpu", progress=False, inference_config=config)
        return outputs[0], reused

    output, reused = generate(landmark)
    assert reused == 0 and output.is_file() and (out / "generated_with" / "set" / "talk_a.json").is_file()
    made = output.stat().st_mtime_ns
    output, reused = generate(landmark)
    assert reused == 1 and output.stat().st_mtime_ns == made
    torch.manual_seed(5)  # another landmark checkpoint (other weights, same file format)
    other = tmp_path / "other_landmark.pt"
    torch.save({"kind": "landmark_generator", "model": LandmarkGenerator().state_dict(), "model_args": {}}, other)
    output, reused = generate(other)
    assert reused == 0 and output.stat().st_mtime_ns != made
    changed = tmp_path / "dub2.yaml"
    changed.write_text(dub_config.read_text().replace("sigma: 11.0", "sigma: 9.0"))
    assert generate(other, changed)[1] == 0 and generate(other, changed)[1] == 1
