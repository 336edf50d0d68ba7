"""Vectorised drawing primitives: the patient frame, soft edges, smooth noise, stamped curves.

Everything works on float32 arrays in normalised units (1.0 = image width) so that shapes
scale with ``size``. The patient frame is rotated and shifted against the image: anatomy and
findings are described in patient coordinates, and :class:`Frame` maps them to pixels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

FloatArray = np.ndarray


@dataclass(frozen=True)
class Frame:
    """Patient coordinates of every pixel, for one image.

    Parameters
    ----------
    size
        Side of the square image in pixels.
    angle
        In-plane rotation of the patient against the detector, radians.
    shift
        Patient offset ``(dx, dy)`` in normalised units.
    """

    size: int
    angle: float
    shift: tuple[float, float]

    @functools.cached_property
    def coords(self) -> tuple[FloatArray, FloatArray]:
        """``(x, y)`` patient coordinates of every pixel centre, each ``(size, size)``."""
        n = self.size
        v = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
        xi, yi = v[None, :], v[:, None]
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = c * xi - s * yi + 0.5 - self.shift[0]
        y = s * xi + c * yi + 0.5 - self.shift[1]
        return x.astype(np.float32), y.astype(np.float32)

    @property
    def px(self) -> float:
        """One pixel in normalised units."""
        return 1.0 / self.size

    def window(
        self, x0: float, x1: float, y0: float, y1: float, margin: float = 0.01
    ) -> tuple[slice, slice]:
        """Row and column slices of the image that cover a box in patient coordinates."""
        xs = np.array([x0 - margin, x1 + margin, x0 - margin, x1 + margin])
        ys = np.array([y0 - margin, y0 - margin, y1 + margin, y1 + margin])
        cols, rows = self.to_pixels(xs, ys)
        n = self.size
        c0, c1 = max(0, int(np.floor(cols.min()))), min(n, int(np.ceil(cols.max())) + 1)
        r0, r1 = max(0, int(np.floor(rows.min()))), min(n, int(np.ceil(rows.max())) + 1)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def to_pixels(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Map patient coordinates to ``(col, row)`` pixel coordinates (continuous)."""
        xs = np.asarray(x, dtype=np.float64) + self.shift[0] - 0.5
        ys = np.asarray(y, dtype=np.float64) + self.shift[1] - 0.5
        c, s = math.cos(self.angle), math.sin(self.angle)
        xi = c * xs + s * ys
        yi = -s * xs + c * ys
        return (xi + 0.5) * self.size - 0.5, (yi + 0.5) * self.size - 0.5


def soft_inside(distance: FloatArray, width: float) -> FloatArray:
    """Membership in [0, 1] from a signed distance (negative inside), ramped over ``width``."""
    return np.clip(0.5 - distance / width, 0.0, 1.0).astype(np.float32, copy=False)


def smoothstep(x: FloatArray) -> FloatArray:
    """Cubic smoothstep of ``x`` clipped to [0, 1]."""
    t = np.clip(x, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=64)
def _interp_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, FloatArray]:
    """Lower index, upper index and weight of the upper one for linear resampling."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize(low: FloatArray, shape: tuple[int, int]) -> FloatArray:
    """Bilinear resize of a 2-D array (gathers only: no BLAS threads in worker processes)."""
    lo, hi, f = _interp_weights(low.shape[0], shape[0])
    a = low.astype(np.float32, copy=False)
    rows = a[lo] * (1.0 - f)[:, None] + a[hi] * f[:, None]
    lo, hi, f = _interp_weights(low.shape[1], shape[1])
    return (rows[:, lo] * (1.0 - f)[None, :] + rows[:, hi] * f[None, :]).astype(np.float32)


def _blur_small(a: FloatArray, passes: int) -> FloatArray:
    for _ in range(passes):
        a = (np.roll(a, 1, 0) + 2 * a + np.roll(a, -1, 0)) / 4
        a = (np.roll(a, 1, 1) + 2 * a + np.roll(a, -1, 1)) / 4
    return a


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> FloatArray:
    """Zero-mean, unit-variance smooth noise with about ``cells`` blobs across the image."""
    low = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    low = _blur_small(low, 1)
    up = resize(low, (shape[0] + 2 * shape[0] // cells, shape[1] + 2 * shape[1] // cells))
    r0, c0 = shape[0] // cells, shape[1] // cells
    up = up[r0 : r0 + shape[0], c0 : c0 + shape[1]]
    std = float(up.std()) or 1.0
    return ((up - up.mean()) / std).astype(np.float32)


def blur3(a: FloatArray) -> FloatArray:
    """One pass of a separable [1, 2, 1] / 4 blur (edges replicated)."""
    p = np.pad(a, 1, mode="edge")
    v = (p[:-2, :] + 2 * p[1:-1, :] + p[2:, :]) / 4
    return ((v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) / 4).astype(np.float32)


def catmull_rom(points: FloatArray, per_segment: int = 24) -> FloatArray:
    """Dense points of a Catmull-Rom spline through control points ``(N, 2)``."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 2:
        raise ValueError("a curve needs at least two points")
    padded = np.vstack([2 * pts[0] - pts[1], pts, 2 * pts[-1] - pts[-2]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(pts[-1:])
    return np.vstack(out)


def resample(curve: FloatArray, step: float) -> FloatArray:
    """Points along a polyline every ``step`` (same units as the curve)."""
    seg = np.diff(curve, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    total = float(cum[-1])
    if total <= 0:
        return np.asarray(curve[:1], dtype=np.float64)
    s = np.arange(0.0, total + step * 0.5, step)
    x = np.interp(s, cum, curve[:, 0])
    y = np.interp(s, cum, curve[:, 1])
    return np.stack([x, y], axis=1)


@functools.lru_cache(maxsize=64)
def _disk(radius_tenths: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    radius = radius_tenths / 10.0
    r = int(math.ceil(radius + 1))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    return dx.ravel(), dy.ravel(), np.hypot(dx, dy).ravel().astype(np.float32)


def stamp_curve(
    canvas: FloatArray,
    cols: FloatArray,
    rows: FloatArray,
    radius: float,
    value: float | FloatArray,
    *,
    edge: float = 1.0,
) -> None:
    """Draw a thick anti-aliased curve into ``canvas`` in place (maximum of overlapping stamps).

    Parameters
    ----------
    canvas
        2-D float32 layer.
    cols, rows
        Pixel coordinates of densely sampled points along the curve (spacing <= 0.5 px).
    radius
        Half thickness in pixels.
    value
        Intensity at the centre line; a scalar or one value per point.
    edge
        Width of the soft edge in pixels.
    """
    dx, dy, dist = _disk(max(1, int(round(radius * 10))))
    weight = np.clip((radius + 0.5 * edge - dist) / edge, 0.0, 1.0)
    keep = weight > 0
    dx, dy, weight = dx[keep], dy[keep], weight[keep]
    c0 = np.rint(np.asarray(cols)).astype(np.int64)
    r0 = np.rint(np.asarray(rows)).astype(np.int64)
    vals = np.broadcast_to(np.asarray(value, dtype=np.float32), c0.shape)
    cc = (c0[:, None] + dx[None, :]).ravel()
    rr = (r0[:, None] + dy[None, :]).ravel()
    vv = (vals[:, None] * weight[None, :]).ravel()
    h, w = canvas.shape
    inside = (cc >= 0) & (cc < w) & (rr >= 0) & (rr < h)
    flat = canvas.reshape(-1)
    np.maximum.at(flat, rr[inside] * w + cc[inside], vv[inside])


def draw_path(
    canvas: FloatArray,
    frame: Frame,
    control: FloatArray,
    radius_px: float,
    value: float | FloatArray,
    *,
    edge: float = 1.0,
) -> FloatArray:
    """Draw a smooth curve through control points given in patient coordinates.

    Returns
    -------
    numpy.ndarray
        The dense ``(N, 2)`` patient-coordinate points of the drawn curve.
    """
    curve = catmull_rom(np.asarray(control, dtype=np.float64))
    dense = resample(curve, 0.4 * frame.px)
    cols, rows = frame.to_pixels(dense[:, 0], dense[:, 1])
    if np.ndim(value) > 0:
        given = np.asarray(value, dtype=np.float64)
        value = np.interp(np.linspace(0, 1, len(dense)), np.linspace(0, 1, given.size), given)
    stamp_curve(canvas, cols, rows, radius_px, value, edge=edge)
    return dense
