"""Ray job entrypoint: simulate a training set on the cluster the job runs on.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/simulate.py bcdi s3://BUCKET/bcdi/sim.zarr --count 1024 --size 64 --workers 32

The first argument names the data family (``bcdi``, later ``labdct``); the rest are the options of
``rayproc <family> simulate``. Under ``ray job submit`` the pipeline joins the job's cluster.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the working dir

from rayproc.cli import main  # noqa: E402


def run(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python jobs/simulate.py FAMILY OUT [OPTIONS]  (FAMILY: bcdi, labdct; "
              "options: rayproc FAMILY simulate --help)", file=sys.stderr)
        return 2
    family, *rest = argv
    return main([family, "simulate", *rest])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
