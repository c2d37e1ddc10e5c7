"""bf16 on this CPU: training step and inference times of the BCDI gapnet, fp32 vs bf16, side by side.

    python benchmarks/bf16_cpu.py [--batch 16] [--reps 3] [--threads 1] [--models shipped gapnet16]

For the shipped model (``rayproc/weights/bcdi-default``: gapnet, 8 channels) and a 16-channel
gapnet (the GPU recipe's default width; untrained, its zero-initialised output layer given torch's
default random init so that its output depends on every layer), on one batch of ``--batch`` simulated 32^3
portions with artificial gaps of 3-12 px:

* a training step (forward, the fp32 loss of ``rayproc.models.losses.inpainting_loss``,
  backward, Adam) in fp32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* inference (``torch.inference_mode``) in fp32, under bf16 autocast, and with weights and
  inputs in ``torch.channels_last_3d`` (fp32 and bf16);
* the in-gap PCC (Masto et al. 2024, eq. 1, on denormalised counts) of the fp32 and the bf16
  inference outputs of the same batch, and their largest difference.

Variants run interleaved, round after round (one warm-up round, then ``--reps`` timed ones), and
each reports its fastest round, in wall-clock and in CPU time: on a shared machine other work only
ever adds time. One torch thread by default (as rayproc's actors run): on a 2-core machine with
other jobs, two threads spent most of their time waiting for each other (5-10x slower, the bf16
ratio swinging from 0.35x to 1.6x between runs). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rayproc.bcdi.diffraction import simulate_bcdi_sample  # noqa: E402
from rayproc.bcdi.metrics import gap_pcc  # noqa: E402
from rayproc.bcdi.network import build_bcdi_net, count_parameters, flops_per_portion  # noqa: E402
from rayproc.bcdi.portion_dataset import PortionDataset  # noqa: E402
from rayproc.bcdi.portions import NormStats, denormalise_portion  # noqa: E402
from rayproc.models.artifact import default_model_dir, load_model  # noqa: E402
from rayproc.models.losses import inpainting_loss  # noqa: E402

CL = torch.channels_last_3d


def portions(n: int, seed: int = 11) -> dict:
    """A batch of ``n`` gapped, normalised 32^3 portions of simulated volumes (64^3)."""
    volumes = [simulate_bcdi_sample(64, seed, i)[0] for i in range(max(1, n // 8))]
    dataset = PortionDataset(range(len(volumes)), 8, read=lambda i: volumes[i], seed=seed, peak_fraction=0.5)
    items = [dataset[i] for i in range(n)]
    return {"target": torch.stack([it["target"] for it in items]), "mask": torch.stack([it["mask"] for it in items]),
            "lo": np.array([it["lo"] for it in items]), "hi": np.array([it["hi"] for it in items])}


def mean_gap_pcc(pred: torch.Tensor, batch: dict) -> float:
    stats = NormStats(batch["lo"], batch["hi"])
    pred_counts = np.maximum(denormalise_portion(pred[:, 0].float().numpy(), stats), 0)
    true_counts = np.maximum(denormalise_portion(batch["target"][:, 0].numpy(), stats), 0)
    in_gap = batch["mask"][:, 0].numpy() > 0.5
    values = [gap_pcc(p, t, m) for p, t, m in zip(pred_counts, true_counts, in_gap)]
    return float(np.nanmean(values))


def variants(model: torch.nn.Module, batch: dict) -> dict:
    """name -> callable running one timed unit of work (returns the inference output, if any)."""
    x, mask = batch["target"], batch["mask"]
    x_cl, mask_cl = x.contiguous(memory_format=CL), mask.contiguous(memory_format=CL)
    trained = {False: copy.deepcopy(model).train(), True: copy.deepcopy(model).train()}
    optimizers = {bf16: torch.optim.Adam(m.parameters(), lr=1e-4) for bf16, m in trained.items()}
    model_cl = copy.deepcopy(model).to(memory_format=CL).eval()
    model.eval()

    def step(bf16):
        def run():
            net, optimizer = trained[bf16], optimizers[bf16]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                pred = net(x, mask)
            loss = inpainting_loss(pred.float(), x, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    def infer(net, xs, ms, bf16):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return net(xs, ms).float()
        return run

    return {
        "train fp32": step(False), "train bf16": step(True),
        "infer fp32": infer(model, x, mask, False), "infer bf16": infer(model, x, mask, True),
        "infer CL fp32": infer(model_cl, x_cl, mask_cl, False), "infer CL bf16": infer(model_cl, x_cl, mask_cl, True),
    }


def measure(model: torch.nn.Module, batch: dict, reps: int) -> tuple[dict, dict, dict]:
    """Fastest wall and CPU time of each variant over ``reps`` interleaved rounds (after one warm-up),
    and the inference outputs."""
    runs = variants(model, batch)
    best = {name: float("inf") for name in runs}
    best_cpu = dict(best)
    outputs = {}
    for round_ in range(reps + 1):
        for name, run in runs.items():
            began, began_cpu = time.perf_counter(), time.process_time()
            out = run()
            seconds, cpu = time.perf_counter() - began, time.process_time() - began_cpu
            if round_:
                best[name] = min(best[name], seconds)
                best_cpu[name] = min(best_cpu[name], cpu)
            if out is not None:
                outputs[name] = out
        print(f"  round {round_} done" + (" (warm-up)" if round_ == 0 else ""), file=sys.stderr, flush=True)
    return best, best_cpu, outputs


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    return " ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--models", nargs="+", default=["shipped", "gapnet16"], choices=["shipped", "gapnet16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    batch = portions(args.batch)
    models = {}
    if "shipped" in args.models:
        models["shipped bcdi-default (gapnet, 8 ch)"] = load_model(default_model_dir(), family="bcdi")[0]
    if "gapnet16" in args.models:
        torch.manual_seed(0)
        wide = build_bcdi_net({"arch": "gapnet", "base_channels": 16, "depth": 3})
        wide.head.reset_parameters()  # untrained: torch's default init of the output layer, not the zero of gapnet
        models["gapnet, 16 ch (untrained)"] = wide

    began = time.perf_counter()
    results = {}
    for name, model in models.items():
        print(f"{name}: measuring", file=sys.stderr, flush=True)
        results[name] = measure(model, batch, args.reps)
    total = time.perf_counter() - began

    load = os.getloadavg()
    print(f"bf16 on CPU: {platform.processor() or platform.machine()}, flags {cpu_flags()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), oneDNN bf16 "
          f"{'yes' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'no'}; batch of {args.batch} portions of 32^3; "
          f"fastest of {args.reps} interleaved rounds after a warm-up; load average {load[0]:.1f} "
          f"(other jobs running: times are noisy); {total:.0f} s in all")
    print()
    print("| model | params | GFLOP/portion | clock | train fp32 (s) | train bf16 (s) | infer fp32 (s) "
          "| infer bf16 (s) | infer CL fp32 (s) | infer CL+bf16 (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (wall, cpu, _) in results.items():
        model = models[name]
        for clock, best in (("wall", wall), ("CPU", cpu)):
            f32, t32 = best["infer fp32"], best["train fp32"]
            print(f"| {name} | {count_parameters(model):,} | {flops_per_portion(model) / 1e9:.2f} | {clock} "
                  f"| {t32:.2f} | {best['train bf16']:.2f} (**{t32 / best['train bf16']:.2f}x**) "
                  f"| {f32:.2f} | {best['infer bf16']:.2f} (**{f32 / best['infer bf16']:.2f}x**) "
                  f"| {best['infer CL fp32']:.2f} (**{f32 / best['infer CL fp32']:.2f}x**) "
                  f"| {best['infer CL bf16']:.2f} (**{f32 / best['infer CL bf16']:.2f}x**) |")
    print()
    print("(**Nx**) = fp32 time / variant time: > 1 is faster than fp32. CL = channels_last_3d weights and inputs. "
          "wall: elapsed time; CPU: this process's CPU time (all its threads), less sensitive to other jobs "
          "taking the cores.")
    print()
    print("| model | in-gap PCC fp32 | in-gap PCC bf16 | change | max abs output change (normalised) |")
    print("|---|---|---|---|---|")
    for name, (_, _, outputs) in results.items():
        fp32, bf16 = mean_gap_pcc(outputs["infer fp32"], batch), mean_gap_pcc(outputs["infer bf16"], batch)
        change = float((outputs["infer fp32"] - outputs["infer bf16"]).abs().max())
        print(f"| {name} | {fp32:.5f} | {bf16:.5f} | {bf16 - fp32:+.5f} | {change:.5f} |")
    print()
    print(f"In-gap PCC: mean over the batch's {args.batch} portions (gaps of 3-12 px, half of the portions near "
          "the Bragg peak), of the inference outputs timed above.")


if __name__ == "__main__":
    main()
