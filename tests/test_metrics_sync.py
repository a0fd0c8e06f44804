import numpy as np
import pytest
import torch

from data.errors import InputError
from metrics.sync import MAX_OFFSET, face_crop, load_syncnet, mfcc, offset_distances, sync_features, sync_scores


@pytest.mark.parametrize("shift", [-7, 0, 4, 15])
def test_offset_search_finds_a_shift_planted_in_synthetic_features(shift):
    rng = np.random.default_rng(3)
    audio = torch.from_numpy(rng.normal(size=(80, 32))).float()
    # The video feature at t matches the audio feature at t + shift (the audio leads by `shift` frames).
    video = torch.stack([audio[t + shift] if 0 <= t + shift < 80 else torch.zeros(32) for t in range(80)])
    video = video + 0.01 * torch.from_numpy(rng.normal(size=video.shape)).float()
    distances = offset_distances(video, audio)
    assert distances.shape == (80, 2 * MAX_OFFSET + 1)
    scores = sync_scores(distances)
    assert scores["offset"] == -shift
    assert scores["lse_d"] < 2 and scores["lse_c"] > 2  # a clear minimum well below the median


def test_syncnet_loads_syncnet_python_weights_and_scores_a_clip(tmp_path, samples):
    from data.audio import load_audio
    from metrics.sync import SyncNet

    # A file as syncnet_python's release is laid out (no BatchNorm counters, saved before PyTorch 0.4.1), with
    # values of its own: the loaded network must hold exactly them, not its initialisation.
    g = torch.Generator().manual_seed(4)
    state = {k: torch.rand(v.shape, generator=g) + 0.5 for k, v in SyncNet().state_dict().items()
             if not k.endswith("num_batches_tracked")}
    assert "netcnnlip.18.weight" in state and state["netcnnlip.0.weight"].shape == (96, 3, 5, 7, 7)
    torch.save(state, tmp_path / "syncnet_v2.model")
    network = load_syncnet(tmp_path / "syncnet_v2.model")
    loaded = network.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())
    torch.save({k: v for k, v in state.items() if k != "netfcaud.0.weight"}, tmp_path / "cut.model")
    with pytest.raises(InputError, match="tensor 'netfcaud.0.weight' is missing"):
        load_syncnet(tmp_path / "cut.model")
    audio = load_audio(samples / "talk_a.mp4")[: 16000]  # 1 s: 100 MFCC frames, 25 video frames
    assert mfcc(audio).shape == (13, 99)  # 25 ms windows every 10 ms: 1 + ceil((16000 - 400) / 160)
    crops = np.zeros((25, 224, 224, 3), np.uint8)
    video_features, audio_features = sync_features(network, crops, audio, "cpu", batch_size=8)
    assert video_features.shape == audio_features.shape == (20, 1024)  # windows start at 0 .. 25 - 6


def test_face_crop_follows_syncnet_python_geometry():
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[:, :, 0] = 255  # red in RGB becomes the last channel in the BGR crop
    crop = face_crop(frame, centre_x=150, centre_y=100, half=40)
    assert crop.shape == (224, 224, 3)
    assert crop[112, 112].tolist() == [0, 0, 255]
    edge = face_crop(frame, centre_x=5, centre_y=5, half=40)  # off the frame: grey 110 padding
    assert edge[0, 0].tolist() == [110, 110, 110]
