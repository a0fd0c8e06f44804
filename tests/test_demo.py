"""demo.py, the dubbing page, in a real browser (Debian's headless Chromium, testing/browser.py) against the app run
as a subprocess with random official-layout checkpoints: uploads and a dub whose video is downloaded and decoded, a
second audio on the same template without a FaceMesh pass, bad input (one line each), a second visitor's place in
the queue while the first cancels; then the page's rules without a browser (missing checkpoints, the sweep of old
files, the settings as overrides).

IPLAP_DEMO_SCREENSHOT=docs/demo.png python -m pytest tests/test_demo.py  also saves the page after a dub there."""
from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import demo
from data.audio import load_audio
from data.samples import sha256
from testing.audio import write_wav
from testing.browser import DemoPage, browser_missing, chromium, demo_server, wait_for
from testing.checkpoints import official_checkpoints

PREVIEW = 0.5  # seconds of speech per dub: 2 frames at the 4 fps the server is started with
FPS = 4


@pytest.fixture(scope="module")
def site(tmp_path_factory, samples):
    """The demo's address, its work folder and its template cache folder, with a browser on the page."""
    problem = browser_missing()
    if problem:
        pytest.fail(f"the browser tests need Chromium: {problem} (.ci/run does this)")
    folder = tmp_path_factory.mktemp("demo")
    landmark, renderer = official_checkpoints(folder / "checkpoints")
    work, templates = folder / "work", folder / "templates"
    work.mkdir()
    theirs = [work / "old_result.mp4", templates / "old_entry.npz"]  # files the app did not write
    templates.mkdir()
    for path in theirs:
        path.write_bytes(b"not the demo's")
        os.utime(path, (time.time() - 7 * 86400,) * 2)
    # The landmark reference carries its #sha256 (a local file checked by the loader).
    arguments = ["--landmark-ckpt", f"{landmark}#sha256={sha256(landmark)}", "--renderer-ckpt", str(renderer),
                 "--device", "cpu", "--work-dir", str(work), "--max-upload-mb", "5",
                 "refs=2", f"output.fps={FPS}", f"audio_seconds={PREVIEW}"]
    with demo_server(arguments, folder / "demo.log", env={"IPLAP_TEMPLATES": str(templates)}) as url:
        (run,) = work.glob("iplap-demo-*")  # the app's own folder
        driver = chromium()
        try:
            yield {"url": url, "work": run, "templates": templates, "driver": driver, "folder": folder}
        finally:
            driver.quit()
    # Stopped by SIGTERM (demo_server's terminate): the app's folder and its cache entries are gone, and nothing
    # that was there before the app started was touched.
    assert not run.exists()
    assert sorted(work.iterdir()) == [theirs[0]] and sorted(templates.iterdir()) == [theirs[1]]


def _download(url: str, path: Path) -> Path:
    with urllib.request.urlopen(url, timeout=30) as response:
        path.write_bytes(response.read())
    return path


def _decoded(path: Path) -> tuple[tuple[int, int], int, float, float]:
    """(width, height), frames, the video's seconds (frames / rate) and the audio track's seconds."""
    with av.open(str(path)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
        rate = float(video.average_rate)
    audio = load_audio(path, sound.rate)
    return (frames[0].shape[1], frames[0].shape[0]), len(frames), len(frames) / rate, len(audio) / sound.rate


def _left_in(outputs: Path) -> list[str]:
    return sorted(str(path.relative_to(outputs)) for path in outputs.rglob("*") if path.is_file())


def test_the_page_dubs_reuses_the_analysis_and_reports_bad_input(site, samples, tmp_path):
    page = DemoPage(site["driver"], site["url"])
    assert page.find("#notice").text == ""  # both checkpoints exist (one with its #sha256): no notice
    page.upload("template", samples / "template_129.mp4")
    page.upload("audio", samples / "speech_audio2.wav")
    status = page.dub()
    assert status.startswith(f"{int(PREVIEW * FPS)} frames at {FPS} fps") and "on cpu" in status, status
    assert "template analysed (FaceMesh pass 1 of this server)" in status
    source = wait_for(lambda: page.video_source("dubbed"), 30, "the <video> element")
    size, frames, seconds, audio_seconds = _decoded(_download(source, tmp_path / "dubbed.mp4"))
    assert size == (256, 256) and frames == PREVIEW * FPS and seconds == pytest.approx(PREVIEW)
    assert audio_seconds == pytest.approx(PREVIEW, abs=0.05)  # the driving audio's preview, muxed
    entries = [path for path in site["templates"].glob("*.npz") if path.name != "old_entry.npz"]
    assert len(entries) == 1
    stamp = entries[0].stat().st_mtime_ns

    # A second audio on the same template: the cache answers, FaceMesh does not run (the server's count of its
    # passes stays 1, driven by the FaceMesh pass's own progress reports; the cache entry is not rewritten).
    speech = load_audio(samples / "speech_audio2.wav")
    write_wav(tmp_path / "second.wav", speech[4 * 16000:6 * 16000])
    page.upload("audio", tmp_path / "second.wav")
    page.find("#sketch input").click()
    status = page.dub()
    assert "template analysis reused (FaceMesh passes of this server: 1)" in status, status
    assert entries[0].stat().st_mtime_ns == stamp and len(list(site["templates"].glob("*.npz"))) == 2
    sketch = wait_for(lambda: page.video_source("sketch-video"), 30, "the sketch video")
    assert _decoded(_download(sketch, tmp_path / "sketch.mp4"))[:2] == ((512, 256), PREVIEW * FPS)
    if os.environ.get("IPLAP_DEMO_SCREENSHOT"):
        _screenshot(page, Path(os.environ["IPLAP_DEMO_SCREENSHOT"]))

    # Bad input, one line each in the page: a photo without a face, an audio too short, a missing checkpoint
    # (which the notice names as soon as it is typed); and the next dub goes through.
    outputs = _left_in(site["work"] / "outputs")
    cv2.imwrite(str(tmp_path / "wall.png"), np.full((240, 320, 3), 180, np.uint8))
    page.upload("template", tmp_path / "wall.png")
    assert page.dub() == "error: wall.png: no face found in any of its 1 frames"
    page.upload("template", samples / "template_129.mp4")
    write_wav(tmp_path / "blip.wav", speech[:1600])
    page.upload("audio", tmp_path / "blip.wav")
    assert page.dub() == "error: blip.wav: the audio lasts 0.100 s, shorter than one 0.2 s window"
    page.upload("audio", tmp_path / "second.wav")
    page.open("checkpoints")
    renderer = wait_for(lambda: page.find("#renderer textarea"), 10, "the checkpoint fields").get_attribute("value")
    absent = str(site["folder"] / "absent.pth")
    page.type("renderer", absent)
    wait_for(lambda: absent in page.find("#notice").text, 30, "the notice of a missing checkpoint")
    status = page.dub()
    assert status.startswith(f"error: {absent}: renderer checkpoint not found") and "\n" not in status
    page.type("renderer", renderer)
    wait_for(lambda: page.find("#notice").text == "", 30, "the notice to go")
    assert page.dub().startswith(f"{int(PREVIEW * FPS)} frames at {FPS} fps")
    assert len(_left_in(site["work"] / "outputs")) == len(outputs) + 2  # the video and its sketch, nothing else


def test_a_second_visitor_waits_in_the_queue_and_is_served_after_a_cancel(site, samples):
    first = DemoPage(site["driver"], site["url"])
    outputs = site["work"] / "outputs"
    before = _left_in(outputs)
    first.upload("template", samples / "template_129.mp4")
    first.upload("audio", samples / "speech_audio2.wav")
    first.type("seconds", "10")  # 40 frames: time for a second visitor to arrive and for Stop mid-way
    first.find("#start").click()
    wait_for(lambda: "dubbing" in first.progress(), 120, "the frames to start")
    second = DemoPage(site["driver"], site["url"], new_tab=True)
    second.upload("template", samples / "template_129.mp4")
    second.upload("audio", samples / "speech_audio2.wav")
    second.find("#start").click()
    assert "queue: 1/1" in wait_for(lambda: "queue" in second.progress() and second.progress(), 30, "a queue place")
    first.find("#stop").click()
    status = wait_for(lambda: first.status().startswith("cancelled") and first.status(), 120, "the cancel")
    assert status.endswith("of 40 frames; nothing was kept"), status
    status = wait_for(lambda: second.status(), 120, "the waiting visitor's dub")
    assert status.startswith(f"{int(PREVIEW * FPS)} frames at {FPS} fps"), status
    assert len(_left_in(outputs)) == len(before) + 1  # the second visitor's video; nothing of the cancelled dub
    site["driver"].close()
    site["driver"].switch_to.window(first.window)


def test_a_click_on_the_first_frame_chooses_the_face_to_dub(site, samples, tmp_path):
    """Two talkers side by side: the first frame comes back with both faces numbered; a click on the left one
    makes the choice a point on it, and the dub follows that face."""
    from selenium.webdriver.common.action_chains import ActionChains

    from testing.two_faces import TILE, two_face_clip

    two_face_clip(samples, tmp_path / "two.mp4")
    page = DemoPage(site["driver"], site["url"])
    page.upload("template", tmp_path / "two.mp4")
    picture = wait_for(lambda: page.find("#chooser img"), 60, "the numbered faces")
    assert page.find("#face textarea").get_attribute("value") == "largest"
    shown = picture.size  # the element; the 320x160 picture is centred in it, scaled down only (object-fit)
    scale = min(shown["width"] / 320, shown["height"] / 160, 1)
    # Click on the left talker's face (75, 90 of 320x160): offsets from the picture's centre.
    ActionChains(site["driver"]).move_to_element_with_offset(
        picture, int((75 - 160) * scale), int((90 - 80) * scale)).click().perform()
    choice = wait_for(lambda: page.find("#face textarea").get_attribute("value").startswith("point:0,") and
                      page.find("#face textarea").get_attribute("value"), 30, "the clicked point")
    x, y = (int(v) for v in choice.split(",")[1:])
    assert x < TILE and abs(x - 75) <= 6 and abs(y - 90) <= 6, choice
    page.upload("audio", samples / "speech_audio2.wav")
    status = page.dub()
    assert status.startswith(f"{int(PREVIEW * FPS)} frames at {FPS} fps ({int(PREVIEW * FPS)} with a face)"), status
    if os.environ.get("IPLAP_CHOOSER_SCREENSHOT"):
        _chooser_screenshot(page, Path(os.environ["IPLAP_CHOOSER_SCREENSHOT"]))
    page.find("#face textarea").clear()
    page.find("#face textarea").send_keys("point:0,160,5")  # between the two faces
    assert page.dub() == "error: two.mp4: --face point:0,160,5: the point is on no face of frame 0 (2 faces there)"


def _chooser_screenshot(page: DemoPage, path: Path) -> None:
    """The template upload, the numbered faces and the choice, cut from the page, as a 256-colour PNG."""
    from PIL import Image

    page.driver.execute_script("arguments[0].scrollIntoView()", page.find("#template"))
    time.sleep(0.5)
    top, bottom = (page.driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", page.find(part))
                   for part in ("#template", "#face"))
    page.driver.save_screenshot(str(path))
    ratio = page.driver.execute_script("return window.devicePixelRatio") or 1
    box = [int(v * ratio) for v in (top["left"], top["top"], top["right"], bottom["bottom"])]
    Image.open(path).convert("RGB").crop(box).quantize(256).save(path, optimize=True)


def _screenshot(page: DemoPage, path: Path) -> None:
    """The page as it stands, as a 256-colour PNG (small enough for docs/)."""
    from PIL import Image

    height = page.driver.execute_script("return document.documentElement.scrollHeight")
    page.driver.set_window_size(1280, min(int(height) + 140, 1600))  # the whole page; the window's frame is ~140
    page.driver.execute_script("document.querySelectorAll('video').forEach(v => { v.pause(); v.currentTime = 0.2; })")
    time.sleep(1)
    page.driver.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


# ---------------------------------------------------------------- without a browser
def test_missing_checkpoints_are_named_with_the_ways_to_get_them(tmp_path):
    present = tmp_path / "landmark.pth"
    present.write_bytes(b"x")
    absent = str(tmp_path / "renderer.pth")
    assert demo.missing_checkpoints(str(present), absent) == [absent]
    assert demo.missing_checkpoints(str(present), "hf://owner/repo@main/renderer.pth") == []  # the loader fetches
    assert demo.missing_checkpoints(f"{present}#sha256={'0' * 64}", str(tmp_path)) == []  # a hash; a folder
    notice = demo.checkpoint_notice(str(present), absent)
    assert f"`{absent}`" in notice and str(present) not in notice
    assert all(way in notice for way in ("hf://", "python -m model_files.export", "scripts/smoke.sh"))
    assert demo.checkpoint_notice(str(present), str(present)) == ""


def test_a_page_started_without_checkpoints_names_them(tmp_path):
    absent = [str(tmp_path / "landmark.pth"), "checkpoints/renderer_checkpoint.pth.absent"]
    page = demo.build_page(demo.Dubber(str(demo.INFERENCE_CONFIG), [], "cpu", tmp_path), *absent, 60)
    notice = next(block for block in page.blocks.values() if getattr(block, "elem_id", None) == "notice")
    assert all(f"`{path}`" in notice.value for path in absent)


def test_uploads_are_bounded_in_size_on_the_server(site, tmp_path):
    """Gradio's upload route refuses a file over --max-upload-mb (5 here) before it is stored."""
    import httpx

    response = httpx.post(site["url"] + "gradio_api/upload", files={"files": ("big.mp4", b"\0" * 6_000_000)},
                          timeout=60)
    assert response.status_code == 413, response.text[:200]
    assert not [path for path in (site["work"] / "uploads").rglob("big.mp4")]


def test_uploads_of_other_types_or_sizes_are_one_line(tmp_path):
    big = tmp_path / "speech.bin"
    big.write_bytes(b"\0" * 1000)
    with pytest.raises(demo.InputError, match=r"speech.bin: not a speech recording this page takes \(.wav"):
        demo.check_upload(str(big), demo.AUDIO_TYPES, 10_000, "speech recording")
    wav = big.rename(tmp_path / "speech.wav")
    with pytest.raises(demo.InputError, match="speech.wav: larger than the 0.0005 MB this page takes"):
        demo.check_upload(str(wav), demo.AUDIO_TYPES, 500, "speech recording")
    demo.check_upload(str(wav), demo.AUDIO_TYPES, 1000, "speech recording")
    dubber = demo.Dubber(str(demo.INFERENCE_CONFIG), [], "cpu", tmp_path, max_upload_bytes=500)
    _, _, line = dubber.dub("visitor", str(wav), str(wav), "a", "b", [], False, lambda *a, **k: None)
    assert line == "error: speech.wav: not a template (a video or a photo) this page takes (.mp4 .mov .mkv .avi " \
                   ".webm .jpg .jpeg .png .bmp .webp)"


def test_an_exposed_page_offers_the_operators_pairs_and_names_no_file(tmp_path):
    """On a non-loopback host: a list of the operator's pairs (labels without folders), no checkpoint field, no
    notice (and no endpoint that answers whether a file exists); a request naming anything else is refused."""
    import gradio as gr

    landmark = str(tmp_path / "secret" / "lm.pth")
    renderer = "hf://lab/iplap@abc/renderer.safetensors#sha256=" + "0" * 64
    choices = demo.model_choices([f"{landmark},{renderer}", "a.pt,b.pt"], ("x", "y"))
    assert list(choices) == ["1: lm.pth + renderer.safetensors", "2: a.pt + b.pt"]
    assert choices["1: lm.pth + renderer.safetensors"] == (landmark, renderer)
    assert demo.model_choices(None, ("x", "y")) == {"1: x + y": ("x", "y")}
    with pytest.raises(demo.InputError, match="is not LANDMARK,RENDERER"):
        demo.model_choices(["only-one.pt"], ("x", "y"))
    assert demo.is_exposed("0.0.0.0", False) and demo.is_exposed("127.0.0.1", True)
    assert not demo.is_exposed("127.0.0.1", False)
    dubber = demo.Dubber(str(demo.INFERENCE_CONFIG), [], "cpu", tmp_path, choices=choices)
    page = demo.build_page(dubber, landmark, renderer, 60)
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    assert "models" in ids and not ids & {"notice", "landmark", "renderer", "checkpoints"}
    dropdown = next(block for block in page.blocks.values() if getattr(block, "elem_id", None) == "models")
    assert isinstance(dropdown, gr.Dropdown) and "secret" not in str(dropdown.choices)
    assert not [fn for fn in page.fns.values() if getattr(fn.fn, "__name__", "") == "checkpoint_notice"]
    assert dubber.pair("2: a.pt + b.pt", "") == ("a.pt", "b.pt")
    for forged in ("/etc/passwd", "hf://someone/else/x.pt"):
        with pytest.raises(demo.InputError, match="choose one of the pairs"):
            dubber.pair(forged, forged)


def test_sweep_files_deletes_only_the_apps_old_files(tmp_path):
    mine, fresh, theirs = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    for path in (mine, fresh, theirs):
        path.write_bytes(b"x")
    now = time.time()
    for path in (mine, theirs):
        os.utime(path, (now - 7200, now - 7200))
    files = {mine, fresh}
    assert demo.sweep_files(files, 3600, now) == [mine]
    assert files == {fresh} and theirs.exists() and fresh.exists() and not mine.exists()


def test_sweep_deletes_only_what_is_older_than_the_age(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    (old / "dubbed.mp4").write_bytes(b"x")
    new.mkdir()
    now = time.time()
    os.utime(old, (now - 7200, now - 7200))
    assert demo.sweep(tmp_path, 3600, now) == [old]
    assert [path.name for path in tmp_path.iterdir()] == ["new"]
    assert demo.sweep(tmp_path / "absent", 3600) == []
    stop = demo.keep_sweeping(tmp_path, 0, every=0.05)  # the app's thread: everything older than 0 s goes
    try:
        wait_for(lambda: not list(tmp_path.iterdir()), 10, "the sweeping thread")
    finally:
        stop.set()


def test_page_settings_become_config_overrides_with_the_configs_checks():
    overrides = demo.page_overrides(" fifth ", "template", None, 5.0)
    assert overrides == ["refs=fifth", "output.fps=template", "audio_seconds=null", "smooth_boxes=5"]
    dubber = demo.Dubber(str(demo.INFERENCE_CONFIG), ["refs=3"], "cpu", Path("unused"))
    config = dubber.config(demo.page_overrides("7", "12.5", 1.5, 3))
    assert (config["refs"], config["output"]["fps"], config["audio_seconds"], config["smooth_boxes"]) == \
        (7, 12.5, 1.5, 3)
    assert dubber.config()["refs"] == 3  # the command line's override, under the page's


def test_the_networks_load_once_per_checkpoint_pair(random_checkpoints):
    landmark, renderer = (str(path) for path in random_checkpoints)
    dubber = demo.Dubber(str(demo.INFERENCE_CONFIG), [], "cpu", Path("unused"))
    models = dubber.models(landmark, renderer)
    assert dubber.models(landmark, renderer) is models
    stat = Path(renderer).stat()
    os.utime(renderer, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a rewritten file is loaded again
    assert dubber.models(landmark, renderer) is not models
    with pytest.raises(demo.InputError, match="renderer checkpoint not found"):
        dubber.models(landmark, renderer + ".absent")
    strict = demo.Dubber(str(demo.INFERENCE_CONFIG), ["checkpoints.require_sha256=true"], "cpu", Path("unused"))
    with pytest.raises(demo.InputError, match="hashes are required"):
        strict.models(landmark, renderer)
    assert len(dubber._models) == 1  # a pair that fails to load leaves the last one in place
