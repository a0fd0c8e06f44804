"""Paste-back (paper section 4): a generated SxS face (S the renderer's face size) resized into its crop box and
blended into the template frame through the convex hull of the face outline, Gaussian-blurred, so that only the face
changes.

Two implementations of one rule: `paste_face` with OpenCV on the host, `paste_face_tensor` in torch on the
networks' device (within 1 grey level of it, tests/test_device_frames.py)."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from data.crop import denormalise_from_box
from data.landmarks import JAW_POSITIONS, OUTLINE_POSITIONS
from data.resize import LINEAR, resize_image, to_uint8
from data.sketch import draw_edges
from dubbing.mask import convex_mask, gaussian_blur


def mask_outline(template_landmarks: np.ndarray, predicted: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The points whose hull is pasted, in frame pixels: the template's face outline and the predicted jaw (an
    opening mouth lowers the chin); both (131, 2) box-normalised."""
    return denormalise_from_box(np.concatenate([template_landmarks[OUTLINE_POSITIONS], predicted[JAW_POSITIONS]]),
                                box)


def face_mask(shape: tuple[int, int], outline: np.ndarray, kernel: int, sigma: float) -> np.ndarray:
    """(H, W, 1) float32 mask: the convex hull of outline points (pixels) filled with 1, Gaussian-blurred."""
    mask = np.zeros(shape, np.float32)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(outline).astype(np.int32)), 1.0)
    return cv2.GaussianBlur(mask, (kernel, kernel), sigma)[..., None]


def paste_region(box: np.ndarray, size: tuple[int, int], kernel: int) -> tuple[int, int, int, int]:
    """The pixels (x0, y0, x1, y1) that a paste into `box` can change in a (width, height) frame: the box and the
    reach of the mask's blur around it."""
    width, height = size
    x0, y0, x1, y1 = (int(v) for v in box)
    pad = kernel // 2 + 1
    return max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, width), min(y1 + pad, height)


def paste_face(frame: np.ndarray, face: np.ndarray, box: np.ndarray, outline: np.ndarray, kernel: int,
               sigma: float) -> np.ndarray:
    """Resize an SxS face to its crop box, paste it, and blend it into the frame through the mask of `outline`
    (face contour points in frame pixels) blurred by a Gaussian of `kernel` px and `sigma` (the config's mask.kernel
    and mask.sigma). Only pixels within kernel//2 of the hull can change."""
    x0, y0, x1, y1 = (int(v) for v in box)
    rx0, ry0, rx1, ry1 = paste_region(box, frame.shape[1::-1], kernel)
    region = frame[ry0:ry1, rx0:rx1].astype(np.float32)
    generated = region.copy()
    generated[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = cv2.resize(face, (x1 - x0, y1 - y0),
                                                                 interpolation=cv2.INTER_LINEAR)
    mask = face_mask(region.shape[:2], outline - (rx0, ry0), kernel, sigma)
    out = frame.copy()
    out[ry0:ry1, rx0:rx1] = np.clip(np.round(region + mask * (generated - region)), 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------- the same in torch, on the networks' device
def paste_face_tensor(frame: torch.Tensor, face: torch.Tensor, box: np.ndarray, outline: np.ndarray,
                      kernel: int, sigma: float) -> None:
    """paste_face in torch on the frame's device, in place: an (H, W, 3) uint8 frame, a (S, S, 3) uint8 face on
    the same device. Within 1 grey level of paste_face."""
    x0, y0, x1, y1 = (int(v) for v in box)
    rx0, ry0, rx1, ry1 = paste_region(box, (frame.shape[1], frame.shape[0]), kernel)
    region = frame[ry0:ry1, rx0:rx1].float()
    generated = region.clone()
    # Rounded to uint8 levels first, as cv2.resize of a uint8 face returns them.
    generated[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = to_uint8(resize_image(face, (y1 - y0, x1 - x0), LINEAR))
    mask = gaussian_blur(convex_mask(outline - (rx0, ry0), ry1 - ry0, rx1 - rx0, frame.device), kernel, sigma)
    mask = mask[..., None]
    frame[ry0:ry1, rx0:rx1] = to_uint8(region + mask * (generated - region))


def sketch_frame(landmarks: np.ndarray, box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Debug view: (131, 2) box-normalised landmarks drawn at their place in a black (H, W, 3) frame."""
    width, height = size
    canvas = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    canvas[y0:y1, x0:x1] = draw_edges(np.zeros((y1 - y0, x1 - x0, 3), np.uint8), landmarks)
    return canvas
