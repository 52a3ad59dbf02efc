"""Static checks of the batch-sweep cluster configs: `k8s/rayjob-sweep.yaml` (a KubeRay RayJob) and
`cluster/cluster.yaml` (a Ray cluster launcher config for `ray up`). No cluster is contacted and no Ray is started.

RayJob checks follow KubeRay's ray.io/v1 sources (ray-project/kuberay): `ray-operator/apis/ray/v1/rayjob_types.go`
(the RayJobSpec fields) and `ray-operator/controllers/ray/utils/validation.go` (`ValidateRayJobMetadata`,
`ValidateRayJobSpec`, `ValidateRayClusterSpec`). The launcher config is validated against the JSON schema that the
installed Ray ships (`ray/autoscaler/ray-schema.json`) and by the launcher's own `prepare_config` and
`validate_config`, which `ray up` runs before it talks to the cloud.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RAYJOB_FILE = ROOT / "k8s" / "rayjob-sweep.yaml"
RAYSERVICE_FILE = ROOT / "k8s" / "rayservice.yaml"
MODELS_PVC_FILE = ROOT / "k8s" / "models-pvc.yaml"
CLUSTER_FILE = ROOT / "cluster" / "cluster.yaml"

GPU_RESOURCE = "nvidia.com/gpu"
SWEEP_MODULE = "jobs.sweep"
S3_SECRET = "imgsound-s3"
MODELS_MOUNT = "/models"
PROJECT_LABEL = ("app.kubernetes.io/part-of", "imgsound")
# KubeRay's MaxRayClusterNameLength (53) minus the 6 characters it appends for the RayJob's cluster.
MAX_RAYJOB_NAME = 47
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
RAY_SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
# Keys every node type needs (ray-schema.json: available_node_types.*.required) and the config's own required keys.
NODE_TYPE_REQUIRED = ("resources", "node_config")
CONFIG_REQUIRED = ("cluster_name", "provider")

Doc = dict[str, Any]


# ---- loading -----------------------------------------------------------------------------------------------------


def load_documents(path: Path) -> list[Doc]:
    """The non-empty YAML documents of `path`."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


@cache
def rayjob() -> Doc:
    docs = load_documents(RAYJOB_FILE)
    assert len(docs) == 1, f"{RAYJOB_FILE.name} should hold exactly one object, found {len(docs)}"
    return docs[0]


@cache
def rayservice() -> Doc:
    (doc,) = load_documents(RAYSERVICE_FILE)
    return doc


@cache
def cluster_config() -> Doc:
    (doc,) = load_documents(CLUSTER_FILE)
    assert isinstance(doc, dict)
    return doc


def rayjob_cluster() -> Doc:
    return rayjob()["spec"]["rayClusterSpec"]


def head_template(cluster: Doc | None = None) -> Doc:
    return (cluster or rayjob_cluster())["headGroupSpec"]["template"]


def worker_groups(cluster: Doc | None = None) -> list[Doc]:
    return (cluster or rayjob_cluster())["workerGroupSpecs"]


def ray_container(template: Doc) -> Doc:
    """KubeRay treats the first container of a Ray pod template as the Ray container."""
    return template["spec"]["containers"][0]


def gpu_limit(template: Doc) -> float:
    return float(ray_container(template).get("resources", {}).get("limits", {}).get(GPU_RESOURCE, 0))


def gpu_worker_group(cluster: Doc | None = None) -> Doc:
    groups = [group for group in worker_groups(cluster) if gpu_limit(group["template"]) > 0]
    assert len(groups) == 1, "expected exactly one worker group with a GPU limit"
    return groups[0]


def ray_templates() -> list[tuple[str, Doc]]:
    """(role, pod template) for the RayJob's head and each worker group."""
    return [("head", head_template())] + [(group["groupName"], group["template"]) for group in worker_groups()]


def env_of(container: Doc) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def secret_refs(container: Doc) -> set[str]:
    """Names of the Secrets a container imports whole (`envFrom.secretRef`)."""
    return {source["secretRef"]["name"] for source in container.get("envFrom", []) if "secretRef" in source}


def runtime_env() -> Doc:
    text = rayjob()["spec"]["runtimeEnvYAML"]
    assert isinstance(text, str), "runtimeEnvYAML must be a YAML string, not a mapping"
    parsed = yaml.safe_load(text)
    assert isinstance(parsed, dict), "runtimeEnvYAML must hold a YAML mapping"
    return parsed


def entrypoint_argv() -> list[str]:
    return shlex.split(rayjob()["spec"]["entrypoint"])


def entrypoint_spec_path() -> str:
    """The spec argument of `python -m jobs.sweep SPEC ...`: the first positional argument after the module."""
    args = entrypoint_argv()[3:]
    assert args and not args[0].startswith("-"), f"no spec path in the entrypoint: {args}"
    return args[0]


def node_types() -> dict[str, Doc]:
    return cluster_config()["available_node_types"]


def head_type_name() -> str:
    return cluster_config()["head_node_type"]


def worker_types() -> dict[str, Doc]:
    return {name: node for name, node in node_types().items() if name != head_type_name()}


def ray_start_commands(key: str) -> list[str]:
    return [command for command in cluster_config()[key] if re.search(r"\bray start\b", command)]


def installed_ray_version() -> str:
    return importlib.metadata.version("ray")


def ray_package_dir() -> Path:
    """The installed `ray` package's folder, found without importing Ray."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.origin, "the ray package is not installed"
    return Path(spec.origin).parent


# ---- RayJob: structure that KubeRay validates ----------------------------------------------------------------------


def test_rayjob_file_holds_one_rayjob() -> None:
    """The file is a single ray.io/v1 RayJob whose name passes KubeRay's metadata validation (a DNS-1035 label of at
    most 47 characters, since KubeRay appends 6 characters to name the RayCluster) and carries the project label."""
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    name = job["metadata"]["name"]
    assert len(name) <= MAX_RAYJOB_NAME, name
    assert DNS_1035_LABEL.fullmatch(name), name
    assert job["metadata"]["labels"].get(PROJECT_LABEL[0]) == PROJECT_LABEL[1]


def test_rayjob_has_the_fields_kuberay_requires() -> None:
    """An entrypoint; a rayClusterSpec (not a clusterSelector) whose head group has string-valued rayStartParams and
    a pod template whose first container names an image; worker groups with a unique groupName, integer
    minReplicas <= replicas <= maxReplicas and the same container requirements."""
    spec = rayjob()["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert "clusterSelector" not in spec, "the RayJob creates its own cluster"
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(value, str) for value in head["rayStartParams"].values()), head["rayStartParams"]
    assert head["template"]["spec"]["containers"], "headGroupSpec should have at least one container"
    assert ray_container(head["template"])["image"]
    groups = cluster["workerGroupSpecs"]
    assert groups, "no workerGroupSpecs"
    names = [group["groupName"] for group in groups]
    assert len(names) == len(set(names)), names
    for group in groups:
        replicas, low, high = group["replicas"], group["minReplicas"], group["maxReplicas"]
        assert all(isinstance(value, int) for value in (replicas, low, high)), group["groupName"]
        assert 0 <= low <= replicas <= high, (group["groupName"], low, replicas, high)
        assert all(isinstance(value, str) for value in group.get("rayStartParams", {}).values())
        assert group["template"]["spec"]["containers"], "workerGroupSpec should have at least one container"
        assert ray_container(group["template"])["image"]


def test_cluster_is_deleted_after_the_job() -> None:
    """shutdownAfterJobFinishes is true (required for a TTL), the TTL is a non-negative integer, the operator itself
    submits the job (HTTPMode: no submitter pod needs the dashboard port), and activeDeadlineSeconds / backoffLimit
    are integers that KubeRay's spec validation accepts."""
    spec = rayjob()["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    ttl = spec["ttlSecondsAfterFinished"]
    assert isinstance(ttl, int) and ttl >= 0
    assert spec["submissionMode"] == "HTTPMode"
    assert spec["submissionMode"] in RAY_SUBMISSION_MODES
    deadline = spec["activeDeadlineSeconds"]
    assert isinstance(deadline, int) and deadline > 0
    backoff = spec.get("backoffLimit", 0)
    assert isinstance(backoff, int) and backoff >= 0
    assert not spec.get("suspend", False)


def test_runtime_env_yaml_parses_and_its_env_values_are_strings() -> None:
    """runtimeEnvYAML is a YAML string holding a mapping; its env_vars are string-to-string (Ray rejects other
    types) and turn the hub off and usage stats off; there is no working_dir, since the image holds the project.
    Ray's own RuntimeEnv accepts it."""
    env = runtime_env()
    env_vars = env["env_vars"]
    assert isinstance(env_vars, dict)
    for key, value in env_vars.items():
        assert isinstance(key, str) and isinstance(value, str), (key, value)
    assert env_vars.get("HF_HUB_OFFLINE") == "1"
    assert env_vars.get("RAY_USAGE_STATS_ENABLED") == "0"
    assert "working_dir" not in env
    runtime_env_module = pytest.importorskip("ray.runtime_env")
    runtime_env_module.RuntimeEnv(**env)


# ---- RayJob: GPUs, models, credentials ----------------------------------------------------------------------------


def test_head_has_no_gpu() -> None:
    """The head advertises no GPU to Ray and requests none, so the sweep's GPU actors land on the GPU workers."""
    assert rayjob_cluster()["headGroupSpec"]["rayStartParams"].get("num-gpus") == "0"
    assert gpu_limit(head_template()) == 0


def test_gpu_worker_group_requests_one_gpu_per_pod() -> None:
    """Exactly one worker group has an nvidia.com/gpu limit, of 1 per pod (requests, if given, equal the limit), so
    KubeRay starts each of its Ray workers with num-gpus 1."""
    resources = ray_container(gpu_worker_group()["template"])["resources"]
    assert float(resources["limits"][GPU_RESOURCE]) == 1
    if GPU_RESOURCE in resources.get("requests", {}):
        assert float(resources["requests"][GPU_RESOURCE]) == 1


def test_gpu_workers_mount_the_models_claim_read_only() -> None:
    """The GPU workers mount the claim of k8s/models-pvc.yaml at /models, read-only both in the mount and in the
    volume, where `imgsound download /models` put the weights."""
    (claim,) = load_documents(MODELS_PVC_FILE)
    template = gpu_worker_group()["template"]
    volumes = {volume["name"]: volume for volume in template["spec"]["volumes"]}
    claim_of = {name: volume.get("persistentVolumeClaim", {}).get("claimName") for name, volume in volumes.items()}
    mounts = [
        mount
        for mount in ray_container(template)["volumeMounts"]
        if claim_of.get(mount["name"]) == claim["metadata"]["name"]
    ]
    assert len(mounts) == 1, mounts
    assert mounts[0]["mountPath"] == MODELS_MOUNT
    assert mounts[0].get("readOnly") is True
    assert volumes[mounts[0]["name"]]["persistentVolumeClaim"].get("readOnly") is True


def test_s3_secret_reaches_the_driver_and_the_gpu_workers() -> None:
    """The imgsound-s3 Secret is imported as environment variables (envFrom) by the GPU workers, which write the
    samples, and by the head, where the job's driver reads and writes the output's manifest."""
    assert S3_SECRET in secret_refs(ray_container(gpu_worker_group()["template"]))
    assert S3_SECRET in secret_refs(ray_container(head_template()))


def test_ray_containers_are_offline_and_without_usage_stats() -> None:
    """Like the RayService's pods, every Ray container sets HF_HUB_OFFLINE=1 and RAY_USAGE_STATS_ENABLED=0 in its
    own environment (`ray start` reads the latter before any job exists)."""
    for role, template in ray_templates():
        env = env_of(ray_container(template))
        assert env.get("HF_HUB_OFFLINE") == "1", role
        assert env.get("RAY_USAGE_STATS_ENABLED") == "0", role


# ---- RayJob: consistency with k8s/rayservice.yaml -----------------------------------------------------------------


def test_images_match_the_rayservice() -> None:
    """The RayJob's head and workers run the image the RayService runs (one image built from this repository)."""
    service = rayservice()["spec"]["rayClusterConfig"]
    service_images = {ray_container(head_template(service))["image"]}
    service_images |= {ray_container(group["template"])["image"] for group in worker_groups(service)}
    job_images = {ray_container(template)["image"] for _, template in ray_templates()}
    assert len(service_images) == 1, service_images
    assert job_images == service_images


def test_ray_version_matches_the_rayservice_and_the_installed_ray() -> None:
    """rayVersion is the RayService's and the installed ray package's version."""
    version = rayjob_cluster()["rayVersion"]
    assert version == rayservice()["spec"]["rayClusterConfig"]["rayVersion"]
    assert version == installed_ray_version()


def test_pod_labels_and_metrics_port_follow_the_rayservice() -> None:
    """Every Ray pod template carries `app.kubernetes.io/part-of: imgsound`, as the RayService's do, and names Ray's
    metrics port `metrics` (8080), so the existing PodMonitor also scrapes the sweep's cluster."""
    for role, template in ray_templates():
        assert template["metadata"]["labels"].get(PROJECT_LABEL[0]) == PROJECT_LABEL[1], role
        ports = {port["name"]: port["containerPort"] for port in ray_container(template).get("ports", [])}
        assert ports.get("metrics") == 8080, role


def test_gpu_placement_matches_the_rayservice() -> None:
    """The GPU workers use the RayService's GPU node selector and tolerations, so both land on the same GPU nodes."""
    service_spec = gpu_worker_group(rayservice()["spec"]["rayClusterConfig"])["template"]["spec"]
    job_spec = gpu_worker_group()["template"]["spec"]
    assert job_spec.get("nodeSelector") == service_spec.get("nodeSelector")
    assert job_spec.get("tolerations") == service_spec.get("tolerations")


# ---- RayJob: the entrypoint resolves ------------------------------------------------------------------------------


def test_entrypoint_runs_the_sweep_module() -> None:
    """The entrypoint is `python -m jobs.sweep SPEC --output s3://...`."""
    argv = entrypoint_argv()
    assert argv[:3] == ["python", "-m", SWEEP_MODULE], argv
    assert "--output" in argv
    assert argv[argv.index("--output") + 1].startswith("s3://")


def test_entrypoint_module_is_importable() -> None:
    """`jobs.sweep` can be found on this project's import path (found, not imported: nothing runs)."""
    assert importlib.util.find_spec(SWEEP_MODULE) is not None, f"{SWEEP_MODULE} is not importable"


def test_entrypoint_spec_file_exists() -> None:
    """The spec the entrypoint names is a path relative to the repository root (the driver's working directory) and
    that file exists and holds a YAML mapping."""
    spec_path = entrypoint_spec_path()
    assert not Path(spec_path).is_absolute(), spec_path
    path = ROOT / spec_path
    assert path.is_file(), f"{spec_path} does not exist in the repository"
    assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict)


# ---- cluster.yaml: schema and the launcher's own validation --------------------------------------------------------


def test_cluster_yaml_validates_against_rays_schema() -> None:
    """cluster.yaml validates against `ray/autoscaler/ray-schema.json` of the installed Ray (with `jsonschema`, as
    `ray up` does). Without `jsonschema` it falls back to a structural check of the keys that schema requires."""
    config = cluster_config()
    schema = json.loads((ray_package_dir() / "autoscaler" / "ray-schema.json").read_text(encoding="utf-8"))
    try:
        import jsonschema
    except ImportError:
        for key in CONFIG_REQUIRED:
            assert key in config, key
        assert config["provider"].get("type")
        assert set(config) <= set(schema["properties"]), sorted(set(config) - set(schema["properties"]))
        for name, node in config["available_node_types"].items():
            for key in NODE_TYPE_REQUIRED:
                assert key in node, (name, key)
        return
    jsonschema.validate(config, schema)


def test_cluster_yaml_passes_the_launchers_own_validation() -> None:
    """The launcher's `prepare_config` (merge with the AWS defaults) and `validate_config` (schema, head_node_type
    among available_node_types, sum of min_workers <= max_workers) accept the config; they run offline."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(copy.deepcopy(cluster_config()))
    util.validate_config(prepared)


# ---- cluster.yaml: node types and bounds -------------------------------------------------------------------------


def test_head_node_type_is_declared_and_has_no_gpu() -> None:
    """head_node_type names one of available_node_types; that type launches no extra nodes and declares no GPU."""
    assert head_type_name() in node_types()
    head = node_types()[head_type_name()]
    assert head.get("max_workers", 0) == 0
    assert head["resources"].get("GPU", 0) == 0


def test_gpu_worker_type_declares_gpu_resources() -> None:
    """Exactly one worker type declares GPUs (the resources the autoscaler schedules by and `ray start` gets), with
    an instance type."""
    gpu_types = {name: node for name, node in worker_types().items() if node["resources"].get("GPU", 0) >= 1}
    assert len(gpu_types) == 1, sorted(gpu_types)
    (node,) = gpu_types.values()
    assert isinstance(node["resources"]["GPU"], int)
    assert node["node_config"].get("InstanceType")


def test_every_node_type_names_its_own_instance_profile() -> None:
    """Every node type names an IAM instance profile (its S3 credentials): Ray attaches its default profile to the
    head only, so a worker type without one could not write the samples. The head's profile differs from the
    workers', whose role the head must be allowed to pass to the instances it launches."""
    profiles = {name: node["node_config"].get("IamInstanceProfile") for name, node in node_types().items()}
    for name, profile in profiles.items():
        assert isinstance(profile, dict) and (profile.get("Name") or profile.get("Arn")), name
    head_profile = profiles[head_type_name()]
    assert all(profiles[name] != head_profile for name in worker_types())


def test_worker_bounds_are_consistent() -> None:
    """For every node type 0 <= min_workers <= max_workers <= the global max_workers, and the min_workers of all
    types together fit in the global max_workers."""
    config = cluster_config()
    total = config["max_workers"]
    assert isinstance(total, int) and total >= 1
    for name, node in node_types().items():
        low, high = node.get("min_workers", 0), node.get("max_workers", total)
        assert 0 <= low <= high <= total, (name, low, high, total)
    assert sum(node.get("min_workers", 0) for node in node_types().values()) <= total


# ---- cluster.yaml: commands ---------------------------------------------------------------------------------------


def test_start_commands_start_ray_with_the_dashboard_host() -> None:
    """The head starts Ray with `ray start --head` and an explicit `--dashboard-host`, so the Jobs API behind
    `ray job submit` answers through `ray dashboard cluster/cluster.yaml`; workers join the head at $RAY_HEAD_IP.
    Each start is preceded by `ray stop` and runs with HF_HUB_OFFLINE=1."""
    config = cluster_config()
    (head,) = ray_start_commands("head_start_ray_commands")
    assert "--head" in head
    match = re.search(r"--dashboard-host[= ](\S+)", head)
    assert match and match.group(1), head
    (worker,) = ray_start_commands("worker_start_ray_commands")
    assert "--address=$RAY_HEAD_IP:6379" in worker
    for key, command in (("head_start_ray_commands", head), ("worker_start_ray_commands", worker)):
        commands = config[key]
        assert commands.index(command) > 0 and "ray stop" in commands[0], key
        assert "HF_HUB_OFFLINE=1" in command, key


def test_setup_installs_the_mounted_project_with_the_same_ray() -> None:
    """The file mounts carry what `pip install -e` needs (pyproject.toml, its readme and every package it lists) from
    paths that exist in this repository, and the setup commands install that folder in editable mode together
    with the same Ray version as the installed one."""
    config = cluster_config()
    mounts = config["file_mounts"]
    for remote, local in mounts.items():
        if not local.startswith("~"):
            assert (ROOT / local).exists(), (remote, local)
    project = {(ROOT / local).resolve(): remote for remote, local in mounts.items() if not local.startswith("~")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = ["pyproject.toml", pyproject["project"]["readme"]]
    needed += [pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    remote_root = str(Path(project[(ROOT / "pyproject.toml").resolve()]).parent)
    for name in needed:
        remote = project.get((ROOT / name).resolve())
        assert remote is not None, f"{name} is not mounted"
        assert remote == f"{remote_root}/{name}", (name, remote)
    setup = " ; ".join(config["setup_commands"])
    # The sources with the `jobs` extra; `~` does not expand inside the quotes the brackets need, so $HOME.
    installed = re.escape(remote_root.replace("~", "$HOME", 1) + "[jobs]")
    assert re.search(rf'pip install .*-e "{installed}"(\s|$)', setup), setup
    assert f'"ray[default]=={installed_ray_version()}"' in setup, setup


def test_gpu_workers_download_the_models_before_ray_starts() -> None:
    """GPU workers run `imgsound download /models --scorers` (the path the RayJob mounts) as a setup command, without
    HF_HUB_OFFLINE (the download refuses it); the head, which has no GPU, downloads nothing."""
    config = cluster_config()
    downloads = [command for command in config["worker_setup_commands"] if "imgsound download" in command]
    assert len(downloads) == 1, downloads
    assert shlex.split(downloads[0])[-4:] == ["imgsound", "download", MODELS_MOUNT, "--scorers"]
    for key in ("setup_commands", "worker_setup_commands", "initialization_commands"):
        assert not any("HF_HUB_OFFLINE" in command for command in config.get(key, [])), key
    assert not any("imgsound download" in command for command in config.get("head_setup_commands", []))
    for node in worker_types().values():
        assert "worker_setup_commands" not in node, "a per-type list would replace the download"


def test_token_auth_is_enabled_on_every_node() -> None:
    """Ray's token authentication is on for the whole cluster, as Ray's token-auth guide prescribes for `ray up`: the
    local token file is mounted at ~/.ray/auth_token and RAY_AUTH_MODE=token is exported for every node's shell."""
    config = cluster_config()
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    exports = [
        command
        for command in config["initialization_commands"]
        if "export RAY_AUTH_MODE=token" in command and "~/.bashrc" in command
    ]
    assert exports, config["initialization_commands"]
