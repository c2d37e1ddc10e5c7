"""LabDCT forward-simulation physics: crystallography, polycrystals, geometry, Bragg and projections."""

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rayproc.errors import InputError
from rayproc.labdct.bragg import HC_KEV_ANGSTROM, diffraction_events
from rayproc.labdct.crystallography import (
    is_allowed,
    reflection_set,
    structure_factor,
    symmetric_variants,
)
from rayproc.labdct.geometry import (
    FE_FARFIELD_JSON,
    GEOMETRY_PRESETS,
    LabdctGeometry,
    geometry_from_json,
    rotation_z,
)
from rayproc.labdct import projection as labdct_projection
from rayproc.labdct.projection import SPOT_TABLE_KEYS, cylinder_exit_distance, simulate_projection
from rayproc.labdct.polycrystal import (
    Polycrystal,
    cylinder_voxels,
    make_polycrystal,
    orientation_matrices,
    random_orientations,
    read_grain_map,
)
from rayproc.labdct.spectrum import tube_spectrum

FE_JSON = Path("/work/shared/data/labdct-fe-farfield/geometry.json")


def plain_geometry(lss=11.0, lsd=11.0, n=512, pixel=0.0134, window=(15.0, 110.0), material="Fe", **kw):
    """Untilted square detector centred on the beam, no beam stop."""
    return LabdctGeometry(
        lss_mm=lss,
        lsd_mm=lsd,
        detector_shape=(n, n),
        pixel_size_mm=pixel,
        beam_center_px=((n - 1) / 2, (n - 1) / 2),
        energy_window_kev=window,
        material=material,
        **kw,
    )


def point_grains(positions_mm, orientations):
    """One tiny voxel per grain."""
    positions_mm = np.atleast_2d(np.asarray(positions_mm, dtype=float))
    n = len(positions_mm)
    return Polycrystal(positions_mm, np.arange(n, dtype=np.int32), np.asarray(orientations), 1e-4, 0.2, 0.3)


def sphere_grain(radius_um, voxel_um, orientation):
    """One grain: the voxels of a centrosymmetric grid inside a sphere at the origin."""
    points = cylinder_voxels(2 * radius_um, 2 * radius_um, voxel_um)
    points = points[np.linalg.norm(points, axis=1) <= 1e-3 * radius_um]
    ids = np.zeros(len(points), dtype=np.int32)
    return Polycrystal(points, ids, orientation[None], 1e-3 * voxel_um, 0.2, 0.3)


# --- crystallography ---------------------------------------------------------------------


def test_systematic_absences():
    hkl = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [2, 0, 0], [2, 1, 1], [2, 2, 2], [4, 2, 0], [3, 3, 1]])
    assert is_allowed(hkl, "bcc").tolist() == [False, True, False, True, True, True, True, False]
    assert is_allowed(hkl, "fcc").tolist() == [False, False, True, True, False, True, True, True]
    # diamond: fcc with all-even h+k+l = 4n ({200}, {222}, {420} absent)
    assert is_allowed(hkl, "diamond").tolist() == [False, False, True, False, False, False, False, True]
    assert not is_allowed([0, 0, 0], "fcc")


def test_families_and_multiplicities():
    fe = reflection_set("Fe", 4)
    assert fe.families.tolist() == [[1, 1, 0], [2, 0, 0], [2, 1, 1], [2, 2, 0]]
    assert fe.multiplicity.tolist() == [12, 6, 24, 12]
    assert is_allowed(fe.hkl, "bcc").all() and len(np.unique(fe.hkl, axis=0)) == len(fe) == 54
    assert reflection_set("Al", 4).families.tolist() == [[1, 1, 1], [2, 0, 0], [2, 2, 0], [3, 1, 1]]
    assert reflection_set("Si", 4).families.tolist() == [[1, 1, 1], [2, 2, 0], [3, 1, 1], [4, 0, 0]]
    assert len(symmetric_variants([3, 2, 1])) == 48 and len(symmetric_variants([1, 1, 1])) == 8
    # 220 is the harmonic of 110: same spot
    i220 = np.flatnonzero((fe.hkl == [2, 2, 0]).all(axis=1))[0]
    assert fe.hkl[fe.fundamental[i220]].tolist() == [1, 1, 0]


def test_structure_factor_fe_110():
    """F(110) of bcc Fe = 2 f0(s) exp(-B s^2), s = 1/(2d); f0 from the Cromer-Mann fit (ITC Vol. C)."""
    f = structure_factor("Fe", [[1, 1, 0], [1, 0, 0]])
    s2 = (np.sqrt(2) / (2 * 2.8665)) ** 2
    a = [11.7695, 7.3573, 3.5222, 2.3045]
    b = [4.7611, 0.3072, 15.3535, 76.8805]
    f0 = sum(ai * np.exp(-bi * s2) for ai, bi in zip(a, b)) + 1.0369
    assert abs(f[1]) < 1e-9
    assert f[0].real == pytest.approx(2 * f0 * np.exp(-0.35 * s2), rel=0.005)
    # anomalous parts are small far above the K edge, large just above it (7.11 keV)
    f_e = structure_factor("Fe", [[1, 1, 0]], energy_kev=[7.2, 60.0])[0]
    assert abs(abs(f_e[1]) - abs(f[0])) < 0.02 * abs(f[0]) < abs(abs(f_e[0]) - abs(f[0]))


# --- spectrum ------------------------------------------------------------------------------


def test_tube_spectrum_w_anode():
    energies, density = tube_spectrum(140.0)
    assert (density.sum() * (energies[1] - energies[0])) == pytest.approx(1.0)
    assert energies.max() < 140.0 and density[energies > 140].size == 0
    # tungsten K-alpha lines (59.3, 58.0 keV) dominate their neighbourhood
    near = (energies > 50) & (energies < 65)
    assert 57.5 < energies[near][np.argmax(density[near])] < 60.0
    assert tube_spectrum(140.0) is tube_spectrum(140.0)  # cached


# --- polycrystal ---------------------------------------------------------------------------


def test_d35_grain_size_statistics():
    sample = make_polycrystal("D35", np.random.default_rng(3))
    assert 50_000 <= sample.n_voxels <= 150_000
    d = sample.equivalent_diameters_um()
    assert sample.n_grains == 337
    assert d.mean() == pytest.approx(35.8, rel=0.05)
    assert d.std() == pytest.approx(8.2, rel=0.2)
    radius = np.hypot(sample.positions_mm[:, 0], sample.positions_mm[:, 1])
    assert radius.max() <= 0.1 and np.abs(sample.positions_mm[:, 2]).max() <= 0.15


def test_orientations_uniform_on_so3():
    u = random_orientations(20_000, 0)
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", u, u), np.broadcast_to(np.eye(3), u.shape), atol=1e-12)
    assert np.abs(u.mean(axis=0)).max() < 0.02  # E[R] = 0 for the Haar measure
    angle = Rotation.from_matrix(u).magnitude()
    assert angle.mean() == pytest.approx(np.pi / 2 + 2 / np.pi, abs=0.02)  # density (1 - cos w) / pi


def test_euler_and_rodrigues_agree():
    rot = Rotation.random(5, random_state=1)
    u_euler = orientation_matrices(rot.as_euler("ZXZ"), "euler_bunge")
    rotvec = rot.as_rotvec()
    angle = np.linalg.norm(rotvec, axis=1, keepdims=True)
    u_rod = orientation_matrices(rotvec / angle * np.tan(angle / 2), "rodrigues")
    np.testing.assert_allclose(u_euler, rot.as_matrix(), atol=1e-12)
    np.testing.assert_allclose(u_rod, rot.as_matrix(), atol=1e-12)
    # Bunge: U = g^T with g = Rz(phi2) Rx(Phi) Rz(phi1) passive
    phi1, big_phi, phi2 = 0.3, 0.5, 0.7
    g = rotation_z(np.rad2deg(-phi2)) @ Rotation.from_euler("x", -big_phi).as_matrix() @ rotation_z(np.rad2deg(-phi1))
    np.testing.assert_allclose(orientation_matrices([[phi1, big_phi, phi2]], "euler_bunge")[0], g.T, atol=1e-12)


def test_read_grain_map_layouts(tmp_path):
    ids = np.zeros((4, 5, 6), dtype=np.uint16)  # (z, y, x)
    ids[:, :, :3], ids[:, :, 3:] = 7, 2
    ids[0, 0, 0] = 0
    rot = Rotation.random(2, random_state=4)
    rotvec = rot.as_rotvec()
    rodrigues = rotvec / np.linalg.norm(rotvec, axis=1, keepdims=True) * np.tan(rot.magnitude() / 2)[:, None]
    per_voxel = np.zeros(ids.shape + (3,))
    per_voxel[ids == 2], per_voxel[ids == 7] = rodrigues[0], rodrigues[1]
    with h5py.File(tmp_path / "gm3d.h5", "w") as f:
        f["LabDCT/Data/GrainId"] = ids
        f["LabDCT/Data/Rodrigues"] = per_voxel
        f["LabDCT/Spacing"] = [0.005, 0.005, 0.005]
    euler = np.zeros((8, 3))
    euler[2], euler[7] = rot[0].as_euler("ZXZ"), rot[1].as_euler("ZXZ")
    with h5py.File(tmp_path / "d3d.dream3d", "w") as f:
        f["DataContainers/ImageDataContainer/CellData/FeatureIds"] = ids[..., None].astype(np.int32)
        f["DataContainers/ImageDataContainer/CellFeatureData/AvgEulerAngles"] = euler
        f["DataContainers/ImageDataContainer/_SIMPL_GEOMETRY/SPACING"] = [5.0, 5.0, 5.0]
    a = read_grain_map(tmp_path / "gm3d.h5")
    with h5py.File(tmp_path / "d3d.dream3d", "r") as f:
        b = read_grain_map(f, layout="dream3d")
    for sample in (a, b):
        assert sample.n_voxels == ids.size - 1 and sample.n_grains == 2
        assert sample.voxel_mm == pytest.approx(0.005)
        np.testing.assert_allclose(sample.orientations, rot.as_matrix(), atol=1e-12)  # ids 2, 7 -> 0, 1
        assert np.bincount(sample.grain_ids).tolist() == [60, 59]
        np.testing.assert_allclose(sample.positions_mm.min(axis=0), [-0.0125, -0.01, -0.0075])
    with pytest.raises(InputError):
        read_grain_map(tmp_path / "gm3d.h5", layout="dream3d")


# --- geometry -------------------------------------------------------------------------------


def test_geometry_presets_and_json():
    focusing = GEOMETRY_PRESETS["laue_focusing"]
    assert focusing.lss_mm == focusing.lsd_mm == 11.0 and focusing.detector_shape == (2032, 2032)
    assert len(focusing.omegas_deg) == 181 and focusing.omegas_deg[-1] - focusing.omegas_deg[0] == 360
    assert LabdctGeometry.from_dict(json.loads(json.dumps(focusing.to_dict()))) == focusing
    if FE_JSON.exists():
        on_disk = json.loads(FE_JSON.read_text())
        assert {k: on_disk[k] for k in FE_FARFIELD_JSON} == FE_FARFIELD_JSON
    fe = GEOMETRY_PRESETS["fe_farfield"]
    assert (fe.lss_mm, fe.lsd_mm, fe.detector_shape) == (100.0, 99.969, (1024, 1024))
    assert fe.material.name == "Fe" and fe.material.lattice == "bcc" and fe.energy_window_kev == (15.0, 110.0)
    assert fe.n_projections == 121 and fe.omegas_deg[40] == 60.0
    assert fe.tilt_rad == (-0.000235, 0.035985, -0.004223) and fe.beam_stop_px == ((420, 610), (420, 610))
    custom = geometry_from_json({"sample_to_detector_mm": 30.0, "material": {"element": "Ni"}})
    assert custom.lsd_mm == 30.0 and custom.lss_mm == 11.0 and custom.material.lattice == "fcc"
    binned = focusing.binned(8)
    assert binned.detector_shape == (254, 254) and binned.beam_center_px == (126.5, 126.5)
    # the same detector point in mm maps to matching pixel coordinates
    np.testing.assert_allclose(
        (np.array(binned.mm_to_px(1.0, -2.0)) + 0.5) * 8 - 0.5, focusing.mm_to_px(1.0, -2.0), atol=1e-9
    )
    with pytest.raises(ValueError):
        geometry_from_json(FE_FARFIELD_JSON, base="laue_focussing_typo")


def test_tilted_detector_frame_orthonormal():
    frame = np.stack(GEOMETRY_PRESETS["fe_farfield"].detector_frame()[1:])
    np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(frame[[2, 0, 1]]) == pytest.approx(1.0)  # (normal, e_y, e_z) right-handed


# --- Bragg ---------------------------------------------------------------------------------


def test_diffraction_events_obey_braggs_law():
    rng = np.random.default_rng(0)
    geometry = dataclasses.replace(GEOMETRY_PRESETS["fe_farfield"], beam_stop_px=None)
    n = 20_000
    positions = rng.uniform(-0.2, 0.2, (n, 3))
    refl = reflection_set("Fe", 4)
    g = (random_orientations(n, rng) @ refl.g_crystal[rng.integers(len(refl), size=n)][:, :, None])[..., 0]
    ev = diffraction_events(positions, g, geometry)
    v = ev["valid"]
    assert v.sum() > 200
    low, high = geometry.energy_window_kev
    assert ((ev["energy_kev"][v] >= low) & (ev["energy_kev"][v] <= high)).all()
    # 2 theta measured between the incident ray and the ray to the detector point
    origin, e_y, e_z, _ = geometry.detector_frame()
    hit = origin + ev["y_mm"][v, None] * e_y + ev["z_mm"][v, None] * e_z
    out = hit - positions[v]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    two_theta = np.arccos(np.clip((out * ev["k_in"][v]).sum(axis=1), -1, 1))
    d = 1 / np.linalg.norm(g[v], axis=1)
    np.testing.assert_allclose(HC_KEV_ANGSTROM / ev["energy_kev"][v], 2 * d * np.sin(two_theta / 2), rtol=1e-9)
    # the diffracted ray lies in the plane of k_in and g
    normal = np.cross(ev["k_in"][v], g[v])
    assert np.abs((normal * out).sum(axis=1)).max() < 1e-9 * np.abs(normal).max()


def test_cylinder_exit_distance():
    points = np.array([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.0, 0.0, 0.0]])
    directions = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.6, 0.0, 0.8]])
    np.testing.assert_allclose(cylinder_exit_distance(points, directions, 0.2, 0.1), [0.1, 0.15, 0.0625])


# --- projections ---------------------------------------------------------------------------


def test_single_grain_spot_position_and_omega_by_hand():
    """Identity-oriented Fe voxel at the origin, {110} only, no tilt.

    At omega, g(011) = (-sin w, cos w, 1)/a, so sin(theta) = sin(w)/sqrt(2), E = hc/(a sin w),
    k_out = (cos^2 w, sin w cos w, sin w): the spot is at y = Lsd tan w, z = Lsd tan w / cos w,
    and appears only while E(w) lies in the window.
    """
    geometry = plain_geometry(n=640)  # +-4.3 mm: every spot of the scan lies well inside
    refl = reflection_set("Fe", 1)
    sample = point_grains([[0.0, 0.0, 0.0]], np.eye(3)[None])
    a, (low, high) = 2.8665, geometry.energy_window_kev
    w_min, w_max = np.rad2deg(np.arcsin(HC_KEV_ANGSTROM / (a * np.array([high, low]))))
    for omega in np.arange(0.5, 22.0, 1.0):
        _, _, spots = simulate_projection(sample, geometry, omega, reflections=refl, psf_sigma_px=0.7)
        row = np.flatnonzero((spots["h"] == 0) & (spots["k"] == 1) & (spots["l"] == 1))
        assert len(row) == int(w_min < omega < w_max), omega
        if len(row):
            w = np.deg2rad(omega)
            y = geometry.lsd_mm * np.tan(w)
            assert spots["centroid_y_mm"][row[0]] == pytest.approx(y, abs=1e-9)
            assert spots["centroid_z_mm"][row[0]] == pytest.approx(y / np.cos(w), abs=1e-9)
            assert spots["energy_kev"][row[0]] == pytest.approx(HC_KEV_ANGSTROM / (a * np.sin(w)), rel=1e-9)


def test_every_spot_obeys_braggs_law():
    """Point grains, tilted detector: spot centroid, energy and hkl satisfy lambda = 2 d sin(theta)."""
    rng = np.random.default_rng(7)
    geometry = plain_geometry(n=400, pixel=0.02, tilt_rad=(0.01, -0.02, 0.015))
    positions = rng.uniform(-0.08, 0.08, (40, 3))
    sample = point_grains(positions, random_orientations(40, rng))
    omega = 37.0
    _, _, spots = simulate_projection(sample, geometry, omega, psf_sigma_px=0.8)
    assert len(spots["label"]) > 20
    low, high = geometry.energy_window_kev
    assert ((spots["energy_kev"] >= low) & (spots["energy_kev"] <= high)).all()
    ny, nz = geometry.detector_shape
    inside = (np.minimum(spots["centroid_y_px"], ny - spots["centroid_y_px"]) > 6) & (
        np.minimum(spots["centroid_z_px"], nz - spots["centroid_z_px"]) > 6
    )
    origin, e_y, e_z, _ = geometry.detector_frame()
    lab = positions[spots["grain"][inside]] @ rotation_z(omega).T
    hit = origin + spots["centroid_y_mm"][inside, None] * e_y + spots["centroid_z_mm"][inside, None] * e_z
    k_in = lab - geometry.source_mm
    k_out = hit - lab
    cos_2theta = (k_in * k_out).sum(1) / np.linalg.norm(k_in, axis=1) / np.linalg.norm(k_out, axis=1)
    hkl = np.stack([spots[key][inside] for key in "hkl"], axis=1)
    d = 2.8665 / np.linalg.norm(hkl, axis=1)
    np.testing.assert_allclose(
        HC_KEV_ANGSTROM / spots["energy_kev"][inside], 2 * d * np.sqrt((1 - cos_2theta) / 2), rtol=1e-7
    )


def test_friedel_pair_mirror_symmetry():
    """A grain centrosymmetric about the origin: -hkl at omega + 180 deg is hkl at omega mirrored in z.

    Rotating by 180 deg and negating g maps (position, g) -> (M position, M g) with
    M = diag(1, 1, -1) (the grain being centrosymmetric), and M fixes the source and an
    untilted detector, so the spot of -hkl at omega + 180 is the spot of hkl at omega
    reflected across the horizontal line z = beam centre: (y, z) -> (y, -z), same intensity.
    """
    geometry = plain_geometry(n=320, pixel=0.0168)
    sample = sphere_grain(12.0, 3.0, random_orientations(1, 11)[0])
    n_pairs = 0
    for omega in (23.0, 97.0, 151.0):
        image_a, _, a = simulate_projection(sample, geometry, omega)
        image_b, _, b = simulate_projection(sample, geometry, omega + 180.0)
        assert len(a["label"]) == len(b["label"])
        np.testing.assert_allclose(image_b, image_a[:, ::-1], rtol=1e-4, atol=1e-6 * image_a.max())
        key_a = {(h, k, l): i for i, (h, k, l) in enumerate(zip(a["h"], a["k"], a["l"]))}
        for j, hkl in enumerate(zip(b["h"], b["k"], b["l"])):
            i = key_a[tuple(-x for x in hkl)]
            assert b["centroid_y_mm"][j] == pytest.approx(a["centroid_y_mm"][i], abs=1e-9)
            assert b["centroid_z_mm"][j] == pytest.approx(-a["centroid_z_mm"][i], abs=1e-9)
            assert b["intensity"][j] == pytest.approx(a["intensity"][i], rel=1e-9)
            n_pairs += 1
    assert n_pairs >= 4


def spot_aspect_ratios(image, labels, spots, geometry):
    """Radial / tangential RMS extent of each spot about its centroid (radial: from the beam centre)."""
    ratios = []
    for label, cy, cz in zip(spots["label"], spots["centroid_y_px"], spots["centroid_z_px"]):
        iy, iz = np.nonzero(labels == label)
        w = image[iy, iz]
        radial = np.array([cy, cz]) - geometry.beam_center_px
        radial /= np.linalg.norm(radial)
        dy, dz = iy - cy, iz - cz
        r, t = dy * radial[0] + dz * radial[1], -dy * radial[1] + dz * radial[0]
        ratios.append(np.sqrt((w * r**2).sum() / (w * t**2).sum()))
    return np.array(ratios)


def test_laue_focusing_compresses_spots_radially():
    """Spherical grain, Lss = Lsd: spots are narrow radially; with Lsd = 4 Lss they are not."""
    sample = sphere_grain(20.0, 2.5, random_orientations(1, 5)[0])
    focusing = plain_geometry(n=700, pixel=0.0067, window=(10.0, 140.0))
    distant = plain_geometry(lsd=44.0, n=700, pixel=0.0268, window=(10.0, 140.0))
    focused, defocused = [], []
    for omega in (0.0, 60.0, 120.0):
        for geometry, ratios in ((focusing, focused), (distant, defocused)):
            image, labels, spots = simulate_projection(sample, geometry, omega, psf_sigma_px=0.5)
            big = spots["area_px"] >= 12
            ratios.extend(spot_aspect_ratios(image, labels, {k: v[big] for k, v in spots.items()}, geometry))
    assert len(focused) >= 5 and len(defocused) >= 5
    assert np.median(focused) < 0.35
    assert np.median(defocused) > 2 * np.median(focused)


def test_projection_outputs_and_labels():
    geometry = GEOMETRY_PRESETS["laue_focusing"].binned(8)
    sample = make_polycrystal("D18", 0, voxel_um=4.0)
    image, labels, spots = simulate_projection(sample, geometry, 10.0, rng=1, background=100.0)
    again = simulate_projection(sample, geometry, 10.0, rng=1, background=100.0)[0]
    np.testing.assert_array_equal(image, again)  # seeded jitter is reproducible
    assert image.dtype == np.float32 and labels.dtype == np.int32 and image.shape == labels.shape == (254, 254)
    assert set(spots) == set(SPOT_TABLE_KEYS)
    n = len(spots["label"])
    assert n > 50 and all(len(v) == n for v in spots.values())
    stop = geometry.beam_stop_mask()
    assert (image[stop] == 0).all() and (labels[stop] == 0).all() and (image[~stop] >= 100.0).all()
    assert labels.max() <= n and (np.bincount(labels.ravel(), minlength=n + 1)[1:] == spots["area_px"]).all()
    assert (spots["intensity"] > 0).all() and (spots["omega_deg"] == 10.0).all()
    # total deposited signal equals the sum of spot intensities
    assert (image[~stop] - 100.0).sum() == pytest.approx(spots["intensity"].sum(), rel=1e-4)
    # a labelled pixel carries signal
    assert (image[labels > 0] > 100.0).all()


def test_grain_level_culling_is_exact(monkeypatch):
    """Skipping (grain, hkl) pairs judged at grain centroids loses no voxel-reflection hit."""
    geometry = dataclasses.replace(GEOMETRY_PRESETS["laue_focusing"].binned(8), tilt_rad=(0.01, 0.02, -0.01))
    sample = make_polycrystal("D18", 2, voxel_um=5.0)
    culled = simulate_projection(sample, geometry, -33.0, rng=4, psf_sigma_px=2.0)

    def every_pair(sample, lab_positions, g_lab, *args):
        return np.divmod(np.arange(g_lab.shape[0] * g_lab.shape[1]), g_lab.shape[1])

    monkeypatch.setattr(labdct_projection, "_candidate_pairs", every_pair)
    brute = simulate_projection(sample, geometry, -33.0, rng=4, psf_sigma_px=2.0)
    np.testing.assert_allclose(culled[0], brute[0], rtol=1e-6, atol=1e-6 * brute[0].max())
    np.testing.assert_array_equal(culled[1], brute[1])
    assert len(culled[2]["label"]) == len(brute[2]["label"]) > 50
