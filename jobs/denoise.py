"""Ray job entrypoint for LabDCT spot denoising: the same arguments as ``rayproc labdct denoise``.

    ray job submit --working-dir . -- python jobs/denoise.py s3://BUCKET/projections.zarr \\
        s3://BUCKET/denoised.zarr --workers 8 --gpu

On a cluster, the input and output should be shared storage (``s3://``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the working dir

from rayproc.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["labdct", "denoise", *sys.argv[1:]]))
