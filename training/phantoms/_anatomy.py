"""Normal chest anatomy of a frontal radiograph: geometry, masks and attenuation layers.

Patient coordinates are normalised to the image width, ``x`` to the viewer's right (the
patient's left) and ``y`` down. Each hemithorax uses lung-local coordinates: ``u`` runs from
the midline (0) to the inner lateral chest wall (1), ``t`` from the lung apex (0) to the
costophrenic angle (1). The thorax is ``2 * tw`` wide at its widest, so the cardiothoracic
ratio of a heart that spans ``heart_r + heart_l`` is ``(heart_r + heart_l) / (2 * tw)``.

The picture is built from additive layers in attenuation units (0 = air, about 0.55 = soft
tissue at mid-chest): ``base`` soft tissue, lung ``air`` that findings may replace
(``fill``), vessel ``markings``, and ``bones``; :mod:`._render` combines them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from training.phantoms._raster import (
    FloatArray,
    Frame,
    blur3,
    draw_path,
    smooth_noise,
    smoothstep,
    soft_inside,
    stamp_curve,
)

Side = Literal["right", "left"]
SIDES: tuple[Side, Side] = ("right", "left")
#: Patient right is on the viewer's left of a frontal radiograph.
SIGN: dict[str, float] = {"right": -1.0, "left": 1.0}


@dataclass(frozen=True)
class Subject:
    """What stays the same across one patient's studies."""

    sex: Literal["F", "M"]
    build: float
    fat: float
    heart_base: float
    mediastinum: float
    rib_offset: float
    spine_offset: float


def sample_subject(rng: np.random.Generator) -> Subject:
    """Draw a patient: sex, body size, soft tissue, baseline heart and mediastinum."""
    return Subject(
        sex="F" if rng.random() < 0.5 else "M",
        build=float(rng.uniform(0.90, 1.04)),
        fat=float(rng.uniform(0.035, 0.10)),
        heart_base=float(rng.uniform(0.38, 0.45)),
        mediastinum=float(rng.uniform(0.052, 0.066)),
        rib_offset=float(rng.uniform(-0.006, 0.006)),
        spine_offset=float(rng.normal(0.0, 0.004)),
    )


@dataclass(frozen=True)
class Geometry:
    """Positions and sizes of one study's anatomy, in patient coordinates."""

    view: Literal["PA", "AP"]
    cx: float
    tw: float
    apex_y: float
    lung_h: float
    dome_y: dict[str, float]
    cp_y: dict[str, float]
    heart_r: float
    heart_l: float
    heart_y: float
    heart_b: float
    med_r: float
    med_l: float
    knob: float
    knob_y: float
    carina_y: float
    hilum_y: dict[str, float]
    spine_x: float
    neck_w: float
    body_w: float
    rib_spacing: float
    rib_first: float
    mediastinum_lobes: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))
    rib_jitter: tuple[float, ...] = field(default=(0.0,) * 12)

    @property
    def ctr(self) -> float:
        """Designed cardiothoracic ratio."""
        return (self.heart_r + self.heart_l) / (2.0 * self.tw)

    def u_of(self, x: FloatArray, side: str) -> FloatArray:
        """Lateral fraction of a hemithorax (0 midline, 1 inner chest wall)."""
        return SIGN[side] * (x - self.cx) / self.tw

    def t_of(self, y: FloatArray) -> FloatArray:
        """Vertical fraction of the lungs (0 apex, 1 costophrenic angle)."""
        return (y - self.apex_y) / self.lung_h

    def point(self, side: str, u: float, t: float) -> tuple[float, float]:
        """Patient coordinates of lung-local ``(u, t)``."""
        return self.cx + SIGN[side] * u * self.tw, self.apex_y + t * self.lung_h

    def diaphragm_y(self, u: FloatArray, side: str) -> FloatArray:
        """Height of the hemidiaphragm at lateral fraction ``u``."""
        peak, cp = self.dome_y[side], self.cp_y[side]
        lateral = np.clip((u - 0.42) / 0.58, 0.0, None)
        medial = np.clip((0.42 - u) / 0.42, 0.0, None)
        return peak + (cp - peak) * lateral**2 + 0.035 * self.lung_h * medial**2

    def mediastinum_half(self, y: FloatArray, side: str) -> FloatArray:
        """Half-width of the mediastinum on one side at height ``y`` (above the heart)."""
        t = self.t_of(y)
        if side == "right":
            w = self.med_r * (1.0 + 0.25 * smoothstep((t - 0.35) / 0.3))
        else:
            w = self.med_l + self.knob * np.exp(-(((y - self.knob_y) / (0.045)) ** 2))
        lob = self.mediastinum_lobes
        if any(lob):
            w = w + lob[0] * np.exp(-(((t - 0.12) / 0.08) ** 2)) \
                + lob[1] * np.exp(-(((t - 0.28) / 0.07) ** 2))
        return w

    def heart_half(self, y: FloatArray, side: str) -> FloatArray:
        """Horizontal half-extent of the heart from the midline at height ``y`` (0 outside)."""
        a = self.heart_l if side == "left" else self.heart_r
        yc = self.heart_y + (0.12 * self.heart_b if side == "left" else 0.0)
        dy = (y - yc) / self.heart_b
        return a * np.sqrt(np.clip(1.0 - dy * dy, 0.0, None))


def sample_geometry(
    rng: np.random.Generator,
    subject: Subject,
    view: Literal["PA", "AP"],
    ctr: float,
    mediastinum_widening: float = 1.0,
) -> Geometry:
    """Place the anatomy of one study.

    Parameters
    ----------
    rng
        Source of the per-study variation (inspiration, position).
    subject
        The patient's constant traits.
    view
        ``"PA"`` or ``"AP"`` (AP: lower lung volumes, higher clavicles, scapulae over lungs).
    ctr
        Cardiothoracic ratio to draw.
    mediastinum_widening
        Factor on the upper mediastinal width (about 2 for a widened mediastinum).
    """
    b = subject.build
    tw = 0.365 * b * rng.uniform(0.97, 1.03)
    inspiration = rng.uniform(0.93, 1.03) * (0.93 if view == "AP" else 1.0)
    lung_h = 0.68 * b * inspiration
    apex_y = rng.uniform(0.10, 0.13) + (0.012 if view == "AP" else 0.0)
    cx = 0.5 + rng.normal(0.0, 0.008)
    right_peak = apex_y + lung_h * rng.uniform(0.76, 0.82)
    left_peak = right_peak + lung_h * rng.uniform(0.02, 0.06)
    cp = apex_y + lung_h
    cp_y = {"right": cp + rng.normal(0, 0.004), "left": cp + 0.01 + rng.normal(0, 0.004)}
    heart_w = ctr * 2.0 * tw
    right_frac = rng.uniform(0.30, 0.37)
    heart_b = heart_w * rng.uniform(0.40, 0.46)
    # Widest rows sit just above the domes so the whole width is inside the thorax.
    heart_y = right_peak - heart_b * rng.uniform(0.28, 0.38)
    carina_y = apex_y + lung_h * rng.uniform(0.27, 0.32)
    widening = float(mediastinum_widening)
    med_r = subject.mediastinum * rng.uniform(0.95, 1.05) * widening
    med_l = subject.mediastinum * rng.uniform(0.95, 1.08) * widening
    lobes = (0.0, 0.0, 0.0)
    if widening > 1.2:
        lobes = (float(rng.uniform(0.0, 0.02)), float(rng.uniform(0.0, 0.02)), 0.0)
    return Geometry(
        view=view,
        cx=cx,
        tw=tw,
        apex_y=apex_y,
        lung_h=lung_h,
        dome_y={"right": right_peak, "left": left_peak},
        cp_y=cp_y,
        heart_r=heart_w * right_frac,
        heart_l=heart_w * (1.0 - right_frac),
        heart_y=heart_y,
        heart_b=heart_b,
        med_r=med_r,
        med_l=med_l,
        knob=subject.mediastinum * rng.uniform(0.45, 0.65) * (1.15 if widening > 1.2 else 1.0),
        knob_y=apex_y + lung_h * rng.uniform(0.20, 0.25),
        carina_y=carina_y,
        hilum_y={"right": carina_y + lung_h * 0.12, "left": carina_y + lung_h * 0.09},
        spine_x=cx + subject.spine_offset,
        neck_w=0.085 * b,
        body_w=tw * (1.0 + subject.fat) + 0.035,
        rib_spacing=lung_h / 12.3,
        rib_first=apex_y - 0.012 + subject.rib_offset,
        mediastinum_lobes=lobes,
        rib_jitter=tuple(float(v) for v in rng.normal(0.0, 0.07 * lung_h / 12.3, 12)),
    )


@dataclass
class Maps:
    """Soft anatomical masks (values in [0, 1]) over the whole image.

    ``depth`` is, per side, the distance inward from the chest wall and apex (negative
    outside the hemithorax), used to place pleural findings.
    """

    lungs: dict[str, FloatArray]
    depth: dict[str, FloatArray]
    heart: FloatArray
    mediastinum: FloatArray
    thorax: FloatArray
    body: FloatArray
    abdomen: FloatArray


@dataclass
class Layers:
    """Attenuation layers that findings modify before rendering."""

    base: FloatArray
    air: FloatArray
    fill: FloatArray
    markings: FloatArray
    lucency: FloatArray
    no_markings: FloatArray
    bones: FloatArray
    devices: FloatArray
    overlay: FloatArray


def _ellipse_distance(dx: FloatArray, dy: FloatArray, a: float, b: float) -> FloatArray:
    """Approximate signed distance to an axis-aligned ellipse (negative inside)."""
    return (np.sqrt((dx / a) ** 2 + (dy / b) ** 2) - 1.0) * min(a, b)


def build_maps(frame: Frame, geo: Geometry) -> Maps:
    """Compute lung, heart, mediastinum, thorax, body and abdomen masks."""
    x, y = frame.coords
    px = frame.px
    edge = 1.2 * px
    t = geo.t_of(y)
    heart_side = {s: geo.heart_half(y, s) for s in SIDES}
    med_side = {s: geo.mediastinum_half(y, s) for s in SIDES}
    dxm = x - geo.cx
    # Heart: union of the two half-shapes, cut by the diaphragm below.
    heart_extent = np.where(dxm >= 0, heart_side["left"], heart_side["right"])
    heart_d = np.abs(dxm) - heart_extent
    heart_d = np.where(heart_extent > 0, heart_d, 1.0)
    above: dict[str, FloatArray] = {}
    envelope: dict[str, FloatArray] = {}
    env_dist: dict[str, FloatArray] = {}
    for side in SIDES:
        u = geo.u_of(x, side)
        d_dia = y - geo.diaphragm_y(u, side)
        above[side] = soft_inside(d_dia, edge)
        y_c = geo.apex_y + 0.34 * geo.lung_h
        dy = np.maximum(y_c - y, 0.0)
        env_d = _ellipse_distance(u * geo.tw - geo.tw / 2, dy, geo.tw / 2, 0.34 * geo.lung_h)
        envelope[side] = soft_inside(env_d, edge) * (u >= -0.02)
        env_dist[side] = env_d.astype(np.float32)
    above_all = np.where(dxm < 0, above["right"], above["left"])
    heart = soft_inside(heart_d, edge) * above_all
    med_half = np.where(dxm < 0, med_side["right"], med_side["left"])
    in_chest = soft_inside(geo.apex_y - 0.06 - y, 3 * px)
    mediastinum = soft_inside(np.abs(dxm) - med_half, edge) * above_all * in_chest
    lungs: dict[str, FloatArray] = {}
    for side in SIDES:
        lungs[side] = (envelope[side] * above[side] * (1.0 - heart) * (1.0 - mediastinum))
    thorax = np.clip(np.maximum(envelope["right"] * above["right"],
                                envelope["left"] * above["left"]), 0, 1)
    thorax = np.maximum(thorax, heart)
    # Body outline: neck, shoulders, torso.
    adx = np.abs(dxm)
    shoulder_top = geo.apex_y - 0.07 + 0.3 * np.clip(adx - geo.neck_w, 0, None) ** 2
    below_shoulder = soft_inside(shoulder_top - y, 3 * px)
    half_width = geo.body_w + 0.02 * smoothstep((t - 0.2) / 0.8) \
        + 0.25 * smoothstep((0.36 - t) / 0.14)
    torso = soft_inside(adx - half_width, 2 * px)
    neck = soft_inside(adx - geo.neck_w, 2 * px)
    body = np.clip(np.maximum(torso * below_shoulder, neck), 0, 1)
    abdomen = body * (1.0 - above_all) * soft_inside(geo.dome_y["right"] - 0.04 - y, 3 * px)
    abdomen = np.maximum(abdomen, body * (1.0 - above_all) * (t > 0.6))
    envelope_depth: dict[str, FloatArray] = {side: -env_dist[side] for side in SIDES}
    return Maps(lungs=lungs, heart=heart.astype(np.float32), depth=envelope_depth,
                mediastinum=mediastinum.astype(np.float32), thorax=thorax.astype(np.float32),
                body=body.astype(np.float32), abdomen=abdomen.astype(np.float32))


def rib_y0(geo: Geometry, k: int) -> float:
    """Height of posterior rib ``k`` (0 = first rib) at its lateral end."""
    return geo.rib_first + geo.rib_spacing * (k * (1.0 + 0.028 * k)) + geo.rib_jitter[k]


def rib_half(geo: Geometry, k: int) -> float:
    """Half the thickness of posterior rib ``k``."""
    return geo.rib_spacing * (0.17 + 0.006 * k)


def rib_centre(geo: Geometry, k: int, u: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Centre-line height of posterior rib ``k`` at lateral fraction ``u``, and its slope."""
    arch = geo.rib_spacing * (0.75 - 0.02 * k)
    shape = 1.0 - ((u - 0.32) / 0.68) ** 2
    lateral = np.clip(u - 0.72, 0, None)
    yc = rib_y0(geo, k) - arch * shape + 3.2 * geo.tw * lateral**2
    slope = (arch * 2 * (u - 0.32) / 0.68**2 + 6.4 * geo.tw * lateral) / geo.tw
    return yc, slope


def _rib_layer(frame: Frame, geo: Geometry, canvas: FloatArray,
               fractures: dict[tuple[str, int], tuple[float, float, float, float]]) -> None:
    """Posterior ribs, one band per rib, drawn into ``canvas``.

    ``fractures`` maps ``(side, rib index)`` to ``(u of the break, gap, step offset, callus
    brightness)``; a healing fracture has a fusiform callus around the displaced ends.
    """
    x, y = frame.coords
    px = frame.px
    for side in SIDES:
        s = SIGN[side]
        for k in range(11):
            y0 = rib_y0(geo, k)
            if y0 > geo.cp_y[side] + 0.02:
                break
            half = rib_half(geo, k)
            x0 = geo.cx + s * 0.02
            x1 = geo.cx + s * (geo.tw * 1.1)
            arch = geo.rib_spacing * (0.75 - 0.02 * k)
            rs, cs = frame.window(min(x0, x1), max(x0, x1), y0 - arch - half,
                                  y0 + 0.16 * geo.lung_h + half)
            if rs.stop <= rs.start or cs.stop <= cs.start:
                continue
            xx, yy = x[rs, cs], y[rs, cs]
            u = s * (xx - geo.cx) / geo.tw
            yc, slope = rib_centre(geo, k, u)
            brk = fractures.get((side, k))
            amp: FloatArray | float = 1.0
            callus: FloatArray | float = 0.0
            if brk is not None:
                u_b, gap, step, callus_amp = brk
                norm = np.sqrt(1.0 + slope**2)
                along = (u - u_b) * geo.tw
                # Healing callus: a fusiform swelling that straddles the break.
                across = np.abs(yy - (yc + 0.5 * step)) / norm
                callus = callus_amp * np.exp(-((along / (0.75 * gap)) ** 2)
                                             - (across / (half + 0.45 * abs(step))) ** 4)
                yc = yc + np.where(u > u_b, step, 0.0)
                gap_mask = soft_inside(np.abs(along) - gap / 2, px)
                amp = (1.0 - 0.92 * gap_mask).astype(np.float32)
            d = np.abs(yy - yc) / np.sqrt(1.0 + slope**2)
            inside = soft_inside(d - half, 1.2 * px)
            cortex = np.clip(d / half, 0, 1) ** 4
            fade = smoothstep((u - 0.07) / 0.14) * soft_inside(u - 1.12, 0.04)
            value = inside * (0.62 + 0.38 * cortex) * fade * amp * (0.85 + 0.15 * np.clip(u, 0, 1))
            value = np.maximum(value, callus)
            canvas[rs, cs] = np.maximum(canvas[rs, cs], value.astype(np.float32))


def _anterior_ribs(frame: Frame, geo: Geometry, canvas: FloatArray) -> None:
    """Faint anterior ribs running down and medially from the lateral chest wall."""
    x, y = frame.coords
    px = frame.px
    for side in SIDES:
        s = SIGN[side]
        for k in range(6):
            y_lat = geo.apex_y + geo.lung_h * (0.08 + 0.14 * k)
            x_lo, x_hi = sorted((geo.cx + s * 0.25 * geo.tw, geo.cx + s * geo.tw))
            rs, cs = frame.window(x_lo, x_hi, y_lat - 0.02, y_lat + 0.13 * geo.lung_h + 0.04)
            if rs.stop <= rs.start or cs.stop <= cs.start:
                continue
            xx, yy = x[rs, cs], y[rs, cs]
            u = s * (xx - geo.cx) / geo.tw
            yc = y_lat + 0.13 * geo.lung_h * np.clip(1.0 - u, 0.0, None) ** 1.3
            d = np.abs(yy - yc) * 0.85
            half = geo.rib_spacing * 0.17
            fade = smoothstep((u - 0.3) / 0.2) * soft_inside(u - 1.0, 0.03)
            value = soft_inside(d - half, 1.5 * px) * fade * 0.35
            canvas[rs, cs] = np.maximum(canvas[rs, cs], value.astype(np.float32))


def _bone_curve_band(frame: Frame, canvas: FloatArray, x0: float, x1: float,
                     centre: Callable[[FloatArray], tuple[FloatArray, FloatArray]], half: float,
                     amp: float, y_lo: float, y_hi: float) -> None:
    """A long bone between ``x0`` and ``x1`` along ``centre(x) -> (y, slope)``, with cortex."""
    x, y = frame.coords
    rs, cs = frame.window(min(x0, x1), max(x0, x1), y_lo, y_hi)
    if rs.stop <= rs.start or cs.stop <= cs.start:
        return
    xx, yy = x[rs, cs], y[rs, cs]
    lo, hi = min(x0, x1), max(x0, x1)
    yc, slope = centre(xx)
    d = np.abs(yy - yc) / np.sqrt(1.0 + slope**2)
    along = soft_inside(np.maximum(lo - xx, xx - hi), 2 * frame.px)
    cortex = np.clip(d / half, 0, 1) ** 4
    value = soft_inside(d - half, 1.2 * frame.px) * (0.6 + 0.4 * cortex) * along * amp
    canvas[rs, cs] = np.maximum(canvas[rs, cs], value.astype(np.float32))


def clavicle_centre(geo: Geometry, side: str) -> tuple[float, float, float, float]:
    """Medial x, lateral x, medial y and lateral y of a clavicle."""
    s = SIGN[side]
    if geo.view == "PA":
        y_med, y_lat = geo.apex_y + 0.055, geo.apex_y - 0.005
    else:
        y_med, y_lat = geo.apex_y + 0.005, geo.apex_y - 0.025
    return geo.cx + s * 0.03, geo.cx + s * (geo.tw + 0.08), y_med, y_lat


def _clavicles(frame: Frame, geo: Geometry, canvas: FloatArray,
               fractured: dict[str, tuple[float, float]]) -> None:
    for side in SIDES:
        xm, xl, ym, yl = clavicle_centre(geo, side)
        s = SIGN[side]
        span = xl - xm

        def centre(xx: FloatArray, xm: float = xm, span: float = span, ym: float = ym,
                   yl: float = yl, side: str = side) -> tuple[FloatArray, FloatArray]:
            v = (xx - xm) / span
            yc = ym + (yl - ym) * v + 0.012 * np.sin(2 * math.pi * v)
            slope = ((yl - ym) + 0.012 * 2 * math.pi * np.cos(2 * math.pi * v)) / span
            brk = fractured.get(side)
            if brk is not None:
                yc = yc + np.where(v > brk[0], brk[1], 0.0)
            return yc, slope

        half = 0.012 * (geo.tw / 0.365)
        lo, hi = sorted((xm, xl))
        brk = fractured.get(side)
        if brk is None:
            _bone_curve_band(frame, canvas, lo, hi, centre, half, 1.0, min(ym, yl) - 0.05,
                             max(ym, yl) + 0.05)
        else:
            xb = xm + brk[0] * span
            gap = 0.016
            a_lo, a_hi = sorted((xm, xb - s * gap / 2))
            b_lo, b_hi = sorted((xb + s * gap / 2, xl))
            for p, q in ((a_lo, a_hi), (b_lo, b_hi)):
                _bone_curve_band(frame, canvas, p, q, centre, half, 1.0, min(ym, yl) - 0.06,
                                 max(ym, yl) + 0.06)
            if brk[1] != 0.0:  # displaced: a healing callus around the break
                x, y = frame.coords
                yb = float(centre(np.asarray([xb - s * gap], dtype=np.float32))[0][0])
                yb += 0.5 * brk[1]
                rs, cs = frame.window(xb - 2 * gap, xb + 2 * gap, yb - 0.04, yb + 0.04)
                xx, yy = x[rs, cs], y[rs, cs]
                blob = 1.3 * np.exp(-(((xx - xb) / (1.1 * gap)) ** 2)
                                    - ((yy - yb) / (half + 0.5 * abs(brk[1]))) ** 4)
                canvas[rs, cs] = np.maximum(canvas[rs, cs], blob.astype(np.float32))


def _spine(frame: Frame, geo: Geometry, canvas: FloatArray) -> None:
    x, y = frame.coords
    hw = 0.03 * geo.tw / 0.365
    rs, cs = frame.window(geo.spine_x - hw - 0.01, geo.spine_x + hw + 0.01, 0.0, 1.0)
    xx, yy = x[rs, cs], y[rs, cs]
    dx = np.abs(xx - geo.spine_x)
    period = geo.rib_spacing * 0.93
    phase = np.mod(yy - geo.rib_first, period) / period
    disc = np.exp(-(((phase - 0.5) / 0.09) ** 2))
    body = soft_inside(dx - hw, 2 * frame.px) * (0.55 - 0.35 * disc)
    ped_y = np.abs(phase - 0.25) * period
    pedicle = np.exp(-(((dx - 0.8 * hw) / (0.18 * hw)) ** 2) - (ped_y / (0.22 * period)) ** 2)
    spinous = np.exp(-((dx / (0.12 * hw)) ** 2) - ((np.abs(phase - 0.7) * period)
                                                  / (0.18 * period)) ** 2)
    value = body + 0.35 * pedicle + 0.25 * spinous
    canvas[rs, cs] = np.maximum(canvas[rs, cs], (0.5 * value).astype(np.float32))


def _humeri_and_scapulae(frame: Frame, geo: Geometry, canvas: FloatArray,
                         rng: np.random.Generator) -> None:
    x, y = frame.coords
    px = frame.px
    for side in SIDES:
        s = SIGN[side]
        hx = geo.cx + s * (geo.tw + 0.14)
        hy = geo.apex_y + 0.0
        radius = 0.07 * geo.tw / 0.365
        rs, cs = frame.window(hx - radius - 0.08, hx + radius + 0.08, hy - radius,
                              hy + 0.45)
        if rs.stop > rs.start and cs.stop > cs.start:
            xx, yy = x[rs, cs], y[rs, cs]
            d = np.hypot(xx - hx, yy - hy)
            head = soft_inside(d - radius, 1.5 * px) * (0.55 + 0.45 * np.clip(d / radius, 0, 1)
                                                         ** 6)
            shaft_x = hx + s * 0.01
            shaft = soft_inside(np.abs(xx - shaft_x) - 0.038, 1.5 * px) * (yy > hy) \
                * (0.55 + 0.45 * np.clip(np.abs(xx - shaft_x) / 0.038, 0, 1) ** 4)
            canvas[rs, cs] = np.maximum(canvas[rs, cs],
                                        (0.9 * np.maximum(head, shaft)).astype(np.float32))
        # Scapula: a thin plate whose medial border lies over the lung in AP views.
        u_med = rng.uniform(0.62, 0.74) if geo.view == "AP" else rng.uniform(0.95, 1.05)
        top = (geo.cx + s * (geo.tw + 0.02), geo.apex_y + 0.02)
        inf = (geo.cx + s * geo.tw * (u_med + 0.12), geo.apex_y + 0.5 * geo.lung_h)
        med = (geo.cx + s * geo.tw * u_med, geo.apex_y + 0.08)
        rs, cs = frame.window(min(top[0], inf[0], med[0]) - 0.02,
                              max(top[0], inf[0], med[0]) + 0.02, top[1] - 0.02, inf[1] + 0.02)
        if rs.stop <= rs.start or cs.stop <= cs.start:
            continue
        xx, yy = x[rs, cs], y[rs, cs]

        def half_plane(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float],
                       xx: FloatArray = xx, yy: FloatArray = yy) -> FloatArray:
            nx, ny = b[1] - a[1], a[0] - b[0]
            norm = math.hypot(nx, ny)
            sign = 1.0 if (c[0] - a[0]) * nx + (c[1] - a[1]) * ny > 0 else -1.0
            return sign * ((xx - a[0]) * nx + (yy - a[1]) * ny) / norm

        dists = [half_plane(med, inf, top), half_plane(inf, top, med),
                 half_plane(top, med, inf)]
        inside = np.minimum(np.minimum(dists[0], dists[1]), dists[2])
        plate = soft_inside(-inside, 2 * px) * 0.28
        border = np.exp(-((dists[0] / (2.5 * px)) ** 2)) * (inside > -3 * px) * 0.25
        canvas[rs, cs] = np.maximum(canvas[rs, cs], (plate + border).astype(np.float32))


def _vessel_markings(frame: Frame, geo: Geometry, maps: Maps, rng: np.random.Generator
                     ) -> FloatArray:
    """Branching, tapering vessel trees growing from each hilum (before lung masking)."""
    out = np.zeros((frame.size, frame.size), np.float32)
    segments: list[tuple[float, float, float, float, float, float, float, float]] = []

    def grow(x: float, y: float, angle: float, length: float, radius: float, value: float,
             depth: int) -> None:
        bend = float(rng.normal(0.0, 0.12))
        mx = x + 0.5 * length * math.cos(angle)
        my = y + 0.5 * length * math.sin(angle)
        ex = mx + 0.5 * length * math.cos(angle + bend)
        ey = my + 0.5 * length * math.sin(angle + bend)
        segments.append((x, y, mx, my, ex, ey, radius, value))
        if depth == 0:
            return
        spread = float(rng.uniform(0.35, 0.6))
        for sign in (-1.0, 1.0):
            grow(ex, ey, angle + bend + sign * spread * float(rng.uniform(0.6, 1.0)),
                 length * float(rng.uniform(0.7, 0.85)), radius * float(rng.uniform(0.62, 0.72)),
                 value * 0.8, depth - 1)

    for side in SIDES:
        s = SIGN[side]
        hx = geo.cx + s * max(0.27 * geo.tw, (geo.med_l if side == "left" else geo.med_r) + 0.03)
        hy = geo.hilum_y[side]
        # Trunks: upward, lateral and downward, as pulmonary arteries and veins run.
        for base in (-1.9, -1.2, -0.5, 0.1, 0.7, 1.25):
            ang = base + float(rng.normal(0.0, 0.12))
            angle = ang if s > 0 else math.pi - ang
            length = geo.lung_h * float(rng.uniform(0.09, 0.13))
            grow(hx, hy, angle, length, float(rng.uniform(0.0045, 0.006)), 1.0, 4)
    seg = np.asarray(segments, dtype=np.float64)
    longest = float(np.max(np.hypot(seg[:, 4] - seg[:, 0], seg[:, 5] - seg[:, 1])))
    n = max(4, int(longest * frame.size / 0.5))
    t = np.linspace(0.0, 1.0, n)[None, :]
    xs = np.concatenate([seg[:, [0]] + (seg[:, [2]] - seg[:, [0]]) * t,
                         seg[:, [2]] + (seg[:, [4]] - seg[:, [2]]) * t], axis=1)
    ys = np.concatenate([seg[:, [1]] + (seg[:, [3]] - seg[:, [1]]) * t,
                         seg[:, [3]] + (seg[:, [5]] - seg[:, [3]]) * t], axis=1)
    cols, rows = frame.to_pixels(xs, ys)
    radius_px = np.maximum(seg[:, 6] * frame.size, 0.6)
    keys = np.round(radius_px * 2) / 2
    for key in np.unique(keys):
        pick = keys == key
        vals = np.repeat(seg[pick, 7], xs.shape[1]).astype(np.float32)
        stamp_curve(out, cols[pick].ravel(), rows[pick].ravel(), float(key), vals, edge=1.2)
    return out


def render_anatomy(
    frame: Frame,
    geo: Geometry,
    subject: Subject,
    maps: Maps,
    rng: np.random.Generator,
    *,
    rib_fractures: dict[tuple[str, int], tuple[float, float, float, float]] | None = None,
    clavicle_fractures: dict[str, tuple[float, float]] | None = None,
) -> Layers:
    """Attenuation layers of the normal chest (fractures break the named bones)."""
    x, y = frame.coords
    shape = x.shape
    dxm = x - geo.cx
    t = geo.t_of(y)
    width = np.where(t < -0.05, geo.neck_w + 0.02, geo.body_w + 0.01) \
        + 0.12 * smoothstep((0.36 - t) / 0.14) * (t >= -0.05)
    profile = np.sqrt(np.clip(1.0 - (dxm / (width * 1.05)) ** 2, 0.0, 1.0))
    base = maps.body * (0.30 + 0.24 * profile)
    base += 0.06 * maps.mediastinum + 0.05 * maps.heart + 0.03 * maps.abdomen
    if subject.sex == "F":
        for side in SIDES:
            bx, by = geo.point(side, 0.68, 0.78)
            breast = np.exp(-(((x - bx) / 0.16) ** 2) - (((y - by) / 0.11) ** 2))
            lower_edge = soft_inside(y - (by + 0.07), 6 * frame.px)
            base += 0.045 * breast * lower_edge * maps.body
    # Gas in the stomach under the left hemidiaphragm.
    gx, gy = geo.point("left", 0.55, 0.0)
    gy = geo.dome_y["left"] + 0.035
    bubble = soft_inside(np.hypot((x - gx) / 0.05, (y - gy) / 0.028) - 1.0, 0.15)
    base -= 0.12 * bubble * maps.abdomen
    lungs = maps.lungs["right"] + maps.lungs["left"]
    depth = np.zeros(shape, np.float32)
    for side in SIDES:
        u = geo.u_of(x, side)
        bulk = np.exp(-(((u - 0.55) / 0.5) ** 2) - (((t - 0.55) / 0.6) ** 2))
        depth += maps.lungs[side] * (0.22 + 0.11 * bulk)
    air = depth * (1.0 - 0.15 * smoothstep((0.12 - t) / 0.12))
    markings = 0.055 * _vessel_markings(frame, geo, maps, rng) * lungs
    markings += 0.03 * np.abs(smooth_noise(rng, shape, 48)) * lungs
    bones = np.zeros(shape, np.float32)
    _rib_layer(frame, geo, bones, rib_fractures or {})
    posterior = bones * 0.14 * (1.0 - 0.55 * maps.heart - 0.45 * maps.mediastinum
                                - 0.65 * maps.abdomen)
    anterior = np.zeros(shape, np.float32)
    _anterior_ribs(frame, geo, anterior)
    bones = (posterior + anterior * 0.07 * (1.0 - 0.6 * maps.heart - 0.5 * maps.abdomen)
             ).astype(np.float32)
    other = np.zeros(shape, np.float32)
    _clavicles(frame, geo, other, clavicle_fractures or {})
    _humeri_and_scapulae(frame, geo, other, rng)
    bones = np.maximum(bones, other * 0.19 * maps.body)
    spine = np.zeros(shape, np.float32)
    _spine(frame, geo, spine)
    bones += spine * 0.16 * maps.body
    # Trachea and main bronchi: air in the mediastinum.
    trachea = np.zeros(shape, np.float32)
    tx = geo.cx + 0.006
    carina = (tx, geo.carina_y)
    draw_path(trachea, frame, np.array([[tx, 0.0], [tx, geo.apex_y], carina]),
              0.013 * frame.size, 1.0, edge=2.0)
    for side in SIDES:
        s = SIGN[side]
        end = (tx + s * 0.07, geo.carina_y + (0.05 if side == "left" else 0.035))
        mid = (tx + s * 0.03, geo.carina_y + 0.015)
        draw_path(trachea, frame, np.array([carina, mid, end]), 0.0085 * frame.size, 0.8,
                  edge=2.0)
    base -= 0.09 * blur3(trachea) * maps.body
    return Layers(
        base=base.astype(np.float32),
        air=air.astype(np.float32),
        fill=np.zeros(shape, np.float32),
        markings=markings.astype(np.float32),
        lucency=np.zeros(shape, np.float32),
        no_markings=np.zeros(shape, np.float32),
        bones=bones.astype(np.float32),
        devices=np.zeros(shape, np.float32),
        overlay=np.zeros(shape, np.float32),
    )
