"""Cubic crystallography for LabDCT: materials, allowed reflections and structure factors.

Conventions
-----------
Reciprocal-lattice vectors carry no factor 2 pi: for a cubic cell of edge ``a``
the vector of (hkl) in the crystal frame is ``g = (h, k, l) / a`` in 1/Angstrom,
so ``|g| = 1 / d``. Orientation matrices ``U`` (see ``polycrystal``) map crystal
to sample coordinates, ``g_sample = U @ g``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import permutations, product

import numpy as np
import xraydb

from rayproc.errors import InputError
from rayproc.options import look_up_option

LATTICES = ("fcc", "bcc", "diamond")

_FCC_BASIS = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
_BASIS = {
    "fcc": _FCC_BASIS,
    "bcc": np.array([[0, 0, 0], [0.5, 0.5, 0.5]]),
    "diamond": np.concatenate([_FCC_BASIS, _FCC_BASIS + 0.25]),
}


@dataclass(frozen=True)
class Material:
    """A cubic, single-element crystal.

    Attributes
    ----------
    name : str
        Key in ``MATERIALS``.
    element : str
        Chemical symbol, used for xraydb form factors and attenuation.
    lattice : {"fcc", "bcc", "diamond"}
        Bravais lattice with its atomic basis.
    a_angstrom : float
        Cubic lattice parameter (Angstrom).
    debye_waller_b : float
        Isotropic Debye-Waller B (Angstrom^2), room temperature.
    density_g_cm3 : float
        Mass density, for the sample's X-ray attenuation.
    """

    name: str
    element: str
    lattice: str
    a_angstrom: float
    debye_waller_b: float
    density_g_cm3: float

    def __post_init__(self):
        look_up_option(self.lattice, LATTICES, name="lattice")
        if not (self.a_angstrom > 0 and self.density_g_cm3 > 0 and self.debye_waller_b >= 0):
            raise InputError(
                f"Material needs a > 0, density > 0, B >= 0; got a={self.a_angstrom}, "
                f"density={self.density_g_cm3}, B={self.debye_waller_b}."
            )

    @property
    def cell_volume_a3(self) -> float:
        """Unit-cell volume (Angstrom^3)."""
        return self.a_angstrom**3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Material:
        return cls(**data)


# Lattice parameters and densities at room temperature; B from Peng et al. (1996),
# Acta Cryst. A52, 456, doi:10.1107/S010876739600089X (293 K, rounded).
MATERIALS: dict[str, Material] = {
    "Al": Material("Al", "Al", "fcc", 4.0495, 0.85, 2.699),
    "Fe": Material("Fe", "Fe", "bcc", 2.8665, 0.35, 7.874),
    "Ni": Material("Ni", "Ni", "fcc", 3.5238, 0.37, 8.908),
    "Cu": Material("Cu", "Cu", "fcc", 3.6149, 0.55, 8.960),
    "Si": Material("Si", "Si", "diamond", 5.4309, 0.46, 2.329),
}


def get_material(material: str | Material) -> Material:
    """Return ``material`` itself or the ``MATERIALS`` entry it names."""
    if isinstance(material, Material):
        return material
    return MATERIALS[look_up_option(material, MATERIALS, name="material")]


def is_allowed(hkl, lattice: str) -> np.ndarray:
    """Whether reflections are allowed by the lattice's systematic absences.

    Parameters
    ----------
    hkl : array_like of int, shape (..., 3)
        Miller indices.
    lattice : {"fcc", "bcc", "diamond"}
        bcc: h + k + l even. fcc: h, k, l unmixed (all even or all odd).
        diamond: fcc and, if all even, h + k + l divisible by 4.

    Returns
    -------
    allowed : ndarray of bool, shape (...)
        False for (000) and for absent reflections.
    """
    lattice = look_up_option(lattice, LATTICES, name="lattice")
    hkl = np.asarray(hkl, dtype=np.int64)
    if hkl.shape[-1:] != (3,):
        raise InputError(f"hkl must have shape (..., 3); got {hkl.shape}.")
    nonzero = np.any(hkl != 0, axis=-1)
    parity = hkl % 2
    if lattice == "bcc":
        return nonzero & (hkl.sum(axis=-1) % 2 == 0)
    unmixed = np.all(parity == parity[..., :1], axis=-1)
    if lattice == "fcc":
        return nonzero & unmixed
    all_odd = np.all(parity == 1, axis=-1)
    return nonzero & unmixed & (all_odd | (hkl.sum(axis=-1) % 4 == 0))


def symmetric_variants(family) -> np.ndarray:
    """All distinct (hkl) of a cubic {hkl} family (point group m-3m).

    Parameters
    ----------
    family : array_like of int, shape (3,)

    Returns
    -------
    hkl : ndarray of int, shape (M, 3)
        Sorted; ``M`` is the multiplicity (e.g. 12 for {110}, 48 for {321}).
    """
    family = np.asarray(family, dtype=np.int64)
    variants = {
        tuple(s * p for s, p in zip(signs, perm))
        for perm in permutations(family.tolist())
        for signs in product((1, -1), repeat=3)
    }
    return np.array(sorted(variants), dtype=np.int64)


def hkl_families(lattice: str, n_families: int = 4) -> np.ndarray:
    """The first ``n_families`` allowed {hkl} families by decreasing d-spacing.

    Families with equal h^2 + k^2 + l^2 (e.g. {411} and {330}) count separately
    and are ordered by their representative.

    Returns
    -------
    families : ndarray of int, shape (n_families, 3)
        Representatives with h >= k >= l >= 0.
    """
    if int(n_families) < 1:
        raise InputError(f"n_families must be >= 1; got {n_families}.")
    n_families = int(n_families)
    h_max = 2
    while True:
        reps = np.array(
            [(h, k, l) for h in range(h_max + 1) for k in range(h + 1) for l in range(k + 1)],
            dtype=np.int64,
        )
        reps = reps[is_allowed(reps, lattice)]
        order = np.lexsort((reps[:, 2], reps[:, 1], reps[:, 0], (reps**2).sum(axis=1)))
        reps = reps[order]
        # every family with h^2+k^2+l^2 <= h_max^2 is enumerated
        complete = reps[(reps**2).sum(axis=1) <= h_max**2]
        if len(complete) >= n_families:
            return complete[:n_families]
        h_max *= 2


@dataclass(frozen=True, eq=False)
class ReflectionSet:
    """Reflections of the first N {hkl} families of a material, all variants.

    Attributes
    ----------
    material : Material
    hkl : ndarray of int, shape (R, 3)
    family : ndarray of int, shape (R,)
        Index into ``families``.
    families : ndarray of int, shape (N, 3)
    fundamental : ndarray of int, shape (R,)
        Index of the shortest reflection of this set parallel to each one
        (itself unless it is a harmonic, e.g. 220 -> 110): harmonics diffract
        into the same direction at a multiple of the energy and form one spot.
    """

    material: Material
    hkl: np.ndarray
    family: np.ndarray
    families: np.ndarray
    fundamental: np.ndarray

    @property
    def g_crystal(self) -> np.ndarray:
        """Reciprocal vectors in the crystal frame, (R, 3), 1/Angstrom, |g| = 1/d."""
        return self.hkl / self.material.a_angstrom

    @property
    def d_angstrom(self) -> np.ndarray:
        """Interplanar spacings, (R,)."""
        return d_spacing(self.hkl, self.material.a_angstrom)

    @property
    def multiplicity(self) -> np.ndarray:
        """Number of variants per family, (N,)."""
        return np.bincount(self.family, minlength=len(self.families))

    def __len__(self) -> int:
        return len(self.hkl)


def d_spacing(hkl, a_angstrom: float) -> np.ndarray:
    """Cubic interplanar spacing d = a / sqrt(h^2 + k^2 + l^2), shape hkl.shape[:-1]."""
    hkl = np.asarray(hkl, dtype=np.float64)
    return a_angstrom / np.sqrt((hkl**2).sum(axis=-1))


def _fundamental_index(hkl: np.ndarray) -> np.ndarray:
    gcd = np.gcd.reduce(np.abs(hkl), axis=1)
    direction = hkl // gcd[:, None]
    _, group = np.unique(direction, axis=0, return_inverse=True)
    group = group.ravel()
    order = np.lexsort(((hkl**2).sum(axis=1), group))
    _, first = np.unique(group[order], return_index=True)
    return order[first][group]


def reflection_set(material: str | Material, n_families: int = 4) -> ReflectionSet:
    """All symmetric variants of the first ``n_families`` allowed {hkl} families.

    Parameters
    ----------
    material : str or Material
        A ``MATERIALS`` key or a Material.
    n_families : int
        Number of families; 4 as in the published simulations [1]_.

    Returns
    -------
    ReflectionSet

    References
    ----------
    .. [1] H. Fang, D. Juul Jensen, Y. Zhang, Acta Cryst. A 76 (2020) 652-663,
       doi:10.1107/S2053273320010852

    Examples
    --------
    >>> refl = reflection_set("Fe", 4)
    >>> refl.families.tolist(), refl.multiplicity.tolist()
    ([[1, 1, 0], [2, 0, 0], [2, 1, 1], [2, 2, 0]], [12, 6, 24, 12])
    """
    material = get_material(material)
    families = hkl_families(material.lattice, n_families)
    variants = [symmetric_variants(f) for f in families]
    hkl = np.concatenate(variants)
    family = np.repeat(np.arange(len(families)), [len(v) for v in variants])
    return ReflectionSet(material, hkl, family, families, _fundamental_index(hkl))


def structure_factor(material: str | Material, hkl, *, energy_kev=None) -> np.ndarray:
    """Kinematic structure factor F(hkl, E) of a one-element cubic crystal.

    F = (f0(s) + f'(E) + i f''(E)) exp(-B s^2) sum_j exp(2 pi i hkl . r_j),
    with s = sin(theta) / lambda = 1 / (2 d).

    Parameters
    ----------
    material : str or Material
    hkl : array_like of int, shape (..., 3)
    energy_kev : float or array_like, optional
        Photon energies (keV). If given, the anomalous parts f', f'' (Chantler
        tables via xraydb) are added; otherwise F is energy independent.

    Returns
    -------
    F : ndarray of complex, shape hkl.shape[:-1] + np.shape(energy_kev)
        In electrons per unit cell.

    References
    ----------
    .. [1] D. Waasmaier, A. Kirfel, Acta Cryst. A 51 (1995) 416-431 (f0, via xraydb),
       doi:10.1107/S0108767394013292
    """
    material = get_material(material)
    hkl = np.asarray(hkl, dtype=np.float64)
    s = 1.0 / (2.0 * d_spacing(hkl, material.a_angstrom))
    f = np.asarray(xraydb.f0(material.element, s.ravel()), dtype=np.complex128).reshape(s.shape)
    phase = np.exp(2j * np.pi * hkl @ _BASIS[material.lattice].T).sum(axis=-1)
    amplitude = f * np.exp(-material.debye_waller_b * s**2) * phase
    if energy_kev is None:
        return amplitude
    energy_ev = 1e3 * np.asarray(energy_kev, dtype=np.float64)
    anomalous = xraydb.f1_chantler(material.element, energy_ev.ravel()) + 1j * xraydb.f2_chantler(
        material.element, energy_ev.ravel()
    )
    anomalous = np.asarray(anomalous).reshape(energy_ev.shape)
    edge = (Ellipsis,) + (None,) * energy_ev.ndim
    dw_phase = (np.exp(-material.debye_waller_b * s**2) * phase)[edge]
    return amplitude[edge] + dw_phase * anomalous


__all__ = [
    "LATTICES",
    "MATERIALS",
    "Material",
    "ReflectionSet",
    "d_spacing",
    "get_material",
    "hkl_families",
    "is_allowed",
    "reflection_set",
    "structure_factor",
    "symmetric_variants",
]
