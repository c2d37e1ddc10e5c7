"""One command that trains the BCDI gap-inpainting network on one GPU machine, without Ray or zarr.

    python3 benchmarks/bcdi_gpu_recipe.py --out $OUT/bcdi-gpu --eval-scan gold_crop.npy

1. Simulates ``--volumes`` training and ``--val-volumes`` validation volumes of ``--size``^3
   (:func:`rayproc.bcdi.diffraction.simulate_bcdi_sample`, sample ``(seed, index)``: the
   volumes do not depend on ``--processes``) on a process pool, kept in memory. The defaults,
   1000 volumes x 32 portions, give 32,000 training portions per epoch (Masto et al. [1]_
   trained on about 30,000).
2. Draws each epoch's gapped, normalised 32^3 portions
   (:class:`rayproc.bcdi.portion_dataset.PortionDataset`, fresh draws every epoch) on the same
   pool, volume by volume, into shared-memory buffers: the next epoch is drawn while this one
   trains, and a drawn epoch is copied to the GPU whole, so batches are cut on the device.
3. Trains with Adam (learning rate halved when the validation in-gap PCC stalls), bf16 autocast
   on CUDA (the loss in fp32, as :mod:`rayproc.runtime.epochs` does), on the loss of [1]_
   (:func:`rayproc.models.losses.inpainting_loss`), until the validation in-gap PCC ([1]_
   eq. 1, held-out volumes, fp32 forward) has not improved for ``--patience`` epochs or the
   wall-clock ``--budget-min`` (the whole command: simulation, training, evaluation, export)
   runs out (mid-epoch if need be; at least one step and one validation always run). The best
   epoch's weights are kept, and written out at every improvement, so a run killed later still
   leaves a model directory.
4. Writes the model directory (:func:`rayproc.models.artifact.save_model`: weights, config,
   metrics, provenance) plus ``metrics.jsonl`` (one row per epoch) and ``loss_curve.png``; with
   ``--eval-scan`` (a ``.npy`` volume, e.g. a crop of the gold scan around its Bragg peak made
   with ``--make-crop``), also ``paper_protocol.md``: the published protocol
   (``benchmarks/bcdi_paper_protocol.py``) for the new model, the shipped model, linear
   interpolation, the Poisson noise ceiling and the published figures.

Only the pure core is imported (numpy, scipy, torch, safetensors; never Ray, zarr, numcodecs,
s3fs, xraydb or spekpy), so the GPU machine runs it from the working tree without installing
rayproc; ``--check-imports`` fails the run if one of them was imported. ``--make-crop`` (run on
the CPU machine beforehand) is the only mode that may read a zarr store.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
"""

from __future__ import annotations

import time

_STARTED = time.monotonic()  # the budget counts from here (imports included)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import mmap  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]
for _path in (str(_ROOT), str(_ROOT / "benchmarks")):  # rayproc and the protocol, without installing
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rayproc import __version__  # noqa: E402
from rayproc.bcdi.diffraction import simulate_bcdi_sample  # noqa: E402
from rayproc.bcdi.gaps import GAP_KINDS  # noqa: E402
from rayproc.bcdi.metrics import gap_pcc  # noqa: E402
from rayproc.bcdi.network import BcdiNetConfig, build_bcdi_net, count_parameters, flops_per_portion  # noqa: E402
from rayproc.bcdi.portion_dataset import PortionDataset  # noqa: E402
from rayproc.bcdi.portions import NormStats, denormalise_portion  # noqa: E402
from rayproc.models.artifact import default_model_dir, load_model, save_model  # noqa: E402
from rayproc.models.losses import inpainting_loss  # noqa: E402

# Modules the GPU machine lacks (see /work/shared/GPU.md): none may be imported by a training run.
FORBIDDEN_MODULES = ("ray", "zarr", "numcodecs", "s3fs", "xraydb", "spekpy")
# As rayproc.pipelines.bcdi.train.NORMALISATION / DEFAULT_LR (not imported: that module imports
# zarr through rayproc.storage; tests/test_gpu_recipe.py checks the copies agree).
NORMALISATION = {
    "transform": "log1p",
    "scale": "per portion: (log1p(I) - lo) / (hi - lo), lo and hi over the measured voxels",
    "gap_input": "zero",
}
DEFAULT_LR = {"gapnet": 1e-3, "masto2024": 1e-4}
GAP_WIDTHS = (3, 6, 9, 12)
MAX_OUT_FILES, MAX_FILE_BYTES = 8, 16 * 2**20


# ---------------------------------------------------------------------------------- arguments


def parse_args(argv=None) -> argparse.Namespace:
    out_default = os.path.join(os.environ["OUT"], "bcdi-gpu") if os.environ.get("OUT") else None
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=out_default, help="model directory to write (default $OUT/bcdi-gpu)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    data = p.add_argument_group("data")
    data.add_argument("--volumes", type=int, default=1000, help="simulated training volumes")
    data.add_argument("--val-volumes", type=int, default=48, help="simulated validation volumes (held out)")
    data.add_argument("--size", type=int, default=64, help="edge of a simulated volume")
    data.add_argument("--portions-per-volume", type=int, default=32, help="training portions per volume per epoch")
    data.add_argument("--val-portions-per-volume", type=int, default=32)
    data.add_argument("--patch-size", type=int, default=32)
    data.add_argument("--gap-widths", type=int, nargs="+", default=list(GAP_WIDTHS))
    data.add_argument("--peak-fraction", type=float, default=0.5,
                      help="share of portions centred ~N(peak, 8 px), as the paper protocol places them")
    data.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                      help="processes simulating volumes and drawing portions (1: in this process)")
    net = p.add_argument_group("network and optimisation")
    net.add_argument("--arch", default="gapnet", choices=("gapnet", "masto2024"))
    net.add_argument("--base-channels", type=int, default=None,
                     help="first-level width (default: 16 for gapnet, whose shipped model has 8: a wider one is "
                          "what the GPU is for; 32, the published width, for masto2024)")
    net.add_argument("--depth", type=int, default=None, help="poolings (default: 3 for gapnet, 4 for masto2024)")
    net.add_argument("--init-model", default=None,
                     help="model directory to start from (its architecture replaces --arch/--base-channels/--depth)")
    net.add_argument("--batch-size", type=int, default=64)
    net.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 1e-3 gapnet, 1e-4 masto2024)")
    net.add_argument("--lr-patience", type=int, default=1,
                     help="the lr is halved after more than this many epochs in a row without improvement")
    net.add_argument("--patience", type=int, default=6, help="epochs without improvement before stopping")
    net.add_argument("--max-epochs", type=int, default=1000)
    net.add_argument("--seed", type=int, default=2027, help="seed of the simulated data, portion draws and weights")
    run = p.add_argument_group("run")
    run.add_argument("--budget-min", type=float, default=8.0,
                     help="wall-clock budget of the whole command, minutes (training stops in time for the rest)")
    run.add_argument("--reserve-min", type=float, default=None,
                     help="minutes kept for the final evaluation and export (default: from --eval-portions)")
    run.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    run.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                     help="bf16 autocast for training (default: on for CUDA, off on CPU)")
    run.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                     help="channels_last_3d weights and activations (default: on for CUDA, off on CPU)")
    run.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    run.add_argument("--check-imports", action="store_true",
                     help=f"fail if any of {', '.join(FORBIDDEN_MODULES)} was imported")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval-scan", default=None,
                    help="a .npy volume to score with the paper protocol (with --make-crop: the file to write)")
    ev.add_argument("--eval-portions", type=int, default=1000)
    ev.add_argument("--eval-seed", type=int, default=2024)
    ev.add_argument("--make-crop", default=None, metavar="SRC",
                    help="only write --eval-scan: a --crop-size cube of SRC (TIFF folder, .npy, .tif, file.h5:/ds "
                         "or a zarr store) centred on its brightest voxel, then exit")
    ev.add_argument("--crop-size", type=int, default=128)
    args = p.parse_args(argv)
    if args.make_crop is None:
        if not args.out:
            p.error("give --out DIR (or set OUT)")
        problems = []
        if min(args.volumes, args.val_volumes, args.portions_per_volume, args.val_portions_per_volume) < 1:
            problems.append("--volumes, --val-volumes and the portions per volume must be >= 1")
        if args.size < args.patch_size:
            problems.append(f"--size {args.size} is smaller than a {args.patch_size}^3 portion")
        if min(args.batch_size, args.processes, args.max_epochs) < 1 or args.budget_min <= 0:
            problems.append("--batch-size, --processes and --max-epochs must be >= 1 and --budget-min > 0")
        if problems:
            p.error("; ".join(problems))
    elif not args.eval_scan:
        p.error("--make-crop needs --eval-scan FILE.npy (the file to write)")
    return args


# --------------------------------------------------------------------------------- simulation


def _simulate(task) -> np.ndarray:
    size, seed, index = task
    return simulate_bcdi_sample(size, seed, index)[0]


def simulate_volumes(size: int, seed: int, indices, *, processes: int = 1) -> np.ndarray:
    """Counts of samples ``indices`` of simulated set ``seed`` as one (n, size, size, size) array.

    Sample ``i`` is ``simulate_bcdi_sample(size, seed, i)``: the result does not depend on
    ``processes``.
    """
    indices = [int(i) for i in indices]
    volumes = np.empty((len(indices), size, size, size), dtype=np.float32)
    tasks = [(size, seed, i) for i in indices]
    if processes <= 1 or len(tasks) < 2:
        for k, task in enumerate(tasks):
            volumes[k] = _simulate(task)
        return volumes
    with multiprocessing.get_context("fork").Pool(min(processes, len(tasks)), initializer=_one_thread) as pool:
        for k, counts in enumerate(pool.imap(_simulate, tasks, chunksize=max(1, len(tasks) // (8 * processes)))):
            volumes[k] = counts
    return volumes


def _one_thread() -> None:
    torch.set_num_threads(1)


# ------------------------------------------------------------------ portions in shared memory


class PortionBuffer:
    """A drawn set of portions in anonymous shared memory (visible to forked pool workers).

    ``target`` (n, S, S, S) float32 normalised portions, ``mask`` (n, S, S, S) uint8 (1 in the
    gap), ``lo`` / ``hi`` float64 (the normalisation), ``width`` int16 (gap width).
    """

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size
        shape = (n, size, size, size)
        layout = [("target", np.float32, shape), ("mask", np.uint8, shape), ("lo", np.float64, (n,)),
                  ("hi", np.float64, (n,)), ("width", np.int16, (n,))]
        self._maps = []
        for name, dtype, dims in layout:
            nbytes = max(1, int(np.prod(dims)) * np.dtype(dtype).itemsize)
            shared = mmap.mmap(-1, nbytes)  # MAP_SHARED | MAP_ANONYMOUS: not limited by /dev/shm
            self._maps.append(shared)
            setattr(self, name, np.frombuffer(shared, dtype=dtype, count=int(np.prod(dims))).reshape(dims))

    def fill(self, dataset: PortionDataset, epoch: int, volumes: range) -> None:
        """Items of ``volumes`` (all their portions) of ``dataset``'s draw ``epoch``."""
        per = dataset.portions_per_volume
        for v in volumes:
            for i in range(v * per, (v + 1) * per):
                item = dataset[epoch * len(dataset) + i]
                self.target[i] = item["target"][0].numpy()
                self.mask[i] = item["mask"][0].numpy() > 0.5
                self.lo[i], self.hi[i], self.width[i] = item["lo"], item["hi"], item["width"]


# Jobs a forked pool worker can reach: name -> (dataset, [buffers]); set before the pool forks.
_JOBS: dict[str, tuple[PortionDataset, list[PortionBuffer]]] = {}


def _fill_task(task) -> int:
    name, slot, epoch, first, last = task
    dataset, buffers = _JOBS[name]
    buffers[slot].fill(dataset, epoch, range(first, last))
    return last - first


class Drawer:
    """Draws epochs of portions into buffers on a pool (or in this process), one epoch ahead."""

    def __init__(self, jobs: dict, workers: int):
        _JOBS.clear()
        _JOBS.update(jobs)
        self.pool = None
        if workers >= 1:  # fork after the volumes and buffers exist: the workers share them
            self.pool = multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread)
        self.processes = max(1, workers)

    def start(self, name: str, slot: int, epoch: int):
        """Start drawing ``epoch`` of job ``name`` into buffer ``slot``; ``.get()`` waits for it."""
        dataset = _JOBS[name][0]
        n = len(dataset.volumes)
        step = max(1, math.ceil(n / (4 * self.processes)))
        tasks = [(name, slot, epoch, a, min(n, a + step)) for a in range(0, n, step)]
        if self.pool is None:
            for task in tasks:
                _fill_task(task)
            return _Done()
        return self.pool.map_async(_fill_task, tasks)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


class _Done:
    def get(self):
        return None


def to_device(buffer: PortionBuffer, device: torch.device) -> dict:
    """The buffer's arrays as tensors on ``device`` (views of the buffer on CPU, copies on a GPU)."""
    out = {name: torch.from_numpy(getattr(buffer, name)) for name in ("target", "mask", "lo", "hi", "width")}
    if device.type != "cpu":
        out = {k: v.to(device) for k, v in out.items()}
    return out


# ------------------------------------------------------------------------------------ training


def batch_of(arrays: dict, index: torch.Tensor, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, mask) float32 tensors (B, 1, S, S, S) of the portions ``index``."""
    target = arrays["target"].index_select(0, index).unsqueeze(1)
    mask = arrays["mask"].index_select(0, index).unsqueeze(1).float()
    if channels_last:
        target = target.contiguous(memory_format=torch.channels_last_3d)
        mask = mask.contiguous(memory_format=torch.channels_last_3d)
    return target, mask


def validate(model, arrays: dict, widths, *, batch_size: int, channels_last: bool) -> dict:
    """Validation loss and mean in-gap PCC (overall and per gap width), fp32 forward.

    The PCC is that of ``rayproc.pipelines.bcdi.train.gap_pcc_scores``: [1]_ eq. 1 on the
    denormalised counts inside the gap, NaN portions (constant in the gap) skipped.
    """
    model.eval()
    n = len(arrays["lo"])
    device = arrays["target"].device
    widths = tuple(int(w) for w in widths)
    pcc_sum, pcc_n = np.zeros(len(widths)), np.zeros(len(widths))
    loss_sum = 0.0
    lo, hi = arrays["lo"].cpu().numpy(), arrays["hi"].cpu().numpy()
    width_of = arrays["width"].cpu().numpy()
    with torch.inference_mode():
        for first in range(0, n, batch_size):
            index = torch.arange(first, min(n, first + batch_size), device=device)
            target, mask = batch_of(arrays, index, channels_last)
            pred = model(target, mask).float()
            loss_sum += float(inpainting_loss(pred, target, mask)) * len(index)
            part = slice(first, first + len(index))
            stats = NormStats(lo[part], hi[part])
            pred_counts = np.maximum(denormalise_portion(pred[:, 0].cpu().numpy(), stats), 0)
            true_counts = np.maximum(denormalise_portion(target[:, 0].cpu().numpy(), stats), 0)
            in_gap = mask[:, 0].cpu().numpy() > 0.5
            for b, width in enumerate(width_of[part].tolist()):
                pcc = gap_pcc(pred_counts[b], true_counts[b], in_gap[b])
                if np.isfinite(pcc) and width in widths:
                    pcc_sum[widths.index(width)] += pcc
                    pcc_n[widths.index(width)] += 1
    row = {"val_loss": loss_sum / n, "val_pcc": float(pcc_sum.sum() / pcc_n.sum()) if pcc_n.sum() else None}
    for width, s, k in zip(widths, pcc_sum, pcc_n):
        row[f"val_pcc_w{width}"] = float(s / k) if k else None
    return row


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here (torch {torch.__version__}).")
    return device


def hardware(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "host": platform.node(), "machine": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    bf16_supported=torch.cuda.is_bf16_supported())
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("+modified" if dirty.stdout.strip() else "")


def _summary(row: dict) -> str:
    widths = " ".join(f"w{k[9:]} {v:.3f}" for k, v in row.items() if k.startswith("val_pcc_w") and v is not None)
    pcc = "n/a" if row["val_pcc"] is None else f"{row['val_pcc']:.4f}"
    return (f"epoch {row['epoch'] + 1:3d} | {row['seconds']:6.1f} s | {row['portions_per_second']:7.0f} portions/s | "
            f"train loss {row['train_loss']:.4f} | val loss {row['val_loss']:.4f} | val PCC {pcc} ({widths}) | "
            f"lr {row['lr']:.2g} | wait {row['draw_wait_s']:.1f} s, copy {row['copy_s']:.1f} s"
            + (" *" if row.get("best") else ""))


def train(args, device: torch.device, *, on_best=None) -> dict:
    """Simulate, draw, train; returns everything the export needs.

    ``on_best(config, state, rows)`` is called at every epoch that improves the validation PCC
    (the main function writes the model directory there, so a run killed later still leaves one).
    """
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    channels_last = (device.type == "cuda") if args.channels_last is None else args.channels_last
    if bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("bf16 is not supported on this GPU: training in fp32", flush=True)
        bf16 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    deadline = _STARTED + 60 * args.budget_min - 60 * reserve_minutes(args)

    # 1. the volumes
    began = time.monotonic()
    n_train, n_val = args.volumes, args.val_volumes
    volumes = simulate_volumes(args.size, args.seed, range(n_train + n_val), processes=args.processes)
    simulate_s = time.monotonic() - began
    print(f"simulated {n_train} + {n_val} volumes of {args.size}^3 (seed {args.seed}) in {simulate_s:.1f} s "
          f"on {args.processes} process(es)", flush=True)

    # 2. the portion draws (training: stream 0, a fresh draw each epoch; validation: stream 1, epoch 0)
    def read(i):
        return volumes[i]

    common = dict(read=read, seed=args.seed, size=args.patch_size, gap_widths=args.gap_widths, gap_kinds=GAP_KINDS,
                  prefer_periphery=True, peak_fraction=args.peak_fraction)
    train_set = PortionDataset(range(n_train), args.portions_per_volume, stream=0, **common)
    val_set = PortionDataset(range(n_train, n_train + n_val), args.val_portions_per_volume, stream=1, **common)
    train_buffers = [PortionBuffer(len(train_set), args.patch_size) for _ in range(2)]
    val_buffer = PortionBuffer(len(val_set), args.patch_size)
    # processes - 1 drawing workers (none with 1 process): one core stays with this process
    drawer = Drawer({"train": (train_set, train_buffers), "val": (val_set, [val_buffer])}, args.processes - 1)
    try:
        return _train_loop(args, device, drawer, train_set, val_set, train_buffers, val_buffer, bf16=bf16,
                           channels_last=channels_last, deadline=deadline, simulate_s=simulate_s, on_best=on_best)
    finally:
        drawer.close()


def reserve_minutes(args) -> float:
    """Minutes kept after training for the evaluation and export."""
    if args.reserve_min is not None:
        return args.reserve_min
    return 0.2 + (0.6 * args.eval_portions / 1000 if args.eval_scan else 0.0)  # 1000: 25 s on this CPU


def _train_loop(args, device, drawer, train_set, val_set, train_buffers, val_buffer, *, bf16, channels_last,
                deadline, simulate_s, on_best) -> dict:
    pending_val = drawer.start("val", 0, 0)
    pending = drawer.start("train", 0, 0)

    # the network (CUDA is touched only now, after the pool has forked)
    torch.manual_seed(args.seed)
    init = None
    if args.init_model:
        model, info = load_model(args.init_model, family="bcdi")
        config = model.config
        init = {"path": str(Path(args.init_model).resolve()), "sha256": info.sha256,
                "architecture": info.architecture}
    else:
        width = args.base_channels if args.base_channels is not None else (16 if args.arch == "gapnet" else None)
        config = BcdiNetConfig(args.arch, base_channels=width, depth=args.depth)
        model = build_bcdi_net(config)
    model.train()
    flops = flops_per_portion(model, args.patch_size)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    lr = args.lr if args.lr is not None else DEFAULT_LR[config.arch]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                           patience=args.lr_patience, threshold=1e-4,
                                                           threshold_mode="abs")
    print(f"network {config.arch} base_channels {config.base_channels} depth {config.depth}: "
          f"{count_parameters(model):,} parameters, {flops / 1e9:.2f} GFLOP per {args.patch_size}^3 portion; "
          f"device {device}, bf16 {'on' if bf16 else 'off'}, channels_last {'on' if channels_last else 'off'}, "
          f"batch {args.batch_size}, lr {lr:g}; {len(train_set)} training portions per epoch, "
          f"{len(val_set)} validation portions", flush=True)

    pending_val.get()
    val_arrays = to_device(val_buffer, device)
    out = Path(args.out)
    history_path = out / "metrics.jsonl"
    history_path.write_text("")
    rows, best, best_state, since_best, stop = [], None, None, 0, "max-epochs"
    n_batches = len(train_set) // args.batch_size
    if n_batches < 1:
        raise SystemExit(f"{len(train_set)} training portions make no batch of {args.batch_size}; "
                         "lower --batch-size or raise --volumes.")
    for epoch in range(args.max_epochs):
        began = time.monotonic()
        pending.get()
        wait_s = time.monotonic() - began  # > 0.1 s: drawing portions, not the GPU, sets the pace
        arrays = to_device(train_buffers[epoch % 2], device)
        copy_s = time.monotonic() - began - wait_s
        if epoch + 1 < args.max_epochs:  # the next epoch is drawn while this one trains
            pending = drawer.start("train", (epoch + 1) % 2, epoch + 1)
        order = np.random.default_rng([args.seed, 3, epoch]).permutation(len(train_set))
        order = torch.from_numpy(order[: n_batches * args.batch_size]).to(device)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        done = 0
        for b in range(n_batches):
            if done and time.monotonic() > deadline:  # stop mid-epoch when time is up (after >= 1 step)
                break
            target, mask = batch_of(arrays, order[b * args.batch_size:(b + 1) * args.batch_size], channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                pred = model(target, mask)
            loss = inpainting_loss(pred.float(), target, mask)  # the loss in fp32 (SSIM moments cancel)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            done += 1
        del arrays
        if done == 0:
            stop = "budget"
            break
        train_loss = float(loss_sum) / done
        train_s = time.monotonic() - began
        row = {"epoch": epoch, "train_loss": train_loss, **validate(
            model, val_arrays, args.gap_widths, batch_size=4 * args.batch_size, channels_last=channels_last)}
        row.update(lr=optimizer.param_groups[0]["lr"], seconds=time.monotonic() - began,
                   portions_per_second=done * args.batch_size / train_s, portions=done * args.batch_size,
                   draw_wait_s=wait_s, copy_s=copy_s,
                   elapsed_s=time.monotonic() - _STARTED)
        score = -math.inf if row["val_pcc"] is None else row["val_pcc"]
        improved = best is None or score > best["score"] + 1e-4
        if improved:
            best = {"score": score, "row": row}
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            since_best = 0
        else:
            since_best += 1
        row["best"] = improved
        rows.append(row)
        with history_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(_summary(row), flush=True)
        if improved and on_best is not None:
            on_best(config, best_state, rows)
        scheduler.step(score)
        if done < n_batches or time.monotonic() > deadline:
            stop = "budget"
            break
        if since_best >= args.patience:
            stop = "plateau"
            break
    return {"config": config, "best_state": best_state, "best": best["row"], "rows": rows, "stop": stop,
            "lr": lr, "bf16": bf16, "channels_last": channels_last, "flops_per_portion": flops, "init": init,
            "simulate_s": simulate_s, "train_portions": len(train_set), "val_portions": len(val_set)}


# ----------------------------------------------------------------------------------- the rest


def plot_history(rows: list[dict], path: Path) -> None:
    """Training and validation loss, and validation in-gap PCC per width, against epoch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [r["epoch"] + 1 for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [r["train_loss"] for r in rows], label="train")
    left.plot(epochs, [r["val_loss"] for r in rows], label="validation")
    left.set(xlabel="epoch", ylabel="loss (MAE + 1 - SSIM + gradient MAE)")
    left.legend()
    for key in sorted((k for k in rows[-1] if k.startswith("val_pcc_w")), key=lambda k: int(k[9:])):
        right.plot(epochs, [r[key] if r[key] is not None else np.nan for r in rows], label=f"gap width {key[9:]}")
    right.set(xlabel="epoch", ylabel="validation in-gap PCC (log counts)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def read_scan(scan: str) -> np.ndarray:
    """The ``--eval-scan`` volume (read and checked before training, so a bad file fails at once)."""
    if not Path(scan).is_file():
        raise SystemExit(f"--eval-scan {scan}: no such file (make it with --make-crop first)")
    try:
        volume = np.load(scan, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--eval-scan {scan}: cannot read it as .npy ({exc})") from exc
    if volume.ndim != 3 or min(volume.shape) < 32 or not np.all(np.isfinite(volume)) or volume.min() < 0:
        raise SystemExit(f"--eval-scan {scan}: expected a 3D volume of finite counts >= 0, each side >= 32; "
                         f"got shape {volume.shape} instead.")
    return volume


def paper_protocol(scan: str, volume: np.ndarray, model, *, n: int, seed: int, device: torch.device,
                   label: str) -> tuple[dict, str]:
    """The published protocol on ``volume`` (benchmarks/bcdi_paper_protocol.py): rows and a Markdown page."""
    from bcdi_paper_protocol import PUBLISHED, WIDTHS, evaluate

    shipped, _ = load_model(default_model_dir(), device=device, family="bcdi")
    models = {label: model.to(device).eval(), "shipped bcdi-default (gapnet, 8 channels)": shipped}
    rows = evaluate(volume, models, n=n, seed=seed)
    rows["published (Masto 2024, Table 1)"] = PUBLISHED
    peak = tuple(int(i) for i in np.unravel_index(int(np.nanargmax(volume)), volume.shape))
    mean = {name: float(np.mean([row[w] for w in WIDTHS])) for name, row in rows.items()}
    shipped_name = list(models)[1]
    better = all(rows[label][w] > rows[shipped_name][w] for w in WIDTHS)
    lines = [
        "# Paper protocol (Masto et al. 2024, Table 1) on a real scan",
        "",
        f"Scan `{scan}`: shape {volume.shape}, brightest voxel {peak}, {int(volume.sum()):,} counts. "
        f"{n} portions of 32^3 centred ~N(peak, 8 px) per axis (seed {seed}), a centred gap of w columns across x, "
        "mean in-gap PCC of log1p counts (eq. 1). `benchmarks/bcdi_paper_protocol.py` `evaluate`, fp32 inference.",
        "",
        "| method | " + " | ".join(f"{w} px" for w in WIDTHS) + " | mean |",
        "|---|" + "---|" * (len(WIDTHS) + 1),
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[w]:.3f}" for w in WIDTHS) + f" | {mean[name]:.3f} |")
    lines += ["", "New model minus shipped model: " + ", ".join(
        f"{w} px {rows[label][w] - rows[shipped_name][w]:+.3f}" for w in WIDTHS)
        + f"; better at every width: **{'yes' if better else 'no'}**.",
        "", "The noise ceiling is approximate (measured counts stand in for the expectation); no method can "
        "score above the noise of the truth it is compared to.", ""]
    return rows, "\n".join(lines)


def write_crop(source: str, dest: str, size: int) -> None:
    """Write a ``size``^3 cube of ``source`` centred on its brightest voxel to ``dest`` (.npy).

    The paper protocol draws portion centres ~N(peak, 8 px): within a 128^3 cube centred on the
    peak, every portion closer than 6 sigma fits unclipped, so the scores equal the whole scan's.
    """
    path = Path(source)
    if path.is_dir() and (path / "zarr.json").is_file():  # a store from `rayproc ingest` (imports zarr)
        from rayproc.storage.inputs import open_input

        volume = np.asarray(open_input(source, ("intensity",)).values(), dtype=np.float32)
    else:
        from rayproc.storage.readers import read_volume

        volume = read_volume(source)[0]
    peak = np.array(np.unravel_index(int(np.nanargmax(volume)), volume.shape))
    edge = np.minimum(size, volume.shape)
    start = np.clip(peak - edge // 2, 0, np.array(volume.shape) - edge)
    crop = np.ascontiguousarray(volume[tuple(slice(a, a + e) for a, e in zip(start, edge))], dtype=np.float32)
    np.save(dest, crop)
    print(f"wrote {dest}: {crop.shape} float32 crop of {source} {volume.shape} from {tuple(start.tolist())}, "
          f"brightest voxel {tuple(peak.tolist())} ({os.path.getsize(dest) / 2**20:.1f} MiB)")


def forbidden_imports() -> list[str]:
    return sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN_MODULES))


def check_out_files(root: Path) -> list[str]:
    """Problems with what is under ``root`` for the device's $OUT limits (<= 8 files, each < 16 MiB)."""
    files = [p for p in root.rglob("*") if p.is_file()]
    problems = [f"{p} is {p.stat().st_size / 2**20:.1f} MiB" for p in files if p.stat().st_size >= MAX_FILE_BYTES]
    if len(files) > MAX_OUT_FILES:
        problems.append(f"{len(files)} files under {root} (at most {MAX_OUT_FILES} come back)")
    return problems


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.make_crop is not None:
        write_crop(args.make_crop, args.eval_scan, args.crop_size)
        return 0
    scan = read_scan(args.eval_scan) if args.eval_scan else None
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SystemExit(f"--out {out} exists and is not empty; pass --overwrite to write into it.")
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    device = resolve_device(args.device)
    provenance = {
        "stage": "fine-tuned from init_model (benchmarks/bcdi_gpu_recipe.py)" if args.init_model else
                 "trained (benchmarks/bcdi_gpu_recipe.py)",
        "command": shlex.join(["python3", "benchmarks/bcdi_gpu_recipe.py",
                               *(sys.argv[1:] if argv is None else [str(a) for a in argv])]),
        "parameters": {k: v for k, v in vars(args).items() if k != "make_crop"},
        "data": {"simulator": "rayproc.bcdi.diffraction.simulate_bcdi_sample", "size": args.size, "seed": args.seed,
                 "train_indices": [0, args.volumes], "val_indices": [args.volumes, args.volumes + args.val_volumes],
                 "train_portions_per_epoch": args.volumes * args.portions_per_volume,
                 "val_portions": args.val_volumes * args.val_portions_per_volume,
                 "portion_draw": {"prefer_periphery": True, "peak_fraction": args.peak_fraction,
                                  "gap_widths": list(args.gap_widths), "gap_kinds": list(GAP_KINDS),
                                  "train_stream": 0, "val_stream": 1, "fresh_each_epoch": True}},
        "hardware": hardware(device),
        "seed": args.seed,
        "rayproc_version": __version__,
        "git_commit": git_commit(),
    }

    def write(config, state, metrics: dict, provenance: dict) -> torch.nn.Module:
        """The model directory of ``state`` (fp32, contiguous, on CPU)."""
        model = build_bcdi_net(config)
        model.load_state_dict(state)
        save_model(out, model, config, family="bcdi", metrics=metrics, provenance=provenance,
                   normalisation=NORMALISATION, gap_widths=args.gap_widths, patch_size=args.patch_size)
        return model

    def on_best(config, state, rows) -> None:  # a run killed later still leaves its best epoch so far
        metrics = {"best": rows[-1], "best_epoch": rows[-1]["epoch"], "epochs": len(rows), "final": rows[-1],
                   "stop_reason": "none yet: written during training"}
        write(config, state, metrics, {**provenance, "partial": "written during training, at an improved epoch"})

    result = train(args, device, on_best=on_best)
    train_done = time.monotonic()

    # export the best epoch, then load it back as any user would
    rows = result["rows"]
    metrics = {"best": result["best"], "best_epoch": result["best"]["epoch"], "epochs": len(rows),
               "final": rows[-1], "stop_reason": result["stop"]}
    provenance.update(
        resolved={"lr": result["lr"], "bf16": result["bf16"], "channels_last": result["channels_last"],
                  "device": str(device), "architecture": result["config"].to_dict()},
        init_model=result["init"],
        time={"created_utc": created, "simulate_s": round(result["simulate_s"], 1),
              "train_s": round(sum(r["seconds"] for r in rows), 1),
              "command_s_before_export": round(train_done - _STARTED, 1),
              "epochs": len(rows), "stop_reason": result["stop"], "budget_min": args.budget_min},
        flops_per_portion=result["flops_per_portion"],
    )
    model = write(result["config"], result["best_state"], metrics, provenance)
    plot_history(rows, out / "loss_curve.png")
    loaded, info = load_model(out, family="bcdi")
    best = result["best"]
    print(f"best epoch {best['epoch'] + 1} of {len(rows)} (stopped: {result['stop']}): val PCC "
          f"{best['val_pcc'] if best['val_pcc'] is None else round(best['val_pcc'], 4)}; wrote {out} "
          f"(sha256 {info.sha256[:12]})", flush=True)

    if args.eval_scan:
        began = time.monotonic()
        label = f"this model ({result['config'].arch}, {result['config'].base_channels} channels, GPU recipe)"
        protocol, page = paper_protocol(args.eval_scan, scan, loaded, n=args.eval_portions, seed=args.eval_seed,
                                        device=device, label=label)
        (out / "paper_protocol.md").write_text(page)
        metrics["paper_protocol"] = {name: {str(w): v for w, v in row.items()} for name, row in protocol.items()}
        save_model(out, model, result["config"], family="bcdi", metrics=metrics, provenance=provenance,
                   normalisation=NORMALISATION, gap_widths=args.gap_widths, patch_size=args.patch_size)
        print(page, flush=True)
        print(f"paper protocol in {time.monotonic() - began:.1f} s", flush=True)

    problems = check_out_files(out)
    for problem in problems:
        print(f"warning: {problem}", flush=True)
    bad = forbidden_imports()
    print(f"forbidden imports: {', '.join(bad) if bad else 'none'} (checked {', '.join(FORBIDDEN_MODULES)})")
    print(f"total {time.monotonic() - _STARTED:.1f} s", flush=True)
    if args.check_imports and bad:
        print(f"error: imported {', '.join(bad)}, which the GPU machine lacks", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
