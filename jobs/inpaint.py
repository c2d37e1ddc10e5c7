"""Ray job entrypoint for BCDI gap inpainting: the same arguments as ``rayproc bcdi inpaint``.

    ray job submit --working-dir . -- python jobs/inpaint.py s3://BUCKET/scan.zarr s3://BUCKET/inpainted.zarr \\
        --gap x:255:6 --gap y:255:6 --workers 8 --gpu

On a cluster, the input and output should be shared storage (``s3://``); rerunning the same job
recomputes only the chunks that are missing.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the working dir

from rayproc.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bcdi", "inpaint", *sys.argv[1:]]))
