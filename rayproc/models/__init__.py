"""Shared by both modalities (pure torch): the model-directory artefact and the losses.

:mod:`~rayproc.models.artifact` (save, load and resolve model directories: weights with their
sha256, architecture, normalisation, provenance, model card) and :mod:`~rayproc.models.losses`
(MAE, 3D SSIM and gradient terms). The networks live with their modality:
:mod:`rayproc.bcdi.network` and :mod:`rayproc.labdct.network`.
"""
