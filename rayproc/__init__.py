"""rayproc: distributed deep-learning processing of X-ray diffraction data.

Two published methods on one engine:

* BCDI detector-gap inpainting (Masto et al., J. Appl. Cryst. 57 (2024)).
* LabDCT diffraction-spot denoising (Fang et al.).

Layers, from the inside out: pure numpy/torch core (``physics``, ``bcdi``,
``labdct``, ``models``, ``stitching``), thin shells for storage (``storage``)
and orchestration (``runtime``), pipelines (``pipelines``), then the CLI
(``cli``) and Ray job entrypoints (``jobs/``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
