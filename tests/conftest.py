"""Session fixtures: one embedded Ray, one local S3 server, the real data folder."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real measurements); tests needing it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (real measurements) not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server on loopback (moto), with credentials in the environment."""
    from moto.server import ThreadedMotoServer

    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
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
def ray_local(s3_server):
    """One embedded Ray for the whole session (started after the S3 env is set)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
