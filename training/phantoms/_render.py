"""From attenuation layers to a display image: exposure, detector blur and noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.phantoms._anatomy import Layers, Maps
from training.phantoms._raster import FloatArray, blur3, smooth_noise


@dataclass(frozen=True)
class Exposure:
    """How one radiograph was exposed and processed."""

    low: float
    high: float
    gamma: float
    noise: float
    mottle: float
    heel: float


def sample_exposure(rng: np.random.Generator) -> Exposure:
    """Draw exposure, processing and noise for one image."""
    return Exposure(
        low=float(rng.uniform(0.0, 0.06)),
        high=float(rng.uniform(0.78, 0.92)),
        gamma=float(rng.uniform(0.85, 1.2)),
        noise=float(rng.uniform(0.006, 0.02)),
        mottle=float(rng.uniform(0.004, 0.012)),
        heel=float(rng.uniform(-0.03, 0.03)),
    )


def attenuation(layers: Layers, maps: Maps) -> FloatArray:
    """Combine the layers: findings replace lung air (``fill``) and hide markings."""
    aerated = layers.air * (1.0 - layers.fill)
    visible = layers.markings * (1.0 - layers.fill) * (1.0 - layers.no_markings)
    return (layers.base - aerated + visible - layers.lucency + layers.bones + layers.overlay
            + layers.devices)


def to_display(
    values: FloatArray, exposure: Exposure, rng: np.random.Generator
) -> FloatArray:
    """Window, gamma, blur and noise: a float32 image in [0, 1], bone bright."""
    n = values.shape[0]
    ramp = np.linspace(-0.5, 0.5, n, dtype=np.float32)[:, None]
    v = values * (1.0 + exposure.heel * ramp)
    img = np.clip((v - exposure.low) / (exposure.high - exposure.low), 0.0, 1.0)
    img = img ** np.float32(exposure.gamma)
    img = blur3(img)
    img += exposure.mottle * smooth_noise(rng, img.shape, max(8, n // 8))
    img += exposure.noise * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
