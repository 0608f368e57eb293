"""Geometry of the phantom: vectors and frames, centre lines, smooth random fields, the deformed sampling grid and
the signed distances the painters threshold.

All fields are float32 on the fine grid; a painter evaluates them only inside the index box that bounds its
structure.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .tables import ALL_Z, CURVE_STEP, DEFORMATION, SMOOTH_BASIS

Box = tuple[slice, slice, slice] | None  # index box of a grid, None when it lies outside the grid
Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------------------------------------------
# vectors, frames and curves
# ----------------------------------------------------------------------------------------------------------------


def unit(v) -> np.ndarray:
    """``v`` scaled to length 1."""
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def orth(v, ref: np.ndarray) -> np.ndarray:
    """Unit vector of ``v`` with its component along unit ``ref`` removed."""
    v = np.asarray(v, dtype=np.float64)
    return unit(v - np.dot(v, ref) * ref)


def frame(u, hint) -> np.ndarray:
    """Orthonormal frame (rows) whose first axis is ``u``."""
    u = unit(u)
    e1 = orth(hint, u)
    e2 = np.cross(u, e1)
    return np.stack([u, e1, e2])


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix about x, then y, then z (radians)."""
    cx, sx = np.cos(ax), np.sin(ax)
    cy, sy = np.cos(ay), np.sin(ay)
    cz, sz = np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def bezier(p0, p1, p2, step: float = CURVE_STEP) -> np.ndarray:
    """Points along a quadratic Bezier curve, roughly ``step`` mm apart."""
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    length = np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1)
    n = max(int(np.ceil(length / step)) + 1, 2)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def segment(p0, p1, step: float = CURVE_STEP) -> np.ndarray:
    """Points along a straight segment, roughly ``step`` mm apart."""
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    n = max(int(np.ceil(np.linalg.norm(p1 - p0) / step)) + 1, 2)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) * p0 + t * p1


# ----------------------------------------------------------------------------------------------------------------
# smooth random fields
# ----------------------------------------------------------------------------------------------------------------


def _smooth_basis(n: int, n_ctrl: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)
    c = np.linspace(*SMOOTH_BASIS["knots"], n_ctrl)
    width = SMOOTH_BASIS["width"] * (c[1] - c[0])
    b = np.exp(-0.5 * ((t[:, None] - c[None, :]) / width) ** 2)
    b /= b.sum(axis=1, keepdims=True)
    return b.astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: Sequence[int], n_ctrl: Sequence[int],
                 amplitude: float) -> np.ndarray:
    """Smooth random field with max |value| == amplitude (separable basis)."""
    coarse = rng.standard_normal(n_ctrl).astype(np.float32)
    bx, by, bz = (_smooth_basis(n, c) for n, c in zip(shape, n_ctrl))
    f = np.tensordot(bx, coarse, axes=(1, 0))  # (X, cy, cz)
    f = np.einsum("jb,ibc->ijc", by, f)  # (X, Y, cz)
    f = f @ bz.T  # (X, Y, Z)
    peak = float(np.abs(f).max())
    if peak > 0:
        f *= amplitude / peak
    return np.ascontiguousarray(f, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# coordinate system
# ----------------------------------------------------------------------------------------------------------------


class Space:
    """Deformed world coordinates and posed heart coordinates of a grid.

    World axes (mm): x towards the patient's left, y towards posterior, z towards superior. Heart primitives are
    written in a canonical heart frame; the subject's pose maps canonical -> world by
    ``p_w = centre + shift + scale * R @ (p_c - centre)``. Constructing a space draws its elastic displacement
    field from ``rng``.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], spacing: Sequence[float],
                 origin: Sequence[float], disp_amp: float, pose: dict):
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.origin = np.asarray(origin, dtype=np.float64)
        axes = [
            (self.origin[i] + self.spacing[i] * np.arange(shape[i])).astype(np.float32)
            for i in range(3)
        ]
        n_ctrl = DEFORMATION["controls"]
        dx = smooth_field(rng, shape, n_ctrl, disp_amp)
        dy = smooth_field(rng, shape, n_ctrl, disp_amp)
        dz = smooth_field(rng, shape, n_ctrl, disp_amp * DEFORMATION["z_factor"])
        self.disp_amp = float(disp_amp)
        dx += axes[0][:, None, None]
        dy += axes[1][None, :, None]
        dz += axes[2][None, None, :]
        self.x, self.y, self.z = dx, dy, dz  # deformed world coordinates

        self.centre = np.asarray(pose["centre"], dtype=np.float64)
        self.shift = np.asarray(pose["shift"], dtype=np.float64)
        self.scale = float(pose["scale"])
        self.rot = np.asarray(pose["rot"], dtype=np.float64)
        self._hc = None

    @property
    def world(self) -> Coords:
        """The deformed world coordinates (x, y, z) of every voxel."""
        return self.x, self.y, self.z

    def heart_coords(self) -> Coords:
        """Canonical heart coordinates of every voxel, computed once on demand."""
        if self._hc is None:
            c = self.centre
            o = self.centre + self.shift
            m = self.rot.T / self.scale  # p_c = c + m @ (p_w - o)
            px = self.x - np.float32(o[0])
            py = self.y - np.float32(o[1])
            pz = self.z - np.float32(o[2])
            hc = []
            for i in range(3):
                a, b, d = (np.float32(v) for v in m[i])
                q = px * a
                q += py * b
                q += pz * d
                q += np.float32(c[i])
                hc.append(q)
            self._hc = tuple(hc)
        return self._hc

    def to_world(self, p) -> np.ndarray:
        """World coordinates of canonical heart points (the subject's pose, without the deformation)."""
        p = np.asarray(p, dtype=np.float64)
        return self.centre + self.shift + self.scale * (p - self.centre) @ self.rot.T

    def box(self, lo, hi) -> Box:
        """Index slices covering the world-space box [lo, hi] (+ deformation)."""
        lo = np.asarray(lo, dtype=np.float64) - self.disp_amp - 2 * self.spacing
        hi = np.asarray(hi, dtype=np.float64) + self.disp_amp + 2 * self.spacing
        sl = []
        for i in range(3):
            a = int(np.floor((lo[i] - self.origin[i]) / self.spacing[i]))
            b = int(np.ceil((hi[i] - self.origin[i]) / self.spacing[i])) + 1
            a, b = max(a, 0), min(b, self.shape[i])
            if b <= a:
                return None
            sl.append(slice(a, b))
        return tuple(sl)

    def axial_box(self, x_range, y_range) -> Box:
        """Index slices of the world-space column ``x_range`` x ``y_range`` through every slice."""
        return self.box((x_range[0], y_range[0], -ALL_Z), (x_range[1], y_range[1], ALL_Z))

    def heart_box_points(self, pts: np.ndarray, radius: float) -> Box:
        """Index slices covering heart points ``pts`` and ``radius`` mm around them."""
        w = self.to_world(np.atleast_2d(pts))
        r = self.scale * radius
        return self.box(w.min(axis=0) - r, w.max(axis=0) + r)

    def heart_box_ellipsoid(self, c: np.ndarray, frame: np.ndarray, semi: np.ndarray, pad: float) -> Box:
        """Index slices covering a heart ellipsoid grown by ``pad`` mm."""
        axes_w = (self.rot @ np.asarray(frame).T).T  # rows: world directions
        semi = np.asarray(semi, dtype=np.float64) + pad
        half = self.scale * np.sqrt(((semi[:, None] * axes_w) ** 2).sum(axis=0))
        cw = self.to_world(c)
        return self.box(cw - half, cw + half)


# ----------------------------------------------------------------------------------------------------------------
# distances
# ----------------------------------------------------------------------------------------------------------------


def axial_ellipse(x: np.ndarray, y: np.ndarray, centre: Sequence[float], semi: Sequence[float]) -> np.ndarray:
    """Squared normalised radius of an axial ellipse (a cylinder along z); below 1 inside."""
    ex = (x - np.float32(centre[0])) * np.float32(1.0 / semi[0])
    ey = (y - np.float32(centre[1])) * np.float32(1.0 / semi[1])
    return ex ** 2 + ey ** 2


def ellipsoid_sdf(coords: Coords, sl, c, frame, semi) -> tuple[np.ndarray, list[np.ndarray]]:
    """Approximate signed distance (mm) to an ellipsoid, plus axis projections.

    Uses the first-order estimate (rho^2 - 1) / |grad rho^2|, which is accurate
    within a few mm of the surface (the only place it is thresholded).
    """
    px = coords[0][sl] - np.float32(c[0])
    py = coords[1][sl] - np.float32(c[1])
    pz = coords[2][sl] - np.float32(c[2])
    proj = []
    rho2 = None
    grad2 = None
    for k in range(3):
        a, b, d = (np.float32(v) for v in frame[k])
        q = px * a
        q += py * b
        q += pz * d
        proj.append(q)
        inv = np.float32(1.0 / semi[k])
        qn = q * inv
        t = qn * qn
        rho2 = t if rho2 is None else rho2 + t
        t2 = t * (inv * inv)
        grad2 = t2 if grad2 is None else grad2 + t2
    g = 2.0 * np.sqrt(grad2) + np.float32(1e-6)
    return (rho2 - 1.0) / g, proj


def tube_sdf(coords: Coords, sl, pts: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to a tube of varying radius around sampled points.

    The box is processed in z slabs; each slab only looks at the curve points
    that can influence it.
    """
    x, y, z = (c[sl] for c in coords)
    out = np.empty(x.shape, dtype=np.float32)
    pts = np.asarray(pts, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    reach = float(radii.max()) + 25.0
    nz = x.shape[2]
    step = 6
    for k0 in range(0, nz, step):
        k1 = min(k0 + step, nz)
        xs, ys, zs = x[:, :, k0:k1], y[:, :, k0:k1], z[:, :, k0:k1]
        zlo, zhi = float(zs.min()), float(zs.max())
        sel = (pts[:, 2] > zlo - reach) & (pts[:, 2] < zhi + reach)
        if not sel.any():
            out[:, :, k0:k1] = 1e4
            continue
        best = None
        for p, r in zip(pts[sel], radii[sel]):
            d = (xs - np.float32(p[0])) ** 2
            d += (ys - np.float32(p[1])) ** 2
            d += (zs - np.float32(p[2])) ** 2
            np.sqrt(d, out=d)
            d -= np.float32(r)
            if best is None:
                best = d
            else:
                np.minimum(best, d, out=best)
        out[:, :, k0:k1] = best
    return out


def vtube_sdf(coords: Coords, sl, zk: np.ndarray, xk: np.ndarray, yk: np.ndarray, rk: np.ndarray) -> np.ndarray:
    """Signed distance to a near-vertical tube given by knots along z."""
    x, y, z = (c[sl] for c in coords)
    cx = np.interp(z, zk, xk).astype(np.float32)
    cy = np.interp(z, zk, yk).astype(np.float32)
    r = np.interp(z, zk, rk).astype(np.float32)
    d = (x - cx) ** 2
    d += (y - cy) ** 2
    np.sqrt(d, out=d)
    d -= r
    return d


def paint(smap: np.ndarray, sl: Box, mask: np.ndarray, value: int) -> None:
    """Set the voxels of ``mask`` (shaped like box ``sl``) of the structure map to ``value``."""
    if sl is None:
        return
    view = smap[sl]
    view[mask] = value
