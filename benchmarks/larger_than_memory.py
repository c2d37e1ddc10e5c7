"""Inpaint a BCDI volume larger than the memory of the job's object stores and actors, on a
three-node Ray cluster on this machine, and measure each process's peak memory.

The cluster (``tests/multinode.py``): a head that runs the driver only and two worker nodes of
one CPU each, every node with a ``--object-store-memory`` of ``--object-store-mb``. The input
(``--size``^3 float32, a synthetic Bragg peak, written slab by slab) is inpainted by
``jobs/inpaint.py`` submitted over the Jobs API, with a 6 px cross through the peak, in
``--chunk``^3 chunks (each actor reads its chunk plus the portions' halo and writes the chunk).
A sampler reads the resident memory of every process of every node twice a second; the peaks of
the stage actors, the job's driver and each node's total are printed with the run time, next to
the volume's size, the object stores' and one chunk-with-halo's. Spilled objects are counted in
the nodes' temp dirs. The stores are on local disk (every node sees it, as a shared file
system would); the cluster's ``s3://`` path is exercised by ``tests/test_multinode.py``.

    RAY_AUTH_MODE=disabled nice python benchmarks/larger_than_memory.py [--size 768] [--chunk 128] [--stride 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


class PeakSampler(threading.Thread):
    """Peak resident MB of every process of the cluster's nodes, by role, sampled every ``period`` s."""

    def __init__(self, cluster, period: float = 0.5):
        super().__init__(daemon=True)
        self.cluster, self.period = cluster, period
        self.peaks: dict[str, float] = {}  # role -> peak MB of one process
        self.node_peaks: dict[str, float] = {}  # node -> peak MB of all its processes together
        self.stop = threading.Event()

    @staticmethod
    def role(cmdline: list[str]) -> str:
        text = " ".join(cmdline)
        if "_StageActor" in text:
            return "stage actor"
        if "jobs/inpaint.py" in text:
            return "job driver"
        if "raylet" in text:
            return "raylet (+ object store)"
        if "gcs_server" in text:
            return "gcs_server"
        return "other Ray processes"

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            for name, node in list(self.cluster.nodes.items()):
                total = 0.0
                for proc in node.processes():
                    try:
                        mb = proc.memory_info().rss / 2**20
                        role = self.role(proc.cmdline())
                    except psutil.Error:
                        continue
                    total += mb
                    self.peaks[role] = max(self.peaks.get(role, 0.0), mb)
                self.node_peaks[name] = max(self.node_peaks.get(name, 0.0), total)
            self.stop.wait(self.period)


def spilled_bytes(cluster) -> tuple[int, int]:
    """(files, bytes) under the nodes' temp dirs that Ray spilled objects to."""
    files = size = 0
    for node in cluster.nodes.values():
        for path in Path(node.temp_dir).rglob("*"):
            if "spill" in str(path) and path.is_file():
                files += 1
                size += path.stat().st_size
    return files, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--object-store-mb", type=int, default=100)
    parser.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--root", default=None, help="folder for the stores (default: a temporary one)")
    args = parser.parse_args()

    from _volumes import write_volume_store
    from tests.multinode import LocalCluster, job_env, submit, wait

    root = Path(tempfile.mkdtemp(prefix="ltm-", dir=args.root))
    source, out = root / "in.zarr", root / "out.zarr"
    n = args.size
    try:
        t0 = time.perf_counter()
        write_volume_store(str(source), n, chunk=args.chunk)
        print(f"input: {n}^3 float32 = {n**3 * 4 / 1e9:.2f} GB, written in {time.perf_counter() - t0:.0f} s")
        workers = {"node_a": 1, "node_b": 1}
        with LocalCluster(workers, object_store_bytes=args.object_store_mb * 10**6) as cluster:
            client = cluster.job_client()
            env = {k: v for k, v in job_env("http://unused").items() if not k.startswith("AWS_")}
            model = f" --model {args.model}" if args.model else ""
            half = n // 2
            sampler = PeakSampler(cluster)
            sampler.start()
            t0 = time.perf_counter()
            job_id = submit(client, f"python jobs/inpaint.py {source} {out} --gap x:{half - 3}:6 --gap y:{half - 3}:6 "
                                    f"--chunk {args.chunk} --stride {args.stride} --workers 2 --no-progress{model}", env)
            status, logs = wait(client, job_id, 6 * 3600)
            seconds = time.perf_counter() - t0
            sampler.stop.set()
            sampler.join()
            files, spilled = spilled_bytes(cluster)
        print(logs.strip().splitlines()[-1] if logs.strip() else "(no job log)")
        if status != "SUCCEEDED":
            raise SystemExit(f"job {status}:\n{logs[-3000:]}")
        halo = 32  # a 32^3 portion reaching into the chunk from beside it
        chunk_mb = (args.chunk + 2 * halo) ** 3 * (4 + 1) / 2**20  # float32 intensity and bool mask
        stores = len(workers) + 1
        print(f"job: {seconds:.0f} s on 2 actors (one CPU each), chunk {args.chunk}^3, stride {args.stride}")
        print(f"volume {n**3 * 4 / 2**20:.0f} MB vs object stores {stores} x {args.object_store_mb} MB; one chunk "
              f"with its halo read by an actor: {chunk_mb:.0f} MB (intensity + mask)")
        for role, mb in sorted(sampler.peaks.items(), key=lambda kv: -kv[1]):
            print(f"  peak resident, one {role} process: {mb:7.0f} MB")
        for name, mb in sampler.node_peaks.items():
            print(f"  peak resident, all processes of {name}: {mb:7.0f} MB")
        print(f"spilled objects: {files} files, {spilled / 2**20:.1f} MB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
