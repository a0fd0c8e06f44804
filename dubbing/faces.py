"""Which face a dub animates when a template shows several: the user's choice (`--face`), every face FaceMesh finds
linked into tracks within each shot, and the chosen face followed across cuts and occlusions by its appearance.

- The scan (`scan_faces`): FaceMesh looks for up to `faces.max` faces per frame (configs/inference.yaml). A shot
  starts where the frame's 32x32 thumbnail changes by more than CUT_LEVEL grey levels on average. Within a shot a
  face joins the track it overlaps most (box IoU at least MIN_IOU) whose landmarks moved less than MAX_MOTION of
  the box's width since it was last seen (at most GAP frames ago). Each track's face is described
  (dubbing/identity.py) when the track starts and every DESCRIBE_EVERY frames after.
- The choice (`parse_face`): largest (the largest face of the first frame with faces), index:K (K-th from the
  left there, from 0), point:FRAME,X,Y (the face under a pixel of a frame), box:FRAME,X0,Y0,X1,Y1 (the face that
  overlaps a box most), auto (the face whose lips move with the template's own sound: dubbing/active_speaker.py).
- The selection (`select_face`): the chosen face's track, and in frames without it the face of another track whose
  mean descriptor lies within `faces.same` of the chosen track's. Where a face lies between `faces.same` and
  `faces.other`, or two faces match, the identity is uncertain: the frame is passed through (not dubbed) and
  counted. A track seen in the same frame as the chosen one is another person.

The scan does not depend on the choice: the template cache keeps it, and every choice on the same template reads
it back (dubbing/cache.py).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from data.crop import denormalise_from_box
from data.errors import InputError
from data.facemesh import FaceMesh, FaceTrack, find_faces
from data.landmarks import NUM_LANDMARKS
from dubbing.identity import DESCRIPTOR_SIZE, describe, distance

CHOICES = "largest, index:K, point:FRAME,X,Y, box:FRAME,X0,Y0,X1,Y1 or auto"
CUT_LEVEL = 30.0  # mean absolute change of the 32x32 thumbnail (0..255) that starts a new shot
MIN_IOU = 0.3  # a face continues a track only if their boxes overlap this much
MAX_MOTION = 0.25  # ... and its landmarks moved less than this share of the box width (mean over the 131)
GAP = 5  # frames a track may go unseen within a shot (a hand, a turn) and still be continued
DESCRIBE_EVERY = 25  # frames between two descriptors of one track


@dataclass(frozen=True)
class FaceChoice:
    """A parsed --face: kind (largest, index, point, box, auto), the frame it refers to, its numbers."""

    kind: str
    frame: int = 0
    values: tuple[int, ...] = ()
    text: str = "largest"


def parse_face(text: str) -> FaceChoice:
    """A --face value as a FaceChoice; InputError naming the value for one that cannot be read."""
    text = str(text).strip()
    kind, _, rest = text.partition(":")
    counts = {"index": 1, "point": 3, "box": 5}
    if kind in ("largest", "auto") and not rest:
        return FaceChoice(kind, text=text)
    if kind not in counts:
        raise InputError(f"--face {text}", f"takes {CHOICES}")
    try:
        numbers = tuple(int(round(float(v))) for v in rest.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != counts[kind] or min(numbers) < 0:
        form = {"index": "index:K", "point": "point:FRAME,X,Y", "box": "box:FRAME,X0,Y0,X1,Y1"}[kind]
        raise InputError(f"--face {text}", f"write {form} with whole numbers from 0")
    if kind == "index":
        return FaceChoice(kind, 0, numbers, text)
    return FaceChoice(kind, numbers[0], numbers[1:], text)


@dataclass
class FaceScan:
    """Every face of a template, D in all: its frame (D,), landmarks (D, 131, 2) normalised to its crop box,
    the box (D, 4), its track (D,) and descriptor (D, 128; NaN where not described); per frame (T,), whether a
    shot starts there; the frames' (width, height)."""

    frame: np.ndarray
    landmarks: np.ndarray
    boxes: np.ndarray
    track: np.ndarray
    descriptors: np.ndarray
    cuts: np.ndarray
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.cuts)

    def pixels(self) -> np.ndarray:
        return denormalise_from_box(self.landmarks, self.boxes)

    def at(self, frame: int) -> np.ndarray:
        """The faces (indices into D) in `frame` (faces are stored in frame order)."""
        return np.arange(*np.searchsorted(self.frame, [frame, frame + 1]))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes (..., 4) x0, y0, x1, y1."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    inter = w * h
    return np.where(inter > 0, inter / np.maximum(area(a) + area(b) - inter, 1e-9), 0.0)


def is_cut(previous: np.ndarray | None, thumbnail: np.ndarray) -> bool:
    """Whether a shot starts at the frame of `thumbnail` (32x32 float32), after the frame of `previous`."""
    return previous is None or float(np.abs(thumbnail - previous).mean()) > CUT_LEVEL


def thumbnail(frame: np.ndarray) -> np.ndarray:
    return cv2.resize(frame, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def link(tracks: dict[int, tuple[int, np.ndarray, np.ndarray]], frame: int, boxes: np.ndarray, pixels: np.ndarray
         ) -> list[int | None]:
    """Each face's track among the shot's `tracks` (id -> (last frame seen, box, landmark pixels)): greedy by
    overlap, among those seen at most GAP frames ago whose landmarks moved less than MAX_MOTION of the box
    width; None for a face that starts a track."""
    pairs = []
    for i in range(len(boxes)):
        for key, (seen, box, points) in tracks.items():
            if frame - seen > GAP:
                continue
            overlap = float(box_iou(boxes[i], box))
            motion = float(np.linalg.norm(pixels[i] - points, axis=-1).mean()) / max(box[2] - box[0], 1)
            if overlap >= MIN_IOU and motion <= MAX_MOTION:
                pairs.append((-overlap, i, key))
    linked: list[int | None] = [None] * len(boxes)
    taken = set()
    for _, i, key in sorted(pairs):
        if linked[i] is None and key not in taken:
            linked[i], _ = key, taken.add(key)
    return linked


def scan_faces(frames: Iterable[np.ndarray], mesh: FaceMesh, on_frame: Callable[[], None] | None = None
               ) -> FaceScan:
    """Every face of every frame (the mesh reset first: a new video), linked into tracks within shots, each
    track described when it starts and every DESCRIBE_EVERY frames. `on_frame` is called after each frame."""
    mesh.reset()
    rows: dict[str, list] = {"frame": [], "landmarks": [], "boxes": [], "track": [], "descriptors": []}
    cuts, tracks, described, previous, size, count = [], {}, {}, None, (0, 0), 0
    for t, frame in enumerate(frames):
        size = (frame.shape[1], frame.shape[0])
        small = thumbnail(frame)
        cuts.append(is_cut(previous, small))
        previous = small
        if cuts[-1]:
            tracks = {}
        faces = find_faces(mesh, frame)
        boxes = np.array([face[1] for face in faces], np.int32).reshape(-1, 4)
        pixels = [denormalise_from_box(face[0], face[1]) for face in faces]
        for face, box, points, key in zip(faces, boxes, pixels, link(tracks, t, boxes, pixels)):
            if key is None:
                key, count = count, count + 1
            tracks[key] = (t, box, points)
            descriptor = np.full(DESCRIPTOR_SIZE, np.nan, np.float32)
            if key not in described or t - described[key] >= DESCRIBE_EVERY:
                descriptor, described[key] = describe(frame, points), t
            for name, value in (("frame", t), ("landmarks", face[0]), ("boxes", box), ("track", key),
                                ("descriptors", descriptor)):
                rows[name].append(value)
        if on_frame is not None:
            on_frame()
    shapes = {"landmarks": (0, NUM_LANDMARKS, 2), "boxes": (0, 4), "descriptors": (0, DESCRIPTOR_SIZE)}
    dtypes = {"frame": np.int64, "landmarks": np.float32, "boxes": np.int32, "track": np.int64,
              "descriptors": np.float32}
    arrays = {name: np.array(rows[name], dtypes[name]).reshape((-1, *shapes.get(name, (0,))[1:]))
              for name in rows}
    return FaceScan(**arrays, cuts=np.array(cuts, bool), size=size)


# ---------------------------------------------------------------- the choice
def _first_faces(scan: FaceScan) -> tuple[int, np.ndarray]:
    first = int(scan.frame.min())
    return first, scan.at(first)


def _check_frame(scan: FaceScan, choice: FaceChoice, where: str) -> np.ndarray:
    if choice.frame >= len(scan):
        raise InputError(where, f"--face {choice.text}: frame {choice.frame} is past the end (frames 0 to "
                                f"{len(scan) - 1})")
    return scan.at(choice.frame)


def chosen_face(scan: FaceScan, choice: FaceChoice, where: str) -> int:
    """The face (index into the scan) that a largest, index, point or box choice names; InputError (naming
    `where`, the template) for a choice that names none."""
    width, height = scan.size
    if choice.kind in ("largest", "index"):
        first, faces = _first_faces(scan)
        if choice.kind == "largest":
            boxes = scan.boxes[faces].astype(np.int64)
            return int(faces[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))])
        order = faces[np.argsort(scan.boxes[faces][:, [0, 2]].sum(axis=1), kind="stable")]
        k = choice.values[0]
        if k >= len(order):
            raise InputError(where, f"--face {choice.text}: frame {first}, the first with faces, has {len(order)} "
                                    f"(index:0 to index:{len(order) - 1}, left to right)")
        return int(order[k])
    faces = _check_frame(scan, choice, where)
    if choice.kind == "point":
        x, y = choice.values
        if x >= width or y >= height:
            raise InputError(where, f"--face {choice.text}: the point lies outside the {width}x{height} frame")
        pixels = scan.pixels()
        inside = [i for i in faces if cv2.pointPolygonTest(cv2.convexHull(pixels[i].astype(np.float32)),
                                                           (float(x), float(y)), False) >= 0]
        if not inside:
            raise InputError(where, f"--face {choice.text}: the point is on no face of frame {choice.frame} "
                                    f"({len(faces)} faces there)")
        centres = np.array([pixels[i].mean(axis=0) for i in inside])
        return int(inside[int(np.argmin(np.linalg.norm(centres - (x, y), axis=1)))])
    x0, y0, x1, y1 = choice.values
    if not (x0 < x1 <= width and y0 < y1 <= height):
        raise InputError(where, f"--face {choice.text}: the box lies outside the {width}x{height} frame (or is "
                                "empty)")
    overlaps = box_iou(scan.boxes[faces], np.array([x0, y0, x1, y1]))
    if not len(faces) or overlaps.max() <= 0:
        raise InputError(where, f"--face {choice.text}: the box covers no face of frame {choice.frame} "
                                f"({len(faces)} faces there)")
    return int(faces[int(np.argmax(overlaps))])


# ---------------------------------------------------------------- following the chosen face
@dataclass
class Selection:
    """The chosen face through the template: its FaceTrack (has_face false where it is absent or uncertain),
    where its box starts a new run that smoothing must not average across (a cut, or another track) (T,), and the
    frames passed through because the identity was uncertain (T,)."""

    track: FaceTrack
    starts: np.ndarray
    uncertain: np.ndarray


def track_descriptors(scan: FaceScan) -> dict[int, np.ndarray]:
    """Each track's mean descriptor (NaN where the track was never described)."""
    means = {}
    for key in np.unique(scan.track):
        rows = scan.descriptors[scan.track == key]
        rows = rows[~np.isnan(rows).any(axis=1)]
        means[int(key)] = rows.mean(axis=0) if len(rows) else np.full(DESCRIPTOR_SIZE, np.nan, np.float32)
    return means


def follow(scan: FaceScan, anchor: int, same: float, other: float) -> Selection:
    """The selection that follows the track of face `anchor` and, in frames without it, the one face that looks
    like it (within `same`, none other within `other`)."""
    key = int(scan.track[anchor])
    means = track_descriptors(scan)
    present = set(scan.frame[scan.track == key].tolist())
    alongside = set(scan.track[np.isin(scan.frame, list(present))].tolist()) - {key}  # other people
    gaps = {k: (np.inf if k in alongside else float(distance(v, means[key]))) for k, v in means.items()}
    gaps = {k: (np.inf if np.isnan(v) else v) for k, v in gaps.items()}
    count = len(scan)
    chosen = np.full(count, -1, np.int64)
    uncertain = np.zeros(count, bool)
    for t in range(count):
        faces = scan.at(t)
        mine = faces[scan.track[faces] == key]
        if len(mine):
            chosen[t] = mine[0]
            continue
        near = [int(i) for i in faces if gaps[int(scan.track[i])] <= same]
        unsure = [int(i) for i in faces if same < gaps[int(scan.track[i])] < other]
        if len(near) == 1 and not unsure:
            chosen[t] = near[0]
        elif near or unsure:
            uncertain[t] = True
    has_face = chosen >= 0
    landmarks = np.zeros((count, NUM_LANDMARKS, 2), np.float32)
    boxes = np.zeros((count, 4), np.int32)
    landmarks[has_face], boxes[has_face] = scan.landmarks[chosen[has_face]], scan.boxes[chosen[has_face]]
    owner = np.where(has_face, scan.track[np.maximum(chosen, 0)] if len(scan.track) else -1, -1)
    starts = scan.cuts.copy()
    starts[1:] |= owner[1:] != owner[:-1]
    return Selection(FaceTrack(landmarks, boxes, has_face, scan.size), starts, uncertain)


def select_face(scan: FaceScan, choice: FaceChoice, where: str, same: float, other: float,
                sound: np.ndarray | None = None, fps: float = 25.0) -> Selection:
    """The chosen face through the template (`follow`); `sound`: the template's own 16 kHz samples, for auto."""
    if not len(scan.frame):
        return Selection(FaceTrack(np.zeros((len(scan), NUM_LANDMARKS, 2), np.float32),
                                   np.zeros((len(scan), 4), np.int32), np.zeros(len(scan), bool), scan.size),
                         scan.cuts.copy(), np.zeros(len(scan), bool))
    if choice.kind == "auto":
        from dubbing.active_speaker import speaking_face

        if sound is None:
            raise InputError(where, "--face auto: needs the template's own sound track")
        anchor = speaking_face(scan, sound, fps)
    else:
        anchor = chosen_face(scan, choice, where)
    return follow(scan, anchor, same, other)


def scan_of_track(track: FaceTrack) -> FaceScan:
    """A one-face track as a scan: one track, never described, one shot."""
    frames = np.flatnonzero(track.has_face)
    cuts = np.zeros(len(track), bool)
    cuts[:1] = True
    return FaceScan(frames.astype(np.int64), track.landmarks[frames], track.boxes[frames],
                    np.zeros(len(frames), np.int64), np.full((len(frames), DESCRIPTOR_SIZE), np.nan, np.float32),
                    cuts, track.size)


def check_faces(config: dict) -> None:
    """One-line errors for the config's face and faces settings."""
    parse_face(config["face"])
    faces = config["faces"]
    if not (isinstance(faces["max"], int) and faces["max"] >= 1):
        raise InputError(f"faces.max={faces['max']}", "faces.max takes a whole number from 1")
    if not 0 < float(faces["same"]) <= float(faces["other"]):
        raise InputError(f"faces.same={faces['same']}", "needs 0 < faces.same <= faces.other")
