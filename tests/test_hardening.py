"""Faults and bad input at the shell: object-store outages, credentials, unreachable Ray."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from rayproc import storage
from rayproc.errors import StoreError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rayproc(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayproc", *args], capture_output=True, text=True,
                          env=env or {**os.environ}, timeout=timeout)


def test_object_store_restarted_mid_write_is_retried(s3_server):
    """The S3 server goes away and comes back on the same port: the chunk write still lands."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="flaky-bucket")
    loc = storage.resolve("s3://flaky-bucket/x.zarr", {"endpoint_url": endpoint})
    spec = {"v": storage.ArraySpec(("i", "x"), (2, 4), "float32", chunks=(1, 4))}
    storage.create_dataset(loc, spec, provenance_attrs=storage.provenance("test", {}))
    storage.write_task(loc, "t0", {"v": ((0,), np.zeros(4))})
    server.stop()
    restarted = {}

    def restart():
        time.sleep(1.0)
        restarted["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        restarted["server"].start()

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        storage.write_task(loc, "t1", {"v": ((1,), np.ones(4))})  # starts while the server is down
        thread.join()
        with pytest.raises(StoreError):
            storage.finalize(loc, ["t0", "t1", "t2"])  # never complete with a missing chunk
        storage.finalize(loc, ["t0", "t1"])
        np.testing.assert_array_equal(storage.open_dataset(loc).v.values, [[0] * 4, [1] * 4])
    finally:
        thread.join()
        restarted["server"].stop()


def test_missing_credentials_one_line(tmp_path, s3_server):
    np.save(tmp_path / "v.npy", np.ones((4, 4, 4), np.float32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true")
    result = _rayproc("ingest", str(tmp_path / "v.npy"), "s3://no-creds/v.zarr",
                      "--storage-option", f"endpoint_url={s3_server['endpoint_url']}", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "credentials" in lines[0]


def test_credentials_never_in_provenance_or_output(tmp_path, s3_bucket):
    bucket, options = s3_bucket
    np.save(tmp_path / "v.npy", np.ones((4, 4, 4), np.float32))
    secret = "s3cr3t-DO-NOT-LEAK"
    result = _rayproc("ingest", str(tmp_path / "v.npy"), f"{bucket}/v.zarr",
                      "--storage-option", f"endpoint_url={options['endpoint_url']}",
                      "--storage-option", "key=testing", "--storage-option", f"secret={secret}")
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    ds = storage.open_dataset(storage.resolve(f"{bucket}/v.zarr", options))
    assert secret not in repr(ds.attrs) and "***" in ds.attrs["provenance"]["command"]


def test_unreachable_ray_address_one_line(tmp_path):
    port = _free_port()
    result = _rayproc("bcdi", "simulate", str(tmp_path / "s.zarr"), "--count", "1",
                      "--address", f"127.0.0.1:{port}", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if "cannot reach the Ray cluster" in line
    ]
    assert not (tmp_path / "s.zarr").exists()
