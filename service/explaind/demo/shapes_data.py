"""Synthetic "shapes" images for the bundled demo image classifier.

Each 64x64 RGB image holds exactly one object (circle, square, triangle,
cross or star) on a cluttered background, and the object's bounding box is
known exactly. That makes the data useful twice: to train the demo CNN and to
check that saliency methods point at the object rather than at the clutter.

Only numpy and scikit-image are used so the service and its tests can
regenerate data without torch.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import disk, line, polygon

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")

SIZE = 64
_MIN_OBJECT = 16  # object extent across, in pixels
_MAX_OBJECT = 30
_MIN_CONTRAST = 90.0  # RGB distance between object colour and background under it


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (k, 2) points, given as (x, y) around the origin, by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _polygon_mask(points: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Filled polygon with vertices `points` (x, y, centred on 0) placed at (cx, cy)."""
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    rr, cc = polygon(points[:, 1] + cy, points[:, 0] + cx, shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _shape_outline(cls: int, extent: float, angle: float) -> np.ndarray:
    """Vertices (x, y) of a polygonal class shape about `extent` pixels across."""
    r = extent / 2.0
    if cls == 1:  # square, side ~0.78 of the extent so its area is not the smallest
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * r * 1.1
    elif cls == 2:  # equilateral triangle
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * r
    elif cls == 3:  # plus-shaped cross with arms a third of the extent thick
        a, w = r * 0.95, r * 0.34
        pts = np.array(
            [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w),
             (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)],
            dtype=float,
        )
    elif cls == 4:  # five-pointed star
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.42)
        pts = np.stack([np.cos(t) * radius, np.sin(t) * radius], axis=1)
    else:
        raise ValueError(f"class {cls} is not polygonal")
    return _rotate(pts, angle)


def _object_mask(rng: np.random.Generator, cls: int) -> np.ndarray:
    """Boolean mask of one object of class `cls` at a random place, size and angle."""
    extent = rng.uniform(_MIN_OBJECT, _MAX_OBJECT)
    if cls == 0:
        margin = extent / 2 + 1
        cx, cy = rng.uniform(margin, SIZE - margin, size=2)
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        rr, cc = disk((cy, cx), extent / 2, shape=mask.shape)
        mask[rr, cc] = True
        return mask
    pts = _shape_outline(cls, extent, rng.uniform(0, 2 * np.pi))
    lo = -pts.min(axis=0) + 1  # keep the whole polygon inside the frame
    hi = SIZE - pts.max(axis=0) - 1
    cx, cy = rng.uniform(lo, hi)
    return _polygon_mask(pts, cx, cy)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Smooth random colour gradient plus low-frequency colour noise, float [64, 64, 3]."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) + 0.5
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    img = c0 + (c1 - c0) * ramp[..., None]
    # Low-frequency blotches: a coarse random grid, bilinearly upsampled.
    grid = rng.normal(0, 25, size=(5, 5, 3))
    pos = np.linspace(0, 4, SIZE)
    i0 = np.minimum(pos.astype(int), 3)
    f = (pos - i0)[:, None]
    rows = grid[i0] * (1 - f[..., None]) + grid[i0 + 1] * f[..., None]  # [64, 5, 3]
    up = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]
    return img + up


def _add_distractors(rng: np.random.Generator, img: np.ndarray) -> None:
    """Draw small dots, blobs and thin lines: clutter far smaller than any object."""
    for _ in range(rng.integers(4, 10)):
        colour = rng.uniform(0, 255, size=3)
        kind = rng.integers(3)
        if kind == 0:  # blob, at most 7 px across
            rr, cc = disk(tuple(rng.uniform(0, SIZE, 2)), rng.uniform(1.0, 3.5),
                          shape=img.shape[:2])
        elif kind == 1:  # 1 px wide line segment
            r0, c0 = rng.integers(0, SIZE, 2)
            length = rng.uniform(5, 18)
            ang = rng.uniform(0, 2 * np.pi)
            r1 = int(np.clip(r0 + length * np.sin(ang), 0, SIZE - 1))
            c1 = int(np.clip(c0 + length * np.cos(ang), 0, SIZE - 1))
            rr, cc = line(int(r0), int(c0), r1, c1)
        else:  # a handful of single-pixel dots
            rr, cc = rng.integers(0, SIZE, size=(2, rng.integers(3, 12)))
        img[rr, cc] = colour


def make_example(rng: np.random.Generator) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """One image, its class index and the object's box (x0, y0, x1, y1), x1/y1 exclusive."""
    cls = int(rng.integers(len(CLASSES)))
    img = _background(rng)
    _add_distractors(rng, img)
    mask = _object_mask(rng, cls)
    under = img[mask].mean(axis=0)
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):  # keep the object visible against what lies beneath it
        if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, size=3)
    else:
        colour = np.where(under < 128, 255.0, 0.0)
    img[mask] = colour
    img += rng.normal(0, 6, size=img.shape)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), cls, box


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` examples, deterministic in `seed`: images [n,64,64,3] uint8, labels [n], boxes [n,4]."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.int64)
    for i in range(n):
        images[i], labels[i], boxes[i] = make_example(rng)
    return images, labels, boxes
