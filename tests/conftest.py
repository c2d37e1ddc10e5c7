"""Session fixtures (one embedded Ray, one local S3 server, the real data folder), the markers
``ray`` / ``s3`` / ``slow`` applied by rule, and the helpers several test modules share.

Markers (registered in pyproject.toml), applied in :func:`pytest_collection_modifyitems`:

* ``ray``: the test uses the ``ray_local`` fixture (directly or through another fixture), or is
  listed in :data:`RAY_TESTS` (it runs a rayproc CLI that starts or joins Ray itself);
* ``s3``: the test uses ``s3_server`` / ``s3_bucket``, or is listed in :data:`S3_TESTS`;
* ``slow``: the module is in :data:`SLOW_MODULES`, or the test is in :data:`SLOW_TESTS`.

``make test-fast`` runs ``-m "not slow and not ray and not s3"`` plus the docstring examples.
Entries of the tables are checked against the test files by ``tests/test_layout.py``.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# ------------------------------------------------------------------------------------ markers

# Long end to end: a Ray cluster in a subprocess; every CLI command against bad uses.
SLOW_MODULES = {"test_cluster_e2e.py", "test_bad_use.py"}
# Ray Train runs (a worker group of processes, checkpoints, a failure and a restart).
SLOW_TESTS = {
    "test_bcdi_train.py::test_ray_train_two_workers_s3_checkpoints_failure_and_resume",
    "test_labdct_denoise.py::test_ray_train_two_workers_one_epoch_with_checkpoint",
}
# Tests that run a rayproc CLI starting (or joining) Ray themselves, without ``ray_local``.
RAY_TESTS = {
    "test_hardening.py::test_unreachable_ray_address_one_line",
}
# Tests that ask for the S3 server at run time (``request.getfixturevalue``), by parameter id.
S3_TESTS = {
    "test_storage.py::test_round_trip_keeps_dims_coords_attrs[True]",
}
RAY_FIXTURES = {"ray_local"}
S3_FIXTURES = {"s3_server", "s3_bucket"}


def _key(item: pytest.Item) -> tuple[str, str, str]:
    """(file name, ``file::function``, ``file::function[params]``) of a collected test."""
    name = Path(str(item.path)).name
    function = getattr(item, "originalname", None) or item.name.split("[", 1)[0]
    return name, f"{name}::{function}", f"{name}::{item.name}"


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        module, function, test = _key(item)
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & RAY_FIXTURES or function in RAY_TESTS or test in RAY_TESTS:
            item.add_marker(pytest.mark.ray)
        if fixtures & S3_FIXTURES or function in S3_TESTS or test in S3_TESTS:
            item.add_marker(pytest.mark.s3)
        if module in SLOW_MODULES or function in SLOW_TESTS or test in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


# ----------------------------------------------------------------------------- session fixtures


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real measurements); tests needing it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (real measurements) not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def aws_test_env() -> None:
    """Test credentials and region in the environment (before Ray starts: its workers inherit them)."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )


@pytest.fixture(scope="session")
def s3_server(aws_test_env):
    """A real S3 API server on loopback (moto), with credentials in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {"endpoint_url": f"http://{host}:{port}", "server": server}
    server.stop()


@pytest.fixture()
def s3_bucket(s3_server) -> tuple[str, dict]:
    """A fresh bucket; returns (``s3://bucket``, storage options)."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server["endpoint_url"]).create_bucket(Bucket=name)
    return f"s3://{name}", {"endpoint_url": s3_server["endpoint_url"]}


@pytest.fixture(scope="session")
def ray_local(aws_test_env):
    """One embedded Ray for the whole session (started after the S3 credentials are set)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


# ------------------------------------------------------------------------------ shared fixtures


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread, as actors run it, so single-process references are bit-identical.

    Modules use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def cli_error(capsys):
    """Run ``rayproc ARGV`` in process and return its error: exit 2, one ``rayproc: error:`` line."""
    from rayproc.cli import main

    def run(argv) -> str:
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err.strip()
        assert code == 2, f"exit status {code}, stderr: {err!r}"
        assert err.startswith("rayproc: error:") and len(err.splitlines()) == 1, err
        return err

    return run


# -------------------------------------------------------------------------------- shared helpers
# Plain functions (used at module level and inside fixtures): ``from tests.conftest import ...``.


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct loopback ports free right now (all bound at once, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def jitter_weights(model, scale: float = 0.05):
    """Add ``scale`` N(0, 1) to every parameter (from torch's global generator), in place.

    A network moved off its initialisation: its output depends on its input (a fresh gapnet's
    zero head returns its fill prior; the labdct net's ICNR upsampling is exactly nearest).
    """
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def tiny_gapnet(seed: int = 0, jitter: float = 0.0, **config):
    """The tests' tiny gapnet (base 4, depth 2: 10,193 parameters), seeded; returns (model, config).

    ``config`` overrides fields of :class:`rayproc.bcdi.network.BcdiNetConfig`; ``jitter``
    moves the weights off their initialisation (:func:`jitter_weights`).
    """
    import torch

    from rayproc.bcdi.network import BcdiNetConfig, build_bcdi_net

    torch.manual_seed(seed)
    config = BcdiNetConfig(**{"arch": "gapnet", "base_channels": 4, "depth": 2, **config})
    model = build_bcdi_net(config)
    if jitter:
        jitter_weights(model, jitter)
    return model, config
