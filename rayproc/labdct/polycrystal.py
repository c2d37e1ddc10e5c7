"""Voxelised polycrystals for LabDCT simulation: synthetic cylinders and grain maps from HDF5.

Conventions
-----------
Sample frame in mm: z along the cylinder (rotation) axis, origin at the sample
centre. Orientation matrices ``U`` (G, 3, 3) map crystal to sample coordinates
(``g_sample = U @ g_crystal``); for Bunge Euler angles ``U = g^T`` with
``g = R_z(phi2) R_x(Phi) R_z(phi1)`` the passive sample-to-crystal matrix, i.e.
``U = Rz(phi1) Rx(Phi) Rz(phi2)`` as active rotations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from rayproc.errors import InputError
from rayproc.options import look_up_option

TESSELLATIONS = ("voronoi", "laguerre")
ORIENTATION_KINDS = ("rodrigues", "euler_bunge")
TARGET_VOXELS = 100_000


@dataclass(frozen=True)
class PolycrystalSpec:
    """A cylindrical polycrystal to generate.

    Attributes
    ----------
    diameter_um, height_um : float
        Cylinder size.
    n_grains : int
        Number of grains.
    grain_size_mean_um, grain_size_std_um : float
        Target mean and standard deviation of the equivalent sphere diameter
        (log-normal distribution; Laguerre tessellation only).
    tessellation : {"laguerre", "voronoi"}
    """

    diameter_um: float
    height_um: float
    n_grains: int
    grain_size_mean_um: float
    grain_size_std_um: float
    tessellation: str = "laguerre"

    def __post_init__(self):
        look_up_option(self.tessellation, TESSELLATIONS, name="tessellation")
        if not (self.diameter_um > 0 and self.height_um > 0 and self.n_grains >= 1):
            raise InputError(
                f"PolycrystalSpec needs positive sizes and n_grains >= 1; got {self.diameter_um}, "
                f"{self.height_um}, {self.n_grains}."
            )
        if not (self.grain_size_mean_um > 0 and self.grain_size_std_um >= 0):
            raise InputError(
                f"grain size mean must be > 0 and std >= 0; got {self.grain_size_mean_um}, "
                f"{self.grain_size_std_um}."
            )

    @property
    def volume_um3(self) -> float:
        return np.pi / 4 * self.diameter_um**2 * self.height_um

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PolycrystalSpec:
        return cls(**data)


# Virtual samples of the LabDCT deep-learning denoising study (equivalent sphere diameters).
POLYCRYSTAL_PRESETS: dict[str, PolycrystalSpec] = {
    "D18": PolycrystalSpec(100.0, 150.0, 230, 18.3, 7.7),
    "D35": PolycrystalSpec(200.0, 300.0, 337, 35.8, 8.2),
    "D64": PolycrystalSpec(400.0, 600.0, 485, 63.6, 14.1),
}


@dataclass(frozen=True, eq=False)
class Polycrystal:
    """A voxelised polycrystal.

    Attributes
    ----------
    positions_mm : ndarray, shape (V, 3)
        Voxel centres in the sample frame (mm).
    grain_ids : ndarray of int32, shape (V,)
        Grain of each voxel, 0 .. G-1, every grain non-empty.
    orientations : ndarray, shape (G, 3, 3)
        Crystal-to-sample rotation matrices U.
    voxel_mm : float
        Cubic voxel edge (mm).
    diameter_mm, height_mm : float
        Enclosing cylinder about z (sample attenuation).
    """

    positions_mm: np.ndarray
    grain_ids: np.ndarray
    orientations: np.ndarray
    voxel_mm: float
    diameter_mm: float
    height_mm: float

    def __post_init__(self):
        v = len(self.positions_mm)
        if self.positions_mm.shape != (v, 3) or self.grain_ids.shape != (v,):
            raise InputError(
                f"positions_mm must be (V, 3) and grain_ids (V,); got {self.positions_mm.shape}, "
                f"{self.grain_ids.shape}."
            )
        g = len(self.orientations)
        if self.orientations.shape != (g, 3, 3):
            raise InputError(f"orientations must be (G, 3, 3); got {self.orientations.shape}.")
        if v and (self.grain_ids.min() < 0 or self.grain_ids.max() >= g):
            raise InputError(
                f"grain_ids must lie in [0, {g}); got [{self.grain_ids.min()}, {self.grain_ids.max()}]."
            )

    @property
    def n_grains(self) -> int:
        return len(self.orientations)

    @property
    def n_voxels(self) -> int:
        return len(self.grain_ids)

    def grain_volumes_mm3(self) -> np.ndarray:
        """Grain volumes, (G,)."""
        return np.bincount(self.grain_ids, minlength=self.n_grains) * self.voxel_mm**3

    def equivalent_diameters_um(self) -> np.ndarray:
        """Equivalent sphere diameters (um), (G,)."""
        return 1e3 * np.cbrt(6 / np.pi * self.grain_volumes_mm3())

    def grain_centroids_mm(self) -> np.ndarray:
        """Grain centroids in the sample frame, (G, 3)."""
        return grain_centroids(self.positions_mm, self.grain_ids, self.n_grains)


def grain_centroids(positions: np.ndarray, grain_ids: np.ndarray, n_grains: int) -> np.ndarray:
    """Mean position of each grain's voxels, (n_grains, 3); zeros for empty grains."""
    counts = np.bincount(grain_ids, minlength=n_grains)
    sums = np.stack([np.bincount(grain_ids, positions[:, i], n_grains) for i in range(3)], axis=1)
    return sums / np.maximum(counts, 1)[:, None]


def random_orientations(n: int, rng) -> np.ndarray:
    """Orientations uniform on SO(3) from normalised Gaussian quaternions, (n, 3, 3)."""
    quaternions = np.random.default_rng(rng).standard_normal((int(n), 4))
    return Rotation.from_quat(quaternions).as_matrix()


def cylinder_voxels(diameter_um: float, height_um: float, voxel_um: float) -> np.ndarray:
    """Centres (mm) of the cubic voxels inside a z-axis cylinder, (V, 3).

    The grid is symmetric about the origin (centrosymmetric voxel set).
    """
    axes = []
    for extent in (diameter_um, diameter_um, height_um):
        n = max(int(np.ceil(extent / voxel_um)), 1)
        axes.append((np.arange(n) - (n - 1) / 2) * voxel_um)
    x, y, z = np.meshgrid(*axes, indexing="ij")
    inside = x**2 + y**2 <= (diameter_um / 2) ** 2
    return 1e-3 * np.stack([x[inside], y[inside], z[inside]], axis=1)


def _seed_points(radii: np.ndarray, radius: float, half_height: float, rng) -> np.ndarray:
    """Random sequential addition of seeds in the cylinder, largest grains first."""
    seeds = np.empty((len(radii), 3))
    spacing = 0.8
    for i, r in enumerate(radii):
        for attempt in range(1000):
            rho = radius * np.sqrt(rng.random())
            phi = 2 * np.pi * rng.random()
            point = np.array([rho * np.cos(phi), rho * np.sin(phi), half_height * (2 * rng.random() - 1)])
            gap = np.linalg.norm(seeds[:i] - point, axis=1) - spacing * (radii[:i] + r)
            if i == 0 or gap.min() >= 0:
                break
            if attempt % 100 == 99:
                spacing *= 0.8
        seeds[i] = point
    return seeds


def _power_cells(points: np.ndarray, seeds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Laguerre cell of every point: argmin |x - s|^2 - w, via a lifted 4-D Voronoi query."""
    lift = np.sqrt(weights.max() - weights)
    tree = cKDTree(np.column_stack([seeds, lift]))
    return tree.query(np.column_stack([points, np.zeros(len(points))]))[1]


def _laguerre_fit(points, seeds, target_volumes, voxel_volume, n_iterations=40):
    """Move seeds to cell centroids and adjust weights until cells have the target volumes.

    A voxel-grid fixed-point variant of the centroidal Laguerre tessellation of
    Bourne et al., Phil. Mag. 100 (2020) 2677, doi:10.1080/14786435.2020.1790053.
    """
    n = len(seeds)
    target_r2 = np.cbrt(3 * target_volumes / (4 * np.pi)) ** 2
    weights = target_r2.copy()
    for _ in range(n_iterations):
        cells = _power_cells(points, seeds, weights)
        counts = np.bincount(cells, minlength=n)
        filled = counts > 0
        centroids = np.stack([np.bincount(cells, points[:, i], n) for i in range(3)], axis=1)
        seeds[filled] = centroids[filled] / counts[filled, None]
        actual_r2 = np.cbrt(3 * counts * voxel_volume / (4 * np.pi)) ** 2
        weights = weights + 0.8 * (target_r2 - actual_r2)
    return _power_cells(points, seeds, weights)


def make_polycrystal(
    preset_or_spec: str | PolycrystalSpec, rng, *, voxel_um: float | None = None
) -> Polycrystal:
    """Generate a cylindrical polycrystal on a voxel grid.

    Parameters
    ----------
    preset_or_spec : str or PolycrystalSpec
        A ``POLYCRYSTAL_PRESETS`` name ("D18", "D35", "D64") or a spec.
    rng : numpy.random.Generator or int
        Randomness for seeds, sizes and orientations.
    voxel_um : float, optional
        Voxel edge; default gives about ``TARGET_VOXELS`` (1e5) voxels
        (D35: 4.5 um, ~13 voxels per mean grain diameter).

    Returns
    -------
    Polycrystal
        Grain shapes from a Laguerre tessellation whose cell volumes follow a
        log-normal equivalent-diameter distribution with the spec's mean and
        spread (volumes scaled to fill the cylinder), or a Voronoi tessellation
        of hard-core random seeds; orientations uniform on SO(3).

    Notes
    -----
    The Laguerre (power) diagram with weights w_i assigns x to argmin
    |x - s_i|^2 - w_i, computed as a Voronoi query of (x, 0) against the lifted
    seeds (s_i, sqrt(max(w) - w_i)) with a k-d tree.
    """
    spec = preset_or_spec
    if isinstance(spec, str):
        spec = POLYCRYSTAL_PRESETS[look_up_option(spec, POLYCRYSTAL_PRESETS, name="polycrystal preset")]
    rng = np.random.default_rng(rng)
    if voxel_um is None:
        voxel_um = float(np.cbrt(spec.volume_um3 / TARGET_VOXELS))
    if not voxel_um > 0:
        raise InputError(f"voxel_um must be > 0; got {voxel_um}.")
    points = cylinder_voxels(spec.diameter_um, spec.height_um, voxel_um)
    voxel_volume = (1e-3 * voxel_um) ** 3
    if len(points) < spec.n_grains:
        raise InputError(f"voxel_um={voxel_um} gives {len(points)} voxels for {spec.n_grains} grains.")

    mean, std = spec.grain_size_mean_um, spec.grain_size_std_um
    sigma2 = np.log1p((std / mean) ** 2)
    diameters = 1e-3 * rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2), spec.n_grains)
    volumes = np.pi / 6 * diameters**3
    volumes *= len(points) * voxel_volume / volumes.sum()
    radii = np.cbrt(3 * np.sort(volumes)[::-1] / (4 * np.pi))
    seeds = _seed_points(radii, 5e-4 * spec.diameter_um, 5e-4 * spec.height_um, rng)
    if spec.tessellation == "laguerre":
        cells = _laguerre_fit(points, seeds, np.sort(volumes)[::-1], voxel_volume)
    else:
        cells = cKDTree(seeds).query(points)[1]
    _, grain_ids = np.unique(cells, return_inverse=True)
    grain_ids = grain_ids.ravel().astype(np.int32)
    orientations = random_orientations(grain_ids.max() + 1, rng)
    return Polycrystal(
        points, grain_ids, orientations, 1e-3 * voxel_um, 1e-3 * spec.diameter_um, 1e-3 * spec.height_um
    )


def orientation_matrices(values, kind: str, *, degrees: bool = False) -> np.ndarray:
    """Crystal-to-sample matrices U from Bunge Euler angles or Rodrigues vectors.

    Parameters
    ----------
    values : array_like, shape (G, 3)
        (phi1, Phi, phi2) or Rodrigues vectors r = n tan(omega / 2).
    kind : {"euler_bunge", "rodrigues"}
        Euler: ``U = Rz(phi1) Rx(Phi) Rz(phi2)``. Rodrigues: U is the rotation by
        2 arctan|r| about r / |r| (the same orientation as the Euler triple whose
        passive matrix g has that axis and angle).
    degrees : bool
        Euler angles in degrees instead of radians.

    Returns
    -------
    U : ndarray, shape (G, 3, 3)
    """
    kind = look_up_option(kind, ORIENTATION_KINDS, name="orientation kind")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 3:
        raise InputError(f"orientations must have shape (G, 3); got {values.shape}.")
    if kind == "euler_bunge":
        return Rotation.from_euler("ZXZ", values, degrees=degrees).as_matrix()
    norm = np.linalg.norm(values, axis=1, keepdims=True)
    rotvec = values * np.divide(2 * np.arctan(norm), norm, out=np.full_like(norm, 2.0), where=norm > 0)
    return Rotation.from_rotvec(rotvec).as_matrix()


GRAIN_MAP_LAYOUTS = {
    "grainmapper3d": {
        "grain_ids_path": "LabDCT/Data/GrainId",
        "orientations_path": "LabDCT/Data/Rodrigues",
        "orientation_kind": "rodrigues",
        "spacing_path": "LabDCT/Spacing",
        "spacing_to_mm": 1.0,
    },
    "dream3d": {
        "grain_ids_path": "DataContainers/ImageDataContainer/CellData/FeatureIds",
        "orientations_path": "DataContainers/ImageDataContainer/CellFeatureData/AvgEulerAngles",
        "orientation_kind": "euler_bunge",
        "spacing_path": "DataContainers/ImageDataContainer/_SIMPL_GEOMETRY/SPACING",
        "spacing_to_mm": 1e-3,
    },
}


def read_grain_map(
    h5file,
    *,
    layout: str = "grainmapper3d",
    grain_ids_path: str | None = None,
    orientations_path: str | None = None,
    orientation_kind: str | None = None,
    spacing_path: str | None = None,
    spacing_to_mm: float | None = None,
    degrees: bool = False,
    background_id: int = 0,
) -> Polycrystal:
    """Read a voxelised grain map (GrainMapper3D or DREAM3D-like HDF5) as a Polycrystal.

    Parameters
    ----------
    h5file : str, os.PathLike or h5py.File
    layout : {"grainmapper3d", "dream3d"}
        Defaults for the dataset paths and units below (``GRAIN_MAP_LAYOUTS``).
    grain_ids_path : str
        Integer grain-id volume indexed (z, y, x) (a trailing axis of length 1 is
        dropped); ``background_id`` marks voxels outside the sample.
    orientations_path : str
        Either a per-grain table (M, 3) indexed by grain id, or a per-voxel
        volume (z, y, x, 3) or (3, z, y, x) read at each grain's first voxel.
    orientation_kind : {"rodrigues", "euler_bunge"}
    spacing_path : str
        Voxel size, scalar or (x, y, z); the voxels must be cubic.
    spacing_to_mm : float
        Factor from the file's length unit to mm.
    degrees : bool
        Euler angles stored in degrees.
    background_id : int

    Returns
    -------
    Polycrystal
        Voxel centres relative to the volume centre; grains renumbered 0..G-1 in
        increasing file-id order; enclosing cylinder from the occupied voxels.
    """
    import h5py

    defaults = GRAIN_MAP_LAYOUTS[look_up_option(layout, GRAIN_MAP_LAYOUTS, name="grain-map layout")]
    given = {
        "grain_ids_path": grain_ids_path,
        "orientations_path": orientations_path,
        "orientation_kind": orientation_kind,
        "spacing_path": spacing_path,
        "spacing_to_mm": spacing_to_mm,
    }
    opts = {key: defaults[key] if value is None else value for key, value in given.items()}

    def read(f):
        try:
            return tuple(f[opts[key]][()] for key in ("grain_ids_path", "orientations_path", "spacing_path"))
        except KeyError as err:
            raise InputError(f"grain map lacks a dataset ({err}); got datasets at {list(f)}.") from None

    if isinstance(h5file, h5py.File):
        ids, orientations, spacing = read(h5file)
    else:
        with h5py.File(h5file, "r") as f:
            ids, orientations, spacing = read(f)

    ids = np.asarray(ids)
    if ids.ndim == 4 and ids.shape[-1] == 1:
        ids = ids[..., 0]
    if ids.ndim != 3:
        raise InputError(f"grain ids must be a 3-D volume; got shape {ids.shape}.")
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64).ravel(), (3,)) * opts["spacing_to_mm"]
    if not np.allclose(spacing, spacing[0], rtol=1e-6):
        raise InputError(f"voxels must be cubic; got spacing {spacing.tolist()} mm.")
    voxel = float(spacing[0])

    occupied = ids != background_id
    file_ids, first_voxel, grain_ids = np.unique(ids[occupied], return_index=True, return_inverse=True)
    if len(file_ids) == 0:
        raise InputError(f"grain map has no voxel with id != {background_id}.")
    orientations = np.asarray(orientations, dtype=np.float64)
    if orientations.ndim == 2:
        if orientations.shape[0] <= file_ids.max():
            raise InputError(
                f"per-grain orientation table has {orientations.shape[0]} rows; "
                f"grain ids reach {file_ids.max()}."
            )
        per_grain = orientations[file_ids]
    else:
        if orientations.shape == (3,) + ids.shape:
            orientations = np.moveaxis(orientations, 0, -1)
        if orientations.shape != ids.shape + (3,):
            raise InputError(f"per-voxel orientations must be {ids.shape + (3,)}; got {orientations.shape}.")
        per_grain = orientations[occupied][first_voxel]

    iz, iy, ix = np.nonzero(occupied)
    centre = (np.array(ids.shape[::-1]) - 1) / 2
    positions = (np.stack([ix, iy, iz], axis=1) - centre) * voxel
    radius = np.sqrt((positions[:, :2] ** 2).sum(axis=1)).max() + voxel / 2
    height = np.ptp(positions[:, 2]) + voxel
    return Polycrystal(
        positions,
        grain_ids.ravel().astype(np.int32),
        orientation_matrices(per_grain, opts["orientation_kind"], degrees=degrees),
        voxel,
        2 * radius,
        height,
    )


__all__ = [
    "GRAIN_MAP_LAYOUTS",
    "POLYCRYSTAL_PRESETS",
    "Polycrystal",
    "PolycrystalSpec",
    "cylinder_voxels",
    "grain_centroids",
    "make_polycrystal",
    "orientation_matrices",
    "random_orientations",
    "read_grain_map",
]
