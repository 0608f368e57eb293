"""The heart: its primitives (ellipsoidal chambers, tubular vessels) posed from the subject's parameters, their
signed distance fields, and the painters of fat, walls, lumens and the left ventricle.

Every chamber and vessel is one distance field in canonical heart millimetres; fat, wall and lumen are bands of
it. Walls are painted before lumens so that touching chambers stay separated by a visible wall, except where
:data:`.tables.JOINED` opens two lumens onto each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .geometry import Box, Space, bezier, ellipsoid_sdf, frame, orth, paint, segment, tube_sdf, unit
from .tables import (ASCENDING_AORTA, EPICARDIAL_FAT, FIELD_PAD, JOINED, LEFT_ATRIUM, LEFT_VENTRICLE,
                     PULMONARY_ARTERY, PULMONARY_VEINS, RIGHT_HEART, S_AA, S_BLOOD, S_BONE, S_FAT, S_LAC,
                     S_LVC, S_MARROW, S_MYO, STRUCT_LABEL, VENAE_CAVAE, WALLS)

Field = tuple[Box, np.ndarray, list[np.ndarray] | None] | None  # (box, signed distance, axis projections)


@dataclass(frozen=True)
class LeftVentricle:
    """The left ventricle: base (mitral plane centre), long axis ``u`` towards the apex with its frame (rows: long
    axis, about posterior, about lateral), cavity semi-axes (long, two short) and myocardial thickness."""

    base: np.ndarray
    u: np.ndarray
    frame: np.ndarray
    long: float
    r1: float
    r2: float
    myo: float


def left_ventricle(p: dict) -> LeftVentricle:
    """The subject's left ventricle, whose base and axis place every other structure of the heart."""
    t = LEFT_VENTRICLE
    u = unit(np.array(t["axis"]) + p["axis_tilt"])
    return LeftVentricle(base=np.array(t["base"]), u=u, frame=frame(u, t["frame_hint"]),
                         long=p["lv_long"], r1=p["lv_r1"], r2=p["lv_r2"], myo=p["myo"])


def chambers(p: dict, lv: LeftVentricle) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Centre, frame (rows) and semi-axes of the LV's outer surface and of the RV, RA and LA."""
    a_c, r1, r2, t = lv.long, lv.r1, lv.r2, lv.myo
    c_lv = lv.base + LEFT_VENTRICLE["centre_below_base"] * a_c * lv.u
    out_semi = np.array([a_c + LEFT_VENTRICLE["apex_wall"] * t, r1 + t, r2 + t])

    h = RIGHT_HEART
    rv_long, rv_thick, rv_wide = p["rv"]
    rv_long *= a_c
    rv_dir = orth(h["rv_direction"], lv.u)
    rv_frame = frame(lv.u, rv_dir)  # rows: u, rv_dir, wrap direction
    rv_semi = np.array([rv_long, rv_thick, rv_wide])
    c_rv = (lv.base + h["rv_centre_below_base"] * a_c * lv.u
            + (max(r1, r2) + t + rv_thick - h["rv_overlap"]) * rv_dir)

    c_ra = lv.base + np.array(h["ra_offset"])
    ra_frame = frame(h["ra_axis"], h["ra_hint"])

    la_semi = p["la"]  # along u, along posterior, lateral
    c_la = lv.base - LEFT_ATRIUM["above_base"] * la_semi[0] * lv.u + LEFT_ATRIUM["posterior"] * lv.frame[1]
    return {"lv_out": (c_lv, lv.frame, out_semi), "rv": (c_rv, rv_frame, rv_semi),
            "ra": (c_ra, ra_frame, p["ra"]), "la": (c_la, lv.frame, la_semi)}


def arteries(p: dict, lv: LeftVentricle) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Centre-line points and radii of the ascending aorta and of the pulmonary trunk with its branches."""
    a = ASCENDING_AORTA
    valve = lv.base - a["valve_below_base"] * lv.u + a["valve_offset"] * orth(a["valve_direction"], lv.u)
    start = valve + a["root_length"] * lv.u
    aa_pts = np.concatenate([
        segment(start, valve)[:-1],
        bezier(valve, valve + p["aa_bend"], valve + p["aa_top"]),
    ])
    aa_r = np.full(len(aa_pts), p["aa_r"])
    sinus = np.linalg.norm(aa_pts - valve, axis=1) < a["sinus_length"]
    aa_r[sinus] += a["sinus_extra_r"]

    t = PULMONARY_ARTERY
    pa0 = valve + np.array(t["root_offset"])
    top = pa0 + np.array(t["top"])
    trunk = bezier(pa0 - t["outflow"] * lv.u, pa0 + np.array(t["bend"]), top)
    branches = [bezier(top, top + np.array(t[side][0]), top + np.array(t[side][1])) for side in ("left", "right")]
    pa_r = p["pa_r"]
    pa_radii = np.concatenate([np.full(len(trunk), pa_r),
                               np.full(sum(len(b) for b in branches), pa_r * t["branch_r"])])
    return {"aa": (aa_pts, aa_r), "pa": (np.concatenate([trunk, *branches]), pa_radii)}


def veins(p: dict, lv: LeftVentricle, chamber: dict) -> dict[str, tuple[np.ndarray, float]]:
    """Centre-line points and radii of the four pulmonary veins (into the LA) and the venae cavae (into the RA)."""
    t = PULMONARY_VEINS
    c_la, la_semi = chamber["la"][0], chamber["la"][2]
    lat = lv.frame[2]
    segs = []
    for side in (-1.0, 1.0):
        for dz in t["heights"]:
            start = c_la + side * t["lateral"] * la_semi[2] * lat + np.array([0.0, 0.0, dz])
            end = start + np.array([side * t["run"][0], t["run"][1], dz * t["rise"]])
            segs.append(segment(start, end))
    out = {"pv": (np.concatenate(segs), t["r"])}
    c_ra = chamber["ra"][0]
    for name, (a, b) in VENAE_CAVAE.items():
        out[name] = (segment(c_ra + np.array(a), c_ra + np.array(b)), p[f"{name}_r"])
    return out


def distance_fields(space: Space, chamber: dict, tubes: dict, pad: float) -> dict[str, Field]:
    """Signed distance of every primitive inside its box (``pad`` mm beyond its surface); None outside the grid."""
    hc = space.heart_coords()
    fields: dict[str, Field] = {}
    for name, (c, fr, semi) in chamber.items():
        bsl = space.heart_box_ellipsoid(c, fr, semi, pad)
        fields[name] = None if bsl is None else (bsl, *ellipsoid_sdf(hc, bsl, c, fr, semi))
    for name, (pts, radii) in tubes.items():
        radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),))
        bsl = space.heart_box_points(pts, float(radii.max()) + pad)
        fields[name] = None if bsl is None else (bsl, tube_sdf(hc, bsl, pts, radii), None)
    return fields


def paint_epicardial_fat(smap: np.ndarray, fields: dict[str, Field], epi_fat: float) -> None:
    """Epicardial and pericardial fat around the chambers and great arteries (never over bone)."""
    for name, extra in EPICARDIAL_FAT:
        f = fields.get(name)
        if f is None:
            continue
        bsl, d, _ = f
        view = smap[bsl]
        m = d < (epi_fat + extra)
        view[m & (view != S_BONE) & (view != S_MARROW)] = S_FAT


def paint_walls(smap: np.ndarray, fields: dict[str, Field]) -> tuple[np.ndarray, dict[str, np.uint16]]:
    """Paint the walls of :data:`.tables.WALLS`; returns each voxel's wall bands (one bit per structure) and, per
    structure, the bits of the bands its lumen may not cover (those of later, unjoined structures)."""
    names = [w[0] for w in WALLS]
    bit = {name: 1 << i for i, name in enumerate(names)}
    joined = set(JOINED)
    blocked = {}
    for i, name in enumerate(names):
        later = 0
        for other in names[i + 1:]:
            if (name, other) not in joined and (other, name) not in joined:
                later |= bit[other]
        blocked[name] = np.uint16(later)
    bands = np.zeros(smap.shape, dtype=np.uint16)
    for name, wall, wall_id, _ in WALLS:
        f = fields.get(name)
        if f is None:
            continue
        bsl, d, _ = f
        view = smap[bsl]
        view[d < wall] = wall_id
        bview = bands[bsl]
        bview[(d >= 0.0) & (d < wall)] |= np.uint16(bit[name])
    return bands, blocked


def lumen(fields: dict[str, Field], bands: np.ndarray, blocked: dict[str, np.uint16], name: str,
          extra: np.ndarray | None = None) -> tuple[Box, np.ndarray]:
    """Box and mask of a structure's lumen: inside it, off the blocking wall bands, and inside ``extra``."""
    bsl, d, _ = fields[name]
    m = (d < 0.0) & ((bands[bsl] & blocked[name]) == 0)
    if extra is not None:
        m &= extra
    return bsl, m


def above_base(space: Space, lv: LeftVentricle, bsl: Box, gap: float = 0.0) -> np.ndarray:
    """Mask of voxels of ``bsl`` lying ``gap`` mm above the LV base plane."""
    x, y, z = (c[bsl] for c in space.heart_coords())
    base, u = lv.base, lv.u
    ub = ((x - np.float32(base[0])) * np.float32(u[0])
          + (y - np.float32(base[1])) * np.float32(u[1])
          + (z - np.float32(base[2])) * np.float32(u[2]))
    return ub < -gap


def paint_left_ventricle(smap: np.ndarray, field: Field, lv: LeftVentricle) -> Box:
    """Myocardium (with a basal cap above the base plane), then the cavity; returns the LV's box."""
    bsl, d_out, proj = field
    a_c = lv.long
    u_base = proj[0] + np.float32(LEFT_VENTRICLE["centre_below_base"] * a_c)  # distance below the base plane
    view = smap[bsl]
    cap = np.float32(-LEFT_VENTRICLE["basal_cap"] * lv.myo)
    view[(d_out < 0.0) & (u_base >= cap)] = S_MYO
    # cavity: same centre and frame, smaller semi-axes
    q0 = proj[0] * np.float32(1.0 / a_c)
    q1 = proj[1] * np.float32(1.0 / lv.r1)
    q2 = proj[2] * np.float32(1.0 / lv.r2)
    rho2 = q0 * q0 + q1 * q1 + q2 * q2
    view[(rho2 < 1.0) & (u_base >= 0.0)] = S_LVC
    return bsl


def close_myocardium(smap: np.ndarray, lvc_box: Box) -> None:
    """Guarantee a closed myocardial wall: unlabelled face-neighbours of the cavity become myocardium."""
    grow = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(lvc_box, smap.shape))
    view = smap[grow]
    cav = view == S_LVC
    ring = ndimage.binary_dilation(cav) & ~cav
    view[ring & (STRUCT_LABEL[view] == 0)] = S_MYO


def paint_heart(smap: np.ndarray, space: Space, p: dict) -> None:
    """Fat, walls and lumens of every chamber and vessel, then the left ventricle and its two openings.

    The aortic lumen opens onto the LV base (open aortic valve); the left atrium stops a few mm above it, leaving
    a thin myocardial plate at the closed mitral valve.
    """
    lv = left_ventricle(p)
    chamber = chambers(p, lv)
    tubes = {**arteries(p, lv), **veins(p, lv, chamber)}
    fields = distance_fields(space, chamber, tubes, p["epi_fat"] + FIELD_PAD)
    paint_epicardial_fat(smap, fields, p["epi_fat"])
    bands, blocked = paint_walls(smap, fields)
    for name, _, _, lumen_id in WALLS:
        if lumen_id == S_BLOOD and fields.get(name) is not None:
            paint(smap, *lumen(fields, bands, blocked, name), lumen_id)
    lvc_box = paint_left_ventricle(smap, fields["lv_out"], lv)  # the LV is always inside the field of view
    for name, lumen_id, gap in (("la", S_LAC, LEFT_ATRIUM["mitral_gap"]), ("aa", S_AA, 0.0)):
        if fields.get(name) is None:
            continue
        bsl, m = lumen(fields, bands, blocked, name, above_base(space, lv, fields[name][0], gap))
        paint(smap, bsl, m, lumen_id)
    close_myocardium(smap, lvc_box)
