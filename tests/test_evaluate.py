import errno
import itertools
import json
import shutil
from dataclasses import replace

import av
import cv2
import numpy as np
import pytest
import torch

import evaluate
from data.audio import load_audio
from data.errors import DISK_STATUS, DiskError, InputError
from data.video import VideoReader, VideoWriter, read_frames
from metrics.scoring import METRICS, Pair, load_networks, score_videos
from testing.metric_networks import save_random_weights

FRAMES = 8  # SyncNet needs at least 6


def _write(path, frames, audio):
    with VideoWriter(path, audio=audio) as writer:
        for frame in frames:
            writer.write(frame)


def _first(path, count):
    with VideoReader(path) as reader:
        return list(itertools.islice(reader, count))


def _blurred(frames):
    return [cv2.GaussianBlur(f, (0, 0), 2) for f in frames]


def _shifted(frames):
    return [np.ascontiguousarray(np.roll(f, f.shape[0] // 25, axis=0)) for f in frames]


@pytest.fixture(scope="module")
def clips(samples, tmp_path_factory):
    """An LRS2-sized (160x160) 8-frame clip of talk_a with its audio, an exact copy, a blurred and a shifted one."""
    root = tmp_path_factory.mktemp("clips")
    frames = [cv2.resize(f, (160, 160), interpolation=cv2.INTER_AREA)
              for f in _first(samples / "talk_a.mp4", FRAMES)]
    audio = load_audio(samples / "talk_a.mp4")[: FRAMES * 640]
    _write(root / "real" / "clip.mp4", frames, audio)
    (root / "copy").mkdir()
    shutil.copy(root / "real" / "clip.mp4", root / "copy" / "clip.mp4")
    _write(root / "blurred" / "clip.mp4", _blurred(frames), audio)
    _write(root / "shifted" / "clip.mp4", _shifted(frames), audio)
    return root


class _FirstFeatures(torch.nn.Module):
    """The FID network's first 64 features: keeps the 2048-d matrix square root, FID's slow
    part, out of the fast suite."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x):
        return self.network(x)[:, :64]


@pytest.fixture(scope="module")
def random_networks(clips, tmp_path_factory):
    """All metric networks with random weights, loaded through the real weight-file path (tests only)."""
    frames = torch.from_numpy(np.stack(read_frames(clips / "real" / "clip.mp4"))).permute(0, 3, 1, 2).float() / 255
    paths = save_random_weights(tmp_path_factory.mktemp("weights"), frames)
    networks = load_networks(METRICS, paths, "cpu", download=False)
    assert not networks.missing
    networks.models["fid"] = _FirstFeatures(networks.models["fid"])
    return networks


def test_a_video_scored_against_itself(clips, random_networks):
    scores = score_videos([Pair("clip", clips / "copy" / "clip.mp4", clips / "real" / "clip.mp4")],
                          random_networks, progress=False)
    summary, row = scores.summary, scores.per_video[0]
    assert row["frames"] == FRAMES and not scores.reasons
    assert summary["psnr"] == pytest.approx(80.0)  # piq's 1e-8 in the MSE caps identical frames at 80 dB
    assert summary["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert summary["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert summary["lip_lmd"] == 0.0 and row["lip_frames"] == FRAMES
    assert summary["csim"] == pytest.approx(1.0, abs=1e-6)
    assert abs(summary["fid"]) < 1e-3
    assert np.isfinite(summary["lse_c"]) and np.isfinite(summary["lse_d"]) and abs(row["sync_offset"]) <= 15


def test_blurred_and_shifted_copies_move_every_metric_the_right_way(clips, random_networks):
    same = score_videos([Pair("clip", clips / "copy" / "clip.mp4", clips / "real" / "clip.mp4")],
                        random_networks, metrics=("fid",), progress=False).summary["fid"]
    pairs = [Pair(kind, clips / kind / "clip.mp4", clips / "real" / "clip.mp4") for kind in ("blurred", "shifted")]
    scores = score_videos(pairs, random_networks, metrics=("psnr", "ssim", "lpips", "fid", "lip_lmd", "csim"),
                          progress=False)
    for row in scores.per_video:
        assert row["psnr"] < 40 and row["ssim"] < 0.98 and row["lpips"] > 1e-3 and row["csim"] < 0.999, row
    shifted = scores.per_video[1]
    assert shifted["lip_lmd"] > 0.02  # the face moved 6 px on a ~100 px crop
    assert scores.summary["fid"] > same + 1e-3


def test_scoring_mode_on_the_samples_with_absent_weights(samples, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    for name, degrade in (("talk_a", _blurred), ("talk_b", _shifted)):
        frames = _first(samples / f"{name}.mp4", 10)
        audio = load_audio(samples / f"{name}.mp4")[: 10 * 640]
        _write(tmp_path / "real" / "set" / f"{name}.mp4", frames, audio)
        _write(tmp_path / "wav2lip" / "set" / f"{name}.mp4", degrade(frames), audio)
    args = ["--generated", str(tmp_path / "wav2lip"), "--reference", str(tmp_path / "real"), "--no-download",
            "--quiet", "--dataset", "lrs2"]

    assert evaluate.main(args + ["--out", str(tmp_path / "strict")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "alexnet-owt-7be5be79.pth" in error and "download.pytorch.org" in error

    assert evaluate.main(args + ["--out", str(tmp_path / "out"), "--skip-missing"]) == 0
    table = capsys.readouterr().out
    assert table == (tmp_path / "out" / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| wav2lip |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:4] != ["n/a"] * 3 and float(cells[1]) < 40 and float(cells[2]) < 1 and float(cells[5]) > 0
    assert cells[3] == cells[4] == cells[6] == cells[7] == cells[8] == "n/a"  # LPIPS FID CSIM LSE-C LSE-D
    jitter, real_jitter, ratio = (float(cell) for cell in cells[9:12])  # steadiness needs no weights
    assert 0 < jitter < 0.1 and 0 < real_jitter < 0.1 and ratio == pytest.approx(jitter / real_jitter, abs=0.01)
    for file in ("alexnet-owt-7be5be79.pth", "pt_inception-2015-12-05-6726825d.pth", "ms1mv3_arcface_r100.pth",
                 "syncnet_v2.model"):
        assert file in table
    assert "| IP_LAP (paper) | 32.91 |" in table
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["lists"]["scored"] == ["set/talk_a", "set/talk_b"]
    assert results["summary"]["lpips"] is None and "lpips" in results["not_available"]
    assert {"torch", "numpy", "lpips", "mediapipe", "scipy"} <= set(results["versions"])
    assert results["settings"]["frames"] == 20
    csv_lines = (tmp_path / "out" / "per_video.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("name,frames,psnr,ssim")
    assert "lip_jitter,lip_jitter_real,jitter_ratio,jitter_frames" in csv_lines[0]


def test_sampling_and_dubbing_pairing_are_seeded_and_recorded(tmp_path):
    names = [f"spk{i}/{i:05d}" for i in range(100)]
    chosen, audio = evaluate.sample_videos(names, 45, seed=7, dubbing=False)
    assert len(set(chosen)) == 45 and audio == chosen
    assert evaluate.sample_videos(names, 45, seed=7, dubbing=False)[0] == chosen
    assert evaluate.sample_videos(names, 45, seed=8, dubbing=False)[0] != chosen
    dubbed, sources = evaluate.sample_videos(names, 45, seed=7, dubbing=True)
    assert dubbed == chosen and sorted(sources) == sorted(dubbed)
    assert all(video != source for video, source in zip(dubbed, sources))
    assert evaluate.sample_videos(names, 45, seed=7, dubbing=True)[1] == sources
    listing = tmp_path / "test.txt"
    listing.write_text("a/00001 NF\n\nb/00002\n")
    assert evaluate.read_filelist(listing) == ["a/00001", "b/00002"]


def test_videos_are_matched_by_relative_path_and_bad_input_is_one_line(tmp_path, capsys):
    for path in ("gen/a/1.mp4", "gen/a/2.mkv", "gen/extra.mp4", "real/a/1.mov", "real/a/2.mp4", "real/b.mp4"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    pairs, unmatched, not_generated = evaluate.match_pairs(tmp_path / "gen", tmp_path / "real")
    assert [(p.name, p.generated.name, p.reference.name) for p in pairs] == [("a/1", "1.mp4", "1.mov"),
                                                                            ("a/2", "2.mkv", "2.mp4")]
    assert unmatched == ["extra"] and not_generated == ["b"]
    config = tmp_path / "evaluate.yaml"
    config.write_text("weights:\n  lpips: null\nbatchsize: 4\n")
    with pytest.raises(InputError, match="batchsize"):
        evaluate.load_config(config)
    assert evaluate.main(["--generated", str(tmp_path / "nowhere"), "--reference", str(tmp_path / "real"),
                          "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    assert evaluate.load_config(evaluate.CONFIG)["num_videos"] == 45
    assert evaluate.main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "real"),
                          "--out", str(tmp_path / "out"), "--quiet", "protocol=[a]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "protocol: ['a'] is not one of" in err[0], err


def test_generation_mode_dubs_the_sampled_videos_and_scores_them(samples, random_checkpoints, tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    for name in ("talk_a", "talk_b"):
        frames = [cv2.resize(f, (320, 320), interpolation=cv2.INTER_AREA)
                  for f in _first(samples / f"{name}.mp4", 10)]
        _write(tmp_path / "videos" / "set" / f"{name}.mp4", frames, load_audio(samples / f"{name}.mp4")[: 10 * 640])
    (tmp_path / "test.txt").write_text("set/talk_a\nset/talk_b\n")
    (tmp_path / "dub.yaml").write_text((evaluate.CONFIG.parent / "inference.yaml").read_text()
                                       .replace("refs: 25 ", "refs: 1 ").replace("fps: template ", "fps: 30 "))
    out = tmp_path / "out"
    code = evaluate.main(["--setting", "reconstruction", "--filelist", str(tmp_path / "test.txt"), "--video-root",
                          str(tmp_path / "videos"), "--landmark-ckpt", str(random_checkpoints[0]),
                          "--renderer-ckpt", str(random_checkpoints[1]), "--num-videos", "2", "--seed", "3",
                          "--out", str(out), "--inference-config", str(tmp_path / "dub.yaml"), "--skip-missing",
                          "--no-download", "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    made = sorted(p.name for p in (out / "generated" / "set").iterdir())
    assert made == ["talk_a.mp4", "talk_b.mp4"]
    own_audio = load_audio(tmp_path / "videos" / "set" / "talk_a.mp4")  # AAC pads its last frame: 10-11 frames
    assert len(read_frames(out / "generated" / "set" / "talk_a.mp4")) == len(own_audio) * 25 // 16000
    with av.open(str(out / "generated" / "set" / "talk_a.mp4")) as container:  # 25 fps, whatever the config says
        assert container.streams.video[0].average_rate == 25
    sampled = (out / "sampled.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in sampled) == ["set/talk_a", "set/talk_b"]
    assert all(video == audio for video, audio in (line.split("\t") for line in sampled))  # reconstruction
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| IP_LAP (reconstruction)"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert 0 < float(cells[1]) < 40 and 0 < float(cells[2]) < 1 and cells[3] == "n/a"  # random networks: poor


@pytest.mark.slow
def test_full_fid_of_a_video_against_itself_is_about_zero(clips, tmp_path):
    frames = torch.from_numpy(np.stack(read_frames(clips / "real" / "clip.mp4"))).permute(0, 3, 1, 2).float() / 255
    paths = save_random_weights(tmp_path, frames)
    networks = load_networks(("fid",), paths, "cpu", download=False)
    pair = Pair("clip", clips / "copy" / "clip.mp4", clips / "real" / "clip.mp4")
    assert abs(score_videos([pair], networks, metrics=("fid",), progress=False).summary["fid"]) < 1e-2


def test_a_full_disk_at_the_report_is_one_line_and_exit_74_with_the_earlier_report_intact(clips, tmp_path,
                                                                                        monkeypatch, capsys):
    import metrics.report

    out = tmp_path / "out"
    args = ["--generated", str(clips / "blurred"), "--reference", str(clips / "real"), "--metrics", "psnr",
            "--out", str(out), "--quiet", "--device", "cpu"]
    assert evaluate.main(args) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()

    def full_open(path, *args, **kwargs):  # the first report file is written, the second meets a full disk
        handle = open(path, *args, **kwargs)
        if "per_video" in str(path):
            def full(text):
                raise OSError(errno.ENOSPC, "No space left on device")

            handle.write = full
        return handle

    monkeypatch.setattr(metrics.report, "open", full_open, raising=False)
    assert evaluate.main(args + ["--name", "other"]) == DISK_STATUS
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {out / 'per_video.csv'}: no space left on device (report not "
                                         "written)"] and captured.out == ""
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no temporary file, nothing changed


def test_a_full_disk_while_dubbing_names_the_video_and_keeps_the_ones_before(tmp_path, monkeypatch):
    import types

    import dubbing

    def dub(video, audio, output, models, config, progress):
        if output.name == "b.mp4":
            raise OSError(errno.ENOSPC, "No space left on device", str(output.with_name(".b.partial.mp4")))
        output.write_bytes(b"video")

    monkeypatch.setattr(dubbing, "load_models",
                        lambda *args, **kwargs: types.SimpleNamespace(device=torch.device("cpu")))
    monkeypatch.setattr(dubbing, "dub", dub)
    for name in ("landmark.pt", "renderer.pt", "video.mp4"):
        (tmp_path / name).write_bytes(name.encode())
    out = tmp_path / "out"

    def generate():
        return evaluate.generate_videos([tmp_path / "video.mp4"] * 2, [tmp_path / "video.mp4"] * 2, ["a", "b"], out,
                                        tmp_path / "landmark.pt", tmp_path / "renderer.pt", "cpu", progress=False)

    with pytest.raises(DiskError) as caught:
        generate()
    assert str(caught.value) == (f"{out / 'generated' / 'b.mp4'}: no space left on device (video not written; the 1 "
                                 "before it are kept and reused by the next run)")
    assert sorted(p.name for p in (out / "generated_with").iterdir()) == ["a.json"]  # no temporary file
    monkeypatch.setattr(dubbing, "dub", lambda video, audio, output, *rest, **options: output.write_bytes(b"video"))
    assert generate()[1] == 1  # the video made before the disk filled is reused


def test_a_full_disk_met_inside_dubbing_is_named_alike(clips, random_checkpoints, tmp_path, monkeypatch):
    """The real dubbing/ on a disk that fills at the first encoded frame (PyAV's own ENOSPC error, as the writer
    meets it): whatever dubbing/ turns it into, evaluate.py names it as any full disk."""
    import av

    import dubbing
    import dubbing.writer

    def full(writer, frame):
        raise av.error.OSError(errno.ENOSPC, "No space left on device", str(writer._temp))

    monkeypatch.setattr(dubbing.writer.VideoWriter, "write", full)
    load = dubbing.load_models  # the networks' cost is beside the point: the render step passes the face through
    monkeypatch.setattr(dubbing, "load_models", lambda *args, **kwargs: replace(
        load(*args, **kwargs), render_step=lambda r, refs, face, sketches, mels: face))
    (tmp_path / "light.yaml").write_text("refs: 1\npipeline: false\n")
    video, out = clips / "real" / "clip.mp4", tmp_path / "out"
    with pytest.raises(DiskError) as caught:
        evaluate.generate_videos([video], [video], ["a"], out, *random_checkpoints, "cpu", progress=False,
                                 inference_config=tmp_path / "light.yaml")
    assert str(caught.value) == (f"{out / 'generated' / 'a.mp4'}: no space left on device (video not written; the 0 "
                                 "before it are kept and reused by the next run)")
    assert not (out / "generated" / "a.mp4").exists()
