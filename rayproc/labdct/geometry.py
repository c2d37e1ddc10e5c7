"""LabDCT acquisition geometry (cone beam, Laue focusing) as a frozen, serialisable spec.

Conventions
-----------
Lab frame, right-handed, in mm:

* x along the beam: the point source sits at ``(-lss_mm, 0, 0)``, the rotation
  axis passes through the origin, the undeflected central ray is the +x axis;
* z vertical, along the rotation axis; y horizontal (y = z cross x).

Sample rotation: a point ``p`` of the sample frame is at ``R_z(omega) @ p`` in the
lab, a right-handed (counter-clockwise seen from +z) rotation by omega.

Detector: the plane through ``(lsd_mm, 0, 0)`` with unit axes
``e_y, e_z, n = T @ (y_hat, z_hat, x_hat)``, ``T = R_x(tilt_x) R_y(tilt_y) R_z(tilt_z)``
(as in the published forward model). A point ``q`` on it has detector coordinates
``y_mm = (q - (lsd, 0, 0)) . e_y`` and ``z_mm = ... . e_z``; pixel coordinates are
``y_px = beam_center_px[0] + y_mm / pixel_size_mm`` (same for z), where pixel
``i`` covers ``[i - 0.5, i + 0.5)``. Images are indexed ``image[iy, iz]``, shape
``(ny, nz)``: axis 0 runs along +y, axis 1 along +z. The beam stop is the pixel
box ``beam_stop_px = ((y_first, y_last), (z_first, z_last))``, inclusive.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from rayproc.errors import InputError
from rayproc.labdct.crystallography import Material, get_material
from rayproc.options import look_up_option


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def rotation_z(omega_deg: float) -> np.ndarray:
    """Right-handed rotation matrix about +z by ``omega_deg`` degrees, (3, 3)."""
    return _rotation(2, np.deg2rad(omega_deg))


@dataclass(frozen=True)
class LabdctGeometry:
    """LabDCT cone-beam geometry: distances, detector, beam stop, rotation, energies.

    See the module docstring for the frame and pixel conventions.

    Attributes
    ----------
    lss_mm, lsd_mm : float
        Source to rotation axis and rotation axis to detector distances (mm).
    detector_shape : (int, int)
        Pixels (ny, nz).
    pixel_size_mm : float
        Square pixel pitch (mm).
    beam_center_px : (float, float)
        Pixel coordinates (y, z) where the central ray meets the detector.
    tilt_rad : (float, float, float)
        Detector tilts about x, y, z (rad).
    beam_stop_px : ((int, int), (int, int)) or None
        Inclusive pixel ranges ((y_first, y_last), (z_first, z_last)).
    omega_start_deg, omega_step_deg : float
    n_projections : int
    energy_window_kev : (float, float)
        Photon energies that contribute (keV).
    material : Material
        Sample material (absorption; default reflections).
    scintillator : str
        Scintillator formula for the detector efficiency 1 - exp(-mu t).
    scintillator_density_g_cm3, scintillator_thickness_um : float
    """

    lss_mm: float
    lsd_mm: float
    detector_shape: tuple[int, int]
    pixel_size_mm: float
    beam_center_px: tuple[float, float]
    tilt_rad: tuple[float, float, float] = (0.0, 0.0, 0.0)
    beam_stop_px: tuple[tuple[int, int], tuple[int, int]] | None = None
    omega_start_deg: float = 0.0
    omega_step_deg: float = 2.0
    n_projections: int = 181
    energy_window_kev: tuple[float, float] = (13.0, 138.0)
    material: Material = dataclasses.field(default_factory=lambda: get_material("Al"))
    scintillator: str = "CsI"
    scintillator_density_g_cm3: float = 4.51
    scintillator_thickness_um: float = 150.0

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "detector_shape", tuple(int(n) for n in self.detector_shape))
        set_(self, "beam_center_px", tuple(float(c) for c in self.beam_center_px))
        set_(self, "tilt_rad", tuple(float(t) for t in self.tilt_rad))
        set_(self, "energy_window_kev", tuple(float(e) for e in self.energy_window_kev))
        set_(self, "material", get_material(self.material))
        if self.beam_stop_px is not None:
            set_(self, "beam_stop_px", tuple(tuple(int(i) for i in r) for r in self.beam_stop_px))
        if len(self.detector_shape) != 2 or min(self.detector_shape) < 1:
            raise InputError(f"detector_shape must be two positive ints; got {self.detector_shape}.")
        if len(self.beam_center_px) != 2 or len(self.tilt_rad) != 3:
            raise InputError(
                f"beam_center_px needs 2 and tilt_rad 3 values; got {self.beam_center_px}, {self.tilt_rad}."
            )
        if not (self.lss_mm > 0 and self.lsd_mm > 0 and self.pixel_size_mm > 0):
            raise InputError(
                f"lss_mm, lsd_mm, pixel_size_mm must be > 0; got {self.lss_mm}, {self.lsd_mm}, "
                f"{self.pixel_size_mm}."
            )
        low, high = self.energy_window_kev
        if not 0 < low < high:
            raise InputError(f"energy_window_kev must be 0 < low < high; got {self.energy_window_kev}.")
        if self.n_projections < 1:
            raise InputError(f"n_projections must be >= 1; got {self.n_projections}.")

    @property
    def source_mm(self) -> np.ndarray:
        """Source position in the lab frame, (3,)."""
        return np.array([-self.lss_mm, 0.0, 0.0])

    @property
    def omegas_deg(self) -> np.ndarray:
        """Rotation angle of every projection, (n_projections,)."""
        return self.omega_start_deg + self.omega_step_deg * np.arange(self.n_projections)

    def detector_frame(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Detector origin (beam centre) and unit axes in the lab frame.

        Returns
        -------
        origin, e_y, e_z, normal : ndarray, shape (3,) each
        """
        tx, ty, tz = self.tilt_rad
        tilt = _rotation(0, tx) @ _rotation(1, ty) @ _rotation(2, tz)
        return np.array([self.lsd_mm, 0.0, 0.0]), tilt[:, 1], tilt[:, 2], tilt[:, 0]

    def mm_to_px(self, y_mm, z_mm) -> tuple[np.ndarray, np.ndarray]:
        """Detector (y, z) in mm to pixel coordinates."""
        return (
            self.beam_center_px[0] + np.asarray(y_mm) / self.pixel_size_mm,
            self.beam_center_px[1] + np.asarray(z_mm) / self.pixel_size_mm,
        )

    def px_to_mm(self, y_px, z_px) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates to detector (y, z) in mm."""
        return (
            (np.asarray(y_px) - self.beam_center_px[0]) * self.pixel_size_mm,
            (np.asarray(z_px) - self.beam_center_px[1]) * self.pixel_size_mm,
        )

    def beam_stop_mask(self) -> np.ndarray:
        """Boolean (ny, nz) image, True under the beam stop."""
        mask = np.zeros(self.detector_shape, dtype=bool)
        if self.beam_stop_px is not None:
            (y0, y1), (z0, z1) = self.beam_stop_px
            mask[max(y0, 0) : y1 + 1, max(z0, 0) : z1 + 1] = True
        return mask

    def binned(self, factor: int) -> LabdctGeometry:
        """The same geometry on a detector binned ``factor x factor`` (for fast tests)."""
        factor = int(factor)
        if factor < 1:
            raise InputError(f"binning factor must be >= 1; got {factor}.")
        beam_stop = None
        if self.beam_stop_px is not None:
            beam_stop = tuple((first // factor, last // factor) for first, last in self.beam_stop_px)
        return dataclasses.replace(
            self,
            detector_shape=tuple(n // factor for n in self.detector_shape),
            pixel_size_mm=self.pixel_size_mm * factor,
            beam_center_px=tuple((c + 0.5) / factor - 0.5 for c in self.beam_center_px),
            beam_stop_px=beam_stop,
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["material"] = self.material.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> LabdctGeometry:
        data = dict(data)
        if isinstance(data.get("material"), dict):
            data["material"] = Material.from_dict(data["material"])
        return cls(**data)


# The published LabDCT forward-simulation set-up, Lss = Lsd = 11 mm ("Simulation 1" of the
# authors' parameter file; 1-based MATLAB pixel ranges converted to 0-based).
LAUE_FOCUSING = LabdctGeometry(
    lss_mm=11.0,
    lsd_mm=11.0,
    detector_shape=(2032, 2032),
    pixel_size_mm=3.3623e-3,
    beam_center_px=(1015.5, 1015.5),
    beam_stop_px=((544, 1505), (535, 1487)),
    omega_start_deg=-180.0,
    omega_step_deg=2.0,
    n_projections=181,
    energy_window_kev=(13.0, 138.0),
    material=get_material("Al"),
)

# Copy of shared/data/labdct-fe-farfield/geometry.json (Zhang & Lindkvist, J. Appl. Cryst. 58
# (2025)); kept here so the pure core reads no files.
FE_FARFIELD_JSON = {
    "material": {"element": "Fe", "lattice": "bcc", "a_angstrom": 2.8665, "space_group": 229},
    "source_to_sample_mm": 100.0,
    "sample_to_detector_mm": 99.969,
    "detector_pixels": [1024, 1024],
    "pixel_size_mm": 0.068334,
    "binning": 2,
    "beam_center_px": {"y": 512.668, "z": 512.077},
    "detector_tilt_rad": {"x": -0.000235, "y": 0.035985, "z": -0.004223},
    "beamstop_px": {"y": [420, 610], "z": [420, 610]},
    "rotation_deg": {"start": 180, "step": -3, "end": -180},
    "frames_in_full_scan": 121,
    "energy_window_keV": [15, 110],
}


def _material_from_json(entry: dict) -> Material:
    element = entry.get("element")
    if element is None:
        raise InputError(f"material entry needs an 'element'; got {entry!r}.")
    base = get_material(element)
    return dataclasses.replace(
        base,
        lattice=entry.get("lattice", base.lattice),
        a_angstrom=float(entry.get("a_angstrom", base.a_angstrom)),
    )


def geometry_from_json(config: dict, *, base: str | LabdctGeometry = "laue_focusing") -> LabdctGeometry:
    """Build a geometry from the JSON layout of ``labdct-fe-farfield/geometry.json``.

    Keys present in ``config`` (material, source_to_sample_mm, sample_to_detector_mm,
    detector_pixels, pixel_size_mm, beam_center_px, detector_tilt_rad, beamstop_px,
    rotation_deg, frames_in_full_scan, energy_window_keV) override ``base``;
    other keys are ignored.

    Parameters
    ----------
    config : dict
        Parsed JSON.
    base : str or LabdctGeometry
        A ``GEOMETRY_PRESETS`` name or a geometry supplying what ``config`` lacks.

    Returns
    -------
    LabdctGeometry
    """
    if not isinstance(config, dict):
        raise InputError(f"config must be a dict parsed from JSON; got {type(config).__name__}.")
    if isinstance(base, str):
        base = GEOMETRY_PRESETS[look_up_option(base, GEOMETRY_PRESETS, name="geometry preset")]
    changes = {}
    if "material" in config:
        changes["material"] = _material_from_json(config["material"])
    if "source_to_sample_mm" in config:
        changes["lss_mm"] = float(config["source_to_sample_mm"])
    if "sample_to_detector_mm" in config:
        changes["lsd_mm"] = float(config["sample_to_detector_mm"])
    if "detector_pixels" in config:
        changes["detector_shape"] = tuple(config["detector_pixels"])
    if "pixel_size_mm" in config:
        changes["pixel_size_mm"] = float(config["pixel_size_mm"])
    if "beam_center_px" in config:
        changes["beam_center_px"] = (config["beam_center_px"]["y"], config["beam_center_px"]["z"])
    if "detector_tilt_rad" in config:
        tilt = config["detector_tilt_rad"]
        changes["tilt_rad"] = (tilt.get("x", 0.0), tilt.get("y", 0.0), tilt.get("z", 0.0))
    if "beamstop_px" in config:
        stop = config["beamstop_px"]
        changes["beam_stop_px"] = None if stop is None else (tuple(stop["y"]), tuple(stop["z"]))
    if "rotation_deg" in config:
        rotation = config["rotation_deg"]
        start, step = float(rotation["start"]), float(rotation["step"])
        changes["omega_start_deg"], changes["omega_step_deg"] = start, step
        if "end" in rotation:
            changes["n_projections"] = int(round((float(rotation["end"]) - start) / step)) + 1
    if "frames_in_full_scan" in config:
        changes["n_projections"] = int(config["frames_in_full_scan"])
    if "energy_window_keV" in config:
        changes["energy_window_kev"] = tuple(config["energy_window_keV"])
    return dataclasses.replace(base, **changes)


GEOMETRY_PRESETS: dict[str, LabdctGeometry] = {"laue_focusing": LAUE_FOCUSING}
GEOMETRY_PRESETS["fe_farfield"] = geometry_from_json(FE_FARFIELD_JSON, base=LAUE_FOCUSING)


__all__ = [
    "FE_FARFIELD_JSON",
    "GEOMETRY_PRESETS",
    "LAUE_FOCUSING",
    "LabdctGeometry",
    "geometry_from_json",
    "rotation_z",
]
