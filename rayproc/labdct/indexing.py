"""LabDCT grain indexing: orientations and positions of grains from measured spot centroids.

Spots are predicted with the simulator's forward model (:func:`rayproc.labdct.bragg.diffraction_events`:
``G = R_z(omega) U B hkl``, cone beam from the point source, tilted detector, energy window), so
simulation and indexing share one Bragg-geometry code path. The published far-field indexing [1]_
scores a 2.5 deg grid of orientations; this search starts from spot pairs instead (step 2):

1. **Scattering vectors of the spots.** Each measured centroid gives a unit scattering vector
   ``g = (k_out - k_in) / |k_out - k_in|`` for a grain at the rotation axis
   (:func:`spot_scattering_vectors`); a grain off the axis tilts it by ~(offset / L) rad.
2. **Orientation hypotheses.** Two spots of one grain in one frame make an angle found among
   the angles between {hkl} normals; each spot pair and each (h1, h2) pair of that angle fixes
   an orientation (TRIAD, :func:`pair_orientations`), within ~0.3-1 deg of the grain's; seed
   spots are taken by decreasing intensity. A uniform grid of the cubic fundamental zone would
   be off by up to ~2 deg at a 2.5 deg step, and at ~1000 spots per frame a 2 deg tolerance lets
   about one random spot match every predicted one; hypotheses are fitted to the scattering
   vectors they match (:func:`align_orientations`) before they are ranked.
3. **Scoring** (:func:`score_orientations`): every hypothesis predicts its spots in every frame
   (grain at the axis) and counts those within ``angle_tol_deg`` of a measured scattering
   vector of the same frame: completeness = matched / predicted.
4. **Refinement** (:func:`refine_grain`): orientation and position by least squares on the
   pixel residuals of the matched spots, re-matching at shrinking pixel tolerances; a grain
   short of 0.9 completeness is compared with its turns about <111>
   (:func:`pseudo_symmetric_turns`).
5. **Greedy assignment** (:func:`accept_grains`): refined candidates in decreasing order of
   matched spots take their still unassigned spots if their completeness on those stays above
   the threshold; the next round seeds from the remaining spots (:func:`index_grains`).

Orientations ``U`` map crystal to sample (``g_sample = U @ g_crystal``), positions are in the
sample frame (mm), as in :mod:`rayproc.labdct.polycrystal`.

References
----------
.. [1] Y. Zhang, A. Lindkvist, J. Appl. Cryst. 58 (2025), "A critical step toward far-field
   laboratory diffraction contrast tomography in Laue focusing geometry".
.. [2] H. Fang, D. Juul Jensen, Y. Zhang, Acta Cryst. A 76 (2020) 652-663,
   doi:10.1107/S2053273320010852 (forward model)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import permutations, product

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from rayproc.errors import InputError
from rayproc.labdct.bragg import diffraction_events
from rayproc.labdct.crystallography import reflection_set
from rayproc.labdct.geometry import LabdctGeometry

_FRAME_GAP = 10.0  # separates frames in the (g, frame) search tree: |g1 - g2| <= 2
_FRAME_GAP_PX = 1e5  # same in the (y, z, frame) pixel tree
_PRESELECT = 16  # hypotheses of a seed scored in every frame


@dataclass(frozen=True)
class IndexingParams:
    """Parameters of :func:`index_grains`.

    Attributes
    ----------
    families : int
        {hkl} families predicted (3: {110}, {200}, {211} for bcc, as published for iron [1]_).
    angle_tol_deg : float
        Scattering-vector tolerance of the pair angles and of the scoring.
    match_px : float
        Final pixel tolerance of a matched spot.
    min_completeness : float
        Smallest matched / predicted of an accepted grain.
    min_predicted : int
        Fewest predicted spots of an accepted grain.
    seeds_per_round : int
        Seed spots per round (the unit of work shared over actors; results do not depend on
        the number of actors).
    candidates_per_seed : int
        Best-scoring hypotheses of a seed that are refined.
    patience : int
        Stop after this many rounds without a new grain.
    max_rounds : int
    """

    families: int = 3
    angle_tol_deg: float = 0.5
    match_px: float = 3.0
    min_completeness: float = 0.5
    min_predicted: int = 10
    seeds_per_round: int = 32
    candidates_per_seed: int = 3
    patience: int = 2
    max_rounds: int = 1000

    def __post_init__(self):
        if not (0 < self.angle_tol_deg < 10 and self.match_px > 0 and 0 < self.min_completeness <= 1):
            raise InputError(
                f"need 0 < angle_tol_deg < 10, match_px > 0, 0 < min_completeness <= 1; got "
                f"{self.angle_tol_deg}, {self.match_px}, {self.min_completeness}."
            )
        if min(self.families, self.min_predicted, self.seeds_per_round, self.candidates_per_seed,
               self.patience, self.max_rounds) < 1:
            raise InputError(f"counts in IndexingParams must be >= 1; got {self}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IndexingParams:
        return cls(**data)


@dataclass(frozen=True, eq=False)
class MeasuredSpots:
    """Measured spot centroids of a stack and their search trees (see :func:`measured_spots`).

    Attributes
    ----------
    frame : ndarray of int, shape (N,)
    y_px, z_px : ndarray, shape (N,)
        Centroids in the geometry's pixel coordinates.
    intensity, area : ndarray, shape (N,)
    omegas_deg : ndarray, shape (F,)
        Rotation angle of every frame.
    g_lab : ndarray, shape (N, 3)
        Unit scattering vectors in the lab frame for a grain at the rotation axis.
    """

    frame: np.ndarray
    y_px: np.ndarray
    z_px: np.ndarray
    intensity: np.ndarray
    area: np.ndarray
    omegas_deg: np.ndarray
    g_lab: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)


def rotations_z(omegas_deg) -> np.ndarray:
    """Right-handed rotations about +z, (F, 3, 3) (``geometry.rotation_z`` vectorised)."""
    w = np.deg2rad(np.asarray(omegas_deg, dtype=np.float64))
    c, s = np.cos(w), np.sin(w)
    rot = np.zeros(w.shape + (3, 3))
    rot[..., 0, 0], rot[..., 0, 1], rot[..., 1, 0], rot[..., 1, 1], rot[..., 2, 2] = c, -s, s, c, 1.0
    return rot


def cubic_rotations() -> np.ndarray:
    """The 24 proper rotations of the cubic point group (signed permutation matrices), (24, 3, 3)."""
    mats = []
    for perm in permutations(range(3)):
        for signs in product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[np.arange(3), perm] = signs
            if np.linalg.det(m) > 0:
                mats.append(m)
    return np.array(mats)


def misorientation_deg(u1, u2) -> np.ndarray:
    """Smallest rotation angle (deg) between cubic orientations, over the 24 symmetry operators.

    Parameters
    ----------
    u1, u2 : array_like, shape (G, 3, 3) or (3, 3)
        Crystal-to-sample matrices.

    Returns
    -------
    ndarray, shape (G,)

    Examples
    --------
    A 100 deg turn about a cube axis is 10 deg from the start (90 deg is a symmetry):

    >>> round(float(misorientation_deg(np.eye(3), rotations_z(100.0))[0]), 6)
    10.0
    """
    u1, u2 = np.asarray(u1, np.float64).reshape(-1, 3, 3), np.asarray(u2, np.float64).reshape(-1, 3, 3)
    delta = np.einsum("gji,gjk->gik", u1, u2)  # U1^T U2
    traces = np.einsum("gij,sji->gs", delta, cubic_rotations())  # trace(U1^T U2 S)
    cos = np.clip((traces.max(axis=1) - 1) / 2, -1, 1)
    return np.degrees(np.arccos(cos))


def fundamental_zone(orientations) -> np.ndarray:
    """The symmetric equivalent ``U S`` with the smallest rotation angle, (G, 3, 3)."""
    u = np.asarray(orientations, np.float64).reshape(-1, 3, 3)
    sym = cubic_rotations()
    equivalents = np.einsum("gij,sjk->gsik", u, sym)
    best = np.argmax(np.einsum("gsii->gs", equivalents), axis=1)
    return equivalents[np.arange(len(u)), best]


def rodrigues_vectors(orientations) -> np.ndarray:
    """Rodrigues vectors r = n tan(angle / 2) of U (the ``orientation_matrices`` convention), (G, 3)."""
    rotvec = Rotation.from_matrix(np.asarray(orientations).reshape(-1, 3, 3)).as_rotvec()
    angle = np.linalg.norm(rotvec, axis=1, keepdims=True)
    return rotvec * np.divide(np.tan(angle / 2), angle, out=np.full_like(angle, 0.5), where=angle > 0)


def spot_scattering_vectors(y_px, z_px, geometry: LabdctGeometry) -> np.ndarray:
    """Unit lab-frame scattering vectors of detector points, for a grain at the rotation axis.

    ``g ~ k_out - k_in`` with ``k_in`` from the source to the origin and ``k_out`` from the
    origin to the detector point (the inverse of ``diffracted_directions`` at the axis).

    Parameters
    ----------
    y_px, z_px : array_like, shape (N,)
        Detector pixel coordinates.
    geometry : LabdctGeometry

    Returns
    -------
    ndarray, shape (N, 3)
    """
    origin, e_y, e_z, _ = geometry.detector_frame()
    y_mm, z_mm = geometry.px_to_mm(np.asarray(y_px, np.float64), np.asarray(z_px, np.float64))
    points = origin + y_mm[:, None] * e_y + z_mm[:, None] * e_z
    k_out = points / np.linalg.norm(points, axis=1, keepdims=True)
    k_in = -geometry.source_mm / np.linalg.norm(geometry.source_mm)
    g = k_out - k_in
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def measured_spots(frame, y_px, z_px, omegas_deg, geometry: LabdctGeometry, *, intensity=None,
                   area=None) -> MeasuredSpots:
    """Collect a stack's spot table for indexing.

    Parameters
    ----------
    frame : array_like of int, shape (N,)
        Frame of every spot, an index into ``omegas_deg``.
    y_px, z_px : array_like, shape (N,)
        Centroids in the geometry's pixel coordinates (``image[iy, iz]``).
    omegas_deg : array_like, shape (F,)
    geometry : LabdctGeometry
    intensity, area : array_like, shape (N,), optional
        Spot intensities (seed order) and areas; default ones.

    Returns
    -------
    MeasuredSpots
    """
    frame = np.asarray(frame, np.int64)
    y_px, z_px = np.asarray(y_px, np.float64), np.asarray(z_px, np.float64)
    omegas_deg = np.asarray(omegas_deg, np.float64).ravel()
    n = len(frame)
    if y_px.shape != (n,) or z_px.shape != (n,):
        raise InputError(f"frame, y_px, z_px must be (N,) each; got {frame.shape}, {y_px.shape}, {z_px.shape}.")
    if n and (frame.min() < 0 or frame.max() >= len(omegas_deg)):
        raise InputError(f"spot frames must lie in [0, {len(omegas_deg)}); got [{frame.min()}, {frame.max()}].")
    if not (np.isfinite(y_px).all() and np.isfinite(z_px).all()):
        raise InputError("spot centroids must be finite; got NaN or infinite centroids.")
    intensity = np.ones(n) if intensity is None else np.asarray(intensity, np.float64)
    area = np.ones(n) if area is None else np.asarray(area, np.float64)
    g_lab = spot_scattering_vectors(y_px, z_px, geometry) if n else np.zeros((0, 3))
    return MeasuredSpots(frame, y_px, z_px, intensity, area, omegas_deg, g_lab)


def indexing_reflections(geometry: LabdctGeometry, families: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Reflections predicted when indexing: the first ``families`` {hkl}, harmonics dropped.

    Returns
    -------
    g_crystal : ndarray, shape (R, 3)
        Crystal-frame reciprocal vectors (1/Angstrom).
    family : ndarray of int, shape (R,)
    """
    refl = reflection_set(geometry.material, families)
    keep = np.unique(refl.fundamental)
    return refl.hkl[keep] / geometry.material.a_angstrom, refl.family[keep]


def predict_spots(orientations, positions, omegas_deg, geometry: LabdctGeometry, g_crystal) -> dict:
    """Spots predicted by the forward model for grains in every frame, on the detector and off the beam stop.

    Parameters
    ----------
    orientations : array_like, shape (C, 3, 3)
        Crystal-to-sample U.
    positions : array_like, shape (C, 3)
        Grain positions in the sample frame (mm).
    omegas_deg : array_like, shape (F,)
    geometry : LabdctGeometry
    g_crystal : array_like, shape (R, 3)
        Reciprocal vectors in the crystal frame (:func:`indexing_reflections`).

    Returns
    -------
    dict of ndarray, each with one row per predicted spot (M,)
        ``grain`` (index into the C grains), ``frame``, ``reflection``, ``y_px``, ``z_px``,
        ``g_lab`` (M, 3) unit scattering vectors.
    """
    u = np.asarray(orientations, np.float64).reshape(-1, 3, 3)
    x = np.asarray(positions, np.float64).reshape(-1, 3)
    rot = rotations_z(omegas_deg)
    g_c = np.asarray(g_crystal, np.float64)
    c, f, r = len(u), len(rot), len(g_c)
    g_sample = np.einsum("cij,rj->cri", u, g_c)
    g_lab = np.einsum("fij,crj->cfri", rot, g_sample).reshape(-1, 3)
    x_lab = np.broadcast_to(np.einsum("fij,cj->cfi", rot, x)[:, :, None, :], (c, f, r, 3)).reshape(-1, 3)
    events = diffraction_events(x_lab, g_lab, geometry)
    ny, nz = geometry.detector_shape
    y, z = events["y_px"], events["z_px"]
    keep = events["valid"] & (y >= -0.5) & (y < ny - 0.5) & (z >= -0.5) & (z < nz - 0.5)
    index = np.flatnonzero(keep)
    if geometry.beam_stop_px is not None:
        (y0, y1), (z0, z1) = geometry.beam_stop_px
        iy, iz = np.floor(y[index] + 0.5), np.floor(z[index] + 0.5)
        index = index[~((iy >= y0) & (iy <= y1) & (iz >= z0) & (iz <= z1))]
    grain, rest = np.divmod(index, f * r)
    frame, reflection = np.divmod(rest, r)
    g = g_lab[index]
    return {
        "grain": grain, "frame": frame, "reflection": reflection, "y_px": y[index], "z_px": z[index],
        "g_lab": g / np.linalg.norm(g, axis=1, keepdims=True),
    }


def _predict_at_axis(orientations, spots: MeasuredSpots, geometry, g_crystal, frames) -> dict:
    """:func:`predict_spots` for grains at the rotation axis in some frames (``frame`` = stack index)."""
    pred = predict_spots(orientations, np.zeros((len(orientations), 3)), spots.omegas_deg[frames], geometry, g_crystal)
    pred["frame"] = frames[pred["frame"]]
    return pred


def _chord(angle_deg: float) -> float:
    return 2 * np.sin(np.radians(angle_deg) / 2)


def g_tree(spots: MeasuredSpots, available) -> tuple[cKDTree, np.ndarray]:
    """Search tree over (scattering vector, frame) of the available spots, and their indices."""
    ids = np.flatnonzero(available)
    points = np.column_stack([spots.g_lab[ids], _FRAME_GAP * spots.frame[ids]])
    return cKDTree(points.reshape(-1, 4)), ids


def pixel_tree(spots: MeasuredSpots, available) -> tuple[cKDTree, np.ndarray]:
    """Search tree over (y_px, z_px, frame) of the available spots, and their indices."""
    ids = np.flatnonzero(available)
    points = np.column_stack([spots.y_px[ids], spots.z_px[ids], _FRAME_GAP_PX * spots.frame[ids]])
    return cKDTree(points.reshape(-1, 3)), ids


def _pair_table(g_crystal: np.ndarray, families: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Angles (deg, sorted) between a representative of each family and every other reflection.

    One (h1, h2) per orbit of the rotations that fix h1: others give the same orientation.
    """
    sym = cubic_rotations()
    unit = g_crystal / np.linalg.norm(g_crystal, axis=1, keepdims=True)
    key = np.round(g_crystal * 1e6).astype(np.int64)
    lookup = {tuple(k): i for i, k in enumerate(key)}
    first, second, angle = [], [], []
    for fam in np.unique(families):
        h1 = int(np.flatnonzero(families == fam)[0])
        stabiliser = sym[np.all(np.abs(np.einsum("sij,j->si", sym, unit[h1]) - unit[h1]) < 1e-9, axis=1)]
        seen = set()
        for h2 in range(len(unit)):
            cos = float(unit[h1] @ unit[h2])
            if abs(cos) > np.cos(np.radians(1.0)):
                continue
            orbit = {lookup[tuple(np.round(s @ g_crystal[h2] * 1e6).astype(np.int64))] for s in stabiliser}
            if min(orbit) in seen:
                continue
            seen.add(min(orbit))
            first.append(h1)
            second.append(h2)
            angle.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    order = np.argsort(angle, kind="stable")
    return np.array(angle)[order], np.array(first)[order], np.array(second)[order]


def _triad(a1, a2, b1, b2) -> np.ndarray:
    """Rotations taking a1 to b1 and the plane (a1, a2) to (b1, b2), (K, 3, 3)."""
    def frame(v1, v2):
        e1 = v1 / np.linalg.norm(v1, axis=-1, keepdims=True)
        e2 = np.cross(v1, v2)
        e2 = e2 / np.linalg.norm(e2, axis=-1, keepdims=True)
        return np.stack([e1, e2, np.cross(e1, e2)], axis=-1)

    return frame(b1, b2) @ np.swapaxes(frame(a1, a2), -1, -2)


def pair_orientations(seed: int, spots: MeasuredSpots, available, g_crystal, families, *,
                      angle_tol_deg: float = 0.5) -> np.ndarray:
    """Orientation hypotheses from a seed spot and every available spot of its frame.

    Parameters
    ----------
    seed : int
        Index of the seed spot.
    spots : MeasuredSpots
    available : array_like of bool, shape (N,)
        Spots not assigned to a grain.
    g_crystal : ndarray, shape (R, 3)
    families : ndarray of int, shape (R,)
        Family of each reflection.
    angle_tol_deg : float
        Largest difference between the measured and the crystal angle of a pair.

    Returns
    -------
    ndarray, shape (K, 3, 3)
        U mapping h1 to the seed's and h2 to the partner's sample-frame scattering vector.
    """
    angles, first, second = _pair_table(np.asarray(g_crystal), np.asarray(families))
    frame = spots.frame[seed]
    partners = np.flatnonzero(np.asarray(available) & (spots.frame == frame))
    partners = partners[partners != seed]
    if len(partners) == 0:
        return np.zeros((0, 3, 3))
    back = rotations_z(spots.omegas_deg[frame]).T
    v1 = back @ spots.g_lab[seed]
    v2 = spots.g_lab[partners] @ back.T
    measured = np.degrees(np.arccos(np.clip(v2 @ v1, -1, 1)))
    lo = np.searchsorted(angles, measured - angle_tol_deg, "left")
    hi = np.searchsorted(angles, measured + angle_tol_deg, "right")
    counts = hi - lo
    partner = np.repeat(np.arange(len(partners)), counts)
    entry = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    g_crystal = np.asarray(g_crystal, np.float64)
    return _triad(g_crystal[first[entry]], g_crystal[second[entry]], np.broadcast_to(v1, (len(entry), 3)),
                  v2[partner])


def score_orientations(orientations, spots: MeasuredSpots, tree, geometry: LabdctGeometry, g_crystal, *,
                       angle_tol_deg: float = 0.5, frames=None, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and matched spot counts of orientations for a grain at the rotation axis.

    A predicted spot matches when an available measured spot of its frame has a scattering
    vector within ``angle_tol_deg``.

    Parameters
    ----------
    orientations : array_like, shape (K, 3, 3)
    spots : MeasuredSpots
    tree : (cKDTree, ndarray)
        :func:`g_tree` of the available spots.
    geometry, g_crystal :
        As for :func:`predict_spots`.
    frames : array_like of int, optional
        Score in these frames only (default all).

    Returns
    -------
    predicted, matched : ndarray of int, shape (K,)
    """
    frames = np.arange(len(spots.omegas_deg)) if frames is None else np.asarray(frames, np.int64)
    u = np.asarray(orientations).reshape(-1, 3, 3)
    predicted, matched = np.zeros(len(u), np.int64), np.zeros(len(u), np.int64)
    search, _ = tree
    for start in range(0, len(u), chunk):
        part = u[start:start + chunk]
        pred = _predict_at_axis(part, spots, geometry, g_crystal, frames)
        predicted[start:start + len(part)] = np.bincount(pred["grain"], minlength=len(part))
        if search.n == 0 or len(pred["grain"]) == 0:
            continue
        points = np.column_stack([pred["g_lab"], _FRAME_GAP * pred["frame"]])
        dist, _ = search.query(points, distance_upper_bound=_chord(angle_tol_deg))
        matched[start:start + len(part)] = np.bincount(pred["grain"][np.isfinite(dist)], minlength=len(part))
    return predicted, matched


def align_orientations(orientations, spots: MeasuredSpots, tree, geometry: LabdctGeometry, g_crystal, *,
                       tolerances_deg=(1.0, 0.5), frames=None) -> np.ndarray:
    """Re-fit orientations to the scattering vectors they match (grain at the axis), (K, 3, 3).

    For each tolerance, the predicted spots are matched by angle (as in
    :func:`score_orientations`) and U is the rotation best taking the matched crystal vectors
    to the measured sample-frame ones (Kabsch: SVD of their correlation matrix).
    """
    u = np.array(orientations, np.float64).reshape(-1, 3, 3)
    frames = np.arange(len(spots.omegas_deg)) if frames is None else np.asarray(frames, np.int64)
    g_c = np.asarray(g_crystal, np.float64)
    g_c = g_c / np.linalg.norm(g_c, axis=1, keepdims=True)
    rot = rotations_z(spots.omegas_deg)
    for tol in tolerances_deg:
        pred = _predict_at_axis(u, spots, geometry, g_crystal, frames)
        hit, target = _match_angle(pred, tree, tol)
        measured = np.einsum("nji,nj->ni", rot[spots.frame[target]], spots.g_lab[target])  # R^T g
        grain = pred["grain"][hit]
        corr = np.zeros((len(u), 3, 3))
        np.add.at(corr, grain, measured[:, :, None] * g_c[pred["reflection"][hit]][:, None, :])
        w, _, vt = np.linalg.svd(corr)
        sign = np.sign(np.linalg.det(w @ vt))
        fitted = w @ (np.eye(3)[None] * np.stack([np.ones_like(sign), np.ones_like(sign), sign], -1)[:, None, :]) @ vt
        enough = np.bincount(grain, minlength=len(u)) >= 3
        u[enough] = fitted[enough]
    return u


def _match(pred: dict, tree, tol_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest available spot of the same frame within ``tol_px`` of each predicted spot."""
    search, ids = tree
    if search.n == 0 or len(pred["frame"]) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    points = np.column_stack([pred["y_px"], pred["z_px"], _FRAME_GAP_PX * pred["frame"]])
    dist, nearest = search.query(points, distance_upper_bound=tol_px)
    hit = np.flatnonzero(np.isfinite(dist))
    return hit, ids[nearest[hit]]


def _match_angle(pred: dict, tree, angle_tol_deg: float) -> tuple[np.ndarray, np.ndarray]:
    search, ids = tree
    if search.n == 0 or len(pred["frame"]) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    points = np.column_stack([pred["g_lab"], _FRAME_GAP * pred["frame"]])
    dist, nearest = search.query(points, distance_upper_bound=_chord(angle_tol_deg))
    hit = np.flatnonzero(np.isfinite(dist))
    return hit, ids[nearest[hit]]


def _fit(u0, x0, frames, reflections, targets, spots: MeasuredSpots, geometry, g_crystal):
    """Least squares on pixel residuals: rotation vector (applied to u0) and position."""
    rot = rotations_z(spots.omegas_deg[frames])
    g_c = g_crystal[reflections]

    def residuals(p):
        u = Rotation.from_rotvec(p[:3]).as_matrix() @ u0
        g_lab = np.einsum("nij,jk,nk->ni", rot, u, g_c)
        x_lab = np.einsum("nij,j->ni", rot, p[3:])
        ev = diffraction_events(x_lab, g_lab, geometry)
        res = np.concatenate([ev["y_px"] - targets[:, 0], ev["z_px"] - targets[:, 1]])
        return np.nan_to_num(res, nan=1e3)

    p0 = np.concatenate([np.zeros(3), x0])
    fit = least_squares(residuals, p0, loss="soft_l1", f_scale=1.0, x_scale=np.array([1e-3] * 3 + [1e-2] * 3),
                        max_nfev=200)
    return Rotation.from_rotvec(fit.x[:3]).as_matrix() @ u0, fit.x[3:]


def refine_grain(orientation, position, spots: MeasuredSpots, available, geometry: LabdctGeometry, g_crystal, *,
                 angle_tol_deg: float = 0.5, tolerances_px=(12.0, 6.0), match_px: float = 3.0,
                 trees=None) -> dict:
    """Refine a grain's orientation and position by least squares on pixel residuals.

    Matches first by scattering-vector angle (the hypothesis's grain at the axis), then by
    pixel distance at each of ``tolerances_px`` and finally ``match_px``, re-fitting after each.

    Parameters
    ----------
    orientation : array_like, shape (3, 3)
    position : array_like, shape (3,)
        Start position (mm, sample frame).
    spots : MeasuredSpots
    available : array_like of bool, shape (N,)
    geometry, g_crystal :
        As for :func:`predict_spots`.
    trees : ((cKDTree, ids), (cKDTree, ids)), optional
        :func:`g_tree` and :func:`pixel_tree` of the available spots (built if not given).

    Returns
    -------
    dict
        ``orientation`` (3, 3), ``position`` (3,), ``spots`` (matched spot indices),
        ``predicted`` (int), ``residual_px`` (per matched spot).
    """
    g_crystal = np.asarray(g_crystal, np.float64)
    if trees is None:
        trees = (g_tree(spots, available), pixel_tree(spots, available))
    gtree, ptree = trees
    u, x = np.asarray(orientation, np.float64), np.asarray(position, np.float64)
    pred = predict_spots(u[None], x[None], spots.omegas_deg, geometry, g_crystal)
    hit, target = _match_angle(pred, gtree, angle_tol_deg)
    for tol in (*tolerances_px, match_px):
        if len(hit) >= 4:
            targets = np.column_stack([spots.y_px[target], spots.z_px[target]])
            u, x = _fit(u, x, pred["frame"][hit], pred["reflection"][hit], targets, spots, geometry, g_crystal)
        pred = predict_spots(u[None], x[None], spots.omegas_deg, geometry, g_crystal)
        hit, target = _match(pred, ptree, tol)
    residual = np.hypot(pred["y_px"][hit] - spots.y_px[target], pred["z_px"][hit] - spots.z_px[target])
    return {"orientation": u, "position": x, "spots": target, "predicted": len(pred["frame"]),
            "residual_px": residual}


def pseudo_symmetric_turns() -> np.ndarray:
    """Crystal-frame turns by 30, 60, 90 deg about the four <111> axes, (24, 3, 3).

    With {110}, {200} and {211} and no energy resolution, a grain turned by 60 deg about <111>
    (the Sigma 3 twin) or 30 deg puts about 55 % of its Laue spots where the grain's own are:
    such a ghost can win a seed, take the spots and hide the true grain.
    """
    axes = np.array([[1, 1, 1], [-1, 1, 1], [1, -1, 1], [1, 1, -1]]) / np.sqrt(3)
    angles = np.radians([30.0, 60.0, 90.0, -30.0, -60.0, -90.0])
    return Rotation.from_rotvec((axes[:, None, :] * angles[None, :, None]).reshape(-1, 3)).as_matrix()


def _best_turn(grain: dict, spots: MeasuredSpots, trees, geometry, g_crystal, params) -> dict:
    """The grain or its most complete pseudo-symmetric turn (:func:`pseudo_symmetric_turns`), refined."""
    turns = np.einsum("ij,tjk->tik", grain["orientation"], pseudo_symmetric_turns())
    pred = predict_spots(turns, np.broadcast_to(grain["position"], (len(turns), 3)), spots.omegas_deg, geometry,
                         g_crystal)
    hit, _ = _match(pred, trees[1], params.match_px)
    predicted = np.bincount(pred["grain"], minlength=len(turns))
    matched = np.bincount(pred["grain"][hit], minlength=len(turns))
    k = int(np.argmax(matched / np.maximum(predicted, 1)))
    if matched[k] / max(predicted[k], 1) <= len(grain["spots"]) / max(grain["predicted"], 1):
        return grain
    turned = refine_grain(turns[k], grain["position"], spots, None, geometry, g_crystal,
                          angle_tol_deg=params.angle_tol_deg, match_px=params.match_px, trees=trees)
    return turned if len(turned["spots"]) > len(grain["spots"]) else grain


def search_seed(seed: int, spots: MeasuredSpots, available, geometry: LabdctGeometry, params: IndexingParams,
                *, trees=None, reflections=None) -> dict | None:
    """Best refined grain hypothesis of one seed spot, or None.

    Scores the pair hypotheses of the seed (:func:`pair_orientations`, :func:`score_orientations`),
    refines the ``candidates_per_seed`` best and returns the one matching most spots if its
    completeness reaches ``min_completeness``.
    """
    if reflections is None:
        reflections = indexing_reflections(geometry, params.families)
    g_crystal, families = reflections
    if trees is None:
        trees = (g_tree(spots, available), pixel_tree(spots, available))
    hyps = pair_orientations(seed, spots, available, g_crystal, families, angle_tol_deg=params.angle_tol_deg)
    if len(hyps) == 0:
        return None
    # hypotheses are off by up to ~1 deg: fit each to the spots it matches in the frames next to
    # the seed's, keep the best, fit those in every frame and refine the most complete
    near = np.arange(max(spots.frame[seed] - 4, 0), min(spots.frame[seed] + 5, len(spots.omegas_deg)))
    hyps = align_orientations(hyps, spots, trees[0], geometry, g_crystal, frames=near)
    _, matched = score_orientations(hyps, spots, trees[0], geometry, g_crystal, angle_tol_deg=params.angle_tol_deg,
                                    frames=near)
    hyps = hyps[np.argsort(-matched, kind="stable")[:_PRESELECT]]
    hyps = align_orientations(hyps, spots, trees[0], geometry, g_crystal, tolerances_deg=(params.angle_tol_deg,))
    predicted, matched = score_orientations(hyps, spots, trees[0], geometry, g_crystal,
                                            angle_tol_deg=params.angle_tol_deg)
    completeness = matched / np.maximum(predicted, 1)
    ok = (predicted >= params.min_predicted) & (completeness >= 0.5 * params.min_completeness)
    order = np.lexsort((-matched, -completeness))  # most complete first
    best = None
    for k in order[ok[order]][: params.candidates_per_seed]:
        grain = refine_grain(hyps[k], np.zeros(3), spots, available, geometry, g_crystal,
                             angle_tol_deg=params.angle_tol_deg, match_px=params.match_px, trees=trees)
        if best is None or len(grain["spots"]) > len(best["spots"]):
            best = grain
        if len(best["spots"]) >= 0.9 * best["predicted"]:
            break
    if best is None or best["predicted"] < params.min_predicted:
        return None
    if len(best["spots"]) < 0.9 * best["predicted"]:
        best = _best_turn(best, spots, trees, geometry, g_crystal, params)
    if len(best["spots"]) < params.min_completeness * best["predicted"]:
        return None
    return {**best, "seed": int(seed)}


def search_seeds(seeds, spots: MeasuredSpots, available, geometry: LabdctGeometry,
                 params: IndexingParams) -> list[dict]:
    """:func:`search_seed` for several seeds against the same available spots (one unit of work)."""
    available = np.asarray(available, bool)
    trees = (g_tree(spots, available), pixel_tree(spots, available))
    reflections = indexing_reflections(geometry, params.families)
    found = []
    for seed in seeds:
        grain = search_seed(int(seed), spots, available, geometry, params, trees=trees, reflections=reflections)
        if grain is not None:
            found.append(grain)
    return found


def accept_grains(candidates: list[dict], spots: MeasuredSpots, available, geometry: LabdctGeometry,
                  params: IndexingParams) -> tuple[list[dict], np.ndarray]:
    """Greedy assignment: candidates in decreasing order of matched spots take their unassigned spots.

    A candidate is re-matched (at ``match_px``) against the spots still available and accepted
    when its completeness on them reaches ``min_completeness``; its spots are then removed.
    The order (matched spots, then seed index) does not depend on how the seeds were shared out.

    Returns
    -------
    grains : list of dict
        Accepted grains (``orientation``, ``position``, ``spots``, ``predicted``, ``residual_px``,
        ``seed``).
    available : ndarray of bool, shape (N,)
        Spots still unassigned.
    """
    available = np.array(available, bool)
    g_crystal, _ = indexing_reflections(geometry, params.families)
    order = sorted(candidates, key=lambda c: (-len(c["spots"]), c["seed"]))
    accepted = []
    for cand in order:
        if not available[cand["spots"]].any():
            continue
        pred = predict_spots(cand["orientation"][None], cand["position"][None], spots.omegas_deg, geometry, g_crystal)
        hit, target = _match(pred, pixel_tree(spots, available), params.match_px)
        if len(pred["frame"]) < params.min_predicted or len(hit) < params.min_completeness * len(pred["frame"]):
            continue
        target, first = np.unique(target, return_index=True)  # one spot, one grain
        hit = hit[first]
        residual = np.hypot(pred["y_px"][hit] - spots.y_px[target], pred["z_px"][hit] - spots.z_px[target])
        accepted.append({**cand, "spots": target, "predicted": len(pred["frame"]), "residual_px": residual})
        available[target] = False
    return accepted, available


def next_seeds(spots: MeasuredSpots, available, seeded, count: int) -> np.ndarray:
    """The ``count`` brightest spots that are available and were never a seed (ties by index)."""
    candidates = np.flatnonzero(np.asarray(available) & ~np.asarray(seeded))
    order = np.lexsort((candidates, -spots.intensity[candidates]))
    return candidates[order][:count]


def grain_table(grains: list[dict], spots: MeasuredSpots) -> dict[str, np.ndarray]:
    """Per-grain arrays of accepted grains (see :func:`index_grains`) and the per-spot assignment."""
    g = len(grains)
    u = fundamental_zone(np.array([gr["orientation"] for gr in grains]).reshape(g, 3, 3))
    matched = np.array([len(gr["spots"]) for gr in grains], np.int64)
    predicted = np.array([gr["predicted"] for gr in grains], np.int64)
    intensity = np.array([np.median(spots.intensity[gr["spots"]]) if len(gr["spots"]) else 0.0 for gr in grains])
    area = np.array([np.median(spots.area[gr["spots"]]) if len(gr["spots"]) else 0.0 for gr in grains])
    assignment = np.full(len(spots), -1, np.int64)
    residual = np.full(len(spots), np.nan)
    for i, gr in enumerate(grains):
        assignment[gr["spots"]] = i
        residual[gr["spots"]] = gr["residual_px"]
    return {
        "orientation": u,
        "rodrigues": rodrigues_vectors(u) if g else np.zeros((0, 3)),
        "position": np.array([gr["position"] for gr in grains]).reshape(g, 3),
        "completeness": matched / np.maximum(predicted, 1),
        "matched": matched,
        "predicted": predicted,
        "residual_px": np.array([gr["residual_px"].mean() if len(gr["residual_px"]) else np.nan for gr in grains]),
        "median_intensity": intensity,
        "median_area_px": area,
        "size": np.cbrt(intensity),
        "round": np.array([gr.get("round", 0) for gr in grains], np.int64),
        "seed": np.array([gr["seed"] for gr in grains], np.int64),
        "spot_grain": assignment,
        "spot_residual_px": residual,
    }


def index_grains(spots: MeasuredSpots, geometry: LabdctGeometry, params: IndexingParams | None = None, *,
                 search=None, rounds=(), on_round=None) -> dict[str, np.ndarray]:
    """Index grains in a spot table: rounds of seed search, refinement and greedy assignment.

    Parameters
    ----------
    spots : MeasuredSpots
    geometry : LabdctGeometry
    params : IndexingParams, optional
    search : callable, optional
        ``search(seed_batches, available) -> list of candidate lists``, e.g. the Ray shell's
        actors; default :func:`search_seeds` in this process. Seeds are cut into batches of
        :func:`seed_batches` whatever the executor, so the grains do not depend on it.
    rounds : sequence of dict, optional
        Rounds done before (``on_round`` records, e.g. read back by a resumed run), replayed
        without searching.
    on_round : callable, optional
        ``on_round(index, record)`` after each new round; ``record`` holds ``seeds`` (the
        round's seed spots) and ``grains`` (the grains it accepted).

    Returns
    -------
    dict of ndarray
        :func:`grain_table`: ``orientation`` (G, 3, 3) U in the fundamental zone, ``rodrigues``
        (G, 3), ``position`` (G, 3) mm, ``completeness``, ``matched``, ``predicted``,
        ``residual_px`` (mean), ``median_intensity``, ``median_area_px``, ``size`` (cube root of
        the median spot intensity, relative), ``round``, ``seed`` (G,); ``spot_grain`` (N,)
        (-1 unassigned) and ``spot_residual_px`` (N,).
    """
    params = IndexingParams() if params is None else params
    available = np.ones(len(spots), bool)
    seeded = np.zeros(len(spots), bool)
    grains: list[dict] = []
    idle = 0
    for round_ in range(params.max_rounds):
        if round_ < len(rounds):
            record = rounds[round_]
            seeds, accepted = np.asarray(record["seeds"], np.int64), list(record["grains"])
            seeded[seeds] = True
            for grain in accepted:
                available[grain["spots"]] = False
        else:
            seeds = next_seeds(spots, available, seeded, params.seeds_per_round)
            if len(seeds) == 0:
                break
            seeded[seeds] = True
            batches = seed_batches(seeds)
            if search is None:
                found = [search_seeds(b, spots, available, geometry, params) for b in batches]
            else:
                found = search(batches, available)
            accepted, available = accept_grains([c for part in found for c in part], spots, available, geometry,
                                                params)
            if on_round is not None:
                on_round(round_, {"seeds": seeds, "grains": accepted})
        grains += [{**g, "round": round_} for g in accepted]
        idle = 0 if accepted else idle + 1
        if idle >= params.patience:
            break
    return grain_table(grains, spots)


def compare_grains(orientations, positions, true_orientations, true_positions, *, max_deg: float = 1.0,
                   max_mm: float = 0.05) -> dict[str, np.ndarray]:
    """Match indexed grains to known grains (a simulation's) and measure their errors.

    Pairs within ``max_deg`` misorientation and ``max_mm`` are matched one to one, closest in
    orientation first; an indexed grain left unmatched is false.

    Parameters
    ----------
    orientations, positions : array_like, shape (G, 3, 3) and (G, 3)
        Indexed grains (U, mm).
    true_orientations, true_positions : array_like, shape (T, 3, 3) and (T, 3)

    Returns
    -------
    dict of ndarray
        ``found`` (T,) bool, ``orientation_error_deg`` and ``position_error_um`` (T,) (NaN where
        not found), ``match`` (G,) index of the true grain (-1: false), ``false`` (G,) bool.
    """
    u = np.asarray(orientations, np.float64).reshape(-1, 3, 3)
    x = np.asarray(positions, np.float64).reshape(-1, 3)
    tu = np.asarray(true_orientations, np.float64).reshape(-1, 3, 3)
    tx = np.asarray(true_positions, np.float64).reshape(-1, 3)
    g, t = len(u), len(tu)
    mis = np.full((g, t), np.inf)
    distance = np.linalg.norm(x[:, None] - tx[None], axis=2) if g and t else np.zeros((g, t))
    for i in range(g):
        close = np.flatnonzero(distance[i] <= max_mm)
        if len(close):
            mis[i, close] = misorientation_deg(np.broadcast_to(u[i], (len(close), 3, 3)), tu[close])
    match = np.full(g, -1)
    found = np.zeros(t, bool)
    orientation_error = np.full(t, np.nan)
    position_error = np.full(t, np.nan)
    for flat in np.argsort(mis, axis=None, kind="stable"):
        i, j = divmod(int(flat), t)
        if mis[i, j] > max_deg:
            break
        if match[i] < 0 and not found[j]:
            match[i], found[j] = j, True
            orientation_error[j], position_error[j] = mis[i, j], 1e3 * distance[i, j]
    return {"found": found, "orientation_error_deg": orientation_error, "position_error_um": position_error,
            "match": match, "false": match < 0}


def seed_batches(seeds, size: int = 4) -> list[np.ndarray]:
    """Cut a round's seeds into fixed batches (the unit of work of the actors)."""
    seeds = np.asarray(seeds)
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


__all__ = [
    "IndexingParams", "MeasuredSpots", "accept_grains", "align_orientations", "compare_grains", "cubic_rotations", "fundamental_zone", "grain_table",
    "index_grains", "indexing_reflections", "measured_spots", "misorientation_deg", "next_seeds",
    "pair_orientations", "predict_spots", "pseudo_symmetric_turns", "refine_grain", "rodrigues_vectors", "rotations_z", "score_orientations",
    "search_seed", "search_seeds", "seed_batches", "spot_scattering_vectors",
]
