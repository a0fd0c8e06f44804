import numpy as np

from data import landmarks as L


def test_canonical_order_matches_the_facts():
    assert L.NUM_LANDMARKS == 131 and len(set(L.FACEMESH_IDS)) == 131
    assert max(L.FACEMESH_IDS) < 468  # no iris points
    # Spot checks of positions named in the facts (section 1).
    assert L.FACEMESH_IDS[0] == 162 and L.FACEMESH_IDS[24] == 389
    assert L.FACEMESH_IDS[25] == 70 and L.FACEMESH_IDS[45] == 168 and L.FACEMESH_IDS[59] == 33
    assert L.FACEMESH_IDS[91] == 61 and L.FACEMESH_IDS[111] == 78 and L.FACEMESH_IDS[130] == 95


def test_pose_content_split():
    assert L.NUM_POSE == 74 and L.NUM_JAW == 17 and L.NUM_LIP == 40 and L.NUM_CONTENT == 57
    assert list(L.POSE_POSITIONS[:8]) == [0, 1, 2, 3, 21, 22, 23, 24]
    assert list(L.CONTENT_POSITIONS[:17]) == list(range(4, 21))
    assert sorted(L.POSE_CONTENT_POSITIONS.tolist()) == list(range(131))


def test_pose_content_round_trip_and_layout():
    rng = np.random.default_rng(0)
    points = rng.random((3, 131, 2)).astype(np.float32)
    pose, content = L.pose_of(points), L.content_of(points)
    assert pose.shape == (3, 2, 74) and content.shape == (3, 2, 57)
    # Row 0 is x, row 1 is y; content starts with the jaw (canonical position 4).
    assert pose[1, 0, 4] == points[1, 21, 0] and content[2, 1, 0] == points[2, 4, 1]
    assert content[0, 0, 17] == points[0, 91, 0]  # first lip point after 17 jaw points
    np.testing.assert_array_equal(L.merge_pose_content(pose, content), points)


def test_from_facemesh_picks_the_listed_points():
    mesh = np.stack([np.arange(478), np.arange(478) * 2, np.zeros(478)], axis=1).astype(np.float32)
    picked = L.from_facemesh(mesh)
    assert picked.shape == (131, 2)
    np.testing.assert_array_equal(picked[:, 0], np.array(L.FACEMESH_IDS, np.float32))
    np.testing.assert_array_equal(picked[:, 1], 2 * np.array(L.FACEMESH_IDS, np.float32))


def test_lip_openness_is_the_distance_between_points_0_and_17():
    points = np.zeros((131, 2), np.float32)
    points[L.FACEMESH_IDS.index(0)] = (0.5, 0.6)
    points[L.FACEMESH_IDS.index(17)] = (0.53, 0.64)
    assert np.isclose(L.lip_openness(points), 0.05)
    assert L.lip_openness(np.stack([points, points])).shape == (2,)
