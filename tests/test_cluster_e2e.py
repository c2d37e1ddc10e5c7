"""End to end on a real Ray cluster: ``ray start --head`` in a subprocess, jobs submitted over the
Jobs HTTP API with the repository as ``working_dir``, data written to the local S3 server.

The cluster is not the pytest process's embedded Ray (``ray_local``, unused here): it has its own
``--temp-dir`` and ports, and teardown ends only its own processes. ``ray stop`` is never called:
it ends every Ray process on the machine, the embedded one and other users' included.
The cluster is started without AWS variables, so the jobs see the object store only through
the ``env_vars`` of their runtime environment, as they would on a remote cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from rayproc import storage
from rayproc.bcdi.gaps import gaps_to_mask
from rayproc.bcdi.diffraction import simulate_bcdi_sample
from tests.conftest import free_ports, tiny_gapnet
from tests.multinode import EXCLUDES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 90
JOB_TIMEOUT_S = 120
# Never uploaded with the working_dir (Ray skips .git and .venv by default already).
SIZE, COUNT, SEED = 32, 2, 3


def _ray_start_command(temp_dir: str) -> tuple[list[str], int]:
    """``ray start --head --block`` on loopback, every port chosen free so nothing clashes."""
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager = free_ports(9)
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}", "--object-store-memory=100000000",
        f"--temp-dir={temp_dir}",
    ]
    return command, dashboard


def _stop_cluster(head: subprocess.Popen, temp_dir: str) -> None:
    """End this cluster's processes only: the ``ray start`` tree and whatever names its temp dir."""
    import psutil  # vendored by Ray (ray/thirdparty_files), importable once ray is imported

    procs = []
    try:
        root = psutil.Process(head.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    for proc in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(proc.info["cmdline"] or ()):
            procs.append(proc)
    head.terminate()  # `ray start --block` ends the processes it started on SIGTERM
    try:
        head.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster with the dashboard (Jobs API) on loopback; yields its client."""
    temp_dir = tempfile.mkdtemp(prefix="rp-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    command, dashboard_port = _ray_start_command(temp_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(RAY_AUTH_MODE="disabled", PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    log_path = Path(temp_dir) / "ray-start.log"
    with open(log_path, "w") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{dashboard_port}")
                break
            except (ConnectionError, RuntimeError) as exc:  # dashboard not up (or not ready) yet
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray start did not come up ({exc}):\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield client
    finally:
        _stop_cluster(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def job_env(s3_server) -> dict[str, str]:
    """What a job needs from the submitter: object-store endpoint and credentials, the venv."""
    return {
        **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")},
        "AWS_ENDPOINT_URL": s3_server["endpoint_url"],
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }


def run_job(client: JobSubmissionClient, entrypoint: str, env_vars: dict) -> tuple[JobStatus, str]:
    """Submit ``entrypoint`` with the repository as working_dir; wait for a final status."""
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": env_vars},
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (status := client.get_job_status(job_id)).is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after {JOB_TIMEOUT_S} s:\n{client.get_job_logs(job_id)}")
        time.sleep(0.5)
    return status, client.get_job_logs(job_id)


@pytest.fixture(scope="module")
def simulated(cluster, job_env, s3_server):
    """``jobs/simulate.py bcdi`` run as a Ray job into a fresh bucket; returns its URL and logs."""
    import boto3

    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server["endpoint_url"]).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/sim.zarr"
    status, logs = run_job(
        cluster,
        f"python jobs/simulate.py bcdi {url} --count {COUNT} --size {SIZE} --seed {SEED} --workers 2 --no-progress",
        job_env,
    )
    assert status == JobStatus.SUCCEEDED, logs
    return url, logs


def test_simulate_job_writes_the_pure_core_volumes_to_s3(simulated, s3_server):
    url, logs = simulated
    assert f"{COUNT} samples ({COUNT} computed now)" in logs
    ds = storage.open_dataset(storage.resolve(url, {"endpoint_url": s3_server["endpoint_url"]}))
    assert ds.intensity.shape == (COUNT, SIZE, SIZE, SIZE)
    assert ds.attrs["provenance"]["parameters"] == {"count": COUNT, "size": SIZE, "seed": SEED}
    # the cluster's workers computed exactly what the pure core gives for (seed, index)
    for index in range(COUNT):
        np.testing.assert_array_equal(ds.intensity.values[index], simulate_bcdi_sample(SIZE, SEED, index)[0])


def test_failing_job_reports_failed_with_one_line_error(cluster, job_env, simulated):
    url, _ = simulated
    status, logs = run_job(cluster, f"python jobs/simulate.py bcdi {url}-bad --count 0", job_env)
    assert status == JobStatus.FAILED
    assert "rayproc: error: --count must be >= 1; got 0." in logs
    assert "Traceback" not in logs


# --- second step: inpaint the simulated volumes on the cluster (jobs/inpaint.py) --------------------
GAP = "x:14:3"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained but fixed gapnet model directory (the network's output is the fill prior)."""
    from rayproc.models.artifact import save_model

    net, _ = tiny_gapnet()
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_model(directory, net, net.config, gap_widths=(3,), patch_size=32)
    return directory


def test_inpaint_job_matches_the_single_process_inpainting(cluster, job_env, simulated, tiny_model, s3_server):
    import torch

    from rayproc.bcdi.inpaint import inpaint_volume
    from rayproc.models.artifact import load_model

    sim_url, _ = simulated
    out_url = sim_url.replace("sim.zarr", "inpainted.zarr")
    status, logs = run_job(
        cluster,
        f"python jobs/inpaint.py {sim_url} {out_url} --gap {GAP} --model {tiny_model} --workers 2 --no-progress",
        job_env,
    )
    assert status == JobStatus.SUCCEEDED, logs
    options = {"endpoint_url": s3_server["endpoint_url"]}
    sim = storage.open_dataset(storage.resolve(sim_url, options)).intensity.values
    out = storage.open_dataset(storage.resolve(out_url, options))
    mask = gaps_to_mask([GAP], (SIZE, SIZE, SIZE))
    assert out.intensity.shape == sim.shape
    network, _ = load_model(tiny_model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the cluster's actors (one CPU each)
    try:
        for index in range(COUNT):
            np.testing.assert_array_equal(out.mask.values[index], mask)
            got = out.intensity.values[index]
            np.testing.assert_array_equal(got[~mask], sim[index][~mask])  # measured voxels untouched
            expected, _ = inpaint_volume(sim[index], mask, network.eval())
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * float(expected.max()))
    finally:
        torch.set_num_threads(threads)
