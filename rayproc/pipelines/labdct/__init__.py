"""LabDCT stages: what ``rayproc labdct ...`` and ``jobs/`` call (the core joined to storage and Ray).

:mod:`~rayproc.pipelines.labdct.simulate` (projections on Ray actors),
:mod:`~rayproc.pipelines.labdct.background` (background images of real frames),
:mod:`~rayproc.pipelines.labdct.calibrate` (spot gain matched to real frames),
:mod:`~rayproc.pipelines.labdct.synth` (noisy inputs and LoG targets),
:mod:`~rayproc.pipelines.labdct.train` (Ray Train), :mod:`~rayproc.pipelines.labdct.denoise`
(frames on inference actors), :mod:`~rayproc.pipelines.labdct.segment` (spot labels by the
network or the standard routine), :mod:`~rayproc.pipelines.labdct.evaluate` (network vs tuned
standard routine; figures and tables in :mod:`~rayproc.pipelines.labdct.evaluation_report`),
:mod:`~rayproc.pipelines.labdct.report` (simulated vs real frames),
:mod:`~rayproc.pipelines.labdct.index` (grains from spots, seeds searched on Ray actors).
"""

from __future__ import annotations

from rayproc._lazy import lazy_exports

_EXPORTS = {"simulate_labdct": "simulate", "extract_background_store": "background", "calibrate_labdct": "calibrate",
            "synthesize_labdct": "synth", "train_labdct": "train", "denoise_labdct": "denoise",
            "segment_labdct": "segment", "evaluate_labdct": "evaluate",
            "index_labdct": "index"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
