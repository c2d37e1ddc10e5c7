"""Ray job entrypoint for evaluations: the same arguments as ``rayproc bcdi evaluate`` or
``rayproc labdct evaluate``, after an optional first argument naming the family (default bcdi).

    ray job submit --working-dir . -- python jobs/evaluate.py s3://BUCKET/scan.zarr --gap x:124:6 \\
        --gap y:123:6 --out evaluation --gpu
    ray job submit --working-dir . -- python jobs/evaluate.py labdct s3://BUCKET/synth-test.zarr \\
        --out evaluation --real s3://BUCKET/fe-frames.zarr --gpu

The evaluation runs in the job's driver process; ``--out`` is a folder on the machine it runs on.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the working dir

from rayproc.cli import main  # noqa: E402

FAMILIES = ("bcdi", "labdct")

if __name__ == "__main__":
    args = sys.argv[1:]
    family = args.pop(0) if args and args[0] in FAMILIES else "bcdi"
    sys.exit(main([family, "evaluate", *args]))
