import cv2
import numpy as np
from mediapipe.python.solutions import face_mesh_connections as mp_connections

from data import sketch
from data.landmarks import POSITION_OF_ID
from testing.reference_samples import sketch_tensor

FOREHEAD = {(10, 338), (338, 297), (297, 332), (332, 284), (284, 251), (251, 389),
            (162, 21), (21, 54), (54, 103), (103, 67), (67, 109), (109, 10)}


def test_edge_sets_are_mediapipes_minus_the_forehead_plus_the_nose():
    expected = (set(mp_connections.FACEMESH_LIPS) | set(mp_connections.FACEMESH_LEFT_EYE)
                | set(mp_connections.FACEMESH_RIGHT_EYE) | set(mp_connections.FACEMESH_LEFT_EYEBROW)
                | set(mp_connections.FACEMESH_RIGHT_EYEBROW) | (set(mp_connections.FACEMESH_FACE_OVAL) - FOREHEAD))
    assert len(sketch.NOSE) == 13
    assert set(sketch.EDGES_FACEMESH) == expected | set(sketch.NOSE)
    assert len(sketch.EDGES) == len(set(sketch.EDGES_FACEMESH)) == 125
    used = {POSITION_OF_ID[i] for edge in sketch.EDGES_FACEMESH for i in edge}
    assert len(used) == 131  # every canonical point is on some edge


def _segment_distance(pixels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each pixel (N, 2) to the segment a-b."""
    direction = b - a
    t = np.clip(((pixels - a) @ direction) / max(direction @ direction, 1e-9), 0, 1)
    return np.linalg.norm(pixels - (a + t[:, None] * direction), axis=1)


def test_drawing_lights_exactly_the_listed_edges(talk_a_frames, face_mesh):
    from data.crop import crop_box, normalise_to_box
    from data.landmarks import from_facemesh

    points = from_facemesh(face_mesh(talk_a_frames[0]))
    landmarks = normalise_to_box(points, crop_box(points, (844, 844)))
    canvas = sketch.draw_edges(np.zeros((600, 500), np.uint8), landmarks)
    assert set(np.unique(canvas)) == {0, sketch.SKETCH_VALUE}
    ends = np.minimum(np.floor(landmarks * (500, 600)), (499, 599))
    lit = np.argwhere(canvas > 0)[:, ::-1].astype(np.float64)  # (x, y)
    distances = np.stack([_segment_distance(lit, ends[a], ends[b]) for a, b in sketch.EDGES], axis=1)
    assert distances.min(axis=1).max() <= 1.0  # nothing lit away from a listed edge
    for a, b in sketch.EDGES:  # every listed edge is drawn along its whole length
        samples = np.linspace(ends[a], ends[b], 20).round().astype(int)
        for x, y in samples:
            assert canvas[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].any()
    # Drawing edge by edge gives the same image.
    separately = np.zeros_like(canvas)
    for a, b in sketch.EDGES:
        cv2.line(separately, tuple(int(v) for v in ends[a]), tuple(int(v) for v in ends[b]), 224, 1)
    np.testing.assert_array_equal(canvas, separately)


def test_canvas_keeps_the_box_aspect_with_short_side_128():
    assert sketch.canvas_size((100, 150)) == (128, 192)
    assert sketch.canvas_size((300, 200)) == (192, 128)


def test_sketch_tensor_layout_and_range():
    landmarks = np.random.default_rng(0).random((131, 2)).astype(np.float32) * 0.8 + 0.1
    out = sketch_tensor(landmarks, (120, 150))
    assert out.shape == (3, 128, 128) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 224 / 255 + 1e-6 and out.max() > 0.5
    np.testing.assert_array_equal(out[0], out[2])
    square = sketch.draw_sketch(landmarks, (200, 200))
    np.testing.assert_array_equal(square, sketch.draw_edges(np.zeros((128, 128), np.uint8), landmarks))


def test_points_outside_the_box_are_clamped_not_dropped():
    landmarks = np.full((131, 2), 0.5, np.float32)
    a, b = sketch.EDGES[0]
    landmarks[a], landmarks[b] = (-0.2, 0.5), (1.3, 0.5)
    canvas = sketch.draw_edges(np.zeros((128, 128), np.uint8), landmarks)
    assert canvas[64, 0] and canvas[64, 127] and canvas[64, 1:127].all()


def test_runs_of_edges_draw_the_pixels_of_the_edges_one_by_one():
    assert sum(len(chain) - 1 for chain in sketch.CHAINS) == len(sketch.EDGES)
    rng = np.random.default_rng(0)
    for _ in range(200):
        landmarks = rng.uniform(-0.2, 1.2, (131, 2)).astype(np.float32)
        height, width = (int(n) for n in rng.integers(20, 300, 2))
        pixels = np.clip(np.floor(landmarks * (width, height)).astype(np.int64), 0, (width - 1, height - 1))
        one_by_one = np.zeros((height, width), np.uint8)
        cv2.polylines(one_by_one, list(pixels.astype(np.int32)[sketch.EDGES]), False, (224,), 1, cv2.LINE_8)
        np.testing.assert_array_equal(sketch.draw_edges(np.zeros((height, width), np.uint8), landmarks), one_by_one)
