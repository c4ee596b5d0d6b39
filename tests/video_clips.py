"""Synthetic clips for comparing video inputs with transformers' video processors (tests/test_video_processor.py,
and the GPU check's tests/gpu/video_check.py, which puts tests/ on its path)."""

from __future__ import annotations

import numpy as np
import torch


def noise(frames, height, width, seed=0):
    """Uniform noise (T x H x W x 3 uint8): every pixel matters."""
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def smooth(frames, height, width):
    """Gradients that move over time: resizing them exercises interpolation without aliasing noise."""
    y, x = np.mgrid[0:height, 0:width]
    clip = [np.stack([(x * 255 // max(width - 1, 1) + 9 * t) % 256, (y * 255 // max(height - 1, 1)),
                      ((x + y + 5 * t) * 3) % 256], axis=-1) for t in range(frames)]
    return np.stack(clip).astype(np.uint8)


def max_abs_diff(a, b) -> float:
    return float((torch.as_tensor(a, dtype=torch.float32) - torch.as_tensor(b, dtype=torch.float32)).abs().max())
