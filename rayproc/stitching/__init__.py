"""Sliding-window inference in three pieces: placement, importance weights, merging.

``placement`` says where windows go, ``weights`` how much each voxel of a window counts,
``merger`` where overlapping predictions are averaged; ``inferer`` runs them on one array and
``chunking`` plans the same computation chunk by chunk (with halos) for distribution.
"""

from rayproc.stitching.chunking import ChunkTask, plan_chunks, predict_chunk
from rayproc.stitching.inferer import sliding_window_predict
from rayproc.stitching.merger import ArrayMerger, Merger, finalize_moments, update_moments
from rayproc.stitching.placement import gap_windows, grid_windows, window_coverage, windows_holding
from rayproc.stitching.weights import BLEND_MODES, importance_map

__all__ = [
    "ArrayMerger",
    "BLEND_MODES",
    "ChunkTask",
    "Merger",
    "finalize_moments",
    "gap_windows",
    "grid_windows",
    "importance_map",
    "plan_chunks",
    "predict_chunk",
    "sliding_window_predict",
    "update_moments",
    "window_coverage",
    "windows_holding",
]
