"""Jobs across a three-node Ray cluster on this machine, and the loss of a whole node mid-job.

The cluster (:class:`tests.multinode.LocalCluster`): a head that runs drivers only (0 CPUs, as in
``cluster/aws.yaml``) and two worker nodes of 1 CPU each, every node a ``ray start`` process with
its own temp dir, ports and custom resource. Jobs are submitted over the Jobs API with the
repository as working_dir and read and write ``s3://`` on the local S3 server. A node is lost by
SIGKILL to all its processes (raylet, object store, agents, workers), never by ``ray stop``.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest

from rayproc import storage
from rayproc.bcdi.diffraction import simulate_bcdi_sample
from tests.lost_input_job import input_stack
from tests.multinode import LocalCluster, job_env, submit, wait

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

JOB_TIMEOUT_S = 240
SIZE, COUNT, SEED = 64, 2, 3
GAPS = ("x:30:3", "y:30:3")  # a cross: every 32^3 chunk holds windows
STRIDE = 4  # 153 portions a volume: chunks long enough that a node is killed while its actor holds some
INPAINT = f"--gap {GAPS[0]} --gap {GAPS[1]} --chunk 32 --stride {STRIDE} --no-progress"


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster({"node_a": 1, "node_b": 1}) as started:
        yield started


@pytest.fixture(scope="module")
def env(s3_server) -> dict[str, str]:
    return job_env(s3_server["endpoint_url"])


@pytest.fixture(scope="module")
def bucket(s3_server) -> tuple[str, dict]:
    import boto3

    name = f"mn-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server["endpoint_url"]).create_bucket(Bucket=name)
    return f"s3://{name}", {"endpoint_url": s3_server["endpoint_url"]}


def run(cluster, entrypoint: str, env: dict):
    """Submit, wait, and return (status, logs, the nodes the job's actors ran on)."""
    client = cluster.job_client()
    job_id = submit(client, entrypoint, env)
    status, logs = wait(client, job_id, JOB_TIMEOUT_S)
    return status, logs, _actor_nodes(cluster, client, job_id)


def _actor_nodes(cluster, client, job_id: str) -> set[str]:
    """Names of the nodes the job's stage actors were placed on (dead actors included)."""
    from ray.util.state import list_actors

    ray_job_id = client.get_job_info(job_id).job_id
    names = {node.node_id: name for name, node in cluster.nodes.items()}
    actors = list_actors(address=cluster.dashboard_url, filters=[("job_id", "=", ray_job_id)], timeout=30,
                         detail=True)
    return {names.get(a.node_id, a.node_id) for a in actors if a.class_name == "_StageActor"}


def test_cluster_is_a_head_and_two_workers_with_their_own_resources(cluster):
    nodes = {name: state.resources_total for state in cluster.alive_nodes()
             for name in cluster.nodes if name in state.resources_total}
    assert set(nodes) == {"head", "node_a", "node_b"}
    assert "CPU" not in nodes["head"]  # drivers only
    assert nodes["node_a"]["CPU"] == nodes["node_b"]["CPU"] == 1
    assert len({node.temp_dir for node in cluster.nodes.values()}) == 3


@pytest.fixture(scope="module")
def simulated(cluster, env, bucket):
    """``jobs/simulate.py bcdi`` across both worker nodes into the bucket."""
    url = f"{bucket[0]}/sim.zarr"
    status, logs, nodes = run(
        cluster, f"python jobs/simulate.py bcdi {url} --count {COUNT} --size {SIZE} --seed {SEED} --workers 2 "
                 "--no-progress", env)
    assert status == "SUCCEEDED", logs
    return url, nodes


def test_simulate_job_runs_on_both_workers_and_matches_the_pure_core(simulated, bucket):
    url, nodes = simulated
    assert nodes == {"node_a", "node_b"}
    ds = storage.open_dataset(storage.resolve(url, bucket[1]))
    for index in range(COUNT):
        np.testing.assert_array_equal(ds.intensity.values[index], simulate_bcdi_sample(SIZE, SEED, index)[0])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A fixed tiny gapnet (jittered so its output depends on the input), in a model directory."""
    from rayproc.models.artifact import save_model
    from tests.conftest import tiny_gapnet

    net, _ = tiny_gapnet(jitter=0.05)
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_model(directory, net, net.config, gap_widths=(3,), patch_size=32)
    return directory


@pytest.fixture(scope="module")
def inpainted(cluster, env, simulated, model_dir):
    """The fault-free inpainting job on both worker nodes."""
    sim_url, _ = simulated
    url = sim_url.replace("sim.zarr", "inpainted.zarr")
    status, logs, nodes = run(
        cluster, f"python jobs/inpaint.py {sim_url} {url} --model {model_dir} --workers 2 {INPAINT}", env)
    assert status == "SUCCEEDED", logs
    return url, nodes


def test_inpaint_job_across_nodes_matches_the_single_process_inpainting(inpainted, simulated, model_dir, bucket):
    from rayproc.bcdi.gaps import gaps_to_mask
    from rayproc.bcdi.inpaint import inpaint_volume
    from rayproc.models.artifact import load_model

    url, nodes = inpainted
    assert nodes == {"node_a", "node_b"}
    sim = storage.open_dataset(storage.resolve(simulated[0], bucket[1])).intensity.values
    out = storage.open_dataset(storage.resolve(url, bucket[1])).intensity.values
    network, _ = load_model(model_dir)
    mask = gaps_to_mask(list(GAPS), (SIZE,) * 3)
    for index in range(COUNT):
        np.testing.assert_array_equal(out[index][~mask], sim[index][~mask])
        expected, _ = inpaint_volume(sim[index], mask, network.eval(), stride=STRIDE)
        np.testing.assert_allclose(out[index], expected, rtol=1e-6, atol=1e-6 * float(expected.max()))
        assert not np.array_equal(out[index][mask], sim[index][mask])  # the gaps were filled


def test_denoise_job_across_nodes_matches_the_single_process_denoising(cluster, env, bucket, tmp_path):
    import torch
    import xarray as xr

    from rayproc.labdct.denoise import denoise_frames
    from rayproc.labdct.network import LabdctNetConfig, build_labdct_net
    from rayproc.models.artifact import save_model
    from tests.conftest import jitter_weights

    config = LabdctNetConfig(widths=(4, 8, 8, 16), blocks=(1, 1, 1, 1))
    torch.manual_seed(0)
    net = jitter_weights(build_labdct_net(config).eval(), 0.05)
    save_model(tmp_path / "model", net, config, family="labdct", normalisation={"scale": 30.0}, patch_size=32)
    rng = np.random.default_rng(5)
    frames = rng.poisson(100 + 300 * (rng.random((6, 64, 96)) > 0.995)).astype(np.float32)
    source, out = f"{bucket[0]}/frames.zarr", f"{bucket[0]}/denoised.zarr"
    storage.write_dataset(storage.resolve(source, bucket[1]),
                          xr.Dataset({"projection": (("omega", "det_y", "det_z"), frames)},
                                     coords={"omega": ("omega", np.arange(6) * 3.0)}))
    status, logs, nodes = run(
        cluster, f"python jobs/denoise.py {source} {out} --model {tmp_path / 'model'} --tile 64 --overlap 16 "
                 "--frames-per-task 2 --workers 2 --no-progress", env)
    assert status == "SUCCEEDED", logs
    assert nodes == {"node_a", "node_b"}
    got = storage.open_dataset(storage.resolve(out, bucket[1])).denoised.values
    np.testing.assert_array_equal(got, denoise_frames(frames, net, scale=30.0, tile=64, overlap=16))


# --------------------------------------------------------------------------- losing a node


def _wait_for_actor(cluster, node, timeout_s: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not cluster.actors_on(node):
        if time.monotonic() > deadline:
            pytest.fail(f"no actor reached node {node.name} in {timeout_s} s")
        time.sleep(0.2)


def test_losing_a_worker_node_mid_job_gives_the_fault_free_output(cluster, env, simulated, inpainted, model_dir,
                                                                  bucket):
    """A third worker node takes one of three actors; it is killed while its actor holds tasks.

    The lost actor cannot restart (no free CPU is left), so its chunks go to the actors on
    node_a and node_b; the output is bit-identical to the fault-free job's.
    """
    victim = cluster.add_node("victim", num_cpus=1)
    sim_url, _ = simulated
    url = sim_url.replace("sim.zarr", "inpainted-node-lost.zarr")
    client = cluster.job_client()
    job_id = submit(client, f"python jobs/inpaint.py {sim_url} {url} --model {model_dir} --workers 3 {INPAINT}", env)
    try:
        _wait_for_actor(cluster, victim)
        cluster.kill(victim)
        done_at_kill = len(storage.done_tasks(storage.resolve(url, bucket[1])))
    finally:
        status, logs = wait(client, job_id, JOB_TIMEOUT_S)
    assert status == "SUCCEEDED", logs
    assert "lost worker" in logs, logs  # the driver handed the lost actor's items to the others
    assert _actor_nodes(cluster, client, job_id) >= {"node_a", "node_b"}
    location, fault_free_location = storage.resolve(url, bucket[1]), storage.resolve(inpainted[0], bucket[1])
    tasks = storage.done_tasks(fault_free_location)  # the chunks and the masks
    assert done_at_kill < len(tasks)
    assert storage.is_complete(location) and storage.done_tasks(location) == tasks
    got, fault_free = storage.open_dataset(location), storage.open_dataset(fault_free_location)
    for name in ("intensity", "mask", "uncertainty"):
        if name in fault_free:
            np.testing.assert_array_equal(got[name].values, fault_free[name].values)


def test_losing_the_node_with_the_only_copy_of_a_shared_input_reconstructs_it(cluster, env):
    """The shared input is a task's result on a node that is then lost: lineage reconstruction."""
    frames = 8
    victim = cluster.add_node("holder", num_cpus=1)
    client = cluster.job_client()
    job_id = submit(client, f"python tests/lost_input_job.py holder {frames}", env)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while "READY" not in (logs := client.get_job_logs(job_id)):
            if client.get_job_status(job_id).is_terminal() or time.monotonic() > deadline:
                pytest.fail(f"the job never made its input:\n{logs}")
            time.sleep(0.2)
        cluster.kill(victim)
    finally:
        status, logs = wait(client, job_id, JOB_TIMEOUT_S)
    assert status == "SUCCEEDED", logs
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    where, result = lines[0], lines[-1]
    assert where["input_on"] == [where["victim"]]  # the only copy, on the node that was lost
    assert result["input_on_after"] and where["victim"] not in result["input_on_after"]  # made again elsewhere
    stack = input_stack(frames)
    expected = {str(start): float(stack[start:start + 2].astype(np.float64).sum()) for start in range(0, frames, 2)}
    assert result["sums"] == expected
