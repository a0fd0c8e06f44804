"""Templates with several people (dubbing/faces.py, dubbing/speakers.py): on a clip made from the two sample
talkers side by side (testing/two_faces.py: A|B, a cut to B|A, B leaves, then A leaves), the chosen face alone is
dubbed, in every frame it is in; the other face's pixels and the frames without it stay the template's exactly;
index:, point: and box: agree; two speakers get each their own audio; bad choices are one line. A template with
one face gives the same track as FaceMesh looking for one face (single-face dubs unchanged)."""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import dubbing
import dubbing.pipeline
import inference
from data.audio import SAMPLE_RATE, load_audio
from data.errors import InputError
from data.facemesh import FaceMesh, track_faces
from data.video import VideoReader, read_frames
from dubbing.active_speaker import INNER_LIP, loudness, speaking_face, track_scores
from dubbing.faces import DESCRIPTOR_SIZE, FaceScan, follow, parse_face, scan_faces, select_face
from dubbing.paste import paste_region
from dubbing.speakers import dub_speakers
from testing.audio import write_wav
from testing.two_faces import TILE, two_face_clip

SAME, OTHER = 0.5, 0.6
A_POINT, B_BOX = "point:0,75,90", "box:0,190,40,290,140"  # on talker A (left), around talker B (right), frame 0


@pytest.fixture(scope="module")
def clip(samples, tmp_path_factory) -> dict:
    """The two-talker clip (16 frames at 320x160), its decoded frames, its scan, and 0.64 s of each talker's
    speech (16 output frames) and 0.4 s of B's (10 frames)."""
    folder = tmp_path_factory.mktemp("two_faces")
    path = folder / "two.mp4"
    seats = two_face_clip(samples, path)
    with VideoReader(path) as reader, FaceMesh(max_faces=4) as mesh:
        scan = scan_faces(reader, mesh)
    audio = {name: write_wav(folder / f"{name}.wav", load_audio(samples / f"talk_{name}.mp4")[:int(0.64 * SAMPLE_RATE)])
             for name in ("a", "b")}
    audio["b_short"] = write_wav(folder / "b_short.wav", load_audio(samples / "talk_b.mp4")[:int(0.4 * SAMPLE_RATE)])
    return {"path": path, "seats": seats, "frames": read_frames(path), "scan": scan, "audio": audio,
            "cache": folder / "cache"}


def _side(box: np.ndarray) -> str:
    return "left" if (box[0] + box[2]) / 2 < TILE else "right"


def _where(seats: list, name: str) -> list[str | None]:
    return [("left" if left == name else "right" if right == name else None) for left, right in seats]


# ---------------------------------------------------------------- choosing and following
def test_parse_face_reads_every_form_and_refuses_the_rest():
    assert parse_face("largest").kind == "largest" and parse_face("auto").kind == "auto"
    assert parse_face("index:2").values == (2,)
    point = parse_face("point:3,10,20")
    assert (point.kind, point.frame, point.values) == ("point", 3, (10, 20))
    box = parse_face("box:0,1,2,30,40")
    assert (box.kind, box.frame, box.values) == ("box", 0, (1, 2, 30, 40))
    for bad in ("middle", "point:1,2", "box:0,1,2,3", "index:-1", "index:x", "largest:1"):
        with pytest.raises(InputError, match="--face"):
            parse_face(bad)


def test_the_scan_links_each_talker_within_a_shot_and_starts_shots_at_the_cuts(clip):
    scan, seats = clip["scan"], clip["seats"]
    assert np.flatnonzero(scan.cuts).tolist() == [0, 4, 12]  # A|B, B|A, (B leaves: no cut), B|
    for t, (left, right) in enumerate(seats):
        assert len(scan.at(t)) == (left is not None) + (right is not None)
    # One track per talker and shot: A's right-hand track goes on when B leaves (frames 4..11).
    tracks = {(t, _side(scan.boxes[i])): int(scan.track[i]) for t in range(len(scan)) for i in scan.at(t)}
    assert len({tracks[(t, "right")] for t in range(4, 12)}) == 1
    assert len({tracks[(t, "left")] for t in range(0, 4)}) == 1
    assert tracks[(3, "left")] != tracks[(4, "left")]  # the cut ends the track on the same spot


@pytest.mark.parametrize("name, choices", [("a", ["index:0", A_POINT, "box:0,30,40,120,130"]),
                                           ("b", ["index:1", "largest", B_BOX, "point:0,235,95"])])
def test_index_point_and_box_agree_and_the_face_is_followed_through_the_cut(clip, name, choices):
    scan, expected = clip["scan"], _where(clip["seats"], name)
    selections = [select_face(scan, parse_face(c), "two.mp4", SAME, OTHER) for c in choices]
    for selection in selections[1:]:
        np.testing.assert_array_equal(selection.track.boxes, selections[0].track.boxes)
        np.testing.assert_array_equal(selection.track.has_face, selections[0].track.has_face)
    track = selections[0].track
    assert [(_side(track.boxes[t]) if track.has_face[t] else None) for t in range(len(track))] == expected
    assert not selections[0].uncertain.any()


@pytest.mark.parametrize("choice, problem", [
    ("point:0,160,5", "the point is on no face of frame 0 (2 faces there)"),
    ("point:0,500,5", "the point lies outside the 320x160 frame"),
    ("box:0,0,0,400,100", "the box lies outside the 320x160 frame"),
    ("box:0,150,0,170,20", "the box covers no face of frame 0"),
    ("index:2", "frame 0, the first with faces, has 2 (index:0 to index:1, left to right)"),
    ("point:16,10,10", "frame 16 is past the end (frames 0 to 15)"),
])
def test_bad_choices_say_what_is_wrong(clip, choice, problem):
    with pytest.raises(InputError) as error:
        select_face(clip["scan"], parse_face(choice), "two.mp4", SAME, OTHER)
    assert str(error.value).startswith(f"two.mp4: --face {choice}: {problem}")
    assert "\n" not in str(error.value)


def _scan(rows: list[tuple[int, int, float]], frames: int) -> FaceScan:
    """A scan of (frame, track, descriptor distance from track 0's) rows, boxes apart from one another."""
    rows = sorted(rows, key=lambda row: row[0])  # a scan holds its faces in frame order
    count = len(rows)
    descriptors = np.zeros((count, DESCRIPTOR_SIZE), np.float32)
    descriptors[:, 0] = [gap for _, _, gap in rows]
    boxes = np.array([[10 + 50 * (i % 3), 10, 50 + 50 * (i % 3), 50] for i in range(count)], np.int32)
    cuts = np.zeros(frames, bool)
    cuts[[0, 2]] = True
    return FaceScan(np.array([t for t, _, _ in rows]), np.full((count, 131, 2), 0.5, np.float32), boxes,
                    np.array([k for _, k, _ in rows]), descriptors, cuts, (200, 100))


def test_after_a_cut_one_look_alike_is_followed_and_doubt_is_passed_through_and_counted():
    rows = [(0, 0, 0.0), (1, 0, 0.0), (0, 9, 0.95), (1, 9, 0.2),  # track 9 is beside the chosen one: another person
            (2, 1, 0.2), (2, 2, 0.9),  # one look-alike and a stranger: followed
            (3, 3, 0.55),  # between same and other: uncertain
            (4, 4, 0.3), (4, 5, 0.35),  # two look-alikes: uncertain
            (5, 6, 0.9)]  # a stranger only: absent, not uncertain
    selection = follow(_scan(rows, 6), 0, SAME, OTHER)
    assert selection.track.has_face.tolist() == [True, True, True, False, False, False]
    assert selection.uncertain.tolist() == [False, False, False, True, True, False]
    assert selection.starts[selection.track.has_face].tolist() == [True, False, True]  # box smoothing restarts


def test_the_dubs_line_counts_the_frames_passed_through():
    result = dubbing.DubResult(Path("o.mp4"), frames=50, rendered=40, seconds=2.0, uncertain=3)
    assert dubbing.summary(result, 25.0) == ("50 frames at 25 fps (40 with a face; 3 template frames passed through, "
                                             "identity uncertain) in 2.0 s, 25.00 frames/s")
    assert "uncertain" not in dubbing.summary(replace(result, uncertain=0), 25.0)


def test_one_face_gives_the_track_of_facemesh_looking_for_one(samples, tmp_path):
    """max_faces=4 on a one-face template: the same points as max_faces=1, so the same dub as before."""
    with VideoReader(samples / "template_129.mp4") as reader:
        frames = list(itertools.islice(reader, 12))
    with FaceMesh(max_faces=1) as mesh:
        one = track_faces(frames, mesh)
    with FaceMesh(max_faces=4) as mesh:
        selection = select_face(scan_faces(frames, mesh), parse_face("largest"), "t.mp4", SAME, OTHER)
    np.testing.assert_array_equal(selection.track.landmarks, one.landmarks)
    np.testing.assert_array_equal(selection.track.boxes, one.boxes)
    np.testing.assert_array_equal(selection.track.has_face, one.has_face)
    assert selection.starts.tolist() == [True] + [False] * 11


# ---------------------------------------------------------------- auto: the face whose lips move with the sound
def test_loudness_is_the_log_rms_of_each_frame():
    sound = np.zeros(SAMPLE_RATE, np.float32)
    sound[SAMPLE_RATE // 2:] = 0.3 * np.sin(2 * np.pi * 500 * np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE)
    energy = loudness(sound, 25, 25.0)
    np.testing.assert_allclose(energy[:12], np.log(1e-5))  # silent frames (frame 12 straddles the onset)
    np.testing.assert_allclose(energy[13:], np.log(0.3 / np.sqrt(2) + 1e-5), rtol=1e-3)


def _talking_scan(openings: list[np.ndarray]) -> FaceScan:
    """Two faces in every frame, face k's inner lips open by openings[k][t] of its 100 px box."""
    frames = len(openings[0])
    landmarks = np.full((frames * 2, 131, 2), 0.5, np.float32)
    for k, opening in enumerate(openings):
        landmarks[k::2, INNER_LIP[1], 1] = 0.5 + opening
    boxes = np.tile(np.array([[0, 0, 100, 100], [150, 0, 250, 100]], np.int32), (frames, 1))
    cuts = np.zeros(frames, bool)
    cuts[0] = True
    return FaceScan(np.repeat(np.arange(frames), 2), landmarks, boxes, np.tile([0, 1], frames),
                    np.zeros((frames * 2, DESCRIPTOR_SIZE), np.float32), cuts, (250, 100))


@pytest.mark.parametrize("speaker", [0, 1])
def test_auto_chooses_the_face_whose_lips_follow_the_loudness(speaker):
    rng = np.random.default_rng(speaker)
    openings = [rng.uniform(0.0, 0.2, 60) for _ in range(2)]
    # Loudness follows the speaker's opening one frame earlier (the sound leads the lips).
    amplitude = np.exp(20 * np.roll(openings[speaker], -1)) * 0.01
    block = SAMPLE_RATE // 25  # frame t's loudness is measured over its 1/25 s centred on t / 25
    sound = np.roll(np.repeat(amplitude, block), -block // 2) * rng.choice([-1.0, 1.0], 60 * block)
    scan = _talking_scan(openings)
    scores = track_scores(scan, sound.astype(np.float32), 25.0)
    assert scores[speaker] > 0.9 and abs(scores[1 - speaker]) < 0.4
    assert scan.track[speaking_face(scan, sound.astype(np.float32), 25.0)] == speaker


def test_auto_on_a_template_without_sound_is_one_line(clip, models):
    with pytest.raises(InputError, match="--face auto finds the speaker by the template's own sound: no audio"):
        dubbing.prepare_template(clip["path"], models, _config(clip["cache"]), progress=False, face="auto")


def test_a_one_face_track_seeded_into_the_cache_gives_the_scans_template(samples, tmp_path, facemesh_calls):
    """bench/gpu_dub.py carries one-face tracks to a machine without MediaPipe and seeds its cache with them."""
    from data.video import VideoWriter
    from dubbing.cache import cache_entry, write_cached_track
    from dubbing.template import analyse_template

    with VideoReader(samples / "template_129.mp4") as reader:
        frames = list(itertools.islice(reader, 8))
    template = tmp_path / "t.mp4"
    with VideoWriter(template) as writer:
        for frame in frames:
            writer.write(frame)
    faces = dubbing.default_config()["faces"]
    scanned = analyse_template(template, smooth=5, progress=False, faces=faces)
    with VideoReader(template) as reader, FaceMesh(max_faces=1) as mesh:
        track = track_faces(reader, mesh)
    write_cached_track(*cache_entry(template, False, tmp_path / "cache", 25.0, faces["max"]), track)
    calls = facemesh_calls["n"]
    seeded = analyse_template(template, smooth=5, progress=False, cache_dir=tmp_path / "cache", faces=faces)
    assert facemesh_calls["n"] == calls  # read from the cache
    np.testing.assert_array_equal(seeded.boxes, scanned.boxes)
    np.testing.assert_array_equal(seeded.landmarks, scanned.landmarks)


# ---------------------------------------------------------------- dubbing the chosen face
def _drawn(renderer, refs, faces, sketches, mels):
    """A render step whose output depends on the face crop, the target sketches and the audio window."""
    return 0.5 * faces + 0.4 * sketches.mean(dim=1) + 0.05 * mels.mean(dim=(1, 2, 3))[:, None, None, None]


@pytest.fixture(scope="module")
def models(random_checkpoints) -> dubbing.Models:
    return replace(dubbing.load_models(*random_checkpoints, "cpu"), render_step=_drawn)


def _config(cache: Path, **changes) -> dict:
    config = dubbing.default_config()
    config.update(refs=1, landmark_refs=3, batch_size=16, smooth_boxes=1, pipeline=False, **changes)
    config["cache"] = {"enabled": True, "dir": str(cache)}
    return config


@pytest.fixture
def written(monkeypatch) -> list[np.ndarray]:
    """The frames the dubs hand to the encoder, before H.264 (whose loss would hide a changed pixel)."""
    frames = []
    original = dubbing.pipeline.Outputs.write
    monkeypatch.setattr(dubbing.pipeline.Outputs, "write",
                        lambda self, frame, sketch=None: (frames.append(frame.copy()), original(self, frame, sketch)))
    return frames


def _changed(frame: np.ndarray, source: np.ndarray) -> np.ndarray:
    return np.flatnonzero((frame != source).any(axis=(0, 2)))  # changed columns


def test_only_the_chosen_face_is_dubbed_and_only_where_it_is(clip, models, written, tmp_path):
    config = _config(clip["cache"], face="index:0")
    result = dubbing.dub(clip["path"], clip["audio"]["a"], tmp_path / "a.mp4", models, config, progress=False)
    template = dubbing.prepare_template(clip["path"], models, config, progress=False).template
    assert result.frames == 16 and result.rendered == 12 and result.uncertain == 0
    kernel = config["mask"]["kernel"]
    for t, (frame, source, side) in enumerate(zip(written, clip["frames"], _where(clip["seats"], "a"))):
        if side is None:
            np.testing.assert_array_equal(frame, source)  # A is not in the frame: untouched
            continue
        x0, y0, x1, y1 = paste_region(template.boxes[t], (320, 160), kernel)
        changed = _changed(frame, source)
        assert len(changed) > 20 and changed.min() >= x0 and changed.max() < x1  # A's paste, nothing else
        other = slice(TILE, 320) if side == "left" else slice(0, TILE)
        assert x1 <= TILE if side == "left" else x0 >= TILE  # B's half lies outside A's paste
        np.testing.assert_array_equal(frame[:, other], source[:, other])


def test_two_speakers_each_from_their_own_audio_into_one_output(clip, models, written, tmp_path):
    config = _config(clip["cache"])
    audio = clip["audio"]
    for name, face, wav in (("a", A_POINT, audio["a"]), ("b", B_BOX, audio["b_short"])):
        config["face"] = face
        dubbing.dub(clip["path"], wav, tmp_path / f"{name}.mp4", models, config, progress=False)
    only_a, only_b = written[:16], written[16:26]
    result = dub_speakers(clip["path"], [(audio["a"], A_POINT), (audio["b_short"], B_BOX)], tmp_path / "ab.mp4",
                          models, config, progress=False)
    both = written[26:]
    assert result.frames == 16 and len(both) == 16 and (tmp_path / "ab.mp4").is_file()
    for t, frame in enumerate(both):
        a_side, b_side = _where(clip["seats"], "a")[t], _where(clip["seats"], "b")[t]
        halves = {"left": slice(0, TILE), "right": slice(TILE, 320)}
        if a_side:
            np.testing.assert_array_equal(frame[:, halves[a_side]], only_a[t][:, halves[a_side]])
        if b_side:  # B's audio lasts 10 frames: after it, B keeps its own mouth
            expected = only_b[t] if t < 10 else clip["frames"][t]
            np.testing.assert_array_equal(frame[:, halves[b_side]], expected[:, halves[b_side]])
    assert any(not np.array_equal(both[t], clip["frames"][t]) for t in range(4))  # both faces dubbed
    assert abs(len(load_audio(tmp_path / "ab.mp4")) / SAMPLE_RATE - 0.64) < 0.05  # as long as the longest


def test_two_speakers_on_one_face_is_one_line(clip, models, tmp_path):
    with pytest.raises(InputError, match="choose the same face"):
        dub_speakers(clip["path"], [(clip["audio"]["a"], "index:0"), (clip["audio"]["b"], A_POINT)],
                     tmp_path / "ab.mp4", models, _config(clip["cache"]), progress=False)
    assert not (tmp_path / "ab.mp4").exists()


def test_every_choice_reads_the_one_cached_scan(clip, models, tmp_path, facemesh_calls):
    config = _config(tmp_path / "cache")
    a = dubbing.prepare_template(clip["path"], models, config, progress=False, face="index:0").template
    assert facemesh_calls["n"] == 16
    b = dubbing.prepare_template(clip["path"], models, config, progress=False, face="index:1").template
    assert facemesh_calls["n"] == 16  # no second FaceMesh pass
    assert not np.array_equal(a.boxes, b.boxes) and _side(a.boxes[0]) == "left" and _side(b.boxes[0]) == "right"
    config["faces"]["max"] = 1  # another bound is another entry
    one = dubbing.prepare_template(clip["path"], models, config, progress=False).template
    assert facemesh_calls["n"] == 32 and one.has_face[:4].all()


# ---------------------------------------------------------------- the command line
def test_the_command_line_takes_a_face_per_audio_and_refuses_bad_ones(clip, random_checkpoints, tmp_path, capsys,
                                                                      monkeypatch):
    load = dubbing.load_models
    monkeypatch.setattr(dubbing, "load_models",
                        lambda *args, **kwargs: replace(load(*args, **kwargs), render_step=_drawn))
    landmark, renderer = random_checkpoints
    base = ["--video", str(clip["path"]), "--landmark-ckpt", str(landmark), "--renderer-ckpt", str(renderer),
            "--device", "cpu", "--quiet", "refs=1", "landmark_refs=3", "batch_size=16", "audio_seconds=0.2",
            f"cache.dir={clip['cache']}"]
    bad = inference.main(base + ["--audio", str(clip["audio"]["a"]), "--face", "index:5", "--output",
                                 str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip()
    assert bad == 2 and err.count("\n") == 0 and "--face index:5: frame 0, the first with faces, has 2" in err
    assert inference.main(base + ["--audio", str(clip["audio"]["a"]), "--face", "index:0", "--audio",
                                  str(clip["audio"]["b"]), "--face", "index:1", "--output",
                                  str(tmp_path / "x.mp4")]) == 0
    assert (tmp_path / "x.mp4").is_file() and "x.mp4: 5 frames" in capsys.readouterr().out
    mismatched = inference.main(base + ["--audio", str(clip["audio"]["a"]), "--face", "index:0", "--face",
                                        "index:1", "--audio", str(clip["audio"]["b"]), "--audio",
                                        str(clip["audio"]["b_short"]), "--output", str(tmp_path / "y.mp4")])
    assert mismatched == 2 and "one after each --audio" in capsys.readouterr().err


def test_a_task_list_names_faces_and_speakers(clip, tmp_path):
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(f"- {{video: {clip['path']}, audio: a.wav, output: one.mp4, face: 'index:1'}}\n"
                     f"- video: {clip['path']}\n  output: two.mp4\n  speakers:\n"
                     "    - {audio: a.wav, face: 'index:0'}\n    - {audio: b.wav, face: 'point:0,235,95'}\n")
    one, two = inference.read_tasks(tasks)
    assert one.face == "index:1" and one.speakers is None
    assert two.speakers == [(tmp_path / "a.wav", "index:0"), (tmp_path / "b.wav", "point:0,235,95")]
    tasks.write_text(f"- {{video: {clip['path']}, audio: a.wav, output: one.mp4, face: 'middle'}}\n")
    with pytest.raises(InputError, match="--face middle"):
        inference.read_tasks(tasks)
