"""Random faceted fcc nanocrystals with a strain phase, on a cubic voxel grid.

A crystal is the complex object ``rho(r) = a(r) exp(i phi(r))`` that BCDI images: ``a`` is the
(anti-aliased) support of a convex polyhedron bounded by fcc facet families, ``phi = G . u(r)``
the phase of the Bragg reflection ``G`` due to the displacement field ``u``. Masto et al. [1]_
trained on Wulff, Winterbottom, octahedral and cubic particles relaxed by molecular dynamics; here
the same shape families are built as intersections of half-spaces and the displacement field is
a smooth random field plus optional dislocation-like phase vortices, which is fast enough to draw
a fresh crystal for every training sample.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
.. [2] W. L. Winterbottom, "Equilibrium shape of a small particle in contact with a foreign
   substrate", Acta Metall. 15 (1967) 303-310. :doi:`10.1016/0001-6160(67)90206-4`
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rayproc.errors import InputError
from rayproc.options import look_up_option

FACET_FAMILIES = ("111", "100", "110")
SHAPE_KINDS = ("cube", "octahedron", "cuboctahedron", "wulff", "winterbottom")

# Central distance of each facet family, relative to {111} (or to the only family present).
# Ranges keep every family of a kind visible: {100} truncates the octahedron's vertices below
# sqrt(3), {110} bevels its edges below sqrt(3/2).
_DISTANCE_RANGES = {
    "cube": {"100": (1.0, 1.0)},
    "octahedron": {"111": (1.0, 1.0)},
    "cuboctahedron": {"111": (1.0, 1.0), "100": (0.7, 1.5)},
    "wulff": {"111": (1.0, 1.0), "100": (0.95, 1.35), "110": (1.02, 1.2)},
    "winterbottom": {"111": (1.0, 1.0), "100": (0.95, 1.35), "110": (1.02, 1.2)},
}
# Substrate plane distance as a fraction of the facet distance along the same normal.
_SUBSTRATE_FRACTION = (-0.2, 0.7)
_ELONGATION_PROBABILITY = 0.3
_ELONGATION_RANGE = (1.3, 2.0)
_PHASE_MODES = 8
_PHASE_MODE_WAVENUMBER = 0.8  # std of each wave-vector component, in cycles per crystal extent
_VORTEX_PROBABILITY = 0.25
_VORTEX_CORE = 0.5  # voxels; regularizes the 1/r phase gradient on the dislocation line


def _parse_int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _parse_vector(value: Any, name: str, *, length: int = 3, minimum: float | None = None) -> tuple:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be {length} numbers; got {value!r}.") from None
    if array.shape != (length,) or not np.all(np.isfinite(array)):
        raise InputError(f"{name} must be {length} finite numbers; got {value!r}.")
    if minimum is not None and np.any(array < minimum):
        raise InputError(f"{name} must be >= {minimum}; got {value!r}.")
    return tuple(float(v) for v in array)


def _parse_float(value: Any, name: str, *, minimum: float | None = None) -> float:
    return _parse_vector([value], name, length=1, minimum=minimum)[0]


def _parse_range(value: Any, name: str, *, minimum: float) -> tuple[float, float]:
    low, high = _parse_vector(value, name, length=2, minimum=minimum)
    if low > high:
        raise InputError(f"{name} must be (low, high) with low <= high; got {value!r}.")
    return low, high


def facet_normals(family: str) -> np.ndarray:
    """Unit outward normals of a cubic facet family.

    Parameters
    ----------
    family : {"111", "100", "110"}
        Miller indices of the family.

    Returns
    -------
    normals : ndarray of float, shape (8, 3), (6, 3) or (12, 3)
        All sign and order permutations of the indices, normalized.

    Examples
    --------
    >>> facet_normals("110").shape
    (12, 3)
    """
    family = look_up_option(family, FACET_FAMILIES, name="facet family")
    pattern = sorted(int(c) for c in family)
    normals = np.array([v for v in itertools.product((-1, 0, 1), repeat=3) if sorted(map(abs, v)) == pattern],
                       dtype=float)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def rotation_matrix(quaternion: Sequence[float]) -> np.ndarray:
    """Rotation matrix of a unit quaternion ``(w, x, y, z)``; shape (3, 3)."""
    w, x, y, z = np.asarray(quaternion, dtype=float) / np.linalg.norm(quaternion)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


@dataclass(frozen=True)
class CrystalParams:
    """Everything that defines one crystal (JSON-able through ``to_dict``/``from_dict``).

    Parameters
    ----------
    shape_kind : {"cube", "octahedron", "cuboctahedron", "wulff", "winterbottom"}
        Facet families present: {100}; {111}; {111}+{100}; {111}+{100}+{110}; the Wulff shape
        truncated by a substrate plane [2]_.
    facet_distances : mapping or tuple of (family, distance) pairs
        Central distance of each family present (crystal frame, arbitrary units: only ratios
        matter, the size is set by ``extent``).
    extent : 3 floats
        Bounding box of the crystal in voxels along (z, y, x). The rotated, elongated polyhedron
        is scaled along each lab axis to fill it exactly (isotropically when the extents follow
        its natural aspect ratio, as ``random_crystal_params`` draws them).
    rotation : 4 floats
        Unit quaternion ``(w, x, y, z)`` from the crystal frame to the (z, y, x) lab frame.
    elongation : 3 floats
        Stretch along the crystal axes before the rotation (rods, platelets).
    substrate_normal : 3 ints or None
        Miller indices of the substrate interface (winterbottom only); the crystal keeps
        ``n . u <= substrate_distance``.
    substrate_distance : float or None
        Central distance of the substrate plane, same units as ``facet_distances``.
    phase_amplitude : float
        Largest |phase| (rad) of the smooth strain field inside the crystal.
    phase_modes : tuple of (kz, ky, kx, amplitude, phase)
        Plane waves of the smooth field; wave vectors in cycles per crystal extent.
    vortices : tuple of (pz, py, px, tz, ty, tx, charge)
        Dislocation lines: a point (fraction of the extent from the crystal centre), a
        direction and a winding number; the phase winds by ``2 pi charge`` around the line.
    """

    shape_kind: str
    facet_distances: Any
    extent: tuple[float, float, float]
    rotation: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    elongation: tuple[float, float, float] = (1.0, 1.0, 1.0)
    substrate_normal: tuple[int, int, int] | None = None
    substrate_distance: float | None = None
    phase_amplitude: float = 0.0
    phase_modes: tuple[tuple[float, float, float, float, float], ...] = ()
    vortices: tuple[tuple[float, float, float, float, float, float, float], ...] = ()

    def __post_init__(self):
        kind = look_up_option(self.shape_kind, SHAPE_KINDS, name="shape_kind")
        rotation = _unit(_parse_vector(self.rotation, "rotation", length=4), "rotation")
        parsed = {
            "shape_kind": kind,
            "facet_distances": _parse_facets(kind, self.facet_distances),
            "extent": _parse_vector(self.extent, "extent", minimum=0.5),
            "rotation": rotation if rotation[0] >= 0 else tuple(-v for v in rotation),
            "elongation": _parse_vector(self.elongation, "elongation", minimum=1e-3),
            "phase_amplitude": _parse_float(self.phase_amplitude, "phase_amplitude", minimum=0.0),
            "phase_modes": tuple(_parse_vector(m, "phase mode (kz, ky, kx, amplitude, phase)", length=5)
                                 for m in self.phase_modes),
            "vortices": tuple(_parse_vortex(v) for v in self.vortices),
        }
        parsed["substrate_normal"], parsed["substrate_distance"] = _parse_substrate(
            kind, self.substrate_normal, self.substrate_distance)
        for name, value in parsed.items():
            object.__setattr__(self, name, value)

    @property
    def n_vortices(self) -> int:
        return len(self.vortices)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["facet_distances"] = dict(self.facet_distances)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrystalParams:
        return cls(**data)


def _parse_facets(kind: str, facet_distances: Any) -> tuple[tuple[str, float], ...]:
    pairs = facet_distances.items() if isinstance(facet_distances, Mapping) else facet_distances
    distances = {look_up_option(str(f), FACET_FAMILIES, name="facet family"): d for f, d in pairs}
    if set(distances) != set(_DISTANCE_RANGES[kind]):
        raise InputError(f"shape_kind {kind!r} needs facet distances for families "
                         f"{sorted(_DISTANCE_RANGES[kind])}; got {sorted(distances)}.")
    facets = tuple((f, _parse_float(distances[f], f"{{{f}}} distance", minimum=0.0))
                   for f in FACET_FAMILIES if f in distances)
    if any(d == 0 for _, d in facets):
        raise InputError(f"facet distances must be > 0; got {dict(facets)}.")
    return facets


def _parse_substrate(kind: str, normal: Any, distance: Any) -> tuple[tuple | None, float | None]:
    if (kind == "winterbottom") != (normal is not None and distance is not None):
        raise InputError(f"substrate_normal and substrate_distance are required for a winterbottom "
                         f"shape and only for it; got shape_kind={kind!r}, "
                         f"substrate=({normal!r}, {distance!r}).")
    if normal is None:
        return None, None
    normal = tuple(int(round(v)) for v in _parse_vector(normal, "substrate_normal"))
    if not any(normal):
        raise InputError(f"substrate_normal must be non-zero; got {normal!r}.")
    return normal, _parse_float(distance, "substrate_distance")


def _parse_vortex(value: Any) -> tuple[float, ...]:
    vortex = _parse_vector(value, "vortex (pz, py, px, tz, ty, tx, charge)", length=7)
    charge = vortex[6]
    if charge == 0 or charge != round(charge):
        raise InputError(f"a vortex charge must be a non-zero integer; got {value!r}.")
    return (*vortex[:3], *_unit(vortex[3:6], "vortex direction"), charge)


def _unit(vector: tuple[float, ...], name: str) -> tuple[float, ...]:
    """``vector`` normalized; left as is when already unit, so parsing is idempotent."""
    norm = math.sqrt(sum(v * v for v in vector))
    if norm < 1e-12:
        raise InputError(f"{name} must be non-zero; got {vector!r}.")
    return vector if abs(norm - 1.0) < 1e-12 else tuple(v / norm for v in vector)


def _halfspaces(params: CrystalParams) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (K, 3) and distances (K,) of the crystal-frame half-spaces ``n . u <= d``."""
    normals, distances = [], []
    for family, distance in params.facet_distances:
        family_normals = facet_normals(family)
        normals.append(family_normals)
        distances.append(np.full(len(family_normals), distance))
    if params.substrate_normal is not None:
        normal = np.array(params.substrate_normal, dtype=float)
        normals.append(normal[None] / np.linalg.norm(normal))
        distances.append(np.array([params.substrate_distance]))
    return np.concatenate(normals), np.concatenate(distances)


def _polyhedron_vertices(normals: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Vertices (V, 3) of the bounded polyhedron ``normals @ u <= distances``."""
    triples = np.array(list(itertools.combinations(range(len(normals)), 3)))
    matrices = normals[triples]
    regular = np.abs(np.linalg.det(matrices)) > 1e-9
    points = np.linalg.solve(matrices[regular], distances[triples[regular]][..., None])[..., 0]
    inside = np.all(points @ normals.T <= distances + 1e-9, axis=1)
    return points[inside]


def _shape_transform(params: CrystalParams) -> np.ndarray:
    """Map (3, 3) from the crystal frame to the lab frame, before scaling to the extent."""
    return rotation_matrix(params.rotation) @ np.diag(params.elongation)


def crystal_geometry(params: CrystalParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crystal's polyhedron in the lab frame, in voxels, centred on its bounding box.

    Parameters
    ----------
    params : CrystalParams

    Returns
    -------
    normals : ndarray of float, shape (K, 3)
        Unit outward normals (z, y, x) of the K half-spaces ``normals @ r <= distances``.
    distances : ndarray of float, shape (K,)
        Their distances from the bounding-box centre, in voxels.
    vertices : ndarray of float, shape (V, 3)
        Polyhedron vertices; their span along each axis is ``params.extent``.
    """
    crystal_normals, crystal_distances = _halfspaces(params)
    transform = _shape_transform(params)
    vertices = _polyhedron_vertices(crystal_normals, crystal_distances) @ transform.T
    scale = np.asarray(params.extent) / np.ptp(vertices, axis=0)
    centre = (vertices.max(axis=0) + vertices.min(axis=0)) / 2 * scale
    # u = M^-1 r with M = diag(scale) @ transform, so n . u <= d reads (M^-T n) . r <= d.
    normals = crystal_normals @ np.linalg.inv(scale[:, None] * transform)
    lengths = np.linalg.norm(normals, axis=1)
    normals /= lengths[:, None]
    distances = crystal_distances / lengths - normals @ centre
    return normals, distances, vertices * scale - centre


def _soft_support(normals: np.ndarray, distances: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Polyhedron occupancy on the grid ``coords``^3 with a one-voxel linear edge ramp."""
    signed_distance = np.full((len(coords),) * 3, -np.inf)
    for (nz, ny, nx), distance in zip(normals, distances):
        plane = (nz * coords)[:, None, None] + (ny * coords)[None, :, None] + (nx * coords - distance)
        np.maximum(signed_distance, plane, out=signed_distance)
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _perpendicular_basis(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.zeros(3)
    helper[np.argmin(np.abs(direction))] = 1.0
    first = np.cross(direction, helper)
    first /= np.linalg.norm(first)
    return first, np.cross(direction, first)


def _phase_field(params: CrystalParams, coords: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """Strain phase on the grid, with its amplitude-weighted mean gradient removed."""
    axes = (coords[:, None, None], coords[None, :, None], coords[None, None, :])
    weights = amplitude**2
    total_weight = weights.sum()
    extent = np.asarray(params.extent)
    phase = np.zeros(amplitude.shape)
    if params.phase_amplitude > 0 and params.phase_modes:
        gradient = np.zeros(3)
        for kz, ky, kx, mode_amplitude, mode_phase in params.phase_modes:
            wave = 2 * np.pi * np.array([kz, ky, kx]) / extent  # rad per voxel
            argument = axes[0] * wave[0] + axes[1] * wave[1] + axes[2] * wave[2] + mode_phase
            phase += mode_amplitude * np.cos(argument)
            gradient -= mode_amplitude * wave * (weights * np.sin(argument)).sum() / total_weight
        phase -= axes[0] * gradient[0] + axes[1] * gradient[1] + axes[2] * gradient[2]
        phase -= (weights * phase).sum() / total_weight
        largest = np.abs(phase[amplitude > 0]).max()
        phase *= params.phase_amplitude / largest if largest > 0 else 0.0
    gradient = np.zeros(3)
    for *point, tz, ty, tx, charge in params.vortices:
        first, second = _perpendicular_basis(np.array([tz, ty, tx]))
        offset = [axis - p * e for axis, p, e in zip(axes, point, extent)]
        along_first = offset[0] * first[0] + offset[1] * first[1] + offset[2] * first[2]
        along_second = offset[0] * second[0] + offset[1] * second[1] + offset[2] * second[2]
        phase += charge * np.arctan2(along_second, along_first)
        radius2 = along_first**2 + along_second**2 + _VORTEX_CORE**2
        gradient += charge * ((weights * -along_second / radius2).sum() * first
                              + (weights * along_first / radius2).sum() * second) / total_weight
    return phase - (axes[0] * gradient[0] + axes[1] * gradient[1] + axes[2] * gradient[2])


def crystal_object(params: CrystalParams, n: int) -> np.ndarray:
    """Complex crystal ``a exp(i phi)`` centred in an ``n``^3 grid.

    Parameters
    ----------
    params : CrystalParams
        The crystal; its bounding box ``params.extent`` must fit in ``n`` voxels.
    n : int
        Grid size; voxel ``i`` sits at ``i - (n - 1) / 2`` from the bounding-box centre.

    Returns
    -------
    obj : ndarray of complex64, shape (n, n, n)
        Amplitude in [0, 1]: 1 inside, a one-voxel linear ramp across each facet
        (anti-aliasing, so the integrated amplitude follows the polyhedron's volume), 0 outside.

    Notes
    -----
    The phase is ``phi = phi_smooth + sum_j charge_j * atan2(.)``: ``phi_smooth`` is a sum of
    low-frequency plane waves scaled so that ``max |phi_smooth| = phase_amplitude`` inside the
    crystal; each vortex adds the azimuth around its line (a screw-dislocation-like winding of
    ``2 pi charge``; the branch cut is invisible in ``exp(i phi)``). The amplitude²-weighted
    mean gradient of ``phi`` (a homogeneous strain, which only moves the Bragg peak) is removed,
    so the centre of mass of ``|FT(obj)|^2`` sits at q = 0: for ``rho = a exp(i phi)``,
    ``sum_q q |F(q)|^2 / sum_q |F(q)|^2 = N <a^2 grad phi> / (2 pi <a^2>)``.

    Examples
    --------
    >>> cube = CrystalParams("cube", {"100": 1.0}, extent=(4, 4, 4))
    >>> obj = crystal_object(cube, 6)
    >>> float(abs(obj).sum())
    64.0
    """
    n = _parse_int(n, "grid size n", minimum=1)
    if max(params.extent) > n:
        raise InputError(f"crystal extent {params.extent} voxels does not fit in a grid of {n}.")
    normals, distances, _ = crystal_geometry(params)
    coords = np.arange(n) - (n - 1) / 2
    amplitude = _soft_support(normals, distances, coords)
    phase = _phase_field(params, coords, amplitude)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def random_crystal_params(
    rng: np.random.Generator | int,
    *,
    extent_range: Sequence[float] = (8.0, 24.0),
    shape_kinds: Sequence[str] = SHAPE_KINDS,
    max_phase_amplitude: float = 2.0,
    max_vortices: int = 2,
) -> CrystalParams:
    """Draw a random crystal.

    Parameters
    ----------
    rng : numpy.random.Generator or int
        Source of randomness (or its seed).
    extent_range : (float, float)
        Bounds of the bounding-box extent along every axis, in voxels. The size is log-uniform
        within the range the shape's own aspect ratio allows; a shape too anisotropic for the
        range is compressed along the axes that fall outside it.
    shape_kinds : sequence of str
        Kinds to draw from, uniformly.
    max_phase_amplitude : float
        The smooth phase amplitude is uniform in [0, max_phase_amplitude] rad.
    max_vortices : int
        Number of dislocation vortices is Binomial(max_vortices, 0.25).

    Returns
    -------
    CrystalParams

    Notes
    -----
    Shapes: facet distances relative to {111} are uniform in per-kind ranges that keep every
    family visible; a Winterbottom shape cuts the Wulff shape with a {111} or {100} substrate
    plane at -0.2 to 0.7 times that facet's distance. With probability 0.3 one crystal axis is
    elongated 1.3-2x. The orientation is uniform on SO(3) (normalized Gaussian quaternion).
    Phase: 8 plane waves with Gaussian wave vectors (std 0.8 cycles per extent), Gaussian
    amplitudes and uniform phases. Vortex lines pass within a quarter extent of the centre in
    a uniform direction, with charge +-1.
    """
    rng = np.random.default_rng(rng)
    low, high = _parse_range(extent_range, "extent_range", minimum=1.0)
    kinds = [look_up_option(k, SHAPE_KINDS, name="shape kind") for k in shape_kinds]
    if not kinds:
        raise InputError(f"shape_kinds must name at least one kind; got {shape_kinds!r}.")
    max_phase_amplitude = _parse_float(max_phase_amplitude, "max_phase_amplitude", minimum=0.0)
    max_vortices = _parse_int(max_vortices, "max_vortices", minimum=0)

    kind = kinds[rng.integers(len(kinds))]
    facets = {f: float(rng.uniform(*bounds)) for f, bounds in _DISTANCE_RANGES[kind].items()}
    substrate_normal = substrate_distance = None
    if kind == "winterbottom":
        family = ("111", "100")[rng.integers(2)]
        choices = facet_normals(family)
        normal = choices[rng.integers(len(choices))]
        substrate_normal = tuple(int(v) for v in np.sign(normal))
        substrate_distance = float(rng.uniform(*_SUBSTRATE_FRACTION) * facets[family])
    elongation = np.ones(3)
    if rng.random() < _ELONGATION_PROBABILITY:
        elongation[rng.integers(3)] = rng.uniform(*_ELONGATION_RANGE)
    rotation = rng.normal(size=4)
    phase_amplitude = float(rng.uniform(0.0, max_phase_amplitude))
    modes = np.column_stack([
        rng.normal(0.0, _PHASE_MODE_WAVENUMBER, size=(_PHASE_MODES, 3)),
        rng.normal(size=_PHASE_MODES),
        rng.uniform(0.0, 2 * np.pi, size=_PHASE_MODES),
    ])
    n_vortices = rng.binomial(max_vortices, _VORTEX_PROBABILITY)
    vortices = np.column_stack([
        rng.uniform(-0.25, 0.25, size=(n_vortices, 3)),
        rng.normal(size=(n_vortices, 3)),
        rng.choice([-1.0, 1.0], size=n_vortices),
    ])
    shape = CrystalParams(kind, facets, extent=(1.0, 1.0, 1.0), rotation=tuple(rotation),
                          elongation=tuple(elongation), substrate_normal=substrate_normal,
                          substrate_distance=substrate_distance)
    natural = np.ptp(_polyhedron_vertices(*_halfspaces(shape)) @ _shape_transform(shape).T, axis=0)
    mean = math.prod(natural) ** (1 / 3)
    scale_low, scale_high = low * mean / natural.min(), high * mean / natural.max()
    if scale_low <= scale_high:
        scale = math.exp(rng.uniform(math.log(scale_low), math.log(scale_high)))
    else:
        scale = math.sqrt(scale_low * scale_high)
    extent = np.clip(scale * natural / mean, low, high)
    return CrystalParams(
        kind, facets, extent=tuple(extent), rotation=shape.rotation, elongation=shape.elongation,
        substrate_normal=substrate_normal, substrate_distance=substrate_distance,
        phase_amplitude=phase_amplitude, phase_modes=tuple(map(tuple, modes)),
        vortices=tuple(map(tuple, vortices)),
    )


__all__ = [
    "FACET_FAMILIES",
    "SHAPE_KINDS",
    "CrystalParams",
    "crystal_geometry",
    "crystal_object",
    "facet_normals",
    "random_crystal_params",
    "rotation_matrix",
]
