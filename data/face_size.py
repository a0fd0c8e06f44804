"""The face sizes: the side in pixels of every face crop, sketch and rendered face. A module of its own, without
OpenCV, so that the networks and the trainers can name the sizes on a machine without it (bench/gpu.py)."""

BASE_SIZE = 128  # the paper's face size: the official weights', and the size the renderer's core works at in all
FACE_SIZES = (BASE_SIZE, 2 * BASE_SIZE, 4 * BASE_SIZE)  # each doubling adds one level at the renderer's ends
FACE_SIZE = BASE_SIZE  # the default face size of every stage
