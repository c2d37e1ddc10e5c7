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
from tests.conftest import free_ports


def _rayproc(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayproc", *args], capture_output=True, text=True,
                          env=env or {**os.environ}, timeout=timeout)


def test_object_store_restarted_mid_write_is_retried(s3_server):
    """The S3 server goes away and comes back on the same port: the chunk write still lands."""
    import boto3
    from moto.server import ThreadedMotoServer

    (port,) = free_ports()
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
    (port,) = free_ports()
    result = _rayproc("bcdi", "simulate", str(tmp_path / "s.zarr"), "--count", "1",
                      "--address", f"127.0.0.1:{port}", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if "cannot reach the Ray cluster" in line
    ]
    assert not (tmp_path / "s.zarr").exists()


@pytest.fixture(scope="module")
def s3_with_auth(tmp_path_factory, s3_server):  # s3_server: test credentials and region in the env
    """A second S3 server that checks signatures and IAM policies (moto auth on after setup)."""
    import boto3

    (port,) = free_ports()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    # The four setup calls below run unauthenticated; every later request is checked.
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}, stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="beamline")
        iam.put_user_policy(UserName="beamline", PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="beamline")["AccessKey"]
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="authed")
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.mark.parametrize("wrong", ["secret", "key id"])
def test_wrong_credentials_one_line_and_nothing_written(tmp_path, s3_with_auth, wrong):
    endpoint, key_id, secret = s3_with_auth
    np.save(tmp_path / "v.npy", np.ones((4, 4, 4), np.float32))
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    good, bad_store = f"good-{wrong.replace(' ', '-')}.zarr", f"bad-{wrong.replace(' ', '-')}.zarr"
    ok = _rayproc("ingest", str(tmp_path / "v.npy"), f"s3://authed/{good}",
                  "--storage-option", f"endpoint_url={endpoint}", env=env)
    assert ok.returncode == 0, ok.stderr  # the right key works against the same server

    bad = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"} if wrong == "secret" else \
        {**env, "AWS_ACCESS_KEY_ID": "AKIANOTAREALKEY00000"}
    result = _rayproc("ingest", str(tmp_path / "v.npy"), f"s3://authed/{bad_store}",
                      "--storage-option", f"endpoint_url={endpoint}", env=bad)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rayproc: error:"), result.stderr
    assert "not-the-secret" not in result.stderr
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret)
    names = [o["Key"] for o in s3.list_objects_v2(Bucket="authed").get("Contents", [])]
    assert not any(n.startswith(bad_store) for n in names)
    assert any(n.startswith(good) for n in names)  # what existed is untouched


def test_help_placeholders_are_named_for_what_they_hold(capsys):
    """--help shows --mask MASK and nothing after a flag, not typer's <str> / <bool> type labels."""
    from rayproc.cli import main as cli_main

    assert cli_main(["bcdi", "inpaint", "--help"]) == 0
    text = capsys.readouterr().out
    assert "MASK" in text and "ROW,COL" in text and "<str>" not in text and "<bool>" not in text


def test_last_line_lists_the_variables_written(tmp_path, capsys):
    import tifffile

    from rayproc.cli import main as cli_main

    rng = np.random.default_rng(0)
    np.save(tmp_path / "v.npy", rng.poisson(3.0, (4, 5, 6)).astype(np.float32))
    assert cli_main(["ingest", str(tmp_path / "v.npy"), str(tmp_path / "v.zarr")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"written to {tmp_path / 'v.zarr'}: intensity (z: 4, y: 5, x: 6) float32"
    (tmp_path / "frames").mkdir()
    for i in range(3):
        frame = rng.poisson(20.0, (64, 64)).astype(np.uint16)
        frame[30:33, 30:33] += 400  # a spot
        tifffile.imwrite(tmp_path / "frames" / f"f{i}.tif", frame)
    assert cli_main(["labdct", "segment", str(tmp_path / "frames"), str(tmp_path / "s.zarr"), "--method",
                     "standard"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"written to {tmp_path / 's.zarr'}: beamstop (det_y: 64, det_z: 64) uint8; "
                           "hot_pixel (det_y: 64, det_z: 64) uint8; spot table of 6 variables (spot: ")
    assert last.endswith("spot_label (frame: 3, det_y: 64, det_z: 64) int32")


def test_labdct_report_module_bad_use_is_one_line(tmp_path):
    import subprocess
    import sys

    for module in ("rayproc.pipelines.labdct.report", "rayproc.pipelines.labdct_report"):
        run = subprocess.run([sys.executable, "-m", module, str(tmp_path / "none.zarr"), str(tmp_path),
                              str(tmp_path / "f.png")], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "no dataset" in run.stderr
