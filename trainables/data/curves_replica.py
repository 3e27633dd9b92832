"""A procedural replica of the Curves data set (Hinton & Salakhutdinov 2006), NOT the original.

The original ``digs3pts_1.mat`` holds 28x28 images of smooth curves through three random points
with continuous intensities in [0, 1]; its generator was never published (task-definitions.md,
"Curves generation (unverified)"). This module draws data of the same kind so that the Curves
autoencoder runs without the file; errors on it are not comparable with Tables 1-3. Runs that use
it must say so, hence ``DATASET_LABEL``.

Each image: three points drawn uniformly inside the canvas (1.5 pixels from the border), the
quadratic Bezier curve that passes through them (the middle one at the curve parameter 1/2), and
an anti-aliased stroke: the curve is sampled densely and every sample adds a Gaussian blob
weighted by its arc length, which approximates the line integral of a Gaussian pen. Across a
straight stroke that integral is ``exp(-d^2 / (2 sigma^2))``, so the stroke's centre has intensity
about 1 and the edges fall off smoothly; values are clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np

DATASET_LABEL = "curves-replica (procedural, not the original digs3pts_1.mat)"

IMAGE_SIDE = 28
# Pen width in pixels (Gaussian std). Chosen by eye to resemble the original strokes; unverified.
PEN_SIGMA = 1.0
# Samples along each curve; spacing stays below PEN_SIGMA for curves up to ~60 pixels long.
CURVE_SAMPLES = 64
BORDER = 1.5
# Cases rendered per batched matrix product; bounds memory at ~CHUNK * 28 * 64 * 8 bytes.
CHUNK = 2000


def make_curves(n_cases: int, seed: int) -> np.ndarray:
    """``n_cases`` replica Curves images, (n_cases, 784) float32 in [0, 1], row-major 28x28.

    Deterministic per ``seed``. This is the procedural replica, not the original data set.

    >>> x = make_curves(3, seed=0)
    >>> x.shape, x.dtype, bool(0.0 <= x.min() and x.max() <= 1.0)
    ((3, 784), dtype('float32'), True)
    """
    if n_cases < 0:
        raise ValueError(f"Invalid number of cases: {n_cases} (must be >= 0)")
    rng = np.random.default_rng(seed)
    # (n, 3 points, xy) in pixel coordinates; all randomness is drawn up front so that the
    # result does not depend on CHUNK.
    points = rng.uniform(BORDER, IMAGE_SIDE - 1 - BORDER, size=(n_cases, 3, 2))
    out = np.empty((n_cases, IMAGE_SIDE * IMAGE_SIDE), dtype=np.float32)
    for start in range(0, n_cases, CHUNK):
        block = points[start : start + CHUNK]
        out[start : start + len(block)] = _render(block).reshape(len(block), -1)
    return out


def _render(points: np.ndarray) -> np.ndarray:
    p0, p1, p2 = points[:, 0], points[:, 1], points[:, 2]
    # Control point that makes the Bezier pass through p1 at t = 1/2: B(1/2) = (p0 + 2c + p2) / 4.
    control = 2.0 * p1 - 0.5 * (p0 + p2)
    t = np.linspace(0.0, 1.0, CURVE_SAMPLES)[None, :, None]
    curve = (1 - t) ** 2 * p0[:, None] + 2 * (1 - t) * t * control[:, None] + t**2 * p2[:, None]

    # Arc length per sample (trapezoid weights), so the stroke density does not depend on speed.
    seg = np.linalg.norm(np.diff(curve, axis=1), axis=-1)
    weight = np.zeros(curve.shape[:2])
    weight[:, 1:] += seg / 2
    weight[:, :-1] += seg / 2
    weight /= np.sqrt(2 * np.pi) * PEN_SIGMA

    # A Gaussian blob is separable, so the sum of blobs is one batched product:
    # image[y, x] = sum_k w_k * g(y - y_k) * g(x - x_k).
    grid = np.arange(IMAGE_SIDE, dtype=np.float64)
    gx = np.exp(-((grid[None, None, :] - curve[..., 0:1]) ** 2) / (2 * PEN_SIGMA**2))
    gy = np.exp(-((grid[None, None, :] - curve[..., 1:2]) ** 2) / (2 * PEN_SIGMA**2))
    image = np.matmul((gy * weight[..., None]).transpose(0, 2, 1), gx)
    return np.clip(image, 0.0, 1.0)
