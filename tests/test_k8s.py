"""Static checks of the Kubernetes manifests in k8s/: no cluster is contacted.

Where a check models KubeRay's behaviour it follows the KubeRay sources (ray-project/kuberay, ray.io/v1):
`ray-operator/apis/ray/v1/rayservice_types.go` (RayService fields), `ray-operator/controllers/ray/utils/validation.go`
(name limits, required containers), `ray-operator/controllers/ray/common/pod.go` (`labelPod`, `BuildPod`: the labels
put on every Ray pod) and `ray-operator/controllers/ray/utils/constant.go` (label keys, port names). Prometheus
Operator fields follow `pkg/apis/monitoring/v1/podmonitor_types.go` of prometheus-operator/prometheus-operator.
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve.config import DEPLOYMENT_NAMES, AppArgs, BatchConfig

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
EXPECTED_FILES = {
    "rayservice.yaml",
    "models-pvc.yaml",
    "download-models-job.yaml",
    "podmonitor.yaml",
    "prometheus-scrape.yaml",
    "networkpolicy.yaml",
}
UNETS = ("ImageUNet", "AudioUNet")
GPU_DEPLOYMENTS = ("ImageUNet", "AudioUNet", "Vocoder")
GPU_RESOURCE = "nvidia.com/gpu"
# KubeRay's MaxRayClusterNameLength (53) minus the 6 characters it appends for the RayService's cluster.
MAX_RAYSERVICE_NAME = 47
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# Labels KubeRay generates per cluster: their values are not known when the manifests are written.
GENERATED_LABELS = ("ray.io/cluster", "ray.io/identifier")

Doc = dict[str, Any]


# ---- loading -----------------------------------------------------------------------------------------------------


@cache
def manifests() -> dict[str, tuple[Doc, ...]]:
    """Every YAML file in k8s/, by file name, as its list of (non-empty) documents."""
    loaded: dict[str, tuple[Doc, ...]] = {}
    for path in sorted(K8S.glob("*.y*ml")):
        with path.open(encoding="utf-8") as stream:
            loaded[path.name] = tuple(doc for doc in yaml.safe_load_all(stream) if doc is not None)
    return loaded


def only(kind: str) -> Doc:
    """The single Kubernetes object of `kind` across k8s/."""
    found = [doc for docs in manifests().values() for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in k8s/, found {len(found)}"
    return found[0]


def rayservice() -> Doc:
    return only("RayService")


def cluster_spec() -> Doc:
    return rayservice()["spec"]["rayClusterConfig"]


def head_template() -> Doc:
    return cluster_spec()["headGroupSpec"]["template"]


def worker_groups() -> list[Doc]:
    return cluster_spec()["workerGroupSpecs"]


def gpu_worker_group() -> Doc:
    groups = [group for group in worker_groups() if gpu_limit(group["template"]) > 0]
    assert len(groups) == 1, "expected exactly one worker group with a GPU limit"
    return groups[0]


def ray_container(template: Doc) -> Doc:
    """KubeRay treats the first container of a Ray pod template as the Ray container."""
    return template["spec"]["containers"][0]


def serve_config() -> Doc:
    text = rayservice()["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 must be a YAML string, not a mapping"
    config = yaml.safe_load(text)
    assert isinstance(config, dict)
    return config


def application(config: Doc | None = None) -> Doc:
    apps = (config or serve_config())["applications"]
    assert len(apps) == 1, "the imgsound Serve config holds one application"
    return apps[0]


def deployments(config: Doc | None = None) -> dict[str, Doc]:
    return {item["name"]: item for item in application(config).get("deployments", [])}


# ---- quantities, env, ports ---------------------------------------------------------------------------------------


def cpu_quantity(value: int | float | str) -> float:
    """A Kubernetes CPU quantity ("8", 8, "500m") in cores."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def gpu_limit(template: Doc) -> float:
    limits = ray_container(template).get("resources", {}).get("limits", {})
    return float(limits.get(GPU_RESOURCE, 0))


def cpu_limit(template: Doc) -> float:
    return cpu_quantity(ray_container(template)["resources"]["limits"]["cpu"])


def env_of(container: Doc) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def port_names(template: Doc) -> set[str]:
    return {port["name"] for port in ray_container(template).get("ports", []) if "name" in port}


def ports_by_name(template: Doc) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in ray_container(template).get("ports", [])}


def actor_option(deployment: Doc, key: str) -> float:
    return float(deployment.get("ray_actor_options", {}).get(key, 0))


# ---- KubeRay pod labels and Prometheus target discovery -----------------------------------------------------------


def kuberay_pod_labels(template: Doc, node_type: str, group: str, cluster: str = "imgsound-x7k2p") -> dict[str, str]:
    """The labels KubeRay puts on a pod it creates from `template` for a RayService.

    Mirrors `labelPod` in ray-operator/controllers/ray/common/pod.go: its own labels, then the template's labels,
    except that `ray.io/node-type`, `ray.io/group` and `ray.io/cluster` cannot be overridden; `BuildPod` adds
    `ray.io/serve` for RayService pods. The head group is named `headgroup` (`RayNodeHeadGroupLabelValue`).
    """
    labels = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "ray.io/group": group,
        "ray.io/identifier": f"{cluster}-{node_type}",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    protected = {"ray.io/node-type", "ray.io/group", "ray.io/cluster"}
    for key, value in (template.get("metadata", {}).get("labels") or {}).items():
        if key not in protected:
            labels[key] = str(value)
    labels["ray.io/serve"] = "false" if node_type == "head" else "true"
    return labels


def ray_pods() -> list[tuple[str, Doc, dict[str, str]]]:
    """(node type, pod template, labels as KubeRay sets them) for the head and one pod of each worker group."""
    pods = [("head", head_template(), kuberay_pod_labels(head_template(), "head", "headgroup"))]
    for group in worker_groups():
        pods.append(("worker", group["template"], kuberay_pod_labels(group["template"], "worker", group["groupName"])))
    return pods


def selector_matches(selector: Doc, labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != str(value):
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def selector_keys(selector: Doc) -> set[str]:
    keys = set((selector.get("matchLabels") or {}).keys())
    return keys | {expression["key"] for expression in selector.get("matchExpressions") or []}


def sd_label(pod_label: str) -> str:
    """The meta label under which Prometheus' Kubernetes discovery exposes a pod label."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


def pod_targets(template: Doc, labels: dict[str, str]) -> list[dict[str, str]]:
    """The meta labels of the targets `role: pod` discovery yields for a running pod: one per container port."""
    base = {sd_label(key): value for key, value in labels.items()}
    base |= {"__meta_kubernetes_pod_phase": "Running", "__meta_kubernetes_namespace": "imgsound"}
    return [
        base | {"__meta_kubernetes_pod_container_port_name": port.get("name", "")}
        for port in ray_container(template).get("ports", [])
    ]


def kept(relabelings: list[Doc], target: dict[str, str], camel_case: bool) -> bool:
    """Whether the `keep`/`drop` rules of a relabel list let `target` through (Prometheus semantics)."""
    sources_key = "sourceLabels" if camel_case else "source_labels"
    for rule in relabelings:
        action = rule.get("action", "replace").lower()
        if action not in ("keep", "drop"):
            continue
        value = rule.get("separator", ";").join(target.get(name, "") for name in rule.get(sources_key, []))
        matched = re.fullmatch(rule.get("regex", "(.*)"), value) is not None
        if matched != (action == "keep"):
            return False
    return True


def relabel_sources(relabelings: list[Doc], camel_case: bool) -> set[str]:
    sources_key = "sourceLabels" if camel_case else "source_labels"
    return {name for rule in relabelings for name in rule.get(sources_key, [])}


def podmonitor_scrapes(endpoint: Doc) -> set[tuple[str, str]]:
    """(node type, port name) pairs that one PodMonitor endpoint scrapes among the RayService's pods."""
    monitor = only("PodMonitor")
    scraped = set()
    for node_type, template, labels in ray_pods():
        if not selector_matches(monitor["spec"]["selector"], labels):
            continue
        for target in pod_targets(template, labels):
            port = target["__meta_kubernetes_pod_container_port_name"]
            if port == endpoint["port"] and kept(endpoint.get("relabelings", []), target, camel_case=True):
                scraped.add((node_type, port))
    return scraped


def scrape_job_targets(job: Doc) -> set[tuple[str, str]]:
    """(node type, port name) pairs that one plain Prometheus scrape job keeps among the RayService's pods."""
    scraped = set()
    for node_type, template, labels in ray_pods():
        for target in pod_targets(template, labels):
            if kept(job.get("relabel_configs", []), target, camel_case=False):
                scraped.add((node_type, target["__meta_kubernetes_pod_container_port_name"]))
    return scraped


# ---- every manifest -----------------------------------------------------------------------------------------------


def test_every_manifest_loads() -> None:
    """All YAML files in k8s/ parse with `yaml.safe_load_all`; every Kubernetes object has apiVersion, kind and
    metadata.name, and the plain Prometheus snippet is a `scrape_configs` list."""
    loaded = manifests()
    assert EXPECTED_FILES <= set(loaded), f"missing: {sorted(EXPECTED_FILES - set(loaded))}"
    for name, docs in loaded.items():
        assert docs, f"{name} holds no YAML document"
        for doc in docs:
            assert isinstance(doc, dict), f"{name}: a document is not a mapping"
            if name == "prometheus-scrape.yaml":
                assert isinstance(doc.get("scrape_configs"), list)
                continue
            assert doc.get("apiVersion") and doc.get("kind"), f"{name}: apiVersion/kind missing"
            assert doc.get("metadata", {}).get("name"), f"{name}: metadata.name missing"


# ---- RayService structure -----------------------------------------------------------------------------------------


def test_rayservice_has_the_fields_kuberay_requires() -> None:
    """The RayService is a ray.io/v1 object with a string serveConfigV2, a head group with rayStartParams and a Ray
    container image, and worker groups with groupName, replica bounds, rayStartParams and a pod template."""
    service = rayservice()
    assert service["apiVersion"] == "ray.io/v1"
    assert service["kind"] == "RayService"
    assert service["metadata"]["name"]
    assert isinstance(service["spec"]["serveConfigV2"], str)
    cluster = cluster_spec()
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert ray_container(head["template"])["image"]
    assert worker_groups(), "at least one worker group"
    for group in worker_groups():
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in group, f"worker group {group.get('groupName')!r} lacks {key}"
        assert isinstance(group["rayStartParams"], dict)
        assert ray_container(group["template"])["image"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]


def test_rayservice_name_passes_kuberay_validation() -> None:
    """KubeRay rejects RayService names longer than 47 characters or that are not DNS-1035 labels
    (`ValidateRayServiceMetadata`)."""
    name = rayservice()["metadata"]["name"]
    assert len(name) <= MAX_RAYSERVICE_NAME
    assert DNS_1035_LABEL.fullmatch(name)


def test_ray_start_params_are_strings_and_head_has_no_gpu() -> None:
    """rayStartParams is a string map in the CRD (numbers would be rejected at apply time); the head exposes the
    dashboard and offers no GPU, so the GPU deployments can only land on GPU workers."""
    head_params = cluster_spec()["headGroupSpec"]["rayStartParams"]
    for params in [head_params] + [group["rayStartParams"] for group in worker_groups()]:
        for key, value in params.items():
            assert isinstance(value, str), f"rayStartParams[{key!r}] must be a string, got {value!r}"
    assert head_params.get("dashboard-host") == "0.0.0.0"
    assert head_params.get("num-gpus") == "0"
    assert gpu_limit(head_template()) == 0


def test_gpu_worker_group_requests_a_gpu() -> None:
    """The `gpu` worker group's Ray container has an nvidia.com/gpu limit (KubeRay derives num-gpus from it)."""
    group = gpu_worker_group()
    assert group["groupName"] == "gpu"
    assert gpu_limit(group["template"]) >= 1
    assert group["template"]["spec"].get("nodeSelector") or group["template"]["spec"].get("tolerations")


def test_deprecated_health_thresholds_are_not_set() -> None:
    """serviceUnhealthySecondThreshold / deploymentUnhealthySecondThreshold are still in the ray.io/v1 schema but
    marked "Deprecated: This field is not used anymore" (kuberay#1685): setting them would suggest a behaviour
    the operator no longer has."""
    spec = rayservice()["spec"]
    assert "serviceUnhealthySecondThreshold" not in spec
    assert "deploymentUnhealthySecondThreshold" not in spec


def test_ray_version_matches_the_ray_the_app_is_tested_with() -> None:
    """rayClusterConfig.rayVersion names the Ray this project runs (the installed ray package)."""
    ray = pytest.importorskip("ray")
    assert cluster_spec()["rayVersion"] == ray.__version__


def test_one_image_for_head_workers_and_download_job() -> None:
    """Head, workers and the download Job run the same image built from this repository, so the code that
    `serve.app:build_app` imports and the `imgsound` command are the same everywhere."""
    images = {ray_container(head_template())["image"]}
    images |= {ray_container(group["template"])["image"] for group in worker_groups()}
    images.add(only("Job")["spec"]["template"]["spec"]["containers"][0]["image"])
    assert len(images) == 1, images


def test_ray_pods_are_configured_offline_and_without_usage_stats() -> None:
    """Every Ray container sets HF_HUB_OFFLINE=1 (weights come from the volume, never the hub) and
    RAY_USAGE_STATS_ENABLED=0."""
    for _, template, _ in ray_pods():
        env = env_of(ray_container(template))
        assert env.get("HF_HUB_OFFLINE") == "1"
        assert env.get("RAY_USAGE_STATS_ENABLED") == "0"


def test_gpu_workers_mount_the_models_claim_read_only() -> None:
    """The GPU workers mount the models PVC read-only, and every model path in the Serve args lies on that mount."""
    template = gpu_worker_group()["template"]
    volumes = {volume["name"]: volume for volume in template["spec"]["volumes"]}
    pvc_name = only("PersistentVolumeClaim")["metadata"]["name"]
    claim_of = {name: volume.get("persistentVolumeClaim", {}).get("claimName") for name, volume in volumes.items()}
    container = ray_container(template)
    model_mounts = [mount for mount in container["volumeMounts"] if claim_of.get(mount["name"]) == pvc_name]
    assert len(model_mounts) == 1
    mount = model_mounts[0]
    assert mount.get("readOnly") is True
    assert volumes[mount["name"]]["persistentVolumeClaim"].get("readOnly") is True
    args = AppArgs.model_validate(application().get("args", {}))
    for placement in (args.image, args.audio, args.vocoder_placement):
        assert Path(placement.model).is_relative_to(mount["mountPath"]), placement.model


# ---- serveConfigV2 ------------------------------------------------------------------------------------------------


def test_serve_config_is_valid_for_ray_serve() -> None:
    """serveConfigV2 validates against Ray Serve's own config-file schema (`ServeDeploySchema`), and the HTTP
    proxy listens on the port the pods declare as `serve`."""
    schema = pytest.importorskip("ray.serve.schema")
    config = serve_config()
    schema.ServeDeploySchema.model_validate(config)
    port = config.get("http_options", {}).get("port", 8000)
    for _, template, _ in ray_pods():
        assert ports_by_name(template).get("serve") == port


def test_serve_config_has_no_keys_ray_would_ignore() -> None:
    """Every key in serveConfigV2 is a field of Ray Serve's schema. The schema models ignore unknown keys, so a
    misspelt option (e.g. `max_ongoing_request`) would otherwise be dropped without an error."""
    schema = pytest.importorskip("ray.serve.schema")
    serve_config_module = pytest.importorskip("ray.serve.config")

    def unknown(mapping: Doc, model: type) -> set[str]:
        return set(mapping) - set(model.model_fields)

    config = serve_config()
    assert not unknown(config, schema.ServeDeploySchema)
    assert not unknown(config.get("http_options", {}), schema.HTTPOptionsSchema)
    app = application(config)
    assert not unknown(app, schema.ServeApplicationSchema)
    for deployment in app.get("deployments", []):
        name = deployment["name"]
        assert not unknown(deployment, schema.DeploymentSchema), name
        assert not unknown(deployment.get("ray_actor_options", {}), schema.RayActorOptionsSchema), name
        assert not unknown(deployment.get("autoscaling_config", {}), serve_config_module.AutoscalingConfig), name


def test_import_path_resolves_to_build_app() -> None:
    """The application's import_path is serve.app:build_app and that module imports with a callable build_app."""
    app = application()
    assert app["import_path"] == "serve.app:build_app"
    module_name, attribute = app["import_path"].split(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute))


def test_args_validate_as_app_args() -> None:
    """The application args validate with serve.config.AppArgs and place both models in fp16 on CUDA."""
    args = AppArgs.model_validate(application()["args"])
    assert args.image.model == "/models/image"
    assert args.audio.model == "/models/audio"
    for placement in (args.image, args.audio, args.vocoder_placement):
        assert placement.dtype == "fp16"
        assert placement.device == "cuda"


def test_deployment_names_are_the_apps_deployments() -> None:
    """Every deployment configured is one that build_app creates (serve.config.DEPLOYMENT_NAMES), each once, and
    all of them are configured."""
    names = [item["name"] for item in application().get("deployments", [])]
    assert len(names) == len(set(names)), names
    assert set(names) <= set(DEPLOYMENT_NAMES), set(names) - set(DEPLOYMENT_NAMES)
    assert set(names) == set(DEPLOYMENT_NAMES)


@pytest.mark.parametrize("name", UNETS)
def test_unet_batching_config(name: str) -> None:
    """A UNet's user_config validates with BatchConfig and its max_ongoing_requests can hold a full batch; the
    autoscaling target does not exceed what a replica accepts."""
    deployment = deployments()[name]
    batch = BatchConfig.model_validate(deployment["user_config"])
    assert deployment["max_ongoing_requests"] >= batch.max_batch_size
    autoscaling = deployment["autoscaling_config"]
    assert 1 <= autoscaling["min_replicas"] <= autoscaling["max_replicas"]
    assert autoscaling.get("target_ongoing_requests", 2) <= deployment["max_ongoing_requests"]


def test_one_replica_of_each_gpu_deployment_fits_one_gpu_worker() -> None:
    """One replica each of ImageUNet + AudioUNet + Vocoder fits one GPU worker: fractional GPUs sum to at most the
    worker's GPU limit, and their CPUs to at most its CPU limit. The Driver needs no GPU."""
    template = gpu_worker_group()["template"]
    configured = deployments()
    gpus = sum(actor_option(configured[name], "num_gpus") for name in GPU_DEPLOYMENTS)
    cpus = sum(actor_option(configured[name], "num_cpus") for name in GPU_DEPLOYMENTS)
    assert 0 < gpus <= gpu_limit(template), gpus
    assert cpus <= cpu_limit(template), cpus
    for name in GPU_DEPLOYMENTS:
        assert actor_option(configured[name], "num_gpus") > 0, f"{name} runs on CUDA and needs a GPU share"
    assert actor_option(configured["Driver"], "num_gpus") == 0
    assert actor_option(configured["Driver"], "num_cpus") == 1


def test_gpu_deployments_at_max_replicas_fit_the_worker_group() -> None:
    """At their autoscaling maxima the GPU deployments need no more GPUs than maxReplicas GPU workers offer."""
    group = gpu_worker_group()
    configured = deployments()
    needed = 0.0
    for name in GPU_DEPLOYMENTS:
        deployment = configured[name]
        replicas = deployment.get("autoscaling_config", {}).get("max_replicas", deployment.get("num_replicas", 1))
        needed += replicas * actor_option(deployment, "num_gpus")
    assert needed <= group["maxReplicas"] * gpu_limit(group["template"]) + 1e-9, needed


def test_serve_config_yaml_matches_the_rayservice() -> None:
    """serve/config.yaml (the production Serve config) and serveConfigV2 deploy the same application: same name,
    import_path and deployment names."""
    path = ROOT / "serve" / "config.yaml"
    if not path.exists():
        pytest.skip("serve/config.yaml does not exist yet")
    production = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert application(production)["name"] == application()["name"]
    assert application(production)["import_path"] == application()["import_path"]
    assert set(deployments(production)) == set(deployments())


# ---- monitoring ---------------------------------------------------------------------------------------------------


def test_podmonitor_ports_exist_on_the_pod_templates() -> None:
    """Every port a PodMonitor endpoint names is a named container port of the Ray pods it is meant to scrape:
    `serve` (8000) on the head, `metrics` (8080, KubeRay's default metrics-export-port) on head and workers."""
    monitor = only("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    endpoints = {endpoint["port"]: endpoint for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    assert set(endpoints) == {"serve", "metrics"}
    assert "serve" in port_names(head_template())
    for _, template, _ in ray_pods():
        assert "metrics" in port_names(template)
        assert ports_by_name(template)["metrics"] == 8080
    assert ports_by_name(head_template())["serve"] == 8000
    assert endpoints["serve"]["path"] == "/metrics"


def test_podmonitor_selects_the_pods_kuberay_creates() -> None:
    """The PodMonitor's selector matches the labels KubeRay puts on the RayService's head and worker pods, and the
    relabelling keeps Serve's /metrics on the head only (any proxy reaches the same Driver) and Ray's metrics port
    on every Ray pod."""
    endpoints = {endpoint["port"]: endpoint for endpoint in only("PodMonitor")["spec"]["podMetricsEndpoints"]}
    assert podmonitor_scrapes(endpoints["serve"]) == {("head", "serve")}
    assert podmonitor_scrapes(endpoints["metrics"]) == {("head", "metrics"), ("worker", "metrics")}


def test_podmonitor_ignores_other_pods() -> None:
    """Pods without KubeRay's labels (e.g. the download Job's pod, labelled part-of imgsound too) are not selected."""
    selector = only("PodMonitor")["spec"]["selector"]
    job_labels = only("Job")["spec"]["template"]["metadata"]["labels"]
    assert not selector_matches(selector, {key: str(value) for key, value in job_labels.items()})


def test_monitoring_does_not_pin_generated_cluster_names() -> None:
    """Selectors and keep rules use no label whose value KubeRay generates per cluster (`ray.io/cluster`,
    `ray.io/identifier`), so they survive the new RayCluster of an upgrade."""
    monitor = only("PodMonitor")
    assert not selector_keys(monitor["spec"]["selector"]) & set(GENERATED_LABELS)
    generated = {sd_label(label) for label in GENERATED_LABELS}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        keep_rules = [rule for rule in endpoint.get("relabelings", []) if rule.get("action") in ("keep", "drop")]
        assert not relabel_sources(keep_rules, camel_case=True) & generated
    for job in manifests()["prometheus-scrape.yaml"][0]["scrape_configs"]:
        keep_rules = [rule for rule in job["relabel_configs"] if rule.get("action") in ("keep", "drop")]
        assert not relabel_sources(keep_rules, camel_case=False) & generated


def test_plain_scrape_config_targets_the_same_pods_and_ports() -> None:
    """The operator-less snippet discovers pods (`role: pod`) and keeps the same (pod, port) pairs as the
    PodMonitor: Serve's /metrics on the head, Ray's metrics port on every Ray pod."""
    jobs = {job["job_name"]: job for job in manifests()["prometheus-scrape.yaml"][0]["scrape_configs"]}
    assert set(jobs) == {"imgsound-serve", "imgsound-ray"}
    for job in jobs.values():
        assert [config["role"] for config in job["kubernetes_sd_configs"]] == ["pod"]
        assert job.get("metrics_path", "/metrics") == "/metrics"
    assert scrape_job_targets(jobs["imgsound-serve"]) == {("head", "serve")}
    assert scrape_job_targets(jobs["imgsound-ray"]) == {("head", "metrics"), ("worker", "metrics")}


# ---- models volume and download Job -------------------------------------------------------------------------------


def test_models_claim_is_read_only_many() -> None:
    """The models PVC can be mounted read-only by many nodes (one mount per GPU worker)."""
    claim = only("PersistentVolumeClaim")
    assert claim["apiVersion"] == "v1"
    assert "ReadOnlyMany" in claim["spec"]["accessModes"]
    assert claim["spec"]["resources"]["requests"]["storage"]


def test_download_job_writes_the_claim_the_workers_read() -> None:
    """The Job runs `imgsound download /models --scorers` (the models and the CLIP/CLAP scorers) with the models
    PVC mounted writable at /models, with network
    access to the hub allowed (HF_HUB_OFFLINE unset: the download refuses to run with it)."""
    job = only("Job")
    assert job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    container = pod["containers"][0]
    command = [*container.get("command", []), *container.get("args", [])]
    assert command == ["imgsound", "download", "/models", "--scorers"]
    assert "HF_HUB_OFFLINE" not in env_of(container)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/models"]
    assert len(mounts) == 1
    assert not mounts[0].get("readOnly", False)
    claim = volumes[mounts[0]["name"]]["persistentVolumeClaim"]
    assert not claim.get("readOnly", False)
    assert claim["claimName"] == only("PersistentVolumeClaim")["metadata"]["name"]
    worker_claims = {
        volume["persistentVolumeClaim"]["claimName"]
        for volume in gpu_worker_group()["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in volume
    }
    assert claim["claimName"] in worker_claims


# ---- security -----------------------------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PRIVATE|ACCESS_KEY|API_KEY|CREDENTIAL)", re.IGNORECASE)


def ray_cluster_specs() -> dict[str, Doc]:
    """The Ray cluster of the RayService and of every RayJob."""
    specs = {"RayService": cluster_spec()}
    for docs in manifests().values():
        for doc in docs:
            if doc.get("kind") == "RayJob":
                specs[f"RayJob {doc['metadata']['name']}"] = doc["spec"]["rayClusterSpec"]
    return specs


def pod_templates(spec: Doc) -> list[tuple[str, Doc]]:
    templates = [("head", spec["headGroupSpec"]["template"])]
    templates += [(group["groupName"], group["template"]) for group in spec.get("workerGroupSpecs", [])]
    return templates


def test_every_ray_cluster_has_token_authentication_on() -> None:
    """The dashboard listens on the pod's address (KubeRay's operator needs it) only with Ray's token
    authentication on: KubeRay's authOptions, whose token comes from a Secret it creates, never a literal."""
    for name, spec in ray_cluster_specs().items():
        host = spec["headGroupSpec"].get("rayStartParams", {}).get("dashboard-host", "localhost")
        if host not in ("127.0.0.1", "localhost"):
            assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: dashboard on {host} without auth"


def test_no_secret_is_written_into_a_manifest() -> None:
    """No container env var and no Ray runtime_env variable with a secret-like name has a literal value: secrets
    come from Secrets (valueFrom / envFrom), and RayJob runtime envs carry none at all (Ray shows them to anyone
    who can read the cluster's state)."""
    for file, docs in manifests().items():
        for doc in docs:
            for container in _containers(doc):
                for item in container.get("env", []):
                    if SECRET_NAME.search(item["name"]):
                        assert "value" not in item and "valueFrom" in item, (file, item["name"])
            if doc.get("kind") == "RayJob":
                runtime_env = yaml.safe_load(doc["spec"].get("runtimeEnvYAML", "") or "{}") or {}
                names = list(runtime_env.get("env_vars", {}))
                assert not [n for n in names if SECRET_NAME.search(n)], (file, names)


def _containers(value: Any) -> list[Doc]:
    """Every container spec anywhere under `value` (pod templates nest at different depths per kind)."""
    found: list[Doc] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("containers", "initContainers") and isinstance(item, list):
                found += [c for c in item if isinstance(c, dict)]
            else:
                found += _containers(item)
    elif isinstance(value, list):
        for item in value:
            found += _containers(item)
    return found


def network_policy() -> Doc:
    return only("NetworkPolicy")


def _peer_name(peer: Doc) -> str:
    labels = peer.get("podSelector", {}).get("matchLabels", {})
    if labels.get("ray.io/is-ray-node") == "yes" and "namespaceSelector" not in peer:
        return "ray pods"
    return labels.get("app.kubernetes.io/name", "?")


def admitted(port: int) -> set[str]:
    """Who the NetworkPolicy admits to `port` of the Ray pods (rules without ports admit every port)."""
    peers: set[str] = set()
    for rule in network_policy()["spec"]["ingress"]:
        ports = {item["port"] for item in rule.get("ports", [])}
        assert rule.get("from"), "a rule without `from` would admit everyone"
        if not ports or port in ports:
            peers |= {_peer_name(peer) for peer in rule["from"]}
    return peers


def test_the_network_policy_selects_every_ray_pod() -> None:
    policy = network_policy()
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["spec"]["policyTypes"] == ["Ingress"]
    selector = policy["spec"]["podSelector"]
    for name, spec in ray_cluster_specs().items():
        for role, template in pod_templates(spec):
            labels = {**template.get("metadata", {}).get("labels", {}), "ray.io/is-ray-node": "yes"}
            assert selector_matches(selector, {k: str(v) for k, v in labels.items()}), (name, role)


def test_the_dashboard_admits_only_the_operator_and_serve_only_the_ingress() -> None:
    """Outside the Ray pods themselves: 8265 (dashboard, Jobs API) only from the KubeRay operator, 8000 (Serve) from
    the ingress controller (and Prometheus, for /metrics), Ray's metrics port from Prometheus; nothing else."""
    assert admitted(8265) == {"ray pods", "kuberay-operator"}
    assert admitted(8000) == {"ray pods", "ingress-nginx", "prometheus"}
    assert admitted(8080) == {"ray pods", "prometheus"}
    assert admitted(6379) == {"ray pods"} and admitted(10001) == {"ray pods"}
    intra = [rule for rule in network_policy()["spec"]["ingress"] if "ports" not in rule]
    assert all("namespaceSelector" not in peer for rule in intra for peer in rule["from"]), "all ports, any pod?"
