"""Ray job entrypoint for any rayproc command: the same arguments as ``rayproc``.

    ray job submit --working-dir . -- python jobs/rayproc_job.py labdct segment \\
        s3://BUCKET/denoised.zarr s3://BUCKET/spots.zarr --method dl

Every CLI stage runs this way (``ingest``, ``bcdi simulate|train|finetune|inpaint|evaluate``,
``labdct simulate|background|calibrate|synth|train|denoise|segment|evaluate``); the exit status
is the command's, so a bad argument is a FAILED job whose log ends with ``rayproc: error: ...``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the working dir

from rayproc.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
