"""The deployment files under ``cluster/``: Ray cluster-launcher and KubeRay configs are well formed,
use the fields Ray and KubeRay require, and run job scripts and ``rayproc`` commands that exist.

Nothing is launched: the launcher configs go through Ray's own schema and validation, the
KubeRay manifests are checked against the fields of KubeRay's ``ray.io/v1`` types, and job
entrypoints are parsed by the real CLI without running it.
"""

from __future__ import annotations

import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import typer
import yaml

import rayproc.cli

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
YAML_FILES = sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")])
DOCUMENTS = [(path, doc) for path in YAML_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]
LAUNCHER = [(path, doc) for path, doc in DOCUMENTS if "provider" in doc]
KUBERAY = [(path, doc) for path, doc in DOCUMENTS if str(doc.get("apiVersion", "")).startswith("ray.io/")]
RAYJOBS = [(path, doc) for path, doc in KUBERAY if doc["kind"] == "RayJob"]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
JOB_SCRIPT = re.compile(r"\bjobs/([A-Za-z0-9_]+)\.py\b")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}


def ids(items):
    return [f"{path.relative_to(REPO)}:{doc.get('kind', doc.get('cluster_name'))}" for path, doc in items]


def test_cluster_folder_holds_launcher_and_kuberay_configs_only():
    assert LAUNCHER and KUBERAY
    assert {doc.get("kind") for _, doc in KUBERAY} >= {"RayCluster", "RayJob"}
    assert len(LAUNCHER) + len(KUBERAY) == len(DOCUMENTS), "a YAML under cluster/ is neither kind"


# --- Ray cluster launcher -------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "config"), LAUNCHER, ids=ids(LAUNCHER))
def test_launcher_required_fields(path, config):
    assert isinstance(config["cluster_name"], str) and config["cluster_name"]
    assert config["provider"]["type"] and config["provider"]["region"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    for name, node_type in types.items():
        assert isinstance(node_type["node_config"], dict) and node_type["node_config"], name
        assert isinstance(node_type["resources"], dict), name
        if name != config["head_node_type"]:
            assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
    worker_caps = [t["max_workers"] for n, t in types.items() if n != config["head_node_type"]]
    assert config["max_workers"] >= sum(worker_caps), "the global cap would cut a node type's max_workers"


@pytest.mark.parametrize(("path", "config"), LAUNCHER, ids=ids(LAUNCHER))
def test_launcher_matches_rays_schema(path, config):
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema_file = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    if not schema_file.is_file():
        pytest.skip("this Ray ships no ray-schema.json")
    jsonschema.validate(config, json.loads(schema_file.read_text()))


@pytest.mark.parametrize(("path", "config"), LAUNCHER, ids=ids(LAUNCHER))
def test_launcher_passes_rays_own_validation(path, config):
    """What `ray up` does before touching the cloud: merge the provider defaults, validate."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:
        pytest.skip("ray.autoscaler._private.util moved")
    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize(("path", "config"), LAUNCHER, ids=ids(LAUNCHER))
def test_launcher_setup_installs_pinned_torch_then_rayproc(path, config):
    commands = config["setup_commands"]
    torch_step = next(i for i, c in enumerate(commands) if "torch==" in c)
    package_step = next(i for i, c in enumerate(commands) if re.search(r"pip install .*rayproc\b", c))
    assert torch_step < package_step


# --- KubeRay ---------------------------------------------------------------------------------------


def _string_map(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _check_pod_template(template: dict, where: str) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for container in containers:
        assert container["name"] and container["image"], where
        resources = container.get("resources", {})
        for name, quantity in resources.get("requests", {}).items():
            if "/" in name:  # extended resources (nvidia.com/gpu): Kubernetes wants requests == limits
                assert str(resources.get("limits", {}).get(name)) == str(quantity), f"{where}: {name}"
    return containers


def _check_ray_cluster_spec(spec: dict, where: str) -> list[dict]:
    head = spec["headGroupSpec"]
    assert _string_map(head["rayStartParams"]), f"{where}: rayStartParams values must be strings"
    containers = _check_pod_template(head["template"], f"{where} head")
    groups = spec.get("workerGroupSpecs", [])
    assert len({g["groupName"] for g in groups}) == len(groups), f"{where}: duplicate groupName"
    for group in groups:
        name = f"{where} {group['groupName']}"
        assert all(isinstance(group[k], int) for k in ("replicas", "minReplicas", "maxReplicas")), name
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        assert _string_map(group["rayStartParams"]), f"{name}: rayStartParams values must be strings"
        containers += _check_pod_template(group["template"], name)
    return containers


@pytest.mark.parametrize(("path", "doc"), KUBERAY, ids=ids(KUBERAY))
def test_kuberay_manifest_fields(path, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] in ("RayCluster", "RayJob")
    assert DNS_LABEL.match(doc["metadata"]["name"])
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
        assert isinstance(yaml.safe_load(spec.get("runtimeEnvYAML", "{}")), dict)
        assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "InteractiveMode")
        spec = spec["rayClusterSpec"]
    containers = _check_ray_cluster_spec(spec, doc["metadata"]["name"])
    # every node of a Ray cluster must run the same Ray and Python: one image throughout
    assert len({c["image"] for c in containers}) == 1


def job_commands(entrypoint: str) -> list[list[str]]:
    """The commands of an entrypoint, unwrapping ``bash -c '...'`` and splitting on ``&&``.

    KubeRay pastes the entrypoint into the submitter's shell command line, so a bare ``&&``
    would run the later steps in the submitter pod: operators must be inside ``bash -c``.
    """
    tokens = shlex.split(entrypoint)
    assert not SHELL_OPERATORS & set(tokens), f"shell operator outside bash -c: {entrypoint!r}"
    if tokens[:2] in (["bash", "-c"], ["sh", "-c"]):
        tokens = shlex.split(tokens[2])
    commands, current = [], []
    for token in [*tokens, "&&"]:
        if token == "&&":
            commands.append(current)
            current = []
        else:
            current.append(token)
    return commands


def parse_cli(argv: list[str]) -> dict:
    """Parse ``rayproc ARGV`` with the real CLI without running it; the leaf command's parameters."""
    command, ctx, name, args = typer.main.get_command(rayproc.cli.app), None, "rayproc", list(argv)
    while hasattr(command, "resolve_command"):  # a group: descend to the named subcommand
        ctx = command.context_class(command, info_name=name, parent=ctx)
        name, command, args = command.resolve_command(ctx, args)
    return command.make_context(name, args, parent=ctx).params


def rayproc_argv(script: str, args: list[str], monkeypatch) -> list[str]:
    """The argv that ``python SCRIPT ARGS`` hands to :func:`rayproc.cli.main`."""
    calls = []
    monkeypatch.setattr(rayproc.cli, "main", lambda argv: calls.append(list(argv)) or 0)
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script prepends the repository
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / script), run_name="__main__")
    assert exited.value.code == 0 and len(calls) == 1
    return calls[0]


@pytest.mark.parametrize(("path", "doc"), RAYJOBS, ids=ids(RAYJOBS))
def test_rayjob_entrypoint_runs_valid_rayproc_commands(path, doc, monkeypatch):
    commands = job_commands(doc["spec"]["entrypoint"])
    assert commands
    for python, script, *args in commands:
        assert python == "python" and JOB_SCRIPT.fullmatch(script), f"not a job script: {script}"
        assert (REPO / script).is_file(), script
        params = parse_cli(rayproc_argv(script, args, monkeypatch))
        assert params["progress"] is False  # no progress bars in job logs


def test_parse_cli_rejects_what_the_cli_rejects():
    assert parse_cli(["bcdi", "simulate", "out.zarr", "--count", "3"])["count"] == 3
    with pytest.raises(Exception, match="No such option"):
        parse_cli(["bcdi", "simulate", "out.zarr", "--no-such-option"])
    with pytest.raises(Exception, match="No such command"):
        parse_cli(["bcdi", "no-such-command"])
    with pytest.raises(Exception, match="valid integer"):
        parse_cli(["bcdi", "simulate", "out.zarr", "--count", "many"])


# --- across files ----------------------------------------------------------------------------------


def test_referenced_job_scripts_exist():
    texts = {path: path.read_text() for path in [*YAML_FILES, CLUSTER / "README.md"]}
    referenced = {(path.name, name) for path, text in texts.items() for name in JOB_SCRIPT.findall(text)}
    assert {name for _, name in referenced} >= {"simulate"}
    missing = sorted((where, f"jobs/{name}.py") for where, name in referenced
                     if not (REPO / "jobs" / f"{name}.py").is_file())
    assert not missing


def test_versions_agree_across_files():
    ray_versions = {doc["spec"].get("rayVersion") or doc["spec"]["rayClusterSpec"]["rayVersion"]
                    for _, doc in KUBERAY}
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert ray_versions == set(re.findall(r"ARG RAY_VERSION=(\S+)", dockerfile))
    torch_pins = {pin for path in [REPO / "Makefile", CLUSTER / "Dockerfile", *YAML_FILES]
                  for pin in re.findall(r"torch==([0-9][\w.]*)", path.read_text())}
    assert len(torch_pins) == 1, f"torch pinned differently: {torch_pins}"


def test_no_credentials_in_cluster_files():
    for path in [p for p in CLUSTER.rglob("*") if p.is_file()]:
        text = path.read_text()
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), path  # AWS access key ids
        assert not re.search(r"(?i)secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{20,}", text), path


def test_one_constraints_file_pins_client_and_cluster():
    """make, the Docker image and the cluster launcher install with the same constraints.txt,
    whose pins are public versions (a CUDA or CPU torch build from any index satisfies them)."""
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    assert "+" not in pins["torch"], "a local version label (+cpu) fails on an index serving CUDA builds"
    assert re.findall(r"torch==([0-9][\w.]*)", (REPO / "Makefile").read_text()) == [pins["torch"]]
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"pip install .*-c constraints\.txt \.", dockerfile)
    assert re.findall(r"ARG RAY_VERSION=(\S+)", dockerfile) == [pins["ray"]]
    for path, config in LAUNCHER:
        package_step = next(c for c in config["setup_commands"] if re.search(r"pip install .*rayproc\b", c))
        assert "-c ~/rayproc/constraints.txt" in package_step, path


def test_every_cli_stage_runs_as_a_job(tmp_path):
    """jobs/rayproc_job.py runs any command with the CLI's own exit status and one-line errors."""
    import os
    import subprocess

    command = typer.main.get_command(rayproc.cli.app)
    stages = {f"{group} {name}" for group, sub in command.commands.items() if hasattr(sub, "commands")
              for name in sub.commands} | {"ingest"}
    assert {"labdct segment", "labdct synth", "bcdi finetune", "labdct background"} <= stages
    job = REPO / "jobs" / "rayproc_job.py"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ok = subprocess.run([sys.executable, str(job), "--version"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("rayproc ")
    bad = subprocess.run([sys.executable, str(job), "labdct", "segment", str(tmp_path / "missing"),
                          str(tmp_path / "out.zarr"), "--method", "standard"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("rayproc: error:")
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.zarr").exists()
