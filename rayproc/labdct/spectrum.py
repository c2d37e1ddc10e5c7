"""Tungsten-anode X-ray tube spectrum for polychromatic LabDCT simulations (via SpekPy)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from rayproc.errors import InputError

DEFAULT_FILTERS: tuple[tuple[str, float], ...] = (("Al", 2.0),)


def tube_spectrum(
    kvp: float = 140.0,
    *,
    filters=DEFAULT_FILTERS,
    anode_angle_deg: float = 12.0,
    energy_step_kev: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Photon spectrum of a W-anode tube, normalised to unit integral.

    Computed once per parameter set (cached); SpekPy runs offline from its
    bundled tables.

    Parameters
    ----------
    kvp : float
        Tube voltage (kV); 140 kV as in the published LabDCT simulations [1]_.
    filters : sequence of (material, thickness_mm)
        Filtration; the default 2 mm Al puts the continuum maximum near 38 keV,
        matching the spectrum used in [1]_.
    anode_angle_deg : float
        Anode take-off angle.
    energy_step_kev : float
        Energy bin width.

    Returns
    -------
    energies_kev : ndarray, shape (K,)
        Bin centres (keV), read-only.
    density : ndarray, shape (K,)
        Photons per keV, normalised so that ``sum(density) * energy_step_kev == 1``;
        read-only.

    References
    ----------
    .. [1] H. Fang, D. Juul Jensen, Y. Zhang, Acta Cryst. A 76 (2020) 652-663,
       doi:10.1107/S2053273320010852
    .. [2] G. Poludniowski, A. Omar, R. Bujila, P. Andreo, Med. Phys. 48 (2021)
       3630-3637 (SpekPy v2), doi:10.1002/mp.14945
    """
    try:
        filters = tuple((str(material), float(thickness)) for material, thickness in filters)
    except (TypeError, ValueError):
        raise InputError(f"filters must be (material, thickness_mm) pairs; got {filters!r}.") from None
    if not (kvp > 0 and energy_step_kev > 0):
        raise InputError(f"kvp and energy_step_kev must be > 0; got {kvp}, {energy_step_kev}.")
    return _spekpy_spectrum(float(kvp), filters, float(anode_angle_deg), float(energy_step_kev))


@lru_cache(maxsize=16)
def _spekpy_spectrum(kvp, filters, anode_angle_deg, energy_step_kev):
    import spekpy

    spek = spekpy.Spek(kvp=kvp, th=anode_angle_deg, dk=energy_step_kev)
    for material, thickness_mm in filters:
        spek.filter(material, thickness_mm)
    energies, fluence = (np.asarray(v, dtype=np.float64) for v in spek.get_spectrum())
    density = fluence / (fluence.sum() * energy_step_kev)
    energies.flags.writeable = False
    density.flags.writeable = False
    return energies, density


__all__ = ["DEFAULT_FILTERS", "tube_spectrum"]
