"""Training throughput: portions streamed from zarr vs the same portions from memory; 2 workers vs 1.

    python benchmarks/train_throughput.py [--volumes 8] [--size 64] [--portions 32] [--epochs 2]

1. One process, one torch thread: the same network trained on the same portions in the same
   order, once read through :class:`rayproc.bcdi.portion_dataset.PortionDataset` from a zarr
   store (cold cache at the start) and once from tensors prepared in memory beforehand. Target:
   zarr >= 95 % of memory. Runs alternate and the best of each is kept (shared machines).
2. Ray Train with 1 and with 2 workers (1 CPU each): training portions/s over all workers
   (epoch time, startup excluded), as ``rayproc bcdi train`` logs it.

The volumes come from the BCDI simulator (:mod:`rayproc.bcdi.diffraction`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader, Dataset

from rayproc.bcdi.portion_dataset import PortionDataset
from rayproc.pipelines.bcdi.portion_data import VolumeReader, list_volumes
from rayproc.runtime.epochs import EpochSampler, Precision, train_one_epoch
from rayproc.bcdi.network import BcdiNetConfig, build_bcdi_net
from rayproc.bcdi.diffraction import simulate_bcdi_sample
from rayproc.pipelines.bcdi.train import inpainting_step, train_bcdi
from rayproc.runtime.training import read_history
from rayproc.runtime import ray_session
from rayproc.storage import write_dataset


class _InMemory(Dataset):
    """Items prepared beforehand, served by the same (epoch-carrying) indices."""

    def __init__(self, items: dict, length: int):
        self.items, self.length = items, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def _rate(dataset, args, epochs: int) -> float:
    """Training portions per second over ``epochs`` epochs (fixed initial weights and order)."""
    torch.manual_seed(0)
    model = build_bcdi_net(BcdiNetConfig(args.arch))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = EpochSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    began = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        train_one_epoch(model, loader, optimizer, Precision(torch.device("cpu")), inpainting_step)
    return epochs * len(dataset) / (time.perf_counter() - began)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--portions", type=int, default=32, help="portions per volume per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--arch", default="gapnet")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "sim.zarr")
        volumes = np.stack([simulate_bcdi_sample(args.size, 0, i)[0] for i in range(args.volumes)])
        write_dataset(store, xr.Dataset({"intensity": (("sample", "z", "y", "x"), volumes)}),
                      chunks={"intensity": {"sample": 1}})
        refs = list_volumes([store])

        def streamed():
            return PortionDataset(refs, args.portions, read=VolumeReader(), seed=0)

        reference = streamed()
        n = len(reference)
        items = {e * n + i: reference[e * n + i] for e in range(args.epochs) for i in range(n)}
        memory = _InMemory(items, n)

        began = time.perf_counter()
        cold = streamed()
        for i in range(n):
            cold[i]
        loader_rate = n / (time.perf_counter() - began)
        began = time.perf_counter()
        for i in range(n):
            cold[n + i]
        warm_rate = n / (time.perf_counter() - began)

        zarr_rates, memory_rates = [], []
        for _ in range(args.repeats):
            zarr_rates.append(_rate(streamed(), args, args.epochs))
            memory_rates.append(_rate(memory, args, args.epochs))
        zarr_best, memory_best = max(zarr_rates), max(memory_rates)
        print(f"{args.volumes} volumes of {args.size}^3, {n} portions/epoch of 32^3, {args.arch}, "
              f"batch {args.batch_size}, {args.epochs} epochs, 1 thread")
        print(f"loader alone: {loader_rate:.0f} portions/s from zarr (cold cache), {warm_rate:.0f} warm")
        print(f"training from zarr:   {zarr_best:.1f} portions/s (runs: {', '.join(f'{r:.1f}' for r in zarr_rates)})")
        print(f"training from memory: {memory_best:.1f} portions/s (runs: {', '.join(f'{r:.1f}' for r in memory_rates)})")
        print(f"zarr / memory = {zarr_best / memory_best:.3f}  (target >= 0.95)")

        if args.skip_ray:
            return
        rates = {}
        with ray_session(cpus=2, workers=2):
            for workers in (1, 2):
                out = Path(folder) / f"model-{workers}"
                train_bcdi([store], str(out), workers=workers, epochs=args.epochs, arch=args.arch,
                           portions_per_volume=args.portions, batch_size=args.batch_size, progress=False)
                rows = read_history(out)
                rates[workers] = float(np.mean([r["portions_per_second"] for r in rows]))
                epochs = ", ".join(f"{r['seconds']:.1f} s" for r in rows)
                print(f"Ray Train, {workers} worker(s): {rates[workers]:.1f} portions/s (epochs: {epochs})")
        print(f"2 workers / 1 worker = {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
