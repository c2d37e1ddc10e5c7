"""A multi-node Ray cluster on one machine, started with ``ray start`` (tests and benchmarks).

Every node is its own ``ray start --block`` process (its own session, ports and ``--temp-dir``),
so a node is lost exactly as on a real cluster: SIGKILL to its ``ray start`` process, its raylet,
object store, agents and workers (:meth:`LocalCluster.kill`). Nothing here calls ``ray stop``,
which ends every Ray process on the machine (the pytest process's own Ray and other users'):
:meth:`LocalCluster.stop` ends only the process trees this object started, and the processes
that name one of its temp dirs.

Nodes are steered by custom resources: each node gets ``{name: 1}`` (``head``, ``node_a``, ...),
and the jobs' actors ask for CPUs only, so a node with ``num_cpus=0`` (the head, as in
``cluster/aws.yaml``) runs drivers only.

    with LocalCluster() as cluster:          # head (0 CPUs) + node_a + node_b (1 CPU each)
        client = cluster.job_client()
        victim = cluster.add_node("victim", num_cpus=1)
        ...
        cluster.kill(victim)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_ports

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 120
OBJECT_STORE_BYTES = 100_000_000  # per node, the smallest Ray accepts is 75 MB
# Never uploaded with the working_dir (Ray skips .git and .venv by default already).
EXCLUDES = ["/.venv", "/.git", "/.pytest_cache", "*.egg-info", "__pycache__", "*.zarr", "/demo-out", "/out",
            "/build", "/benchmarks/results"]


def _ray_env() -> dict[str, str]:
    """The nodes' environment: no AWS or Ray variables of the caller (jobs get theirs via env_vars)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(RAY_AUTH_MODE="disabled", PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    # A lost node is declared dead after 5 failed health checks 1 s apart (Ray's default: 3 s apart).
    env.update(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="5")
    return env


@dataclass
class Node:
    """One ``ray start --block`` process and what identifies its processes."""

    name: str
    process: subprocess.Popen
    temp_dir: str
    log_path: Path
    num_cpus: float
    node_id: str | None = None
    pids: set[int] = field(default_factory=set)

    def processes(self) -> list:
        """The node's live processes: the ``ray start`` tree and anything naming its temp dir."""
        import psutil

        found = {}
        try:
            root = psutil.Process(self.process.pid)
            for proc in (root, *root.children(recursive=True)):
                found[proc.pid] = proc
        except psutil.NoSuchProcess:
            pass
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if self.temp_dir in " ".join(proc.info["cmdline"] or ()):
                    found[proc.pid] = proc
            except psutil.Error:
                continue
        return list(found.values())


class LocalCluster:
    """A head and worker nodes on loopback, each a ``ray start`` subprocess with its own temp dir.

    Parameters
    ----------
    workers : dict of str to float
        Worker nodes to start with the head: name -> logical CPUs (each also gets ``{name: 1}``).
    head_cpus : float
        Logical CPUs of the head (0: drivers only).
    object_store_bytes : int
        Object store of every node.
    """

    def __init__(self, workers: dict[str, float] | None = None, *, head_cpus: float = 0,
                 object_store_bytes: int = OBJECT_STORE_BYTES):
        self.worker_spec = {"node_a": 1, "node_b": 1} if workers is None else dict(workers)
        self.head_cpus = head_cpus
        self.object_store_bytes = object_store_bytes
        self.nodes: dict[str, Node] = {}
        self.gcs_address = ""
        self.dashboard_url = ""
        self._root = tempfile.mkdtemp(prefix="rpmn-", dir="/tmp")  # short: socket paths must fit 107 bytes

    # ------------------------------------------------------------------ starting
    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        gcs, dashboard, client = free_ports(3)
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard}"
        self._launch("head", self.head_cpus, [
            "--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}"])
        self._wait_for_dashboard()
        self._wait_for_node(self.nodes["head"])
        for name, cpus in self.worker_spec.items():
            self.add_node(name, num_cpus=cpus)

    def add_node(self, name: str, *, num_cpus: float = 1) -> Node:
        """Start a worker node ``name`` (resource ``{name: 1}``) and wait until it has joined."""
        if name in self.nodes and self.nodes[name].process.poll() is None:
            raise ValueError(f"node {name!r} is already running")
        node = self._launch(name, num_cpus, [f"--address={self.gcs_address}"])
        self._wait_for_node(node)
        return node

    def _launch(self, name: str, num_cpus: float, role_args: list[str]) -> Node:
        agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager = free_ports(6)
        temp_dir = tempfile.mkdtemp(prefix=f"{name[:6]}-", dir=self._root)
        command = [
            str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
            *role_args, f"--num-cpus={num_cpus}", "--num-gpus=0", f"--resources={json.dumps({name: 1})}",
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
            f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--object-store-memory={self.object_store_bytes}", f"--temp-dir={temp_dir}",
        ]
        log_path = Path(temp_dir) / "ray-start.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, env=_ray_env(), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        node = self.nodes[name] = Node(name, process, temp_dir, log_path, num_cpus)
        return node

    def _wait_for_dashboard(self) -> None:
        from ray.job_submission import JobSubmissionClient

        head = self.nodes["head"]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                JobSubmissionClient(self.dashboard_url)
                return
            except (ConnectionError, RuntimeError) as exc:  # not up (or not ready) yet
                if head.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start --head did not come up ({exc}):\n{self._tail(head)}") from None
                time.sleep(0.5)

    def _wait_for_node(self, node: Node) -> None:
        """Wait until a live node carries ``node.name`` as a resource; record its node id."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            for state in self.alive_nodes():
                if node.name in state.resources_total:
                    node.node_id = state.node_id
                    node.pids = {p.pid for p in node.processes()}
                    return
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {node.name} did not join:\n{self._tail(node)}")
            time.sleep(0.5)

    def _tail(self, node: Node) -> str:
        try:
            return node.log_path.read_text()[-3000:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ state
    def alive_nodes(self) -> list:
        """The cluster's live nodes as the GCS sees them (``ray.util.state.list_nodes``)."""
        from ray.util.state import list_nodes

        try:  # filtered here: a state filter fails once the cluster has a dead node
            return [n for n in list_nodes(address=self.dashboard_url, timeout=10) if n.state == "ALIVE"]
        except Exception:  # the dashboard briefly unavailable
            return []

    def actors_on(self, node: Node, state: str = "ALIVE") -> list:
        """Actors of the cluster in ``state`` on ``node``."""
        from ray.util.state import list_actors

        try:
            actors = list_actors(address=self.dashboard_url, timeout=10)
        except Exception:
            return []
        return [a for a in actors if a.node_id == node.node_id and a.state == state]

    def job_client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url)

    # ------------------------------------------------------------------ losing and stopping nodes
    def kill(self, node: Node | str) -> None:
        """Lose ``node`` as a machine is lost: SIGKILL every one of its processes at once."""
        import psutil

        node = self.nodes[node] if isinstance(node, str) else node
        procs = node.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        node.process.wait(timeout=10)

    def stop(self) -> None:
        """End the nodes this object started (workers first), and remove their temp dirs."""
        import psutil

        for name in sorted(self.nodes, key=lambda n: n == "head"):
            node = self.nodes[name]
            procs = node.processes()
            if node.process.poll() is None:
                node.process.terminate()  # `ray start --block` ends the processes it started on SIGTERM
                try:
                    node.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
            _, alive = psutil.wait_procs(procs, timeout=5)
            for proc in alive + node.processes():
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(alive, timeout=5)
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait(timeout=5)
        shutil.rmtree(self._root, ignore_errors=True)


# ---------------------------------------------------------------------- jobs


def submit(client, entrypoint: str, env_vars: dict, *, entrypoint_resources: dict | None = None) -> str:
    """Submit ``entrypoint`` with the repository as working_dir; returns the job id."""
    return client.submit_job(
        entrypoint=entrypoint, entrypoint_resources=entrypoint_resources,
        runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": env_vars},
    )


def wait(client, job_id: str, timeout_s: float):
    """Wait for a final status (stop the job and raise after ``timeout_s``); returns (status, logs)."""
    deadline = time.monotonic() + timeout_s
    while not (status := client.get_job_status(job_id)).is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s} s:\n{client.get_job_logs(job_id)}")
        time.sleep(0.5)
    return status, client.get_job_logs(job_id)


def job_env(endpoint_url: str) -> dict[str, str]:
    """What a job needs from the submitter: object-store endpoint and credentials, the venv."""
    return {
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "AWS_ENDPOINT_URL": endpoint_url,
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
