"""Painters of the thorax around the heart: body wall and lungs, mediastinal fat, the organs below the diaphragm,
sternum, spine, descending aorta and oesophagus.

Each painter writes structure ids (``S_*`` of :mod:`.tables`) into the structure map in place; the order of
:func:`paint_thorax` matters, as later structures overwrite earlier ones.
"""

from __future__ import annotations

import numpy as np

from .geometry import Space, axial_ellipse, paint, vtube_sdf
from .tables import (DESCENDING_AORTA, DIAPHRAGM, MEDIASTINAL_FAT, OESOPHAGUS, PARAVERTEBRAL, S_BLOOD, S_BONE,
                     S_FAT, S_FLUID, S_LIVER, S_LUNG, S_MARROW, S_SOFT, SPINE, STERNUM)


def paint_body_wall(smap: np.ndarray, space: Space, p: dict) -> np.ndarray:
    """Elliptic body of soft tissue under a subcutaneous fat layer, lungs inside the chest-wall muscle.

    Returns the mask of the voxels inside the fat layer (the space the diaphragm divides).
    """
    bx, by = p["body"]
    yb = p["body_y"]
    ex = space.x * np.float32(1.0 / bx)
    ey = (space.y - np.float32(yb)) * np.float32(1.0 / by)
    r_body = np.sqrt(ex * ex + ey * ey)  # ~ normalised elliptic radius
    del ex, ey
    scale_r = min(bx, by)
    smap[r_body < 1.0] = S_SOFT
    fat_in = 1.0 - p["sc_fat"] / scale_r
    smap[(r_body < 1.0) & (r_body >= fat_in)] = S_FAT
    lung_in = fat_in - p["muscle"] / scale_r
    smap[r_body < lung_in] = S_LUNG
    return r_body < fat_in


def paint_paravertebral(smap: np.ndarray, space: Space, p: dict) -> None:
    """Posterior paravertebral soft tissue around the spine."""
    t, sy = PARAVERTEBRAL, p["spine_y"]
    sl = space.axial_box(t["box_x"], (sy + t["box_y"][0], sy + t["box_y"][1]))
    if sl is not None:
        d = axial_ellipse(space.x[sl], space.y[sl], (0.0, sy + t["centre_y"]), t["semi"])
        paint(smap, sl, d < 1.0, S_SOFT)


def paint_mediastinal_fat(smap: np.ndarray, space: Space) -> None:
    """Fat band between the lungs (it replaces lung only)."""
    t = MEDIASTINAL_FAT
    sl = space.axial_box(t["box_x"], t["box_y"])
    if sl is not None:
        d = axial_ellipse(space.x[sl], space.y[sl], t["centre"], t["semi"])
        view = smap[sl]
        view[(d < 1.0) & (view == S_LUNG)] = S_FAT


def paint_abdomen(smap: np.ndarray, space: Space, p: dict, inside: np.ndarray) -> None:
    """Below the diaphragm dome: liver on the right, stomach and spleen (soft tissue) on the left."""
    t = DIAPHRAGM
    zd = np.float32(p["dia_z"])
    dome = (zd - ((space.x - np.float32(t["apex"][0])) ** 2
                  + (space.y - np.float32(t["apex"][1])) ** 2) * np.float32(1 / t["curvature"]))
    below = (space.z < dome) & inside
    smap[below & (space.x < t["liver_x_max"])] = S_LIVER
    smap[below & (space.x >= t["liver_x_max"])] = S_SOFT


def paint_sternum(smap: np.ndarray, space: Space, p: dict) -> None:
    """Sternum in the anterior chest wall, cortical bone around marrow."""
    t = STERNUM
    y_st = p["body_y"] - p["body"][1] + p["sc_fat"] + p["muscle"] * t["depth_in_muscle"]
    hx, hy = t["box_half"]
    sl = space.axial_box((-hx, hx), (y_st - hy, y_st + hy))
    if sl is not None:
        d = axial_ellipse(space.x[sl], space.y[sl], (0.0, y_st), t["semi"])
        paint(smap, sl, d < 1.0, S_BONE)
        paint(smap, sl, d < t["marrow"], S_MARROW)


def paint_spine(smap: np.ndarray, space: Space, p: dict) -> None:
    """Vertebral bodies with marrow and discs, the spinal canal, the posterior arch and spinous process."""
    t, sy = SPINE, p["spine_y"]
    sl = space.axial_box(t["box_x"], (sy + t["box_y"][0], sy + t["box_y"][1]))
    if sl is None:
        return
    xs, ys, zs = (w[sl] for w in space.world)
    d = axial_ellipse(xs, ys, (0.0, sy), t["body_semi"])
    phase = np.mod(zs + np.float32(p["dia_z"] * t["disc_phase"]), np.float32(t["disc_period"]))
    disc = phase < t["disc_thickness"]
    view = smap[sl]
    body = d < 1.0
    view[body] = S_BONE
    view[(d < t["marrow"]) & ~disc] = S_MARROW
    view[body & disc] = S_SOFT
    dc = (xs * xs + (ys - np.float32(sy + t["canal_y"])) ** 2)
    arch = (dc < t["arch_r"] ** 2) & (ys > sy + t["arch_y_min"])
    view[arch] = S_BONE
    view[dc < t["canal_r"] ** 2] = S_FLUID
    y0, y1 = t["process_y"]
    spin = (np.abs(xs) < t["process_half_width"]) & (ys > sy + y0) & (ys < sy + y1)
    view[spin] = S_BONE


def paint_descending_aorta(smap: np.ndarray, space: Space, p: dict) -> None:
    """Descending aorta beside the spine: blood inside a soft-tissue wall inside a fat sleeve."""
    t = DESCENDING_AORTA
    dax, day = p["da_xy"]
    zk = np.array(t["knots_z"])
    xk = dax + np.array(t["knots_dx"])
    yk = day + np.array(t["knots_dy"])
    rk = np.full(len(zk), p["da_r"])
    reach = p["da_r"] + t["box_margin"]
    sl = space.axial_box((xk.min() - reach, xk.max() + reach), (yk.min() - reach, yk.max() + reach))
    if sl is not None:
        d = vtube_sdf(space.world, sl, zk, xk, yk, rk)
        view = smap[sl]
        view[d < t["fat"]] = S_FAT
        view[d < t["wall"]] = S_SOFT
        view[d < 0.0] = S_BLOOD


def paint_oesophagus(smap: np.ndarray, space: Space) -> None:
    """Oesophagus, a soft-tissue tube between the left atrium and the spine."""
    t = OESOPHAGUS
    sl = space.axial_box(t["box_x"], t["box_y"])
    if sl is not None:
        zk = np.array(DESCENDING_AORTA["knots_z"])
        n = len(zk)
        d = vtube_sdf(space.world, sl, zk, np.full(n, t["x"]), np.full(n, t["y"]), np.full(n, t["r"]))
        paint(smap, sl, d < 0.0, S_SOFT)


def paint_thorax(smap: np.ndarray, space: Space, p: dict) -> None:
    """Everything but the heart, in painting order."""
    inside = paint_body_wall(smap, space, p)
    paint_paravertebral(smap, space, p)
    paint_mediastinal_fat(smap, space)
    paint_abdomen(smap, space, p, inside)
    paint_sternum(smap, space, p)
    paint_spine(smap, space, p)
    paint_descending_aorta(smap, space, p)
    paint_oesophagus(smap, space)
