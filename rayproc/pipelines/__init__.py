"""Stages: the functions the CLI and ``jobs/`` call; they join the pure core to storage and Ray.

One module per stage, per modality: :mod:`rayproc.pipelines.bcdi` and
:mod:`rayproc.pipelines.labdct`, plus :mod:`~rayproc.pipelines.ingest` (real detector data into
a store). Shared by the inference stages: :mod:`~rayproc.pipelines._stage` (the resumable
actor-stage shell).
"""
