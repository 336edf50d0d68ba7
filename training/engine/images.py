"""Preprocessed training images: the inference preprocessing, run once and cached.

Every training stage sees exactly the pixels the product will see: DICOM files go through
:func:`inference.preprocess_dataset` (Modality LUT, VOI LUT, MONOCHROME1 inversion, resize,
normalisation) and PNG/JPEG files through :func:`inference.preprocessing.preprocess_display_image`.
The result is cached as one float16 array per dataset, keyed by the file list and the
preprocessing config, so later stages and resumed runs skip the work.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from inference import PreprocessConfig, PreprocessingError, preprocess_dataset, read_dicom
from inference.preprocessing import preprocess_display_image
from training.errors import DatasetError

logger = logging.getLogger(__name__)

_DISPLAY_SUFFIXES = {".png", ".jpg", ".jpeg"}


def preprocess_file(path: Path, config: PreprocessConfig) -> np.ndarray:
    """Preprocess one image file (DICOM, PNG or JPEG) to ``(C, S, S)`` float32.

    Raises
    ------
    DatasetError
        When the file cannot be read or is not a usable image (the file is named).
    """
    try:
        if path.suffix.lower() in _DISPLAY_SUFFIXES:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
            return preprocess_display_image(array, config)
        return preprocess_dataset(read_dicom(path), config)
    except (OSError, PreprocessingError) as exc:
        raise DatasetError(f"{path}: {exc}") from exc


def _cache_key(paths: Sequence[Path], config: PreprocessConfig) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(config.__dict__, sort_keys=True, default=str).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_image_cache(
    paths: Sequence[Path],
    config: PreprocessConfig,
    cache_dir: Path | None,
    *,
    progress: bool = True,
) -> np.ndarray:
    """Return the preprocessed images ``(N, C, S, S)`` as float16, from the cache if present.

    Parameters
    ----------
    paths
        Image files, in the order wanted.
    config
        The model's preprocessing config.
    cache_dir
        Folder for the cache file; ``None`` disables caching.
    progress
        Show a progress bar while preprocessing.
    """
    if not paths:
        return np.zeros((0, config.channels, config.image_size, config.image_size), np.float16)
    cache_file = None
    if cache_dir is not None:
        cache_file = cache_dir / f"images-{_cache_key(paths, config)}.npy"
        if cache_file.is_file():
            cached = np.load(cache_file, mmap_mode="r")
            if cached.shape[0] == len(paths):
                return np.asarray(cached)
    shape = (len(paths), config.channels, config.image_size, config.image_size)
    images = np.empty(shape, dtype=np.float16)
    for i, path in enumerate(tqdm(paths, desc="preprocessing images", disable=not progress)):
        images[i] = preprocess_file(path, config)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(".tmp.npy")
        np.save(partial, images)
        partial.replace(cache_file)
        logger.info("cached %d preprocessed images in %s", len(paths), cache_file)
    return images


__all__ = ["load_image_cache", "preprocess_file"]
