"""A facility day on paper: nodes, hours and cost from the per-item costs measured on one core.

Reads the fitted costs of ``benchmarks/scaling_curves.py --json FILE`` (or the values measured for
``cluster/README.md``, the defaults below) and prints, as a markdown table, what a day of BCDI
scans and LabDCT samples needs on the instance types of ``cluster/aws.yaml``, and the bytes each
item moves (object storage traffic). Every assumption is a named constant or option here.

    python benchmarks/capacity_table.py [--curves curves.json] [--hours 8 1] [--gpu-speedup 30]
"""

from __future__ import annotations

import argparse
import json
import math

# Per-item costs on one core (benchmarks/scaling_curves.py, 2-core development machine, shared).
MEASURED = {
    "inpaint_s_per_portion": 0.0688,  # per 32^3 portion the network runs on
    "inpaint_s_per_voxel": 4.14e-7,  # read, check, copy, compress and write, per voxel of the volume
    # a full 181-frame scan of 2032^2, 2 actors, idle machine (benchmarks/labdct_large_stack.py):
    # 4.42 and 3.69 s per frame, i.e. x2 per core (508^2 frames scaled by pixels had given 11.0 and 0.92)
    "labdct_denoise_s_per_frame_2032": 8.84,
    "labdct_segment_s_per_frame_2032": 7.38,  # the standard routine
}
# A BCDI scan: 256^3 with the Maxipix 6 px module cross through it, default stride 8, --chunk 256
# (one chunk a scan): rayproc.bcdi.inpaint.plan_windows gives 1653 portions of 32^3. With the
# default --chunk 128 the cross lies on chunk borders and 3968 portions are computed (2.4x).
BCDI_SCANS, BCDI_EDGE, BCDI_PORTIONS = 1000, 256, 1653
# A LabDCT sample: one 181-frame scan of 2032^2 frames; 50 samples.
LABDCT_SAMPLES, LABDCT_FRAMES, LABDCT_SIDE = 50, 181, 2032
# cluster/aws.yaml instance types; USD per hour on demand in eu-west-1 as assumed here (check the
# current price list; aws.yaml runs the CPU workers on spot, typically 30-40 % of these).
INSTANCES = {
    "head m6i.xlarge": {"usd_h": 0.21},
    "c6i.8xlarge": {"cores": 16, "gpus": 0, "usd_h": 1.52, "gbit_s": 12.5},  # 32 vCPU = 16 cores
    "g5.2xlarge": {"cores": 4, "gpus": 1, "usd_h": 1.36, "gbit_s": 10.0},  # 1 A10G, 8 vCPU = 4 cores
}
# The job's driver, serially, per item: BCDI plans the portions (rayproc.bcdi.inpaint.plan_windows on
# the 256^3 mask: 13.5 s) and reads the scan once to check its counts (2.3 s); LabDCT denoise checks
# every frame's normalisation (0.7 s per 2032^2 frame). Measured on the same shared machine as MEASURED.
DRIVER_S = {"bcdi": 15.8, "labdct": 181 * 0.7}
EFFICIENCY = 0.9  # measured 2 vs 1 actors: 1.83-1.91x (README, Measured results)


def workloads(costs: dict, gpu_speedup: float) -> list[dict]:
    """Per-item seconds on one core (network part and the rest) and bytes moved, per workload."""
    voxels = BCDI_EDGE**3
    frame_px = LABDCT_SIDE**2
    return [
        {"name": f"BCDI inpaint, {BCDI_SCANS} scans of {BCDI_EDGE}^3, Maxipix cross", "items": BCDI_SCANS,
         "network_s": BCDI_PORTIONS * costs["inpaint_s_per_portion"],
         "other_s": voxels * costs["inpaint_s_per_voxel"],
         # read float32 intensity; write intensity, uncertainty (float32) and mask (bool), uncompressed
         "bytes": voxels * (4 + 4 + 4 + 1), "driver_s": DRIVER_S["bcdi"]},
        {"name": f"LabDCT denoise + segment, {LABDCT_SAMPLES} samples of {LABDCT_FRAMES} x {LABDCT_SIDE}^2",
         "items": LABDCT_SAMPLES,
         "network_s": LABDCT_FRAMES * costs["labdct_denoise_s_per_frame_2032"],
         "other_s": LABDCT_FRAMES * costs["labdct_segment_s_per_frame_2032"],
         # read uint16 frames twice (denoise, segment), write float32 probabilities and int32 labels
         "bytes": LABDCT_FRAMES * frame_px * (2 + 4 + 4 + 4 + 2), "driver_s": DRIVER_S["labdct"]},
    ]


def plan(work: dict, instance: str, hours: float, gpu_speedup: float) -> dict:
    spec = INSTANCES[instance]
    if spec["gpus"]:  # the network on the GPU, the rest on the node's cores
        node_s_per_item = max(work["network_s"] / gpu_speedup / spec["gpus"], work["other_s"] / spec["cores"])
    else:
        node_s_per_item = (work["network_s"] + work["other_s"]) / spec["cores"]
    node_s_per_item /= EFFICIENCY
    node_hours = work["items"] * node_s_per_item / 3600
    nodes = max(1, math.ceil(node_hours / hours))
    wall_h = node_hours / nodes
    cost = nodes * wall_h * spec["usd_h"] + wall_h * INSTANCES["head m6i.xlarge"]["usd_h"]
    per_node_mb_s = work["bytes"] / node_s_per_item / 1e6
    driver_h = work["items"] * work["driver_s"] / 3600
    return {"nodes": nodes, "wall_h": wall_h, "node_hours": node_hours, "usd": cost, "driver_h": driver_h,
            "node_mb_s": per_node_mb_s, "cluster_mb_s": per_node_mb_s * nodes,
            "link_share": per_node_mb_s * 8 / 1000 / spec["gbit_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", help="JSON written by benchmarks/scaling_curves.py --json")
    parser.add_argument("--hours", type=float, nargs="+", default=[8.0, 1.0],
                        help="wall-clock budgets (overnight, and within the hour)")
    parser.add_argument("--gpu-speedup", type=float, default=30.0,
                        help="one A10G vs one CPU core on the networks (an assumption until measured)")
    args = parser.parse_args()
    costs = dict(MEASURED)
    if args.curves:
        with open(args.curves) as f:
            costs.update({k: v for k, v in json.load(f)["fits"].items() if k in MEASURED})
    print("| workload | instance | core-hours (1 core) | budget h | nodes | wall-clock h | USD (on demand, + head) "
          "| S3 per node, MB/s (share of its link) | one driver, serial h | bottleneck |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for hours in args.hours:
        for work in workloads(costs, args.gpu_speedup):
            core_hours = work["items"] * (work["network_s"] + work["other_s"]) / 3600
            for instance in ("c6i.8xlarge", "g5.2xlarge"):
                p = plan(work, instance, hours, args.gpu_speedup)
                bottleneck = "the driver (one job)" if p["driver_h"] > p["wall_h"] else "compute"
                print(f"| {work['name']} | {instance} | {core_hours:.0f} | {hours:g} | {p['nodes']} | {p['wall_h']:.1f} | "
                      f"{p['usd']:.0f} | {p['node_mb_s']:.0f} ({100 * p['link_share']:.1f} %) | {p['driver_h']:.1f} | "
                      f"{bottleneck} |")
    print(f"\nper-item costs used: {json.dumps({k: round(v, 10) for k, v in costs.items()})}; GPU speed-up "
          f"{args.gpu_speedup:g}x (assumed); parallel efficiency {EFFICIENCY}")


if __name__ == "__main__":
    main()
