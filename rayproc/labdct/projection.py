"""Forward simulation of one LabDCT projection: diffraction spots of a voxelised polycrystal.

Implements the polychromatic cone-beam forward model of Fang et al. (2020) [1]_ with
each voxel as a scatterer: every voxel-reflection pair that meets Bragg's law at an
energy inside the window sends its integrated intensity to the detector point of its
diffracted ray; spots then take the shape of the grain seen through the Laue-focusing
geometry. Frame conventions are in ``rayproc.labdct.geometry``.

References
----------
.. [1] H. Fang, D. Juul Jensen, Y. Zhang, Acta Cryst. A 76 (2020) 652-663,
   doi:10.1107/S2053273320010852
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import xraydb
from scipy.ndimage import gaussian_filter

from rayproc.errors import InputError
from rayproc.labdct.bragg import (
    HC_KEV_ANGSTROM,
    bragg_energies,
    detector_intersection,
    diffracted_directions,
    incident_directions,
)
from rayproc.labdct.crystallography import ReflectionSet, reflection_set, structure_factor
from rayproc.labdct.geometry import LabdctGeometry, rotation_z
from rayproc.labdct.polycrystal import Polycrystal, grain_centroids
from rayproc.labdct.spectrum import tube_spectrum

R_ELECTRON_MM = 2.8179403262e-12
DEFAULT_FLUENCE = 1e14
SPOT_TABLE_KEYS = (
    "label",
    "grain",
    "h",
    "k",
    "l",
    "omega_deg",
    "centroid_y_px",
    "centroid_z_px",
    "centroid_y_mm",
    "centroid_z_mm",
    "area_px",
    "intensity",
    "energy_kev",
)
# Keyword arguments of simulate_projection that model the instrument beyond the published model
# (issue 17: realism); all off by default.
PHYSICS_KEYS = (
    "psf_sigma_px",
    "source_fwhm_um",
    "mosaicity_deg",
    "strain_rms",
    "scintillator_depth",
    "psf_tail_fraction",
    "psf_tail_sigma_px",
    "beam_stop_transmission_fraction",
    "beam_stop_edge_px",
)
_ENERGY_GRID_POINTS = 512
_PSF_TRUNCATE = 4.0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def cylinder_exit_distance(
    points: np.ndarray, directions: np.ndarray, diameter: float, height: float
) -> np.ndarray:
    """Path length from points inside a z-axis cylinder (centred at 0) to its surface.

    Parameters
    ----------
    points : ndarray, shape (N, 3)
    directions : ndarray, shape (N, 3)
        Unit vectors.
    diameter, height : float
        Cylinder size, same unit as ``points``.

    Returns
    -------
    distance : ndarray, shape (N,)
        Smallest positive distance to the side or to an end cap (0 for points outside).
    """
    a = directions[:, 0] ** 2 + directions[:, 1] ** 2
    b = points[:, 0] * directions[:, 0] + points[:, 1] * directions[:, 1]
    c = np.minimum(points[:, 0] ** 2 + points[:, 1] ** 2 - (diameter / 2) ** 2, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        side = np.where(a > 0, (np.sqrt(b * b - a * c) - b) / a, np.inf)
        cap = (np.copysign(height / 2, directions[:, 2]) - points[:, 2]) / directions[:, 2]
    cap = np.where(directions[:, 2] != 0, cap, np.inf)
    return np.clip(np.minimum(side, cap), 0.0, None)


@lru_cache(maxsize=32)
def _attenuation_per_mm(formula: str, density_g_cm3: float, energy_window_kev: tuple) -> np.ndarray:
    """Linear attenuation coefficient (1/mm, xraydb) on the energy grid of the window."""
    grid = np.linspace(*energy_window_kev, _ENERGY_GRID_POINTS)
    mu = 0.1 * np.asarray(xraydb.material_mu(formula, 1e3 * grid, density=density_g_cm3))
    mu.flags.writeable = False
    return mu


def _energy_tables(geometry: LabdctGeometry, reflections: ReflectionSet, spectrum, anomalous: bool) -> dict:
    """Energy-dependent factors tabulated on a grid spanning the energy window."""
    grid = np.linspace(*geometry.energy_window_kev, _ENERGY_GRID_POINTS)
    energies, density = (np.asarray(v, dtype=np.float64) for v in spectrum)
    material = reflections.material
    mu_sample = _attenuation_per_mm(material.element, material.density_g_cm3, geometry.energy_window_kev)
    mu_scint = _attenuation_per_mm(
        geometry.scintillator, geometry.scintillator_density_g_cm3, geometry.energy_window_kev
    )
    if anomalous:
        f_sq = np.abs(structure_factor(material, reflections.hkl, energy_kev=grid)) ** 2
    else:
        f_sq = np.abs(structure_factor(material, reflections.hkl)) ** 2
    return {
        "grid": grid,
        "flux": np.interp(grid, energies, density, left=0.0, right=0.0),
        "mu_sample": mu_sample,
        "mu_scintillator": mu_scint,
        "f_sq": f_sq,
    }


def _interp_rows(table: np.ndarray, rows: np.ndarray, grid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear interpolation of table[rows[i]] (a function on ``grid``) at x[i]."""
    position = np.clip((x - grid[0]) / (grid[1] - grid[0]), 0, len(grid) - 1 - 1e-9)
    index = position.astype(np.intp)
    frac = position - index
    return table[rows, index] * (1 - frac) + table[rows, index + 1] * frac


def _candidate_pairs(
    sample: Polycrystal,
    lab_positions: np.ndarray,
    g_lab: np.ndarray,
    d_spacings: np.ndarray,
    geometry: LabdctGeometry,
    margin_px: float,
    spread_rad: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(grain, reflection) pairs that can diffract onto the detector, judged at grain centroids.

    The incident direction varies across a grain by at most its angular radius
    seen from the source, which bounds the change of sin(theta) and of the
    diffracted direction; pairs are kept if the window and the detector (grown
    by ``margin_px`` and twice that bound) are within reach. ``spread_rad`` bounds any
    further tilt of the lattice planes or incident rays (mosaicity, strain, source size).
    """
    n_grains = sample.n_grains
    centroids = grain_centroids(lab_positions, sample.grain_ids, n_grains)
    spread = np.linalg.norm(lab_positions - centroids[sample.grain_ids], axis=1)
    radius = np.zeros(n_grains)
    np.maximum.at(radius, sample.grain_ids, spread)
    radius += sample.voxel_mm  # voxel jitter
    source_distance = np.linalg.norm(centroids - geometry.source_mm, axis=1)
    delta = np.minimum(radius / np.maximum(source_distance - radius, 1e-9) + spread_rad, 1.0)

    k_centre = incident_directions(centroids, geometry.source_mm)
    g_hat = _unit(g_lab)
    sin_theta = -np.einsum("gi,gri->gr", k_centre, g_hat)
    low, high = geometry.energy_window_kev
    sin_min = HC_KEV_ANGSTROM / (2 * d_spacings * high)
    sin_max = HC_KEV_ANGSTROM / (2 * d_spacings * low)
    reach = (sin_theta + delta[:, None] >= sin_min) & (sin_theta - delta[:, None] <= sin_max) & (
        sin_theta + delta[:, None] > 0
    )
    grain, refl = np.nonzero(reach)

    k_out = diffracted_directions(k_centre[grain], g_lab[grain, refl])
    y_mm, z_mm, path = detector_intersection(centroids[grain], k_out, geometry)
    y_px, z_px = geometry.mm_to_px(y_mm, z_mm)
    origin, e_y, e_z, _ = geometry.detector_frame()
    ny, nz = geometry.detector_shape
    corners = [geometry.px_to_mm(cy, cz) for cy in (0, ny) for cz in (0, nz)]
    far = max(np.linalg.norm(origin + cy * e_y + cz * e_z) for cy, cz in corners) + sample.diameter_mm
    reach_px = 2 * radius[grain] * (1 + far / np.maximum(source_distance[grain] - radius[grain], 1e-9))
    reach_px = (reach_px + 4 * spread_rad * far) / geometry.pixel_size_mm + margin_px + 2
    on_detector = (
        np.isfinite(path)
        & (y_px > -reach_px)
        & (y_px < ny + reach_px)
        & (z_px > -reach_px)
        & (z_px < nz + reach_px)
    )
    return grain[on_detector], refl[on_detector]


def _pair_chunks(pair_grain: np.ndarray, sample: Polycrystal, chunk_size: int):
    """Yield (pair index, voxel index) arrays enumerating every voxel of every pair's grain."""
    order = np.argsort(sample.grain_ids, kind="stable")
    counts = np.bincount(sample.grain_ids, minlength=sample.n_grains)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pair_counts = counts[pair_grain]
    ends = np.cumsum(pair_counts)
    first = 0
    while first < len(pair_grain):
        budget = (ends[first - 1] if first else 0) + chunk_size
        last = max(int(np.searchsorted(ends, budget, "right")), first + 1)
        pairs = np.arange(first, last)
        n = pair_counts[pairs]
        pair_of_eval = np.repeat(pairs, n)
        offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        yield pair_of_eval, order[starts[pair_grain[pair_of_eval]] + offset]
        first = last


def beam_stop_transmission(geometry: LabdctGeometry, *, transmission: float = 0.0, edge_px: float = 0.0) -> np.ndarray:
    """Fraction of the light that reaches each pixel past the beam stop, (ny, nz).

    ``1 - (1 - transmission) * G_edge * box``: the stop's box (``geometry.beam_stop_px``)
    transmits ``transmission`` and its edge is blurred by a Gaussian of sigma ``edge_px``
    (penumbra of a finite source and of a stop standing in front of the detector). With the
    defaults, 0 under the stop and 1 elsewhere (a hard, opaque stop).
    """
    if not 0 <= transmission <= 1 or edge_px < 0:
        raise InputError(f"need 0 <= transmission <= 1 and edge_px >= 0; got {transmission}, {edge_px}.")
    box = geometry.beam_stop_mask().astype(np.float64)
    if edge_px > 0:
        box = gaussian_filter(box, edge_px, mode="nearest")
    return 1.0 - (1.0 - transmission) * box


def _sigma_from_fwhm(fwhm) -> np.ndarray:
    return np.broadcast_to(np.asarray(fwhm, dtype=np.float64), (2,)) / (2 * np.sqrt(2 * np.log(2)))


def _perturbed_g(g: np.ndarray, rotation: np.ndarray | None, strain: np.ndarray | None) -> np.ndarray:
    """Scattering vectors of a locally rotated (first order, ``g + w x g``, norm kept) and
    strained (``(I - eps) g``, eps symmetric) lattice, (N, 3)."""
    if rotation is not None:
        norm = np.linalg.norm(g, axis=1, keepdims=True)
        g = g + np.cross(rotation, g)
        g = g * norm / np.linalg.norm(g, axis=1, keepdims=True)
    if strain is not None:
        g = g - np.einsum("nij,nj->ni", strain, g)
    return g


def _voxel_strains(rng, n: int, rms: float) -> np.ndarray:
    """Symmetric strain tensors (n, 3, 3), each independent component normal with std ``rms``."""
    a = rng.normal(0.0, rms, (n, 3, 3))
    return np.triu(a) + np.swapaxes(np.triu(a, 1), 1, 2)


def _absorption_depth_shift(y_mm, z_mm, k_out, energy, generator, tables, geometry, e_y, e_z, normal):
    """Detector coordinates of rays absorbed at a random depth of the scintillator.

    The path ``s`` along the ray inside the scintillator (thickness ``t``, attenuation
    ``mu(E)``, incidence cosine ``c = k . n``) is drawn from the truncated exponential
    ``p(s) ~ mu exp(-mu s)`` on ``[0, t / c]``; the absorption point lies ``s`` further along
    the ray, i.e. shifted in the detector plane by ``s (k . e_y, k . e_z)``.
    """
    mu = np.interp(energy, tables["grid"], tables["mu_scintillator"])  # 1/mm
    cos_incidence = k_out @ normal
    longest = 1e-3 * geometry.scintillator_thickness_um / cos_incidence
    u = generator.uniform(0.0, 1.0, len(energy))
    path = -np.log1p(u * np.expm1(-mu * longest)) / mu
    return y_mm + path * (k_out @ e_y), z_mm + path * (k_out @ e_z)


def _render(
    hits: dict,
    n_spots: int,
    geometry: LabdctGeometry,
    psf_sigma_px: float,
    label_threshold: float,
    transmission: np.ndarray,
    psf_tail: tuple[float, float] = (0.0, 0.0),
):
    """Deposit hits bilinearly per spot, blur, attenuate by the beam stop's transmission map and
    label each pixel's strongest spot. ``psf_tail = (fraction, sigma_px)`` moves that fraction
    of each spot's light into a second, wider Gaussian."""
    ny, nz = geometry.detector_shape
    image = np.zeros((ny, nz), dtype=np.float64)
    strongest = np.zeros((ny, nz), dtype=np.float64)
    label = np.zeros((ny, nz), dtype=np.int32)
    visible = np.zeros(n_spots, dtype=bool)
    total = np.zeros(n_spots)
    moment_y = np.zeros(n_spots)
    moment_z = np.zeros(n_spots)
    tail_fraction, tail_sigma = psf_tail
    widest = max(psf_sigma_px, tail_sigma if tail_fraction > 0 else 0.0)
    margin = int(np.ceil(_PSF_TRUNCATE * widest)) + 1

    order = np.argsort(hits["spot"], kind="stable")
    spot_sorted = hits["spot"][order]
    bounds = np.searchsorted(spot_sorted, np.arange(n_spots + 1))
    y, z, w = hits["y_px"][order], hits["z_px"][order], hits["intensity"][order]
    for spot in range(n_spots):
        s = slice(bounds[spot], bounds[spot + 1])
        if s.start == s.stop:
            continue
        iy, iz = np.floor(y[s]).astype(np.intp), np.floor(z[s]).astype(np.intp)
        fy, fz = y[s] - iy, z[s] - iz
        y0, z0 = iy.min() - margin, iz.min() - margin
        shape = (iy.max() - y0 + margin + 1, iz.max() - z0 + margin + 1)
        patch = np.zeros(shape[0] * shape[1])
        ly, lz = iy - y0, iz - z0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dz, wz in ((0, 1 - fz), (1, fz)):
                patch += np.bincount((ly + dy) * shape[1] + lz + dz, w[s] * wy * wz, patch.size)
        patch = patch.reshape(shape)
        if tail_fraction > 0:
            tail = gaussian_filter(patch, tail_sigma, mode="constant", truncate=_PSF_TRUNCATE)
        if psf_sigma_px > 0:
            patch = gaussian_filter(patch, psf_sigma_px, mode="constant", truncate=_PSF_TRUNCATE)
        if tail_fraction > 0:
            patch = (1 - tail_fraction) * patch + tail_fraction * tail
        ya, za = max(y0, 0), max(z0, 0)
        yb, zb = min(y0 + shape[0], ny), min(z0 + shape[1], nz)
        if ya >= yb or za >= zb:
            continue
        patch = patch[ya - y0 : yb - y0, za - z0 : zb - z0] * transmission[ya:yb, za:zb]
        spot_total = patch.sum()
        if spot_total <= 0:
            continue
        visible[spot] = True
        total[spot] = spot_total
        moment_y[spot] = (patch.sum(axis=1) * np.arange(ya, yb)).sum()
        moment_z[spot] = (patch.sum(axis=0) * np.arange(za, zb)).sum()
        image[ya:yb, za:zb] += patch
        window = (slice(ya, yb), slice(za, zb))
        wins = (patch > strongest[window]) & (patch > label_threshold * patch.max())
        strongest[window][wins] = patch[wins]
        label[window][wins] = spot + 1
    return image, label, visible, total, moment_y, moment_z


def simulate_projection(
    sample: Polycrystal,
    geometry: LabdctGeometry,
    omega_deg: float,
    *,
    reflections: ReflectionSet | None = None,
    spectrum: tuple[np.ndarray, np.ndarray] | None = None,
    rng=None,
    psf_sigma_px: float = 1.0,
    background: float = 0.0,
    fluence: float = DEFAULT_FLUENCE,
    label_threshold: float = 0.05,
    anomalous: bool = False,
    chunk_size: int = 1 << 17,
    source_fwhm_um: float | tuple[float, float] = 0.0,
    mosaicity_deg: float = 0.0,
    strain_rms: float = 0.0,
    scintillator_depth: bool = False,
    psf_tail_fraction: float = 0.0,
    psf_tail_sigma_px: float = 0.0,
    beam_stop_transmission_fraction: float = 0.0,
    beam_stop_edge_px: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Simulate the diffraction-spot image of a polycrystal at one rotation angle.

    Parameters
    ----------
    sample : Polycrystal
        Voxelised grains (sample frame, mm).
    geometry : LabdctGeometry
        Source, detector, beam stop, energy window; any detector size (e.g.
        ``LAUE_FOCUSING.binned(8)`` for 254^2 test images).
    omega_deg : float
        Rotation angle (deg), right-handed about +z.
    reflections : ReflectionSet, optional
        Reflections of ``geometry.material``; default its first 4 {hkl} families.
    spectrum : (energies_kev, density), optional
        Incident spectrum, photons per keV normalised to unit integral; default
        ``tube_spectrum()`` (W anode, 140 kV).
    rng : numpy.random.Generator or int, optional
        If given, each voxel scatters from a point drawn uniformly inside its cube
        (anti-aliasing); seed per projection for reproducibility. None: voxel centres.
    psf_sigma_px : float
        Gaussian point-spread sigma in this detector's pixels (0: none).
    background : float
        Constant added to every pixel before the beam stop is zeroed; the
        reference code of [1]_ adds about 919 counts.
    fluence : float
        Incident photons per mm^2 per keV of normalised spectral density at the
        rotation axis; scales all spot intensities.
    label_threshold : float
        A pixel is labelled with the spot contributing most there if that
        contribution exceeds this fraction of the spot's own peak.
    anomalous : bool
        Include f'(E), f''(E) in the structure factors.
    chunk_size : int
        Voxel-reflection evaluations per vectorised chunk (bounds memory).
    source_fwhm_um : float or (float, float)
        Focal-spot size of the X-ray source, Gaussian FWHM (um) along lab (y, z); 0: a point
        source. Every voxel-reflection evaluation starts from its own source point, so a
        point grain images the focal spot, magnified by (grain to detector) / (source to
        grain) along the ray: the penumbral blur of cone-beam imaging [2]_.
    mosaicity_deg : float
        Intra-grain orientation spread: each voxel's lattice is turned by a rotation vector
        with independent normal components of this standard deviation (deg). A tilt of the
        planes by delta turns the diffracted ray by 2 delta in the scattering plane but only
        about 2 sin(theta) delta across it, so spots streak radially (ratio about
        1 / (sin(theta) cos(2 theta)) for a flat detector normal to the beam).
    strain_rms : float
        Elastic strain spread: each voxel's lattice is strained by a symmetric tensor with
        independent normal components of this standard deviation; g becomes (I - eps) g,
        which tilts the planes (deviatoric part) and shifts the Bragg energy (in Laue
        diffraction the dilatation moves no spot).
    scintillator_depth : bool
        Absorb each ray at a depth drawn from its energy's attenuation in the scintillator
        (truncated exponential over ``geometry.scintillator_thickness_um``) instead of at the
        front face: oblique rays are displaced along their in-plane direction (radially) by
        depth x tan(incidence), so the spread in energy along the rays of a spot, and the
        thickness of the scintillator, streak spots radially (parallax of depth of interaction).
    psf_tail_fraction, psf_tail_sigma_px : float
        Long-range part of the scintillator/detector point-spread function: this fraction of
        each spot's light is spread by a Gaussian of sigma ``psf_tail_sigma_px`` instead of
        ``psf_sigma_px`` (light scattered in the scintillator and the optics).
    beam_stop_transmission_fraction, beam_stop_edge_px : float
        Finite beam stop: its transmission (0: opaque) and the Gaussian sigma (px) of its
        edge (:func:`beam_stop_transmission`); spots and ``background`` are multiplied by
        the resulting map. Defaults: a hard, opaque stop (zero under it).

    All the random physics terms draw from ``rng`` (after the voxel jitter); with ``rng`` None
    they use a generator seeded with 0.

    Returns
    -------
    image : ndarray of float32, shape (ny, nz)
        Spot intensities (photons, model of [1]_) plus background; zero under the
        beam stop. Indexed ``image[iy, iz]``.
    spot_label : ndarray of int32, shape (ny, nz)
        0 for background, else ``spots["label"]`` of the dominant spot.
    spots : dict of ndarray, each shape (S,)
        One row per spot visible on the detector, a spot being one grain and one
        lattice-plane direction (a harmonic such as 220 of 110 diffracts to the
        same place; the row reports the strongest order). Keys ``SPOT_TABLE_KEYS``:
        label, grain, h, k, l, omega_deg, centroid_y_px, centroid_z_px,
        centroid_y_mm, centroid_z_mm (intensity-weighted, visible part), area_px
        (labelled pixels), intensity (visible integrated intensity), energy_kev
        (intensity-weighted mean of the reported order).

    Notes
    -----
    Integrated intensity of a voxel of volume V for reflection hkl at energy E,
    following the intensity model of [1]_ and its reference code (single-crystal
    Lorentz factor, unpolarised source):

        I = Phi(E) (L_ss / |r - s|)^2 r_e^2 lambda^3 V |F_hkl(E)|^2 / V_c^2
            * 1 / sin(2 theta) * (1 + cos^2 2 theta) / 2
            * exp(-mu(E) (l_in + l_out)) * (1 - exp(-mu_sc(E) t_sc / cos alpha))

    with Phi the fluence times the spectral density, l_in / l_out the path
    lengths inside the sample cylinder, and the last factor the scintillator
    absorption at incidence angle alpha. Each hit is deposited bilinearly at its
    sub-pixel position, each spot is blurred by the Gaussian PSF, ``background``
    is added and the beam stop set to 0 (or attenuated, ``beam_stop_*``).

    References
    ----------
    .. [2] H. Fang, D. Juul Jensen and Y. Zhang, "Improved grain mapping by laboratory X-ray
       diffraction contrast tomography", IUCrJ 8 (2021) 559-573,
       doi:10.1107/S2052252521003730 (finite source size and grain mosaicity in the forward
       model).
    """
    if not isinstance(sample, Polycrystal):
        raise InputError(f"sample must be a Polycrystal; got {type(sample).__name__}.")
    source_sigma_mm = 1e-3 * _sigma_from_fwhm(source_fwhm_um)
    if (source_sigma_mm < 0).any() or mosaicity_deg < 0 or strain_rms < 0 or psf_tail_sigma_px < 0 or not (
        0 <= psf_tail_fraction <= 1
    ):
        raise InputError(
            f"need source_fwhm_um, mosaicity_deg, strain_rms, psf_tail_sigma_px >= 0 and 0 <= psf_tail_fraction <= 1; "
            f"got {source_fwhm_um}, {mosaicity_deg}, {strain_rms}, {psf_tail_sigma_px}, {psf_tail_fraction}."
        )
    if psf_sigma_px < 0 or fluence <= 0 or not 0 <= label_threshold < 1:
        raise InputError(
            f"need psf_sigma_px >= 0, fluence > 0, 0 <= label_threshold < 1; got {psf_sigma_px}, "
            f"{fluence}, {label_threshold}."
        )
    reflections = reflection_set(geometry.material, 4) if reflections is None else reflections
    if reflections.material != geometry.material:
        raise InputError(
            f"reflections are for {reflections.material.name} but the geometry's sample is "
            f"{geometry.material.name}; got {reflections.material} and {geometry.material}."
        )
    spectrum = tube_spectrum() if spectrum is None else spectrum
    tables = _energy_tables(geometry, reflections, spectrum, anomalous)

    rotation = rotation_z(omega_deg)
    positions = sample.positions_mm
    generator = np.random.default_rng(0 if rng is None else rng)
    if rng is not None:
        jitter = generator.uniform(-0.5, 0.5, positions.shape)
        positions = positions + sample.voxel_mm * jitter
    # lattice of each voxel: orientation spread (rotation vector, sample frame) and strain
    voxel_rotation = voxel_strain = None
    if mosaicity_deg > 0:
        voxel_rotation = generator.normal(0.0, np.deg2rad(mosaicity_deg), positions.shape) @ rotation.T
    if strain_rms > 0:
        voxel_strain = _voxel_strains(generator, len(positions), strain_rms)
        voxel_strain = np.einsum("ij,njk,lk->nil", rotation, voxel_strain, rotation)
    spread_rad = 4 * np.deg2rad(mosaicity_deg) + 4 * strain_rms + 4 * source_sigma_mm.max() / geometry.lss_mm
    lab_positions = positions @ rotation.T
    g_lab = np.einsum("ij,gjk,rk->gri", rotation, sample.orientations, reflections.g_crystal)
    d_spacings = reflections.d_angstrom
    widest_psf = max(psf_sigma_px, psf_tail_sigma_px if psf_tail_fraction > 0 else 0.0)
    margin = _PSF_TRUNCATE * widest_psf + 1
    if scintillator_depth:  # parallax reaches at most thickness x tan(incidence)
        margin += 1e-3 * geometry.scintillator_thickness_um * 3 / geometry.pixel_size_mm
    pair_grain, pair_refl = _candidate_pairs(
        sample, lab_positions, g_lab, d_spacings, geometry, margin, spread_rad
    )
    pair_g = g_lab[pair_grain, pair_refl]

    material = reflections.material
    scale = fluence * R_ELECTRON_MM**2 * (1e21 * sample.voxel_mm**3) / material.cell_volume_a3**2
    ny, nz = geometry.detector_shape
    _, e_y, e_z, normal = geometry.detector_frame()
    grid = tables["grid"]
    parts = []
    for pair, voxel in _pair_chunks(pair_grain, sample, chunk_size):
        points = lab_positions[voxel]
        g = _perturbed_g(
            pair_g[pair],
            None if voxel_rotation is None else voxel_rotation[voxel],
            None if voxel_strain is None else voxel_strain[voxel],
        )
        source = np.broadcast_to(geometry.source_mm, points.shape)
        if source_sigma_mm.max() > 0:
            source = source + np.column_stack(
                [np.zeros(len(points)), generator.normal(0.0, 1.0, (len(points), 2)) * source_sigma_mm]
            )
        k_in = _unit(points - source)
        sin_theta, energy = bragg_energies(k_in, g)
        keep = (energy >= grid[0]) & (energy <= grid[-1])
        points, g, k_in, sin_theta, energy, pair, source = (
            a[keep] for a in (points, g, k_in, sin_theta, energy, pair, source)
        )
        k_out = diffracted_directions(k_in, g)
        y_mm, z_mm, _ = detector_intersection(points, k_out, geometry)
        if scintillator_depth:
            y_mm, z_mm = _absorption_depth_shift(
                y_mm, z_mm, k_out, energy, generator, tables, geometry, e_y, e_z, normal
            )
        y_px, z_px = geometry.mm_to_px(y_mm, z_mm)
        keep = (y_px > -margin) & (y_px < ny - 1 + margin) & (z_px > -margin) & (z_px < nz - 1 + margin)
        points, k_in, k_out, sin_theta, energy, pair, y_px, z_px, source = (
            a[keep] for a in (points, k_in, k_out, sin_theta, energy, pair, y_px, z_px, source)
        )
        wavelength = HC_KEV_ANGSTROM / energy
        cos_2theta = 1 - 2 * sin_theta**2
        lorentz = 1 / (2 * sin_theta * np.sqrt(1 - sin_theta**2))
        polarisation = (1 + cos_2theta**2) / 2
        path = cylinder_exit_distance(points, -k_in, sample.diameter_mm, sample.height_mm)
        path += cylinder_exit_distance(points, k_out, sample.diameter_mm, sample.height_mm)
        source_distance_sq = ((points - source) ** 2).sum(axis=1)
        if anomalous:
            f_sq = _interp_rows(tables["f_sq"], pair_refl[pair], grid, energy)
        else:
            f_sq = tables["f_sq"][pair_refl[pair]]
        efficiency = -np.expm1(
            -np.interp(energy, grid, tables["mu_scintillator"])
            * 1e-3
            * geometry.scintillator_thickness_um
            / (k_out @ normal)
        )
        intensity = (
            scale
            * np.interp(energy, grid, tables["flux"])
            * geometry.lss_mm**2
            / source_distance_sq
            * wavelength**3
            * f_sq
            * lorentz
            * polarisation
            * np.exp(-np.interp(energy, grid, tables["mu_sample"]) * path)
            * efficiency
        )
        parts.append((pair, y_px, z_px, intensity, energy))

    pair, y_px, z_px, intensity, energy = (
        np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in range(5)
    )
    pair = pair.astype(np.intp)
    # spots: one grain and one lattice-plane direction (harmonics merged)
    spot_keys, pair_spot = np.unique(
        pair_grain * len(reflections) + reflections.fundamental[pair_refl], return_inverse=True
    )
    pair_spot = pair_spot.ravel()
    n_spots = len(spot_keys)
    hits = {"spot": pair_spot[pair], "y_px": y_px, "z_px": z_px, "intensity": intensity}
    transmission = beam_stop_transmission(
        geometry, transmission=beam_stop_transmission_fraction, edge_px=beam_stop_edge_px
    )
    image, label, visible, total, moment_y, moment_z = _render(
        hits, n_spots, geometry, psf_sigma_px, label_threshold, transmission,
        (psf_tail_fraction, psf_tail_sigma_px),
    )

    # the order (pair) giving most intensity names each spot's hkl and energy
    n_pairs = len(pair_grain)
    pair_total = np.bincount(pair, intensity, n_pairs)
    pair_energy = np.bincount(pair, intensity * energy, n_pairs) / np.maximum(pair_total, 1e-300)
    ranked = np.lexsort((pair_total, pair_spot))
    ranked_spot = pair_spot[ranked]
    strongest_in_spot = np.diff(ranked_spot, append=n_spots) != 0
    best = np.empty(n_spots, dtype=np.intp)
    best[ranked_spot[strongest_in_spot]] = ranked[strongest_in_spot]
    best = best[visible]

    new_label = np.zeros(n_spots + 1, dtype=np.int32)
    new_label[1:][visible] = np.arange(1, visible.sum() + 1)
    label = new_label[label]
    area = np.bincount(label.ravel(), minlength=visible.sum() + 1)[1:]
    centroid_y = moment_y[visible] / total[visible]
    centroid_z = moment_z[visible] / total[visible]
    centroid_y_mm, centroid_z_mm = geometry.px_to_mm(centroid_y, centroid_z)
    hkl = reflections.hkl[pair_refl[best]]
    spots = {
        "label": np.arange(1, visible.sum() + 1, dtype=np.int32),
        "grain": pair_grain[best].astype(np.int32),
        "h": hkl[:, 0],
        "k": hkl[:, 1],
        "l": hkl[:, 2],
        "omega_deg": np.full(visible.sum(), float(omega_deg)),
        "centroid_y_px": centroid_y,
        "centroid_z_px": centroid_z,
        "centroid_y_mm": centroid_y_mm,
        "centroid_z_mm": centroid_z_mm,
        "area_px": area.astype(np.int64),
        "intensity": total[visible],
        "energy_kev": pair_energy[best],
    }
    image += background * transmission
    return image.astype(np.float32), label, spots


# Realism terms of :func:`simulate_projection` fitted to the real far-field iron frames
# (``benchmarks/labdct_realism_calibration.py``: frames 1-30 fitted, 31-41 checked; README "Simulated
# vs real LabDCT frames"); lengths in px of the unbinned 1024^2 detector (:func:`physics_for_binning`).
# "fe_farfield" is for spots laid on real backgrounds (`rayproc labdct synth`): the real background
# carries the beam stop's shadow, so the stop stays opaque and hard there; "fe_farfield_standalone"
# adds the fitted finite stop for a simulation on its own. "none": the published model's defaults.
_FE_FARFIELD = {
    "psf_sigma_px": 0.4,  # scintillator blur: neighbour correlation of the frames' noise (0.088)
    # focal spot, grid 60/120/180 um x mosaicity 0/0.01 deg, spot gain matched to the spot count: an
    # effective isotropic spot blur (larger than a typical lab focal spot; degenerate with a PSF tail)
    "source_fwhm_um": 120.0,
    "mosaicity_deg": 0.0,  # best on the grid; 0.05 deg doubles the 90th percentile of radial/tangential
    "strain_rms": 1e-4,  # residual elastic strain of annealed iron, order of magnitude (not fitted)
    "scintillator_depth": True,  # 150 um CsI (geometry), depth of interaction from mu(E)
}
PHYSICS_PRESETS: dict[str, dict] = {
    "none": {},
    "fe_farfield": dict(_FE_FARFIELD),
    "fe_farfield_standalone": {
        **_FE_FARFIELD,
        "beam_stop_transmission_fraction": 0.4,  # edge profile of the real background (frames 1-30)
        "beam_stop_edge_px": 30.0,
    },
}
_PIXEL_TERMS = ("psf_sigma_px", "psf_tail_sigma_px", "beam_stop_edge_px")


def physics_for_binning(physics: dict, factor: int) -> dict:
    """``physics`` (keyword arguments of :func:`simulate_projection`) on a detector binned ``factor``:
    lengths in pixels divided by ``factor``."""
    unknown = set(physics) - set(PHYSICS_KEYS)
    if unknown:
        raise InputError(f"unknown physics terms {sorted(unknown)}; expected some of {list(PHYSICS_KEYS)}.")
    return {key: value / factor if key in _PIXEL_TERMS else value for key, value in physics.items()}


__all__ = [
    "DEFAULT_FLUENCE",
    "PHYSICS_KEYS",
    "PHYSICS_PRESETS",
    "physics_for_binning",
    "SPOT_TABLE_KEYS",
    "beam_stop_transmission",
    "cylinder_exit_distance",
    "simulate_projection",
]
