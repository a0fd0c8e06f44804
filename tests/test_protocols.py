"""The evaluation protocols' new steps against independent references: syncnet_python's codec round trips
(metrics/round_trip.py), the iplap CSIM (whole frames, all pairs) and piq's Newton-Schulz FID root."""
import io
import json

import av
import cv2
import numpy as np
import pytest
import torch

import evaluate
from data.video import VideoWriter, read_frames
from metrics.fid import fid, frechet_distance, sqrtm_newton_schulz, statistics
from metrics.identity import IResNet
from metrics.protocols import PROTOCOLS
from metrics.round_trip import crop_round_trip, jpeg_files, mpeg4_round_trip, read_jpegs
from metrics.scoring import Networks, Pair, score_videos
from metrics.sync import face_crop, sync_crops
from testing.metric_networks import calibrated

# The MPEG-1 default intra matrix (ISO/IEC 11172-2), which ffmpeg's JPEG encoder scales by the frame's quantiser.
MPEG1_INTRA = np.array([[8, 16, 19, 22, 26, 27, 29, 34], [16, 16, 22, 24, 27, 29, 34, 37],
                        [19, 22, 26, 27, 29, 34, 34, 38], [22, 22, 26, 27, 29, 34, 37, 40],
                        [22, 26, 27, 29, 32, 35, 40, 48], [26, 27, 29, 32, 35, 40, 48, 58],
                        [26, 27, 29, 34, 38, 46, 56, 69], [27, 29, 35, 38, 46, 56, 69, 83]])
ZIGZAG = sorted(((i, j) for i in range(8) for j in range(8)),
                key=lambda p: (p[0] + p[1], p[1] if (p[0] + p[1]) % 2 == 0 else p[0]))


@pytest.fixture(scope="module")
def crops(talk_a_frames):
    """24 BGR 224x224 crops of talk_a around its face (two key-frame intervals of the XVID writer)."""
    return np.stack([face_crop(frame, 420, 430, 170) for frame in talk_a_frames[:24]])


def _luma_table(jpeg: bytes) -> np.ndarray:
    start = jpeg.find(b"\xff\xdb")  # DQT marker, length (2), precision/id (1), 64 zigzag entries
    return np.frombuffer(jpeg[start + 5:start + 69], np.uint8).astype(int)


def _quantiser(table: np.ndarray) -> int | None:
    """The q whose ffmpeg JPEG table (DC 8, clip(matrix * q >> 3)) is `table`, or None."""
    matrix = np.array([MPEG1_INTRA[i, j] for i, j in ZIGZAG])
    for q in range(1, 32):
        if np.array_equal(np.r_[8, np.minimum((matrix[1:] * q) >> 3, 255)], table):
            return q
    return None


def test_the_xvid_stage_matches_opencvs_xvid_writer(crops, tmp_path):
    path = str(tmp_path / "crops.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"XVID"), 25, (224, 224))
    for crop in crops:
        writer.write(crop)
    writer.release()
    with av.open(path) as container:  # OpenCV's own encode of the same crops, the reference
        opencv = np.stack([frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)])
    ours = np.stack([frame.to_ndarray(format="bgr24") for frame in mpeg4_round_trip(crops)])
    assert ours.shape == opencv.shape == crops.shape
    lost = np.abs(ours.astype(int) - crops).mean()
    apart = np.abs(ours.astype(int) - opencv).mean()
    assert lost > 1.5  # the codec changes the pixels ...
    assert apart < 0.25 * lost  # ... as OpenCV's writer does (libavcodec 59 there, PyAV's own here)
    key_frames = np.abs(ours[::12].astype(int) - opencv[::12]).mean()
    assert key_frames < 0.5


def test_the_jpeg_stage_quantises_as_ffmpeg_with_and_without_qscale(crops):
    decoded = mpeg4_round_trip(crops)
    default = [_quantiser(_luma_table(jpeg)) for jpeg in jpeg_files(decoded)]
    assert None not in default  # every table is ffmpeg's scaled MPEG-1 matrix
    assert default[0] <= 4 and default[-1] >= 20  # rate control at 200 kbit/s raises q as the clip goes on
    assert default[12:] == sorted(default[12:])
    assert {_quantiser(_luma_table(jpeg)) for jpeg in jpeg_files(decoded, quantiser=2)} == {2}  # -qscale:v 2

    files = jpeg_files(decoded)
    ours = read_jpegs(files)  # libjpeg, as cv2.imread
    with av.open(io.BytesIO(b"".join(files)), format="mjpeg") as container:  # ffmpeg's own JPEG decoder
        ffmpeg = np.stack([frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)])
    source = np.stack([frame.to_ndarray(format="bgr24") for frame in decoded])
    assert np.abs(ours.astype(int) - source).mean() > 2  # the JPEG step moves pixels by grey levels ...
    assert np.abs(ours.astype(int) - ffmpeg).mean() < 1  # ... the same through an independent decoder


def test_sync_crops_take_both_round_trips_only_when_asked(talk_a_frames):
    frames = talk_a_frames[:13]
    track = np.tile([420.0, 430.0, 170.0], (len(frames), 1))
    plain = sync_crops(frames, track, round_trip=False)
    assert np.array_equal(plain, np.stack([face_crop(f, 420, 430, 170) for f in frames]))
    through = sync_crops(frames, track, round_trip=True)
    assert through.shape == plain.shape and through.dtype == np.uint8
    moved = np.abs(through.astype(int) - plain).mean()
    assert 1 < moved < 10
    assert np.abs(crop_round_trip(plain).astype(int) - plain).mean() < moved + 1  # the frame step adds to it


def test_newton_schulz_root_agrees_with_scipy_on_a_covariance_with_a_known_root():
    from scipy import linalg

    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(48, 48)))
    root = rotation @ np.diag(rng.uniform(0.3, 3.0, 48)) @ rotation.T  # symmetric positive definite
    square = root @ root
    found, error = sqrtm_newton_schulz(square)
    assert error <= 1e-5
    assert np.abs(found - root).max() < 1e-5 * np.abs(root).max()  # stated tolerance: 1e-5 of the largest entry
    assert np.abs(found - linalg.sqrtm(square)).max() < 1e-5 * np.abs(root).max()
    from piq.fid import _sqrtm_newton_schulz

    theirs, _ = _sqrtm_newton_schulz(torch.from_numpy(square))
    assert np.abs(found - theirs.numpy()).max() < 1e-10  # the same iteration, the same stopping rule


def test_fid_under_each_protocol_equals_its_reference_package():
    import piq
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(1)
    real, generated = rng.normal(size=(300, 32)), 1.2 * rng.normal(size=(250, 32)) + 0.1
    mu1, sigma1 = statistics(real)
    mu2, sigma2 = statistics(generated)
    standard = fid(real, generated, PROTOCOLS["standard"].fid_root)
    assert standard == pytest.approx(calculate_frechet_distance(mu1, sigma1, mu2, sigma2), rel=1e-9)
    iplap = fid(real, generated, PROTOCOLS["iplap"].fid_root)
    expected = float(piq.FID().compute_metric(torch.from_numpy(generated), torch.from_numpy(real)))
    assert iplap == pytest.approx(expected, rel=1e-9)
    assert iplap == pytest.approx(standard, rel=1e-4)  # full-rank covariances: the two roots agree
    few_real, few_generated = real[:12], generated[:10]  # fewer samples than features: a singular product
    expected = float(piq.FID().compute_metric(torch.from_numpy(few_generated), torch.from_numpy(few_real)))
    assert fid(few_real, few_generated, "newton_schulz") == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="unknown square root"):
        frechet_distance(mu1, sigma1, mu2, sigma2, root="eigen")


@pytest.fixture(scope="module")
def clips(samples, tmp_path_factory):
    """Two 6-frame 160x160 clips (talk_a, talk_b) and blurred copies, as real and generated folders."""
    root = tmp_path_factory.mktemp("protocol_clips")
    for name in ("talk_a", "talk_b"):
        frames = [cv2.resize(f, (160, 160), interpolation=cv2.INTER_AREA)
                  for f in read_frames(samples / f"{name}.mp4")[:6]]
        for kind, made in (("real", frames), ("generated", [cv2.GaussianBlur(f, (0, 0), 2) for f in frames])):
            (root / kind).mkdir(exist_ok=True)
            with VideoWriter(root / kind / f"{name}.mp4") as writer:
                for frame in made:
                    writer.write(frame)
    return root


def test_iplap_csim_is_the_mean_cosine_over_all_whole_frame_pairs(clips):
    torch.manual_seed(0)
    frames = {kind: [f for name in ("talk_a", "talk_b") for f in read_frames(clips / kind / f"{name}.mp4")]
              for kind in ("real", "generated")}

    def whole(batch):  # the ViCo compute_csim.py framing, written out
        return torch.from_numpy(np.stack([cv2.resize(f, (112, 112)) for f in batch])).permute(0, 3, 1, 2) \
            .float().div(255).sub(0.5).div(0.5)

    # iresnet100's layout with one unit per stage: the same definition at a tenth of the test's time
    network = calibrated(IResNet(blocks=(1, 1, 1, 1)), whole(frames["real"] + frames["generated"]))
    networks = Networks({"csim": network})
    with torch.no_grad():
        real = network(whole(frames["real"])).double().numpy()
        generated = network(whole(frames["generated"])).double().numpy()
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    generated /= np.linalg.norm(generated, axis=1, keepdims=True)
    by_hand = float((real @ generated.T).mean())  # sklearn's cosine_similarity(gt, pd).mean(): every pair
    matched = float((real * generated).sum(axis=1).mean())
    assert abs(by_hand - matched) > 1e-3  # the two pairings are different numbers here

    pairs = [Pair(name, clips / "generated" / f"{name}.mp4", clips / "real" / f"{name}.mp4")
             for name in ("talk_a", "talk_b")]
    scores = score_videos(pairs, networks, ("csim",), batch_size=4, progress=False, protocol=PROTOCOLS["iplap"])
    assert scores.summary["csim"] == pytest.approx(by_hand, abs=1e-6)
    first = (real[:6] @ generated[:6].T).mean()
    assert scores.per_video[0]["csim"] == pytest.approx(first, abs=1e-6) and scores.per_video[0]["csim_frames"] == 6


def test_the_report_names_its_protocol_and_sync_pipeline_and_a_bad_protocol_is_one_line(clips, tmp_path, capsys):
    args = ["--generated", str(clips / "generated"), "--reference", str(clips / "real"), "--metrics", "psnr",
            "--quiet", "--device", "cpu"]
    assert evaluate.main(args + ["--out", str(tmp_path / "iplap"), "--protocol", "iplap"]) == 0
    results = json.loads((tmp_path / "iplap" / "results.json").read_text())
    assert results["settings"]["protocol"]["name"] == "iplap"
    assert results["settings"]["protocol"]["fid_root"] == "newton_schulz"
    assert results["settings"]["sync_pipeline"]["reference_pipeline"] is True
    assert "- protocol: iplap" in (tmp_path / "iplap" / "table.md").read_text()
    assert evaluate.main(args + ["--out", str(tmp_path / "plain"), "sync.reference_pipeline=false"]) == 0
    results = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert results["settings"]["protocol"]["name"] == "standard"  # the config's default
    assert results["settings"]["sync_pipeline"]["reference_pipeline"] is False
    capsys.readouterr()
    config = tmp_path / "evaluate.yaml"
    config.write_text("protocol: vico\n")
    assert evaluate.main(args + ["--out", str(tmp_path / "bad"), "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "evaluate.yaml" in error and "vico" in error
    assert not (tmp_path / "bad").exists()
