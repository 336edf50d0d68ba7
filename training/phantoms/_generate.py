"""One phantom from ``(seed, index)``: plan, anatomy, findings, image, labels and report."""

from __future__ import annotations

import datetime as _dt
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from report_language.labels import CHEXPERT_LABELS, NEGATIVE, NO_FINDING, POSITIVE, UNCERTAIN
from training.phantoms._anatomy import (
    SIGN,
    Geometry,
    build_maps,
    clavicle_centre,
    render_anatomy,
    rib_centre,
    rib_half,
    sample_geometry,
    sample_subject,
)
from training.phantoms._findings import (
    DRAW,
    DRAW_ORDER,
    NEGATIVE_MENTION,
    PATHOLOGIES,
    DrawnFinding,
    PlannedFinding,
    Scene,
    plan_findings,
)
from training.phantoms._raster import Frame
from training.phantoms._render import attenuation, sample_exposure, to_display
from training.text.report_text import (
    FINDING_LABELS,
    render_findings,
    render_impression,
    render_indication,
)

#: Detector width the image spans, in millimetres (a 43 cm cassette).
DETECTOR_MM = 430.0


@dataclass(frozen=True)
class PhantomConfig:
    """What the generator draws; the defaults give the documented prevalence."""

    size: int = field(default=512, metadata={"help": "Image side in pixels (square)."})
    normal_fraction: float = field(
        default=0.22, metadata={"help": "Share of studies without pathology (No Finding)."}
    )
    uncertain_fraction: float = field(
        default=0.05,
        metadata={"help": "Share of drawn pathologies that are uncertain (faint, hedged)."},
    )
    ap_fraction: float = field(default=0.35, metadata={"help": "Share of AP (vs PA) views."})
    device_fraction_ap: float = field(
        default=0.5, metadata={"help": "Share of AP studies with support devices."}
    )
    device_fraction_pa: float = field(
        default=0.12, metadata={"help": "Share of PA studies with support devices."}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 64:
            raise ValueError(f"size must be an integer >= 64, got {self.size!r}")
        for name in ("normal_fraction", "uncertain_fraction", "ap_fraction",
                     "device_fraction_ap", "device_fraction_pa"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic frontal chest radiograph and its ground truth.

    Parameters
    ----------
    seed, index
        What generated it: the same pair always gives the same phantom.
    subject_id, study_id, dicom_id
        Identifiers; a subject has one to three studies, each study one image.
    subject_index, visit
        The subject's number and which of its studies this is (0-based).
    view
        ``"PA"`` or ``"AP"``.
    sex
        ``"F"`` or ``"M"`` (female phantoms have breast shadows).
    image
        ``(size, size)`` float32 in [0, 1], bone bright (MONOCHROME2 sense).
    labels
        The 14 CheXpert labels: ``1.0``, ``0.0``, ``-1.0`` or ``None``.
    findings
        Every finding drawn, as the report states it.
    negatives
        Labels the report states as absent.
    masks
        Boolean masks: ``lungs``, ``right_lung``, ``left_lung``, ``heart``, ``mediastinum``,
        ``thorax``, ``body`` and one per drawn finding label.
    ctr
        Cardiothoracic ratio the heart was drawn with.
    indication, findings_text, impression
        Report sections.
    pixel_spacing_mm
        Detector pixel spacing.
    study_date
        ``YYYYMMDD``.
    """

    seed: int
    index: int
    subject_id: str
    study_id: str
    dicom_id: str
    subject_index: int
    visit: int
    view: Literal["PA", "AP"]
    sex: Literal["F", "M"]
    image: np.ndarray = field(repr=False)
    labels: Mapping[str, float | None]
    findings: tuple[DrawnFinding, ...]
    negatives: tuple[str, ...]
    masks: Mapping[str, np.ndarray] = field(repr=False)
    ctr: float
    indication: str
    findings_text: str
    impression: str
    pixel_spacing_mm: float
    study_date: str

    @property
    def report(self) -> str:
        """``FINDINGS: ...`` and ``IMPRESSION: ...``, as :attr:`StudyRecord.report` writes it."""
        return f"FINDINGS: {self.findings_text}\nIMPRESSION: {self.impression}"

    def measured_ctr(self) -> float:
        """Cardiothoracic ratio measured from the heart and thorax masks."""
        return measure_ctr(self.masks["heart"], self.masks["thorax"])


def measure_ctr(heart: np.ndarray, thorax: np.ndarray) -> float:
    """Cardiothoracic ratio: widest horizontal extent of the heart over that of the thorax.

    Parameters
    ----------
    heart, thorax
        Boolean masks of the same shape.

    Returns
    -------
    float
        The ratio, or ``nan`` when either mask is empty.
    """
    def width(mask: np.ndarray) -> int:
        cols = np.nonzero(np.asarray(mask).any(axis=0))[0]
        return int(cols[-1] - cols[0] + 1) if len(cols) else 0

    w_heart, w_thorax = width(heart), width(thorax)
    return w_heart / w_thorax if w_heart and w_thorax else float("nan")


def subject_plan(seed: int, n: int) -> list[tuple[int, int]]:
    """``(subject index, visit)`` of each of ``n`` images: subjects have 1 to 3 studies."""
    rng = np.random.default_rng([seed, 7])
    out: list[tuple[int, int]] = []
    subject = 0
    while len(out) < n:
        visits = 1 + int(rng.choice(3, p=[0.5, 0.3, 0.2]))
        out.extend((subject, v) for v in range(visits))
        subject += 1
    return out[:n]


def _ids(seed: int, index: int, subject: int) -> tuple[str, str, str]:
    return f"ph{seed}p{subject:05d}", f"ph{seed}s{index:06d}", f"ph{seed}i{index:06d}"


def _fractures(
    plan: list[PlannedFinding], geo_rng: np.random.Generator
) -> tuple[dict[tuple[str, int], tuple[float, float, float, float]],
           dict[str, tuple[float, float]]]:
    ribs: dict[tuple[str, int], tuple[float, float, float, float]] = {}
    clavicles: dict[str, tuple[float, float]] = {}
    for pf in plan:
        f = pf.finding
        if f.label != "Fracture":
            continue
        unsure = f.certainty == "uncertain"
        side = str(f.side)
        if pf.params.get("bone") == "clavicle":
            step = 0.0 if unsure else float(geo_rng.uniform(0.02, 0.028)) * geo_rng.choice([-1, 1])
            clavicles[side] = (float(geo_rng.uniform(0.4, 0.6)), float(step))
            continue
        u_break = float(geo_rng.uniform(0.5, 0.62))
        direction = float(geo_rng.choice([-1.0, 1.0]))
        for i in range(int(pf.params["count"])):
            k = int(pf.params["first"]) + i
            u_k = u_break + float(geo_rng.normal(0.0, 0.012))
            gap = 0.009 if unsure else float(geo_rng.uniform(0.07, 0.085))
            factor = 0.0 if unsure else float(geo_rng.uniform(1.7, 2.1))
            callus = 0.0 if unsure else float(geo_rng.uniform(1.25, 1.45))
            # The step is relative to the rib thickness; resolved once the geometry is known.
            ribs[(side, k)] = (u_k, gap, direction * factor, callus)
    return ribs, clavicles


def _resolve_rib_steps(
    ribs: dict[tuple[str, int], tuple[float, float, float, float]], geo: Geometry
) -> dict[tuple[str, int], tuple[float, float, float, float]]:
    return {key: (u, gap, factor * 2.0 * rib_half(geo, key[1]), callus)
            for key, (u, gap, factor, callus) in ribs.items()}


def _fracture_mask(frame: Frame, geo: Geometry, ribs: dict[tuple[str, int],
                   tuple[float, float, float, float]], clavicles: dict[str, tuple[float, float]]
                   ) -> np.ndarray:
    x, y = frame.coords
    mask = np.zeros(x.shape, dtype=bool)
    points: list[tuple[float, float]] = []
    for (side, k), (u, _gap, _step, _callus) in ribs.items():
        yc, _ = rib_centre(geo, k, np.asarray(u))
        points.append((geo.cx + SIGN[side] * u * geo.tw, float(yc)))
    for side, (v, _step) in clavicles.items():
        xm, xl, ym, yl = clavicle_centre(geo, side)
        points.append((xm + v * (xl - xm), ym + v * (yl - ym)))
    for px, py in points:
        mask |= np.hypot(x - px, y - py) < 0.025
    return mask


def generate_phantom(seed: int, index: int, config: PhantomConfig | None = None) -> Phantom:
    """Generate image ``index`` of the dataset with ``seed``.

    Parameters
    ----------
    seed
        Dataset seed (>= 0).
    index
        Image number (>= 0). Images are independent, so any subset can be generated in any
        order, by any process, with identical results.
    config
        Generator options; default :class:`PhantomConfig`.

    Returns
    -------
    Phantom
        The image and its ground truth.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    subject, visit = subject_plan(seed, index + 1)[index]
    return _generate(seed, index, subject, visit, config or PhantomConfig())


def iter_phantoms(
    seed: int, n: int, config: PhantomConfig | None = None, start: int = 0
) -> Iterator[Phantom]:
    """Generate images ``start`` .. ``start + n - 1`` of the dataset with ``seed``."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    plan = subject_plan(seed, start + n)
    cfg = config or PhantomConfig()
    for index in range(start, start + n):
        subject, visit = plan[index]
        yield _generate(seed, index, subject, visit, cfg)


def _generate(seed: int, index: int, subject_index: int, visit: int,
              config: PhantomConfig) -> Phantom:
    subject = sample_subject(np.random.default_rng([seed, 1, subject_index]))
    rng = np.random.default_rng([seed, 2, index])
    text_rng = random.Random(f"phantom-text:{seed}:{index}")
    view: Literal["PA", "AP"] = "AP" if rng.random() < config.ap_fraction else "PA"
    plan = plan_findings(
        rng,
        view,
        normal_fraction=config.normal_fraction,
        uncertain_fraction=config.uncertain_fraction,
        device_fraction=config.device_fraction_ap if view == "AP" else config.device_fraction_pa,
    )
    params = {pf.finding.label: pf.params for pf in plan}
    ctr = float(params["Cardiomegaly"]["ctr"]) if "Cardiomegaly" in params else float(
        np.clip(subject.heart_base + rng.normal(0.0, 0.01) + (0.015 if view == "AP" else 0.0),
                0.36, 0.465))
    widening = float(params.get("Enlarged Cardiomediastinum", {}).get("widening", 1.0))
    geo = sample_geometry(rng, subject, view, ctr, widening)
    angle = float(np.clip(rng.normal(0.0, 0.025), -0.06, 0.06))
    frame = Frame(config.size, angle, (float(rng.normal(0, 0.008)), float(rng.normal(0, 0.01))))
    maps = build_maps(frame, geo)
    ribs, clavicles = _fractures(plan, rng)
    ribs = _resolve_rib_steps(ribs, geo)
    layers = render_anatomy(frame, geo, subject, maps, rng, rib_fractures=ribs,
                            clavicle_fractures=clavicles)
    scene = Scene(frame, geo, maps, layers, rng)
    finding_masks: dict[str, np.ndarray] = {}
    for label in DRAW_ORDER:
        for pf in plan:
            if pf.finding.label == label and pf.drawn_by is None:
                drawn = DRAW[label](scene, pf) > 0.5
                finding_masks[label] = finding_masks.get(label, drawn) | drawn
    if "Pneumonia" in finding_masks:
        finding_masks["Lung Opacity"] = finding_masks.get(
            "Lung Opacity", np.zeros_like(finding_masks["Pneumonia"])) | finding_masks["Pneumonia"]
    if ribs or clavicles:
        finding_masks["Fracture"] = _fracture_mask(frame, geo, ribs, clavicles)
    image = to_display(attenuation(layers, maps), sample_exposure(rng), rng)

    labels: dict[str, float | None] = {name: None for name in CHEXPERT_LABELS}
    for pf in plan:
        value = POSITIVE if pf.finding.certainty == "positive" else UNCERTAIN
        current = labels[pf.finding.label]
        labels[pf.finding.label] = value if current is None else max(current, value)
    negatives = tuple(label for label in FINDING_LABELS
                      if labels[label] is None and text_rng.random() < NEGATIVE_MENTION[label])
    for label in negatives:
        labels[label] = NEGATIVE
    if not any(labels[label] in (POSITIVE, UNCERTAIN) for label in PATHOLOGIES):
        labels[NO_FINDING] = POSITIVE
    findings = tuple(pf.finding for pf in plan)
    mentions = [f.mention() for f in findings]
    findings_text = render_findings(mentions, list(negatives), text_rng)
    impression = render_impression(mentions, text_rng)
    indication = render_indication(mentions, text_rng, sex=subject.sex)

    masks: dict[str, np.ndarray] = {
        "right_lung": maps.lungs["right"] > 0.5,
        "left_lung": maps.lungs["left"] > 0.5,
        "heart": maps.heart > 0.5,
        "mediastinum": maps.mediastinum > 0.5,
        "thorax": maps.thorax > 0.5,
        "body": maps.body > 0.5,
    }
    masks["lungs"] = masks["right_lung"] | masks["left_lung"]
    masks.update(finding_masks)
    subject_id, study_id, dicom_id = _ids(seed, index, subject_index)
    date = _dt.date(2020, 1, 1) + _dt.timedelta(days=(subject_index * 7) % 1500 + visit * 45)
    return Phantom(
        seed=seed,
        index=index,
        subject_id=subject_id,
        study_id=study_id,
        dicom_id=dicom_id,
        subject_index=subject_index,
        visit=visit,
        view=view,
        sex=subject.sex,
        image=image,
        labels=labels,
        findings=findings,
        negatives=negatives,
        masks=masks,
        ctr=geo.ctr,
        indication=indication,
        findings_text=findings_text,
        impression=impression,
        pixel_spacing_mm=DETECTOR_MM / config.size,
        study_date=date.strftime("%Y%m%d"),
    )
