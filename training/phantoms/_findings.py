"""Which findings a phantom has, and how each one is drawn.

:func:`plan_findings` draws the findings of one study (see the package docstring for the
prevalence); the ``draw_*`` functions paint one finding into the attenuation layers and
return its mask. Cardiomegaly, a widened mediastinum and fractures change the anatomy itself,
so :mod:`._generate` applies them while placing and drawing the anatomy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np

from training.phantoms._anatomy import SIDES, SIGN, Geometry, Layers, Maps, clavicle_centre
from training.phantoms._raster import (
    FloatArray,
    Frame,
    draw_path,
    smooth_noise,
    smoothstep,
    soft_inside,
)
from training.text.report_text import FindingMention

Certainty = Literal["positive", "uncertain"]
Side = Literal["left", "right", "bilateral"]
Severity = Literal["small", "moderate", "large", "mild", "severe"]

#: The twelve pathologies (Support Devices and No Finding are handled apart).
PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax",
)

#: Relative chance that an abnormal study includes each pathology. Lung Opacity is lower
#: because every pneumonia is also labelled Lung Opacity.
PATHOLOGY_WEIGHTS: dict[str, float] = {label: 1.0 for label in PATHOLOGIES} | {
    "Lung Opacity": 0.45,
}

#: Number of pathologies in an abnormal study and its probability.
FINDINGS_PER_ABNORMAL_STUDY: dict[int, float] = {1: 0.12, 2: 0.25, 3: 0.30, 4: 0.20, 5: 0.13}

#: Chance that an absent finding is stated as negative in the report ("No pneumothorax.").
NEGATIVE_MENTION: dict[str, float] = {
    "Pneumothorax": 0.75, "Pleural Effusion": 0.75, "Consolidation": 0.6, "Cardiomegaly": 0.55,
    "Enlarged Cardiomediastinum": 0.45, "Edema": 0.45, "Lung Opacity": 0.3, "Pneumonia": 0.25,
    "Fracture": 0.25, "Lung Lesion": 0.15, "Atelectasis": 0.1, "Pleural Other": 0.05,
    "Support Devices": 0.05,
}

#: Lobes as ``(side, u0, u1, t0, t1)`` boxes in lung-local coordinates.
LOBES: dict[str, tuple[str, float, float, float, float]] = {
    "right upper lobe": ("right", 0.40, 0.85, 0.12, 0.36),
    "right middle lobe": ("right", 0.45, 0.70, 0.50, 0.72),
    "right lower lobe": ("right", 0.50, 0.85, 0.58, 0.80),
    "left upper lobe": ("left", 0.45, 0.85, 0.12, 0.40),
    "lingula": ("left", 0.62, 0.80, 0.46, 0.66),
    "left lower lobe": ("left", 0.66, 0.88, 0.60, 0.82),
}

DEVICES: tuple[str, ...] = ("endotracheal tube", "nasogastric tube", "central venous catheter",
                            "PICC", "pacemaker")
_DEVICE_WEIGHTS = (0.40, 0.30, 0.35, 0.25, 0.25)


@dataclass(frozen=True)
class DrawnFinding:
    """One finding drawn in a phantom: what the report says about it.

    Parameters
    ----------
    label
        CheXpert label.
    certainty
        ``"positive"`` (drawn clearly) or ``"uncertain"`` (drawn faintly, hedged in text).
    side
        Patient side, ``"bilateral"`` or ``None``.
    severity
        Severity word used in the report, or ``None``.
    location
        Lobe, bone, ``"apical"``/``"lateral"`` (pleural thickening) or device name.
    """

    label: str
    certainty: Certainty = "positive"
    side: Side | None = None
    severity: Severity | None = None
    location: str | None = None

    def mention(self) -> FindingMention:
        """The report-text mention of this finding."""
        return FindingMention(self.label, self.certainty, self.side, self.severity,
                              self.location)


@dataclass
class PlannedFinding:
    """A finding to draw plus the drawing parameters the report does not state."""

    finding: DrawnFinding
    params: dict[str, float | int | str] = field(default_factory=dict)
    drawn_by: str | None = None  # another label whose drawing shows this one too

    @property
    def strength(self) -> float:
        return 0.45 if self.finding.certainty == "uncertain" else 1.0


def _choice(rng: np.random.Generator, options: dict[str, float]) -> str:
    keys = list(options)
    p = np.asarray([options[k] for k in keys], dtype=float)
    return str(keys[int(rng.choice(len(keys), p=p / p.sum()))])


def _lobe_side(lobe: str) -> Side:
    return "left" if LOBES[lobe][0] == "left" else "right"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plan_findings(
    rng: np.random.Generator,
    view: str,
    *,
    normal_fraction: float,
    uncertain_fraction: float,
    device_fraction: float,
) -> list[PlannedFinding]:
    """Draw the findings of one study.

    Parameters
    ----------
    rng
        Source of randomness.
    view
        ``"PA"`` or ``"AP"``.
    normal_fraction
        Chance of a study without pathology (No Finding; devices are still possible).
    uncertain_fraction
        Chance that a pathology is uncertain: drawn faintly and hedged in the report.
    device_fraction
        Chance of at least one support device.

    Returns
    -------
    list of PlannedFinding
    """
    chosen: list[str] = []
    if rng.random() >= normal_fraction:
        k = int(_choice(rng, {str(n): p for n, p in FINDINGS_PER_ABNORMAL_STUDY.items()}))
        labels = list(PATHOLOGIES)
        weights = np.asarray([PATHOLOGY_WEIGHTS[x] for x in labels])
        picks = rng.choice(len(labels), size=k, replace=False, p=weights / weights.sum())
        chosen = [labels[int(i)] for i in sorted(picks)]
    plan: list[PlannedFinding] = []
    free_lobes = list(LOBES)
    rng.shuffle(free_lobes)

    def take_lobe() -> str:
        return free_lobes.pop() if free_lobes else str(rng.choice(list(LOBES)))

    effusion_sides: set[str] = set()
    for label in chosen:
        certainty: Certainty = "uncertain" if rng.random() < uncertain_fraction else "positive"
        pf = _plan_one(rng, label, certainty, take_lobe)
        if label == "Pleural Effusion":
            side = pf.finding.side
            effusion_sides = {"left", "right"} if side == "bilateral" else {str(side)}
        plan.append(pf)
    # A pneumothorax goes to the side without fluid; a large effusion is not drawn under one.
    for pf in plan:
        f = pf.finding
        if f.label == "Pneumothorax" and f.side in effusion_sides:
            other: Side = "left" if f.side == "right" else "right"
            if other not in effusion_sides:
                pf.finding = DrawnFinding(f.label, f.certainty, other, f.severity, f.location)
            else:
                pf.params["max_t"] = 0.55
    # Every pneumonia is also an opacity (CheXpert reports both), drawn by the pneumonia.
    for pf in list(plan):
        f = pf.finding
        if f.label == "Pneumonia":
            existing = [p for p in plan if p.finding.label == "Lung Opacity"]
            if not existing:
                plan.append(PlannedFinding(DrawnFinding("Lung Opacity", f.certainty,
                                                        f.side, None, f.location),
                                           drawn_by="Pneumonia"))
            elif existing[0].finding.certainty == "uncertain" and f.certainty == "positive":
                existing[0].finding = DrawnFinding("Lung Opacity", "positive", None, None,
                                                   existing[0].finding.location)
    if rng.random() < device_fraction:
        n = 1 + int(rng.random() < 0.4) + int(rng.random() < 0.15)
        p = np.asarray(_DEVICE_WEIGHTS) / sum(_DEVICE_WEIGHTS)
        kinds = rng.choice(len(DEVICES), size=n, replace=False, p=p)
        for i in sorted(int(i) for i in kinds):
            plan.append(_plan_device(rng, DEVICES[i]))
    return plan


def _plan_one(rng: np.random.Generator, label: str, certainty: Certainty,
              take_lobe: Callable[[], str]) -> PlannedFinding:
    unsure = certainty == "uncertain"
    side2: Side = "left" if rng.random() < 0.5 else "right"
    side3 = cast(Side, _choice(rng, {"right": 0.36, "left": 0.36, "bilateral": 0.28}))
    if label == "Cardiomegaly":
        if unsure:
            return PlannedFinding(DrawnFinding(label, certainty),
                                  {"ctr": float(rng.uniform(0.50, 0.53))})
        sev = cast(Severity, _choice(rng, {"mild": 0.45, "moderate": 0.35, "severe": 0.20}))
        lo, hi = {"mild": (0.56, 0.60), "moderate": (0.60, 0.65), "severe": (0.65, 0.70)}[sev]
        return PlannedFinding(DrawnFinding(label, certainty, severity=sev),
                              {"ctr": float(rng.uniform(lo, hi))})
    if label == "Enlarged Cardiomediastinum":
        widen = rng.uniform(1.35, 1.5) if unsure else rng.uniform(1.9, 2.4)
        return PlannedFinding(DrawnFinding(label, certainty), {"widening": float(widen)})
    if label == "Pleural Effusion":
        sev = "small" if unsure else cast(
            Severity, _choice(rng, {"small": 0.4, "moderate": 0.4, "large": 0.2}))
        if side3 == "bilateral" and sev == "large":
            sev = "moderate"
        return PlannedFinding(DrawnFinding(label, certainty, side3, sev))
    if label == "Pneumothorax":
        sev = "small" if unsure else cast(
            Severity, _choice(rng, {"small": 0.4, "moderate": 0.35, "large": 0.25}))
        return PlannedFinding(DrawnFinding(label, certainty, side2, sev))
    if label == "Edema":
        sev = "mild" if unsure else cast(
            Severity, _choice(rng, {"mild": 0.4, "moderate": 0.4, "severe": 0.2}))
        return PlannedFinding(DrawnFinding(label, certainty, "bilateral", sev))
    if label in ("Consolidation", "Lung Opacity", "Pneumonia"):
        lobe = take_lobe()
        return PlannedFinding(DrawnFinding(label, certainty, _lobe_side(lobe), None, lobe))
    if label == "Lung Lesion":
        lobe = take_lobe()
        sev = "small" if unsure or rng.random() < 0.7 else "large"
        return PlannedFinding(DrawnFinding(label, certainty, _lobe_side(lobe), sev, lobe))
    if label == "Atelectasis":
        return PlannedFinding(DrawnFinding(label, certainty, side3, None, "lung base"))
    if label == "Pleural Other":
        where = "apical" if rng.random() < 0.35 else "lateral"
        side: Side = side2 if rng.random() < 0.8 else "bilateral"
        return PlannedFinding(DrawnFinding(label, certainty, side, None, where))
    if label == "Fracture":
        if rng.random() < 0.15:
            return PlannedFinding(DrawnFinding(label, certainty, side2, None,
                                               f"{side2} clavicle"), {"bone": "clavicle"})
        first = int(rng.integers(3, 7))
        count = 1 if unsure else int(_choice(rng, {"3": 0.6, "4": 0.4}))
        names = [_ordinal(first + 1 + i) for i in range(count)]
        if count == 1:
            where = f"{side2} lateral {names[0]} rib"
        elif count == 2:  # pragma: no cover - kept for other count tables
            where = f"{side2} lateral {names[0]} and {names[1]} ribs"
        else:
            where = f"{side2} lateral {names[0]} through {names[-1]} ribs"
        return PlannedFinding(DrawnFinding(label, certainty, side2, None, where),
                              {"bone": "rib", "first": first, "count": count})
    raise ValueError(f"no plan for {label!r}")


def _plan_device(rng: np.random.Generator, kind: str) -> PlannedFinding:
    if kind == "central venous catheter":
        access = "internal jugular" if rng.random() < 0.6 else "subclavian"
        side = "right" if rng.random() < 0.7 else "left"
        name = f"{side} {access} central venous catheter"
        return PlannedFinding(DrawnFinding("Support Devices", location=name),
                              {"kind": kind, "side": side, "access": access})
    if kind == "PICC":
        side = "right" if rng.random() < 0.6 else "left"
        return PlannedFinding(DrawnFinding("Support Devices", location=f"{side} PICC"),
                              {"kind": kind, "side": side})
    if kind == "pacemaker":
        side = "left" if rng.random() < 0.8 else "right"
        return PlannedFinding(DrawnFinding("Support Devices", location=f"{side}-sided pacemaker"),
                              {"kind": kind, "side": side})
    return PlannedFinding(DrawnFinding("Support Devices", location=kind), {"kind": kind})


# --------------------------------------------------------------------------- drawing helpers
@dataclass
class Scene:
    """Everything a drawing function needs for one image."""

    frame: Frame
    geo: Geometry
    maps: Maps
    layers: Layers
    rng: np.random.Generator

    def lung_local(self, side: str) -> tuple[FloatArray, FloatArray]:
        x, y = self.frame.coords
        return self.geo.u_of(x, side), self.geo.t_of(y)

    def lung_value(self, side: str, px: float, py: float) -> float:
        col, row = self.frame.to_pixels(np.array([px]), np.array([py]))
        c, r = int(round(float(col[0]))), int(round(float(row[0])))
        n = self.frame.size
        if not (0 <= c < n and 0 <= r < n):
            return 0.0
        return float(self.maps.lungs[side][r, c])


def _place_in_lobe(scene: Scene, lobe: str, margin: float) -> tuple[float, float]:
    """A point inside a lobe that is at least ``margin`` inside the lung."""
    side, u0, u1, t0, t1 = LOBES[lobe]
    geo, rng = scene.geo, scene.rng
    best = geo.point(side, (u0 + u1) / 2, (t0 + t1) / 2)
    for _ in range(30):
        u, t = rng.uniform(u0, u1), rng.uniform(t0, t1)
        x, y = geo.point(side, float(u), float(t))
        probes = [(x, y), (x + margin, y), (x - margin, y), (x, y + margin), (x, y - margin)]
        if all(scene.lung_value(side, a, b) > 0.9 for a, b in probes):
            return x, y
    # Fall back: walk laterally from the box centre until well inside the lung.
    for u in np.linspace((u0 + u1) / 2, 0.92, 12):
        x, y = geo.point(side, float(u), (t0 + t1) / 2)
        if scene.lung_value(side, x, y) > 0.9:
            return x, y
    return best


def _lung_of(scene: Scene, side: str | None) -> FloatArray:
    if side in ("left", "right"):
        return scene.maps.lungs[side]
    return scene.maps.lungs["left"] + scene.maps.lungs["right"]


def _sides(side: str | None) -> tuple[str, ...]:
    return SIDES if side in (None, "bilateral") else (str(side),)


def _add_fill(scene: Scene, amount: FloatArray) -> None:
    fill = scene.layers.fill
    np.copyto(fill, 1.0 - (1.0 - fill) * (1.0 - np.clip(amount, 0.0, 1.0)))


# --------------------------------------------------------------------------- findings
def draw_effusion(scene: Scene, pf: PlannedFinding) -> FloatArray:
    """Fluid in the dependent hemithorax with a meniscus rising along the lateral wall."""
    f, rng = pf.finding, scene.rng
    level_t = {"small": (0.86, 0.90), "moderate": (0.66, 0.72), "large": (0.44, 0.52)}[
        f.severity or "small"]
    mask = np.zeros_like(scene.layers.fill)
    for side in _sides(f.side):
        u, t = scene.lung_local(side)
        level = rng.uniform(*level_t)
        if pf.finding.certainty == "uncertain":
            level = rng.uniform(0.92, 0.95)
        meniscus = rng.uniform(0.12, 0.18) * np.clip((u - 0.3) / 0.7, 0, 1) ** 2
        surface = level - meniscus
        depth_t = t - surface
        fluid = smoothstep(depth_t / 0.05) * scene.maps.lungs[side]
        _add_fill(scene, fluid * (0.97 * pf.strength))
        scene.layers.overlay += 0.02 * fluid * pf.strength
        mask = np.maximum(mask, fluid)
    return mask


def draw_pneumothorax(scene: Scene, pf: PlannedFinding) -> FloatArray:
    """Air between chest wall and a visceral pleural edge: dark, no vessel markings."""
    f, geo, rng = pf.finding, scene.geo, scene.rng
    side = str(f.side)
    u, t = scene.lung_local(side)
    gap, reach = {"small": (0.15, 0.5), "moderate": (0.24, 0.75), "large": (0.38, 0.95)}[
        f.severity or "small"]
    gap *= rng.uniform(0.95, 1.15)
    if f.certainty == "uncertain":
        gap, reach = 0.06, 0.3
    reach = min(reach, float(pf.params.get("max_t", 1.0)))
    width = gap * geo.tw * (1.0 - smoothstep((t - reach * 0.55) / (reach * 0.45)))
    depth = scene.maps.depth[side]
    lung = scene.maps.lungs[side]
    region = soft_inside(depth - width, 1.5 * scene.frame.px) * lung * (width > 0)
    scene.layers.no_markings[:] = np.maximum(scene.layers.no_markings, region)
    scene.layers.lucency += (0.12 * pf.strength) * region
    edge = np.exp(-(((depth - width) / (1.2 * scene.frame.px)) ** 2)) * (width > 0.004) * lung
    scene.layers.overlay += 0.2 * pf.strength * edge
    # The collapsed lung is denser.
    collapse = lung * (1.0 - region) * (0.15 if f.severity == "large" else 0.07)
    _add_fill(scene, collapse * pf.strength)
    return region


def draw_edema(scene: Scene, pf: PlannedFinding) -> FloatArray:
    """Bilateral perihilar haze fading to the periphery, with septal lines at the bases."""
    f, geo, rng = pf.finding, scene.geo, scene.rng
    x, y = scene.frame.coords
    amount = {"mild": 0.72, "moderate": 0.8, "severe": 0.9}[f.severity or "mild"]
    spread = {"mild": 0.9, "moderate": 1.05, "severe": 1.25}[f.severity or "mild"]
    if f.certainty == "uncertain":
        amount, spread = 0.22, 0.7
    haze = np.zeros_like(x)
    texture = 0.75 + 0.25 * smooth_noise(rng, x.shape, 24)
    for side in SIDES:
        hx, _ = geo.point(side, 0.38, 0.0)
        hy = geo.hilum_y[side] + 0.04
        sx, sy = 0.42 * geo.tw * spread, 0.32 * geo.lung_h * spread
        blob = np.exp(-(((x - hx) / sx) ** 2) - (((y - hy) / sy) ** 2))
        haze = np.maximum(haze, blob * scene.maps.lungs[side])
    haze = haze * texture
    _add_fill(scene, amount * haze)
    scene.layers.markings *= 1.0 - 0.3 * haze  # indistinct vessels
    if f.certainty == "positive":
        lines = np.zeros_like(x)
        for side in SIDES:
            for _ in range(int(rng.integers(4, 8))):
                t = rng.uniform(0.62, 0.9)
                u1 = rng.uniform(0.97, 1.0)
                u0 = u1 - rng.uniform(0.06, 0.1)
                a, b = geo.point(side, u0, t), geo.point(side, u1, t)
                draw_path(lines, scene.frame, np.array([a, b]), 0.9, 1.0)
        scene.layers.overlay += 0.07 * lines * _lung_of(scene, None)
    return (haze > 0.25).astype(np.float32)


def _lobe_blob(scene: Scene, lobe: str, radius: float, cells: int, irregular: float
               ) -> FloatArray:
    side, u0, u1, t0, t1 = LOBES[lobe]
    x, y = scene.frame.coords
    rng = scene.rng
    cx, cy = _place_in_lobe(scene, lobe, radius * 0.5)
    noise = smooth_noise(rng, x.shape, cells)
    r = np.hypot((x - cx) / radius, (y - cy) / (radius * 0.85))
    for _ in range(2):  # lobulated outline: a few overlapping lobes
        ox, oy = rng.normal(0, 0.45 * radius, 2)
        sub = rng.uniform(0.55, 0.8)
        r = np.minimum(r, np.hypot((x - cx - ox) / (radius * sub),
                                   (y - cy - oy) / (radius * sub * 0.9)))
    blob = soft_inside(r - 1.0 - irregular * noise, 0.25)
    return blob * scene.maps.lungs[side]


def draw_consolidation(scene: Scene, pf: PlannedFinding) -> FloatArray:
    """Dense, homogeneous lobar airspace filling with air bronchograms and a sharp fissure."""
    f, geo, rng = pf.finding, scene.geo, scene.rng
    lobe = str(f.location)
    side = LOBES[lobe][0]
    radius = rng.uniform(0.075, 0.10) * (0.6 if f.certainty == "uncertain" else 1.0)
    blob = _lobe_blob(scene, lobe, radius, 20, 0.3)
    u, t = scene.lung_local(side)
    if lobe == "right upper lobe":  # bounded below by the minor fissure
        blob = blob * soft_inside(t - rng.uniform(0.38, 0.42), 0.006)
    dense = blob * (0.93 * pf.strength)
    # Air bronchograms: branching lucent tubes inside the consolidation.
    bronch = np.zeros_like(dense)
    cx, cy = geo.point(side, 0.3, (LOBES[lobe][3] + LOBES[lobe][4]) / 2)
    ys, xs = np.nonzero(blob > 0.8)
    if len(xs) > 20:
        xx, yy = scene.frame.coords
        for _ in range(int(rng.integers(3, 6))):
            i = int(rng.integers(len(xs)))
            tx, ty = float(xx[ys[i], xs[i]]), float(yy[ys[i], xs[i]])
            mx = (cx + tx) / 2 + rng.normal(0, 0.01)
            my = (cy + ty) / 2 + rng.normal(0, 0.01)
            draw_path(bronch, scene.frame, np.array([[cx, cy], [mx, my], [tx, ty]]), 1.4,
                      np.array([0.0, 0.8, 1.0]))
    dense = dense * (1.0 - 0.55 * bronch)
    _add_fill(scene, dense)
    return (blob > 0.5).astype(np.float32)


def draw_opacity(scene: Scene, pf: PlannedFinding) -> FloatArray:
    """Patchy, ill-defined ground-glass opacity in a lobe (markings still show through)."""
    f, rng = pf.finding, scene.rng
    lobe = str(f.location)
    radius = rng.uniform(0.07, 0.095) * (0.7 if f.certainty == "uncertain" else 1.0)
    blob = _lobe_blob(scene, lobe, radius, 28, 0.45)
    x = scene.frame.coords[0]
    mottle = np.clip(0.7 + 0.3 * smooth_noise(rng, x.shape, 64), 0, 1)
    hazy = smoothstep(blob * 1.3) * mottle
    _add_fill(scene, hazy * (0.6 * pf.strength))
    return (blob > 0.5).astype(np.float32)


def draw_pneumonia(scene: Scene, pf: PlannedFinding) -> FloatArray:
    """A cluster of fluffy acinar nodules coalescing in one lobe (bronchopneumonia)."""
    f, rng = pf.finding, scene.rng
    lobe = str(f.location)
    side = LOBES[lobe][0]
    cx, cy = _place_in_lobe(scene, lobe, 0.05)
    x, y = scene.frame.coords
    spread = rng.uniform(0.05, 0.075)
    rs, cs = scene.frame.window(cx - spread * 1.8, cx + spread * 1.8, cy - spread * 1.8,
                                cy + spread * 1.8)
    xx, yy = x[rs, cs], y[rs, cs]
    acc = np.zeros_like(xx)
    count = int(rng.integers(22, 34)) if f.certainty == "positive" else 8
    for _ in range(count):
        bx = cx + rng.normal(0, spread * 0.55)
        by = cy + rng.normal(0, spread * 0.45)
        br = rng.uniform(0.008, 0.013)
        acc = np.maximum(acc, np.exp(-(((xx - bx) ** 2 + (yy - by) ** 2) / (br * br))))
    cluster = np.zeros_like(x)
    cluster[rs, cs] = np.clip(acc * 1.25, 0, 1)
    cluster *= scene.maps.lungs[side]
    _add_fill(scene, cluster * (0.85 * pf.strength))
    return (cluster > 0.4).astype(np.float32)


def draw_atelectasis(scene: Scene, pf: PlannedFinding) -> FloatArray:
    """Plate-like linear bands in the lower lungs."""
    f, geo, rng = pf.finding, scene.geo, scene.rng
    bands = np.zeros_like(scene.layers.fill)
    for side in _sides(f.side):
        count = int(rng.integers(1, 3)) if f.certainty == "positive" else 1
        used: list[float] = []
        for _ in range(count):
            t = rng.uniform(0.58, 0.78)
            while any(abs(t - o) < 0.07 for o in used):
                t = rng.uniform(0.58, 0.8)
            used.append(t)
            uc = rng.uniform(0.55, 0.68)
            half_len = rng.uniform(0.22, 0.3)
            tilt = rng.uniform(-0.05, 0.07)
            a = geo.point(side, uc - half_len, t + tilt)
            b = geo.point(side, uc + half_len, t - tilt)
            m = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + rng.normal(0, 0.004))
            thick = rng.uniform(0.011, 0.014) * scene.frame.size
            if f.certainty == "uncertain":
                thick *= 0.6
            draw_path(bands, scene.frame, np.array([a, m, b]), thick, 1.0, edge=1.5)
    bands *= _lung_of(scene, f.side)
    _add_fill(scene, bands * (0.95 * pf.strength))
    return (bands > 0.5).astype(np.float32)


def draw_lesion(scene: Scene, pf: PlannedFinding) -> FloatArray:
    """A round, sharply marginated nodule (or a larger mass)."""
    f, rng = pf.finding, scene.rng
    lobe = str(f.location)
    side = LOBES[lobe][0]
    if f.severity == "large":
        radius = rng.uniform(0.045, 0.062)
    else:
        radius = rng.uniform(0.026, 0.034)
    if f.certainty == "uncertain":
        radius = 0.016
    cx, cy = _place_in_lobe(scene, lobe, radius * 1.2)
    x, y = scene.frame.coords
    angle = np.arctan2(y - cy, x - cx)
    lob = 1.0 + 0.06 * np.sin(3 * angle + rng.uniform(0, 6.3)) \
        + 0.04 * np.sin(5 * angle + rng.uniform(0, 6.3))
    r = np.hypot(x - cx, y - cy)
    nodule = soft_inside(r - radius * lob, 1.5 * scene.frame.px)
    _add_fill(scene, nodule * pf.strength)
    scene.layers.overlay += 0.08 * nodule * pf.strength
    del side
    return (nodule > 0.5).astype(np.float32)


def draw_pleural_thickening(scene: Scene, pf: PlannedFinding) -> FloatArray:
    """Lobulated soft-tissue band along the chest wall (lateral) or capping the apex."""
    f, rng = pf.finding, scene.rng
    mask = np.zeros_like(scene.layers.fill)
    for side in _sides(f.side):
        u, t = scene.lung_local(side)
        depth = scene.maps.depth[side]
        noise = smooth_noise(rng, u.shape, 30)
        if f.location == "apical":
            thick = rng.uniform(0.03, 0.04) * (1.0 - smoothstep((t - 0.16) / 0.12))
        else:
            t0, t1 = rng.uniform(0.08, 0.18), rng.uniform(0.62, 0.72)
            span = smoothstep((t - t0) / 0.06) * smoothstep((t1 - t) / 0.06)
            thick = rng.uniform(0.026, 0.034) * span
        if f.certainty == "uncertain":
            thick = thick * 0.5
        thick = thick * (1.0 + 0.3 * noise)
        band = soft_inside(depth - thick, 1.2 * scene.frame.px) * (thick > 0.002) \
            * scene.maps.lungs[side]
        _add_fill(scene, band * pf.strength)
        scene.layers.overlay += 0.05 * band * pf.strength
        mask = np.maximum(mask, band)
    return mask


# --------------------------------------------------------------------------- devices
def draw_device(scene: Scene, pf: PlannedFinding) -> FloatArray:
    """Radiopaque tubes, lines and pacemakers (bright lines and a metal generator)."""
    geo, frame, rng = scene.geo, scene.frame, scene.rng
    kind = str(pf.params["kind"])
    layer = np.zeros_like(scene.layers.fill)
    tx = geo.cx + 0.006
    if kind == "endotracheal tube":
        tip_y = geo.carina_y - rng.uniform(0.035, 0.06)
        path = np.array([[tx + 0.01, -0.02], [tx + 0.004, geo.apex_y - 0.04],
                         [tx, geo.apex_y + 0.02], [tx, tip_y]])
        draw_path(layer, frame, path, 0.0075 * frame.size, 0.35, edge=1.5)  # tube wall
        draw_path(layer, frame, path + [0.0035, 0.0], 1.7, 1.0)             # radiopaque stripe
    elif kind == "nasogastric tube":
        gx, _ = geo.point("left", 0.5, 0.0)
        gy = geo.dome_y["left"] + 0.07
        path = np.array([[tx + 0.015, -0.02], [tx + 0.014, geo.carina_y],
                         [geo.cx + 0.03, geo.heart_y], [geo.cx + 0.06, geo.dome_y["left"] + 0.03],
                         [gx, gy], [gx + 0.05, gy - 0.01], [gx + 0.04, gy - 0.04]])
        draw_path(layer, frame, path, 2.0, 1.0)
    elif kind == "central venous catheter":
        s = SIGN[str(pf.params["side"])]
        tip = (geo.cx - 0.035, geo.carina_y + rng.uniform(0.03, 0.06))
        svc_top = (geo.cx - 0.035, geo.apex_y + 0.04)
        if pf.params["access"] == "internal jugular":
            path = np.array([[geo.cx + s * 0.07, -0.02], [geo.cx + s * 0.06, geo.apex_y - 0.04],
                             [geo.cx + s * 0.045, geo.apex_y + 0.02], svc_top, tip])
        else:
            _, xl, ym, _ = clavicle_centre(geo, str(pf.params["side"]))
            path = np.array([[geo.cx + s * geo.tw * 0.75, ym + 0.02],
                             [geo.cx + s * geo.tw * 0.4, ym + 0.035],
                             [geo.cx + s * 0.05, geo.apex_y + 0.06], svc_top, tip])
        draw_path(layer, frame, path, 2.0, 1.0)
    elif kind == "PICC":
        s = SIGN[str(pf.params["side"])]
        tip = (geo.cx - 0.035, geo.carina_y + rng.uniform(0.04, 0.08))
        path = np.array([[geo.cx + s * 0.52, geo.apex_y + 0.2], [geo.cx + s * (geo.tw + 0.08),
                         geo.apex_y + 0.08], [geo.cx + s * geo.tw * 0.6, geo.apex_y + 0.05],
                         [geo.cx + s * 0.08, geo.apex_y + 0.06],
                         (geo.cx - 0.035, geo.apex_y + 0.09), tip])
        draw_path(layer, frame, path, 1.6, 1.0)
    elif kind == "pacemaker":
        s = SIGN[str(pf.params["side"])]
        gx, gy = geo.cx + s * geo.tw * 0.72, geo.apex_y + 0.085
        x, y = frame.coords
        w, h = 0.045, 0.032
        box = soft_inside(np.maximum(np.abs(x - gx) - w, np.abs(y - gy) - h) - 0.0,
                          1.5 * frame.px)
        corner = np.hypot(np.maximum(np.abs(x - gx) - w + 0.012, 0),
                          np.maximum(np.abs(y - gy) - h + 0.012, 0))
        box *= soft_inside(corner - 0.012, 1.5 * frame.px)
        layer = np.maximum(layer, box * 1.2)
        ra = (geo.cx - 0.02, geo.heart_y - geo.heart_b * 0.45)
        rv = (geo.cx + geo.heart_l * 0.45, geo.heart_y + geo.heart_b * 0.35)
        svc = (geo.cx - 0.03, geo.carina_y)
        start = (gx - s * w, gy)
        mid = (geo.cx + s * 0.06, geo.apex_y + 0.07)
        mid2 = (mid[0], mid[1] + 0.02)
        draw_path(layer, frame, np.array([start, mid, svc, ra]), 1.2, 1.0)
        draw_path(layer, frame, np.array([(gx - s * w, gy + 0.015), mid2,
                                          (svc[0] + 0.01, svc[1] + 0.02),
                                          (geo.cx - 0.005, geo.heart_y), rv]), 1.2, 1.0)
    else:
        raise ValueError(f"unknown device {kind!r}")
    scene.layers.devices[:] = np.maximum(scene.layers.devices, 0.42 * layer)
    return (layer > 0.3).astype(np.float32)


DRAW = {
    "Pleural Effusion": draw_effusion,
    "Pneumothorax": draw_pneumothorax,
    "Edema": draw_edema,
    "Consolidation": draw_consolidation,
    "Lung Opacity": draw_opacity,
    "Pneumonia": draw_pneumonia,
    "Atelectasis": draw_atelectasis,
    "Lung Lesion": draw_lesion,
    "Pleural Other": draw_pleural_thickening,
    "Support Devices": draw_device,
}

#: Drawing order: diffuse findings first, then focal ones, lines last.
DRAW_ORDER: tuple[str, ...] = (
    "Edema", "Pleural Effusion", "Consolidation", "Lung Opacity", "Pneumonia", "Atelectasis",
    "Lung Lesion", "Pleural Other", "Pneumothorax", "Support Devices",
)

