"""Downloads (sample media, weight files) against an HTTP server on 127.0.0.1 that the tests start: a good file
is fetched and cached, a tampered one is rejected and not kept, an unreachable server gives one line."""
from __future__ import annotations

import dataclasses
import functools
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

from data import samples as sample_media
from data.errors import InputError
from metrics.weights import SYNCNET_V2
from model_files import weights


@pytest.fixture
def server(tmp_path):
    """(folder, base URL): an HTTP server on 127.0.0.1 serving `folder`, stopped after the test."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_local_samples(tmp_path, monkeypatch):
    """No IPLAP_SAMPLES and no fallback folder (data/samples.py's SHARED): the cache in tmp_path is all that is left."""
    monkeypatch.delenv(sample_media.FOLDER_ENV, raising=False)
    monkeypatch.setattr(sample_media, "SHARED", tmp_path / "no-shared")
    monkeypatch.setenv(sample_media.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "samples"


def test_a_sample_is_downloaded_checked_and_then_read_from_the_cache(samples, server, no_local_samples, monkeypatch):
    served, url = server
    (served / "template_129.mp4").write_bytes((samples / "template_129.mp4").read_bytes())
    monkeypatch.setenv(sample_media.URL_ENV, url)
    folder = sample_media.samples_folder(("template_129.mp4",), progress=False)
    assert folder == no_local_samples
    assert sample_media.sha256(folder / "template_129.mp4") == sample_media.FILES["template_129.mp4"][1]
    (served / "template_129.mp4").unlink()  # the server no longer has it: the cached copy must serve
    assert sample_media.sample("template_129.mp4") == folder / "template_129.mp4"


def test_a_tampered_sample_is_rejected_and_not_kept(samples, server, no_local_samples, monkeypatch):
    served, url = server
    data = bytearray((samples / "template_129.mp4").read_bytes())
    data[5000] ^= 0xFF
    (served / "template_129.mp4").write_bytes(bytes(data))
    monkeypatch.setenv(sample_media.URL_ENV, url)
    with pytest.raises(InputError, match="not the pinned template_129.mp4") as error:
        sample_media.samples_folder(("template_129.mp4",), progress=False)
    assert "\n" not in str(error.value)
    assert not no_local_samples.exists() or not list(no_local_samples.iterdir())  # nothing kept, no temporary file


def test_an_unreachable_server_is_one_line_naming_the_variables_and_origins(no_local_samples, monkeypatch):
    monkeypatch.setenv(sample_media.URL_ENV, f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(InputError) as error:
        sample_media.samples_folder(("talk_b.mp4",), progress=False)
    message = str(error.value)
    assert "\n" not in message and "cannot download the sample media" in message
    for needed in ("IPLAP_SAMPLES ", "IPLAP_SAMPLES_URL", "OpenTalker/video-retalking", "Weizhi-Zhong/IP_LAP"):
        assert needed in message


def test_a_samples_folder_with_another_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "talk_a.mp4").write_bytes(b"not the sample")
    monkeypatch.setenv(sample_media.FOLDER_ENV, str(tmp_path))
    with pytest.raises(InputError, match="talk_a.mp4: not the pinned sample file"):
        sample_media.samples_folder(("talk_a.mp4",))
    with pytest.raises(InputError, match="talk_b.mp4: sample file missing .from the folder IPLAP_SAMPLES names"):
        sample_media.samples_folder(("talk_b.mp4",))


def _weight_file(server_url: str, prefix: str | None) -> weights.WeightFile:
    return weights.WeightFile("Test", "tiny-12345678.pth", f"{server_url}/tiny-12345678.pth", prefix,
                              "the test server", "--tiny-weights")


def test_a_weight_file_is_downloaded_with_its_hash_checked(server, tmp_path, monkeypatch):
    served, url = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = {"weight": torch.arange(6.0)}
    torch.save(state, served / "tiny-12345678.pth")
    digest = sample_media.sha256(served / "tiny-12345678.pth")
    path = weights.resolve(_weight_file(url, digest[:8]), progress=False)
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "tiny-12345678.pth"
    assert torch.equal(weights.read_state(path, "Test")["weight"], state["weight"])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_a_weight_file_with_another_hash_is_rejected_and_not_kept(server, tmp_path, monkeypatch):
    served, url = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.save({"weight": torch.zeros(3)}, served / "tiny-12345678.pth")
    with pytest.raises(InputError, match="tiny-12345678.pth does not match its published sha256 prefix 00000000"):
        weights.resolve(_weight_file(url, "00000000"), progress=False)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    assert not cache.exists() or not list(cache.iterdir())


def test_syncnet_download_is_pinned(server, tmp_path, monkeypatch):
    """A file served under SyncNet's name that is not the release's file is refused and not kept."""
    served, url = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (served / "syncnet_v2.model").write_bytes(b"some other weights")
    weight = dataclasses.replace(SYNCNET_V2, url=f"{url}/syncnet_v2.model")
    with pytest.raises(InputError, match="does not match") as error:
        weights.resolve(weight, progress=False)
    assert "\n" not in str(error.value) and not weights.cache_path(weight).exists()


def test_an_unreachable_weight_server_is_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weight = _weight_file(f"http://127.0.0.1:{_closed_port()}", None)
    with pytest.raises(InputError) as error:
        weights.resolve(weight, progress=False)
    message = str(error.value)
    assert "\n" not in message and "tiny-12345678.pth" in message and "not downloadable" in message


def test_every_published_download_is_https_and_hash_checked_where_the_name_carries_one():
    from losses.perceptual import VGG19
    from metrics.weights import ALL

    for weight in (VGG19, *ALL):
        if weight.url is not None:
            assert weight.url.startswith("https://"), weight.url
        stem = Path(weight.file).stem
        if weight.sha256_prefix is not None:
            assert stem.endswith("-" + weight.sha256_prefix)  # torchvision's and pytorch-fid's naming rule
    for url, _ in sample_media.FILES.values():
        assert url.startswith("https://")
