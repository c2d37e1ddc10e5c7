"""Laue (polychromatic) Bragg condition in the LabDCT cone beam, vectorised over voxel-reflection pairs.

All functions take matching rows: ``positions[i]`` (lab frame, mm, sample already
rotated by omega) diffracting with ``g_vectors[i]`` (lab frame, 1/Angstrom, |g| = 1/d,
already rotated by the grain orientation and omega). Frame conventions are in
``rayproc.labdct.geometry``.
"""

from __future__ import annotations

import numpy as np

from rayproc.labdct.geometry import LabdctGeometry

HC_KEV_ANGSTROM = 12.398419843320026


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def incident_directions(positions: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Unit vectors from the point source to each position (cone beam), (N, 3)."""
    k_in = positions - source
    return k_in / np.sqrt(_rowdot(k_in, k_in))[:, None]


def bragg_energies(k_in: np.ndarray, g_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bragg angle and photon energy selected by each lattice plane.

    sin(theta) = -k_in . g / |g| and lambda = 2 d sin(theta) (Bragg's law), E = hc / lambda.

    Parameters
    ----------
    k_in : ndarray, shape (N, 3)
        Unit incident directions.
    g_vectors : ndarray, shape (N, 3)
        Reciprocal vectors, |g| = 1/d (1/Angstrom).

    Returns
    -------
    sin_theta : ndarray, shape (N,)
        Non-positive where the plane faces away from the beam (no reflection).
    energy_kev : ndarray, shape (N,)
        ``inf`` where sin_theta <= 0.

    Examples
    --------
    Fe (110), d = 2.027 Angstrom, tilted 10 degrees towards the beam:

    >>> k_in = np.array([[1.0, 0.0, 0.0]])
    >>> g = np.array([[-np.sin(np.radians(10)), np.cos(np.radians(10)), 0.0]]) / 2.027
    >>> sin_theta, energy = bragg_energies(k_in, g)
    >>> round(float(energy[0]), 2)  # hc / (2 d sin 10 deg)
    17.61
    """
    g_norm = np.sqrt(_rowdot(g_vectors, g_vectors))
    sin_theta = -_rowdot(k_in, g_vectors) / g_norm
    with np.errstate(divide="ignore"):
        energy = np.where(sin_theta > 0, HC_KEV_ANGSTROM * g_norm / (2 * sin_theta), np.inf)
    return sin_theta, energy


def diffracted_directions(k_in: np.ndarray, g_vectors: np.ndarray) -> np.ndarray:
    """Specular reflection k_out = k_in - 2 (k_in . g_hat) g_hat, unit vectors (N, 3)."""
    g_hat = g_vectors / np.sqrt(_rowdot(g_vectors, g_vectors))[:, None]
    return k_in - 2 * _rowdot(k_in, g_hat)[:, None] * g_hat


def detector_intersection(
    positions: np.ndarray, directions: np.ndarray, geometry: LabdctGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where rays from ``positions`` along ``directions`` meet the (tilted) detector plane.

    Returns
    -------
    y_mm, z_mm : ndarray, shape (N,)
        Detector coordinates (NaN for rays that do not travel towards the plane).
    path_mm : ndarray, shape (N,)
        Distance along the ray to the plane.
    """
    origin, e_y, e_z, normal = geometry.detector_frame()
    towards = directions @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        path = np.where(towards > 0, ((origin - positions) @ normal) / towards, np.nan)
    offset = positions - origin + path[:, None] * directions
    return offset @ e_y, offset @ e_z, path


def diffraction_events(positions: np.ndarray, g_vectors: np.ndarray, geometry: LabdctGeometry) -> dict:
    """Bragg condition, diffracted ray and detector hit for voxel-reflection pairs.

    Parameters
    ----------
    positions : ndarray, shape (N, 3)
        Scattering points in the lab frame (mm).
    g_vectors : ndarray, shape (N, 3)
        Lab-frame reciprocal vectors (1/Angstrom, |g| = 1/d).
    geometry : LabdctGeometry
        Source, detector and energy window.

    Returns
    -------
    events : dict of ndarray
        ``valid`` (N,) bool: energy inside ``geometry.energy_window_kev`` and the
        diffracted ray reaches the detector plane (pixel bounds are not
        checked); ``sin_theta``, ``energy_kev``, ``y_mm``, ``z_mm``, ``y_px``,
        ``z_px`` (N,); ``k_in``, ``k_out`` (N, 3) unit vectors.

    References
    ----------
    .. [1] H. Fang, D. Juul Jensen, Y. Zhang, Acta Cryst. A 76 (2020) 652-663,
       doi:10.1107/S2053273320010852 (Section 2, diffraction geometry)
    """
    k_in = incident_directions(positions, geometry.source_mm)
    sin_theta, energy = bragg_energies(k_in, g_vectors)
    k_out = diffracted_directions(k_in, g_vectors)
    y_mm, z_mm, path = detector_intersection(positions, k_out, geometry)
    low, high = geometry.energy_window_kev
    valid = (energy >= low) & (energy <= high) & np.isfinite(path)
    y_px, z_px = geometry.mm_to_px(y_mm, z_mm)
    return {
        "valid": valid,
        "sin_theta": sin_theta,
        "energy_kev": energy,
        "k_in": k_in,
        "k_out": k_out,
        "y_mm": y_mm,
        "z_mm": z_mm,
        "y_px": y_px,
        "z_px": z_px,
    }


__all__ = [
    "HC_KEV_ANGSTROM",
    "bragg_energies",
    "detector_intersection",
    "diffracted_directions",
    "diffraction_events",
    "incident_directions",
]
