"""BCDI detector-gap inpainting, the pure core (numpy/torch; no storage, Ray or CLI).

Physics of the training data: :mod:`~rayproc.bcdi.crystal` (faceted crystals with strain
phase), :mod:`~rayproc.bcdi.diffraction` (far-field diffraction and Poisson counts); data:
:mod:`~rayproc.bcdi.gaps` (gap masks), :mod:`~rayproc.bcdi.portions` (32^3 portions and their
normalisation), :mod:`~rayproc.bcdi.portion_dataset` (seeded training portions); network:
:mod:`~rayproc.bcdi.network` (gapnet and the published masto2024 3D U-Net); maths:
:mod:`~rayproc.bcdi.inpaint` (sliding portions along a gap), :mod:`~rayproc.bcdi.metrics`
(in-gap PCC, eq. 1 of Masto et al. 2024), :mod:`~rayproc.bcdi.baselines` (interpolation),
:mod:`~rayproc.bcdi.realspace`, :mod:`~rayproc.bcdi.statistics` (what a portion looks like: counts,
oversampling, fringe visibility; simulated vs real). The shells are in :mod:`rayproc.pipelines.bcdi`.
"""

from __future__ import annotations

from rayproc._lazy import lazy_exports

# public name -> submodule, imported on first use
_EXPORTS = {
    **dict.fromkeys(['interpolate_gaps'], 'baselines'),
    **dict.fromkeys([
        'CrystalParams', 'crystal_geometry', 'crystal_object', 'facet_normals', 'random_crystal_params',
        'rotation_matrix',
    ], 'crystal'),
    **dict.fromkeys([
        'BcdiSampleParams', 'detector_counts', 'diffraction_intensity', 'expected_counts', 'random_sample_params',
        'render_sample', 'simulate_bcdi_sample',
    ], 'diffraction'),
    **dict.fromkeys([
        'GapSpec', 'detector_gap_mask', 'frame_mask_volume', 'gap_mask', 'gaps_to_mask', 'parse_gap', 'random_gap',
    ], 'gaps'),
    **dict.fromkeys([
        'check_known_counts', 'composite', 'inpaint_volume', 'plan_windows', 'predict_portions',
    ], 'inpaint'),
    **dict.fromkeys(['gap_pcc', 'relative_error'], 'metrics'),
    **dict.fromkeys([
        'BcdiNetConfig', 'DilatedBlock', 'GapNet', 'Masto2024Net', 'build_bcdi_net', 'count_parameters',
        'flops_per_portion', 'line_fill', 'pull_push_fill',
    ], 'network'),
    **dict.fromkeys([
        'NormStats', 'bragg_peak_position', 'crop', 'denormalise_portion', 'normalise_batch', 'normalise_portion',
        'portion_origins',
    ], 'portions'),
    **dict.fromkeys(['PortionDataset', 'PortionPlan'], 'portion_dataset'),
    **dict.fromkeys(['object_from_amplitude', 'phase_std', 'support'], 'realspace'),
    **dict.fromkeys([
        'STATISTICS', 'autocorrelation', 'background_level', 'fringe_visibility', 'hot_pixel_mask', 'oversampling',
        'portion_statistics',
    ], 'statistics'),
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
