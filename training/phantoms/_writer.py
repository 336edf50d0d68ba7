"""Write a phantom dataset: image files plus ``phantoms.csv`` in the MIMIC-CXR-JPG style.

Layout under the output folder::

    phantoms.csv
    files/<subject_id>/<study_id>/<dicom_id>.png      (or .dcm)
    files/<subject_id>/<study_id>/<dicom_id>_masks.npz  (with masks=True)

Images are independent, so they are generated in worker processes when ``workers > 1``;
the CSV rows are written in image order, so the output does not depend on ``workers``.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from report_language.labels import CHEXPERT_LABELS
from training.phantoms._dicom import phantom_dataset
from training.phantoms._generate import Phantom, PhantomConfig, _generate, subject_plan

logger = logging.getLogger(__name__)

ImageFormat = Literal["png", "dicom"]
#: Output formats accepted by :func:`write_phantoms`.
FORMATS: Final[tuple[str, ...]] = ("png", "dicom")
#: Name of the label file in the output folder.
CSV_NAME: Final[str] = "phantoms.csv"
#: Columns of ``phantoms.csv``; ``path`` is relative to the CSV's folder.
CSV_COLUMNS: Final[tuple[str, ...]] = (
    "subject_id", "study_id", "dicom_id", "path", "ViewPosition", "indication", "findings",
    "impression", "report", *CHEXPERT_LABELS,
)


@dataclass(frozen=True)
class WriteResult:
    """What :func:`write_phantoms` wrote."""

    csv_path: Path
    images: int
    subjects: int
    seconds: float


def _label_text(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def phantom_row(phantom: Phantom, path: str) -> dict[str, str]:
    """The CSV row of one phantom whose image was written to ``path`` (relative)."""
    row = {
        "subject_id": phantom.subject_id,
        "study_id": phantom.study_id,
        "dicom_id": phantom.dicom_id,
        "path": path,
        "ViewPosition": phantom.view,
        "indication": phantom.indication,
        "findings": phantom.findings_text,
        "impression": phantom.impression,
        "report": phantom.report,
    }
    row.update({name: _label_text(phantom.labels.get(name)) for name in CHEXPERT_LABELS})
    return row


def save_png(image: np.ndarray, path: Path) -> None:
    """Save a [0, 1] display image as an 8-bit grayscale PNG (bone bright)."""
    from PIL import Image

    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path, format="PNG", compress_level=1)


@dataclass(frozen=True)
class _Job:
    out: str
    seed: int
    index: int
    subject: int
    visit: int
    config: PhantomConfig
    fmt: str
    masks: bool


def _write_one(job: _Job) -> dict[str, str]:
    phantom = _generate(job.seed, job.index, job.subject, job.visit, job.config)
    rel = Path("files") / phantom.subject_id / phantom.study_id
    folder = Path(job.out) / rel
    folder.mkdir(parents=True, exist_ok=True)
    if job.fmt == "png":
        name = f"{phantom.dicom_id}.png"
        save_png(phantom.image, folder / name)
    else:
        name = f"{phantom.dicom_id}.dcm"
        phantom_dataset(phantom).save_as(folder / name, enforce_file_format=True)
    if job.masks:
        save_masks: Any = np.savez_compressed  # numpy's stub types **kwds too narrowly
        save_masks(folder / f"{phantom.dicom_id}_masks.npz", **dict(phantom.masks))
    return phantom_row(phantom, (rel / name).as_posix())


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork shares the already imported modules (importing torch again costs seconds per
    # worker); the workers use numpy only.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def write_phantoms(
    out: str | os.PathLike[str],
    n: int,
    seed: int,
    *,
    fmt: str = "png",
    config: PhantomConfig | None = None,
    workers: int = 1,
    masks: bool = False,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> WriteResult:
    """Generate ``n`` phantoms with ``seed`` and write images and ``phantoms.csv``.

    Parameters
    ----------
    out
        Output folder (created).
    n
        Number of images (> 0).
    seed
        Dataset seed (>= 0): the same seed and config give byte-identical files.
    fmt
        ``"png"`` (8-bit, display-ready) or ``"dicom"`` (CR or DX, MONOCHROME1 or 2,
        12 to 16 bits stored).
    config
        Generator options (image size, prevalence).
    workers
        Processes to generate in (1: in this process).
    masks
        Also write each phantom's masks as ``<dicom_id>_masks.npz``.
    overwrite
        Replace an existing ``phantoms.csv`` in ``out``.
    progress
        Called with the number of images finished so far.

    Returns
    -------
    WriteResult

    Raises
    ------
    ValueError
        For ``n <= 0``, ``seed < 0``, ``workers < 1``, an unknown format, or an existing
        dataset in ``out`` without ``overwrite``.
    """
    if n <= 0:
        raise ValueError(f"the number of images must be > 0, got {n}")
    if seed < 0:
        raise ValueError(f"the seed must be >= 0, got {seed}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cfg = config or PhantomConfig()
    folder = Path(out)
    csv_path = folder / CSV_NAME
    if csv_path.exists() and not overwrite:
        raise ValueError(f"{csv_path} already exists; choose another folder or overwrite it")
    folder.mkdir(parents=True, exist_ok=True)
    plan = subject_plan(seed, n)
    jobs = [_Job(str(folder), seed, i, s, v, cfg, fmt, masks) for i, (s, v) in enumerate(plan)]
    start = time.perf_counter()
    rows: list[dict[str, str]] = []
    for done, row in enumerate(_run(jobs, workers), start=1):
        rows.append(row)
        if progress is not None:
            progress(done)
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(csv_path)
    seconds = time.perf_counter() - start
    logger.info("wrote %d phantoms (%s) in %.1f s", n, fmt, seconds)
    return WriteResult(csv_path=csv_path, images=n, subjects=len({s for s, _ in plan}),
                       seconds=seconds)


def _run(jobs: list[_Job], workers: int) -> Iterator[dict[str, str]]:
    if workers == 1 or len(jobs) < 4:
        for job in jobs:
            yield _write_one(job)
        return
    chunk = max(1, min(32, len(jobs) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
        yield from pool.map(_write_one, jobs, chunksize=chunk)
