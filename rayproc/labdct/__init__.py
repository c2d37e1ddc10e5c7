"""LabDCT spot denoising, the pure core (numpy/torch; no storage, Ray or CLI).

Forward model (Fang, Juul Jensen & Zhang 2020): :mod:`~rayproc.labdct.crystallography`
(structure factors, reflections), :mod:`~rayproc.labdct.polycrystal` (virtual grains),
:mod:`~rayproc.labdct.spectrum` (tungsten tube spectrum), :mod:`~rayproc.labdct.geometry`
(Laue-focusing and far-field set-ups), :mod:`~rayproc.labdct.bragg` (where is the Bragg
condition), :mod:`~rayproc.labdct.projection` (a projection and its spot table); training data:
:mod:`~rayproc.labdct.background`, :mod:`~rayproc.labdct.synthesis`,
:mod:`~rayproc.labdct.calibration`, :mod:`~rayproc.labdct.tiles`; network:
:mod:`~rayproc.labdct.network`; segmentation and scores: :mod:`~rayproc.labdct.standard_routine`,
:mod:`~rayproc.labdct.denoise`, :mod:`~rayproc.labdct.detector_masks` (hot pixels, beam stop),
:mod:`~rayproc.labdct.spots`, :mod:`~rayproc.labdct.evaluation`; grains from spots:
:mod:`~rayproc.labdct.indexing`; realism of simulated vs real frames: :mod:`~rayproc.labdct.realism`.
The shells are in :mod:`rayproc.pipelines.labdct`.
"""

from __future__ import annotations

from rayproc._lazy import lazy_exports

# public name -> submodule, imported on first use
_EXPORTS = {
    **dict.fromkeys([
        'extract_background', 'fill_holes', 'parametric_background', 'rolling_median', 'sobel_magnitude',
        'spot_fill_mask',
    ], 'background'),
    **dict.fromkeys([
        'bragg_energies', 'detector_intersection', 'diffracted_directions', 'diffraction_events',
        'incident_directions',
    ], 'bragg'),
    **dict.fromkeys(['bin_frames', 'bin_to_shape', 'detected_spot_snr', 'match_spot_gain'], 'calibration'),
    **dict.fromkeys([
        'Material', 'ReflectionSet', 'd_spacing', 'get_material', 'hkl_families', 'is_allowed', 'reflection_set',
        'structure_factor', 'symmetric_variants',
    ], 'crystallography'),
    **dict.fromkeys([
        'denoise_frames', 'dl_spot_labels', 'normalise_frames', 'plan_tiles', 'predict_tiles',
    ], 'denoise'),
    **dict.fromkeys([
        'background_residual', 'mean_snr', 'recall_record', 'score', 'truth_snr', 'tune_relative',
    ], 'evaluation'),
    **dict.fromkeys(['LabdctGeometry', 'geometry_from_json', 'rotation_z'], 'geometry'),
    **dict.fromkeys([
        'IndexingParams', 'compare_grains', 'index_grains', 'measured_spots', 'misorientation_deg', 'predict_spots',
    ], 'indexing'),
    **dict.fromkeys([
        'FeatureNet', 'LabdctNetConfig', 'LabdctUnet', 'build_labdct_net', 'feature_loss', 'gram_matrix', 'icnr_',
        'load_feature_net', 'vgg16_bn_features',
    ], 'network'),
    **dict.fromkeys([
        'Polycrystal', 'PolycrystalSpec', 'cylinder_voxels', 'grain_centroids', 'make_polycrystal',
        'orientation_matrices', 'random_orientations', 'read_grain_map',
    ], 'polycrystal'),
    **dict.fromkeys([
        'PHYSICS_PRESETS', 'beam_stop_transmission', 'cylinder_exit_distance', 'physics_for_binning',
        'simulate_projection',
    ], 'projection'),
    **dict.fromkeys([
        'beamstop_edge_profile', 'compare_summaries', 'detect_spots', 'local_noise_map', 'normalise_frame_flux',
        'radial_profile', 'realism_summary', 'spot_measurements',
    ], 'realism'),
    **dict.fromkeys(['tube_spectrum'], 'spectrum'),
    **dict.fromkeys(['label_spots', 'match_spots', 'number_per_frame', 'pixel_iou', 'recall_by_snr', 'spot_table',
                     'spots_per_frame'], 'spots'),
    **dict.fromkeys(['dark_region_mask', 'hot_pixel_mask', 'persistent_spot_mask', 'sample_frames'], 'detector_masks'),
    **dict.fromkeys([
        'StandardRoutineParams', 'log_spot_labels', 'residual_noise', 'robust_noise', 'rolling_median_subtract',
        'standard_routine', 'tune_standard_routine',
    ], 'standard_routine'),
    **dict.fromkeys(['detector_at_pixel', 'detector_counts', 'hot_pixel_map', 'log_segmentation',
                     'pixel_noise_variance', 'synthesize_input'], 'synthesis'),
    **dict.fromkeys(['TileDataset', 'training_pair'], 'tiles'),
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
