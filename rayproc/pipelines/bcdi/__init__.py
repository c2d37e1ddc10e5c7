"""BCDI stages: what ``rayproc bcdi ...`` and ``jobs/`` call (the core joined to storage and Ray).

:mod:`~rayproc.pipelines.bcdi.simulate` (training volumes on Ray actors),
:mod:`~rayproc.pipelines.bcdi.train` (Ray Train; also ``finetune``),
:mod:`~rayproc.pipelines.bcdi.inpaint` (chunks of a volume on inference actors),
:mod:`~rayproc.pipelines.bcdi.evaluate` (gaps imposed on a gap-free volume, model vs
interpolation), :mod:`~rayproc.pipelines.bcdi.portion_data` (training volumes read from stores).
"""

from __future__ import annotations

from rayproc._lazy import lazy_exports

_EXPORTS = {"simulate_bcdi": "simulate", "train_bcdi": "train", "finetune_bcdi": "train",
            "inpaint_bcdi": "inpaint", "evaluate_bcdi": "evaluate"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
