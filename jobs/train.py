"""Ray job entrypoint for BCDI training: the same arguments as ``rayproc bcdi train``.

    ray job submit --working-dir . -- python jobs/train.py DATA... --out MODEL_DIR --workers 4 --gpu

On a cluster, DATA, ``--out`` and ``--storage`` should be shared storage (``s3://`` for data
and checkpoints); rerunning the same job resumes from the last checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the working dir

from rayproc.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bcdi", "train", *sys.argv[1:]]))
