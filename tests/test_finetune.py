"""finetune.py: held-out seconds, the speaker config's sections, one-line refusals; end to end on a sample video with
its report and a dub from the result; and fine-tuning on a second speaker lowering that speaker's held-out
loss (slow)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

import finetune
from config import read_yaml
from data.audio import SAMPLE_RATE, load_audio
from data.holdout import split_video
from data.video import FPS, read_frames

REPO = Path(__file__).resolve().parents[1]
# Two steps per stage, batch 2, one reference, a one-layer landmark generator: the smoke size.
SMOKE = ["landmark.model.layers=1", "landmark.model.feed_forward=64", "landmark.optim.batch_size=4",
         "landmark.sample.epoch_repeats=4", "landmark.schedule.max_steps=2", "landmark.schedule.save_every=2",
         "landmark.schedule.eval_every=2", "landmark.schedule.eval_batches=1", "landmark.data.num_workers=0",
         "renderer.vgg19.allow_random=true", "renderer.optim.batch_size=2", "renderer.sample.refs=1",
         "renderer.sample.epoch_repeats=2", "renderer.schedule.max_steps=2", "renderer.schedule.save_every=2",
         "renderer.schedule.eval_every=2", "renderer.schedule.eval_batches=1", "renderer.data.num_workers=0"]


def test_split_video_holds_out_the_last_seconds(samples, tmp_path):
    train, holdout = tmp_path / "train.mp4", tmp_path / "holdout.mp4"
    counts = split_video(samples / "talk_b.mp4", train, holdout, 1.5)
    total = len(load_audio(samples / "talk_b.mp4"))
    cut = round((total / SAMPLE_RATE - 1.5) * FPS)
    assert counts == (cut, 125 - cut)
    assert [len(read_frames(path)) for path in (train, holdout)] == list(counts)
    kept = [len(load_audio(path)) for path in (train, holdout)]
    assert abs(kept[0] - cut * SAMPLE_RATE // FPS) < SAMPLE_RATE // FPS  # AAC pads to its frame size at most
    assert abs(sum(kept) - total) < 2 * SAMPLE_RATE // FPS


def test_the_speaker_config_sections_lay_over_each_trainers_base(tmp_path):
    stages = finetune.stage_configs(finetune.CONFIG, ["renderer.optim.lr=3e-5", "landmark.seed=4"])
    assert stages["renderer"][1] == ["optim.lr=3e-5"] and stages["landmark"][1] == ["seed=4"]
    assert stages["renderer"][0]["schedule"]["warmup_epochs"] == 0
    assert stages["landmark"][0]["optim"]["lr"] == stages["renderer"][0]["optim"]["lr"] == 1e-5
    # finetune_256 keeps configs/render_256.yaml's size, discriminator and batch.
    grown, at_256 = read_yaml(REPO / "configs" / "finetune_256.yaml"), read_yaml(REPO / "configs" / "render_256.yaml")
    assert (grown["face_size"], grown["discriminator"], grown["optim"]["batch_size"]) == \
        (at_256["face_size"], at_256["discriminator"], at_256["optim"]["batch_size"])


def test_bad_input_is_one_line(random_checkpoints, samples, tmp_path, capsys):
    landmark, renderer = (str(path) for path in random_checkpoints)
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "talk_b.mp4").symlink_to(samples / "talk_b.mp4")
    base = ["--init-landmark", landmark, "--init-renderer", renderer, "--out", str(tmp_path / "out")]
    (tmp_path / "typo.yaml").write_text("renderer: {optim: {learning_rate: 1}}\n")
    (tmp_path / "stage.yaml").write_text("render: {}\n")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--videos", str(tmp_path / "none"), *base], f"{tmp_path / 'none'}: no such folder of videos"),
        (["--videos", str(tmp_path / "empty"), *base], f"{tmp_path / 'empty'}: no videos"),
        (["--videos", str(videos), *base, "--holdout-seconds", "4"], "too short to hold out 4 s"),
        (["--videos", str(videos), *base, "--config", str(tmp_path / "typo.yaml")],
         "unknown config key 'renderer.optim.learning_rate'"),
        (["--videos", str(videos), *base, "--config", str(tmp_path / "stage.yaml")], "unknown section 'render'"),
        (["--videos", str(videos), *base, "optim.lr=1"], "overrides take the form landmark.KEY=VALUE"),
        (["--videos", str(videos), "--init-landmark", renderer, "--init-renderer", renderer, "--out",
          str(tmp_path / "out")], "holds a renderer, not a landmark generator"),
        (["--videos", str(videos), "--init-landmark", landmark, "--init-renderer", str(tmp_path / "r.pt"), "--out",
          str(tmp_path / "out")], f"{tmp_path / 'r.pt'}: renderer checkpoint not found"),
    ]
    for argv, problem in cases:
        assert finetune.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and problem in err[0], (argv, err)
    assert not (tmp_path / "out" / "videos" / "train" / "talk_b.mp4").exists()  # the refusals wrote no split


def test_finetune_end_to_end_reports_exports_and_dubs(random_checkpoints, samples, tmp_path, capsys):
    import inference

    landmark = tmp_path / "landmark_small.pt"  # a landmark generator of the smoke size, as SMOKE trains
    torch.manual_seed(0)
    from models.landmark_generator import LandmarkGenerator

    torch.save({"kind": "landmark_generator", "model": LandmarkGenerator(layers=1, feed_forward=64).state_dict(),
                "model_args": {"layers": 1, "feed_forward": 64}}, landmark)
    renderer = random_checkpoints[1]
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "talk_a.mp4").symlink_to(samples / "talk_a.mp4")
    out = tmp_path / "run"
    light = tmp_path / "light.yaml"  # the held-out dubs with one reference: seconds on a CPU rather than minutes
    light.write_text("refs: 1\n")
    argv = ["--videos", str(videos), "--init-landmark", str(landmark), "--init-renderer", str(renderer), "--out",
            str(out), "--holdout-seconds", "1.0", "--inference-config", str(light), "--device", "cpu", *SMOKE]
    assert finetune.main(argv) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "| PSNR (dB) |" in report and "| LSE-C |" in report and report.split("# ")[1].split("\n\n")[1] in printed
    before = json.loads((out / "eval" / "before" / "results.json").read_text())["summary"]
    after = json.loads((out / "eval" / "after" / "results.json").read_text())["summary"]
    assert f"| PSNR (dB) | {before['psnr']:.4f} | {after['psnr']:.4f} |" in report
    assert sorted(p.name for p in (out / "export" / "renderer").iterdir()) == [
        "README.md", "config.json", "discriminator.safetensors", "renderer.safetensors"]
    for stage, source in (("landmark", landmark), ("renderer", renderer)):
        recorded = read_yaml(out / stage / "config.yaml")["init"]
        assert recorded["source"] == str(source) and len(recorded["sha256"]) == 64
        assert torch.load(out / stage / "step_000000002.pt", weights_only=True)["step"] == 2
    command = [line for line in printed.splitlines() if line.strip().startswith("python inference.py")]
    assert len(command) == 1
    assert inference.main(shlex.split(command[0])[2:] + ["--device", "cpu", "--quiet", "refs=1"]) == 0
    assert (out / "dub.mp4").stat().st_size > 0
    # Rerun: everything is found done; the same report.
    assert finetune.main(argv) == 0
    assert (out / "report.md").read_text() == report
    assert "generated videos reused" in (out / "eval" / "after" / "table.md").read_text()


def heldout_l1(checkpoint: Path, records: Path) -> float:
    """Mean L1 between the renderer's reconstructions and the real faces over fixed samples of held-out records."""
    from data.datasets import RenderFrames, records_under
    from model_files.checkpoints import load_renderer
    from training import loop

    model = load_renderer(checkpoint)
    dataset = RenderFrames(records_under(records), refs=1, seed=11, repeats=8)
    loader = torch.utils.data.DataLoader(dataset, 4, shuffle=False)
    losses = []
    with torch.no_grad():
        for batch in loop.eval_batches(loader, torch.device("cpu"), 2):
            generated, _ = model(batch["face"], batch["sketches"], batch["ref_images"], batch["ref_sketches"],
                                 batch["mels"])
            losses.append((generated.float() - batch["face"]).abs().mean().item())
    return sum(losses) / len(losses)


@pytest.mark.slow  # minutes on a 2-core CPU: three preprocessing runs and 10 renderer steps
def test_finetuning_on_a_second_speaker_lowers_its_held_out_loss(samples, tmp_path):
    import preprocess
    import train_render

    for name in ("talk_a", "talk_b"):
        (tmp_path / "in" / name).mkdir(parents=True)
    (tmp_path / "in" / "talk_a" / "talk_a.mp4").symlink_to(samples / "talk_a.mp4")
    split_video(samples / "talk_b.mp4", tmp_path / "in" / "talk_b" / "talk_b.mp4",
                tmp_path / "in" / "holdout" / "talk_b.mp4", 1.5)
    for part in ("talk_a", "talk_b", "holdout"):
        assert preprocess.main(["--input-root", str(tmp_path / "in" / part), "--output-root",
                                str(tmp_path / "records" / part), "--workers", "0"]) == 0
    small = ["--config", "configs/render_smoke.yaml", "data.val_list=null", "optim.batch_size=2", "sample.refs=1",
             "sample.epoch_repeats=8", "schedule.warmup_epochs=0", "schedule.max_steps=5", "schedule.save_every=5",
             "schedule.eval_every=1000"]
    brief = tmp_path / "brief"  # a model trained briefly on the first speaker
    assert train_render.main([*small, f"data.records={tmp_path / 'records' / 'talk_a'}", f"run_dir={brief}"]) == 0
    tuned = tmp_path / "tuned"  # fine-tuned on the second speaker's training part
    assert train_render.main([*small, f"data.records={tmp_path / 'records' / 'talk_b'}", f"run_dir={tuned}",
                              "--init", str(brief / "step_000000005.pt")]) == 0
    holdout = tmp_path / "records" / "holdout"
    before, after = heldout_l1(brief / "step_000000005.pt", holdout), heldout_l1(tuned / "step_000000005.pt", holdout)
    assert after < 0.9 * before, (before, after)
