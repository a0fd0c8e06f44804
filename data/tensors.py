"""Host arrays onto the networks' device, and images as the networks take them: RGB uint8 frames or crops ->
float32 tensors in 0..1, channels first."""
from __future__ import annotations

import numpy as np
import torch


def upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`: on CUDA through pinned memory, without blocking the host (a copy from pageable
    memory would wait for the work queued before it)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in 0..1, the same layout and device: the one conversion every image and sketch
    the networks take goes through."""
    return pixels.float().div_(255)


def as_images(array: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., H, W, 3) -> float32 (..., 3, H, W) in 0..1, on the tensor's own device."""
    return unit_range(array.movedim(-1, -3))


def image_tensor(images: np.ndarray | list[np.ndarray], device: torch.device | str | None = None) -> torch.Tensor:
    """RGB uint8 images (k, H, W, 3) (an array or a list) -> (k, 3, H, W) float32 in 0..1, on `device` (the copy
    is uint8, a quarter of the float bytes; the conversion runs on the device)."""
    array = np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images)
    return as_images(torch.from_numpy(array).to(device))
