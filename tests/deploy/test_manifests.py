"""Static checks of the Kubernetes manifests in deploy/k8s.

Built-in kinds are validated strictly against the Kubernetes API schemas
(kubernetes-validate, offline); the KubeRay resources' pod templates are
validated the same way. Beyond the schemas: commands parse with the real CLIs,
ports/probes/Service names/URLs line up, env names are settings the code
reads, requests equal limits, pods run as non-root, and the Redis config is
the repository's.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.deploy_util import (
    DOCKERFILE,
    K8S_DIR,
    REDIS_CONF,
    REPO,
    app_routes,
    client_env_names,
    console_scripts,
    dockerfile_args,
    host_port,
    k8s_files,
    load_kustomization,
    load_manifests,
    manifest,
    option_value,
    parse_command,
    parse_dockerfile,
    settings_env_names,
)

DOCS = load_manifests()
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests promise to work on
DOCKER_ARGS = dockerfile_args(parse_dockerfile(DOCKERFILE.read_text()))


def _pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every workload in the manifests."""
    for d in DOCS:
        kind, name = d["kind"], d["metadata"]["name"]
        spec = d.get("spec", {})
        if kind in ("Deployment", "StatefulSet"):
            yield f"{kind}/{name}", spec["template"]
        elif kind == "RayCluster":
            yield f"{kind}/{name}/head", spec["headGroupSpec"]["template"]
            for g in spec["workerGroupSpecs"]:
                yield f"{kind}/{name}/{g['groupName']}", g["template"]
        elif kind == "RayJob" and "submitterPodTemplate" in spec:
            yield f"{kind}/{name}/submitter", spec["submitterPodTemplate"]


def _containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for where, tpl in _pod_templates():
        for c in tpl["spec"]["containers"]:
            yield f"{where}/{c['name']}", c, tpl["spec"]


def _quantity(q: str | int) -> float:
    """A Kubernetes (or Redis) quantity in base units: bytes or cores."""
    s = str(q).strip()
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "kb": 2**10, "mb": 2**20,
             "gb": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}  # fmt: skip
    for suffix in sorted(units, key=len, reverse=True):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * units[suffix]
    return float(s)


def _env_names(container: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            names |= set(manifest("ConfigMap", src["configMapRef"]["name"])["data"])
    return names


def _env_value(container: dict[str, Any], name: str) -> str | None:
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            data = manifest("ConfigMap", src["configMapRef"]["name"])["data"]
            if name in data:
                return str(data[name])
    return None


def _named_port(container: dict[str, Any], ref: str | int) -> int:
    if isinstance(ref, int):
        return ref
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert ref in ports, f"container {container['name']} has no port named {ref}"
    return int(ports[ref])


# -- the set of files -----------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_every_image() -> None:
    kust = load_kustomization()
    assert sorted(kust["resources"]) == sorted(p.name for p in k8s_files()), (
        "every deploy/k8s/*.yaml belongs in kustomization.yaml (and nothing else)"
    )
    assert kust["namespace"] == "docl"
    own = {i["name"] for i in kust["images"]}
    used = {c["image"] for _, c, _ in _containers()}
    assert {i for i in used if i.startswith("docl")} == own, "each docl image is set in one place"
    assert not any(":" in i for i in used if i.startswith("docl")), "tags come from kustomization"


# KubeRay's kinds have no schema here: their pod templates are validated below.
BUILTIN = [d for d in DOCS if not d["apiVersion"].startswith("ray.io/")]


@pytest.mark.parametrize("doc", BUILTIN, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_builtin_kinds_validate_strictly_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("where_tpl", list(_pod_templates()), ids=lambda t: t[0])
def test_every_pod_template_validates_strictly(where_tpl: tuple[str, dict[str, Any]]) -> None:
    _, tpl = where_tpl
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": tpl,
    }
    kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)


def test_the_schema_validation_can_fail() -> None:
    bad = manifest("Deployment", "docl-score-server")
    bad = {**bad, "spec": {**bad["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# -- every container --------------------------------------------------------------------


@pytest.mark.parametrize("item", list(_containers()), ids=lambda t: t[0])
def test_requests_equal_limits(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    where, c, _ = item
    res = c.get("resources", {})
    assert res.get("requests") and res.get("limits"), f"{where}: give requests and limits"
    req = {k: _quantity(v) for k, v in res["requests"].items()}
    lim = {k: _quantity(v) for k, v in res["limits"].items()}
    assert req == lim, f"{where}: requests {res['requests']} != limits {res['limits']}"


@pytest.mark.parametrize("where_tpl", list(_pod_templates()), ids=lambda t: t[0])
def test_pods_run_as_non_root(where_tpl: tuple[str, dict[str, Any]]) -> None:
    where, tpl = where_tpl
    sc = tpl["spec"].get("securityContext", {})
    assert sc.get("runAsNonRoot") is True, where
    assert int(sc.get("runAsUser", 0)) > 0, where
    image_user = next(
        i for i in reversed(parse_dockerfile(DOCKERFILE.read_text())) if i.keyword == "USER"
    )
    for c in tpl["spec"]["containers"]:
        if c["image"].startswith("docl"):
            assert str(sc["runAsUser"]) == image_user.args.split(":")[0], (
                f"{where}: runAsUser != the image's USER"
            )


@pytest.mark.parametrize("item", list(_containers()), ids=lambda t: t[0])
def test_docl_env_names_are_read_by_the_code(
    item: tuple[str, dict[str, Any], dict[str, Any]],
) -> None:
    where, c, pod = item
    docl = {n for n in _env_names(c) if n.startswith("DOCL_")}
    if not docl:
        return
    # Kubernetes injects <SERVICE>_PORT=tcp://... for every Service: a Service
    # named docl-* would collide with the DOCL_ settings prefix.
    assert pod.get("enableServiceLinks") is False, f"{where}: set enableServiceLinks: false"
    serves = c.get("command", [])[:2] == ["docl", "serve"]
    allowed = settings_env_names() if serves else client_env_names()
    unknown = docl - allowed
    assert not unknown, f"{where}: {unknown} are not read by the code ({sorted(allowed)})"


def test_secret_keys_are_the_ones_the_docs_tell_you_to_create() -> None:
    refs: set[tuple[str, str]] = set()
    for _, c, _ in _containers():
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
                assert e["name"] == ref["key"], "the variable is named after its key"
    assert refs == {("docl-secrets", "DOCL_API_TOKEN"), ("docl-secrets", "RAY_AUTH_TOKEN")}
    docs = (REPO / "docs" / "deploy.md").read_text()
    for name, key in refs:
        assert name in docs and f"--from-literal={key}=" in docs, (
            f"docs/deploy.md never creates {key}"
        )


# -- the score server ---------------------------------------------------------------------


def _server() -> tuple[dict[str, Any], dict[str, Any]]:
    dep = manifest("Deployment", "docl-score-server")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dep, c


def test_score_server_deployment_command_ports_and_probes_line_up() -> None:
    dep, c = _server()
    assert dep["spec"]["replicas"] >= 2
    argv = c["command"] + c.get("args", [])
    assert argv[0] in console_scripts()
    assert parse_command(argv).path == ("docl", "serve")
    port = int(option_value(argv, "--port") or -1)
    assert option_value(argv, "--host") == "0.0.0.0"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{probe} checks {get['path']}"
        assert ("GET", path) in app_routes(), f"{path} is not a route of the app"
        assert _named_port(c, get["port"]) == port, f"{probe} port != --port"
    startup = c["startupProbe"]["httpGet"]
    assert ("GET", startup["path"]) in app_routes() and _named_port(c, startup["port"]) == port
    svc = manifest("Service", "docl-score-server")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    (sp,) = svc["spec"]["ports"]
    assert _named_port(c, sp["targetPort"]) == port
    pdb = manifest("PodDisruptionBudget", "docl-score-server")
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]


def test_score_server_reads_its_token_from_the_secret_and_redis_from_the_configmap() -> None:
    _, c = _server()
    token = next(e for e in c["env"] if e["name"] == "DOCL_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "docl-secrets", "key": "DOCL_API_TOKEN"}
    url = _env_value(c, "DOCL_REDIS_URL")
    assert url is not None
    host, port = host_port(url)
    sts = manifest("StatefulSet", "docl-redis")
    svc_name = sts["spec"]["serviceName"]
    assert host == f"{sts['metadata']['name']}-0.{svc_name}", (
        "pod 0 of the StatefulSet, by its stable name"
    )
    svc = manifest("Service", svc_name)
    assert svc["spec"]["clusterIP"] == "None", "a headless Service gives the pod its DNS name"
    (redis_c,) = sts["spec"]["template"]["spec"]["containers"]
    (sp,) = svc["spec"]["ports"]
    assert sp["port"] == port == _named_port(redis_c, sp["targetPort"])


# -- Redis ----------------------------------------------------------------------------------


def test_redis_configmap_is_the_repository_config() -> None:
    cm = manifest("ConfigMap", "docl-redis-config")
    assert cm["data"]["redis.conf"] == REDIS_CONF.read_text(), (
        "deploy/k8s/redis.yaml's redis.conf drifted from deploy/redis/redis.conf: copy it over"
    )


def test_redis_statefulset_mounts_config_and_volume_where_the_command_expects() -> None:
    sts = manifest("StatefulSet", "docl-redis")
    spec = sts["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    argv = c.get("command", []) + c["args"]
    assert argv[0] == "redis-server"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    conf_dir, _, conf_name = argv[1].rpartition("/")
    conf_vol = next(v for v in spec["volumes"] if v["name"] == mounts[conf_dir])
    assert conf_vol["configMap"]["name"] == "docl-redis-config" and conf_name == "redis.conf"
    data_dir = option_value(argv, "--dir")
    claim = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert data_dir is not None and mounts[data_dir] in claim, "the AOF lives on the PVC"
    maxmemory = _quantity(option_value(argv, "--maxmemory") or "0")
    limit = _quantity(c["resources"]["limits"]["memory"])
    assert 0 < maxmemory <= 0.7 * limit, "leave room for the AOF rewrite's copy-on-write"
    assert "readinessProbe" in c and "livenessProbe" in c


# -- Ray -------------------------------------------------------------------------------------


# rayStartParams that KubeRay passes on as `--key=true|false`; every other
# "true" becomes a bare `--key` and "false" is dropped (KubeRay's convertParamMap).
_KUBERAY_VALUED_BOOLEANS = {"log-color", "include-dashboard", "include-log-monitor"}


def _ray_start_argv(params: dict[str, Any], head: bool) -> list[str]:
    """The `ray start` command line KubeRay builds from rayStartParams."""
    argv = ["ray", "start", "--block"] + (["--head"] if head else ["--address=head:6379"])
    for k, v in sorted(params.items()):
        assert isinstance(v, str), f"rayStartParams.{k} must be a string (KubeRay's type)"
        if v.lower() in ("true", "false") and k not in _KUBERAY_VALUED_BOOLEANS:
            argv += [f"--{k}"] if v.lower() == "true" else []
        else:
            argv.append(f"--{k}={v}")
    return argv


def test_raycluster_matches_the_image_and_parses_with_ray_start() -> None:
    rc = manifest("RayCluster", "docl-ray")
    assert rc["apiVersion"] == "ray.io/v1"
    assert rc["spec"]["rayVersion"] == DOCKER_ARGS["RAY_VERSION"], "rayVersion != the image's Ray"
    head = rc["spec"]["headGroupSpec"]
    parse_command(_ray_start_argv(head["rayStartParams"], head=True))
    assert head["rayStartParams"].get("dashboard-host") == "0.0.0.0", "the job submitter reaches it"
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    gpu_groups = []
    for g in rc["spec"]["workerGroupSpecs"]:
        parse_command(_ray_start_argv(g["rayStartParams"], head=False))
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        (c,) = g["template"]["spec"]["containers"]
        images.add(c["image"])
        if int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) == 1:
            gpu_groups.append(g)
    assert gpu_groups, "a worker group with one GPU per pod"
    assert len(images) == 1, f"one image on every Ray node: {images}"


def test_rayjob_runs_docl_train_on_the_cluster_against_the_score_server() -> None:
    rc = manifest("RayCluster", "docl-ray")
    job = manifest("RayJob", "docl-train")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
    argv = shlex.split(job["spec"]["entrypoint"])
    parsed = parse_command(argv)
    assert parsed.path == ("docl", "train")
    assert option_value(argv, "--ray-address") == "auto"
    host, port = host_port(option_value(argv, "--server") or "")
    svc = manifest("Service", host)
    assert port == svc["spec"]["ports"][0]["port"]
    # The GPU switch, found by what the real option does (its parameter name), not its spelling.
    gpu_params = {k for k in parsed.given if "gpu" in k}
    assert gpu_params and all(parsed.params[k] is True for k in gpu_params), (
        "the job trains on the GPUs"
    )
    workers = int(parsed.params["workers"])
    capacity = sum(
        g["maxReplicas"]
        * int(
            g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
        )
        for g in rc["spec"]["workerGroupSpecs"]
    )
    assert 1 <= workers <= capacity, f"--workers {workers} GPUs, the cluster has at most {capacity}"
    # The Ray pods carry the server address the job uses.
    for _, c, _ in _containers():
        if "DOCL_SERVER" in _env_names(c):
            assert host_port(_env_value(c, "DOCL_SERVER") or "") == (host, port)


def test_ray_auth_is_configured_alike_on_every_ray_pod() -> None:
    seen = []
    for where, c, _ in _containers():
        if "Ray" not in where:
            continue
        seen.append(where)
        assert _env_value(c, "RAY_AUTH_MODE") == "token", where
        assert "RAY_AUTH_TOKEN" in _env_names(c), where
    assert len(seen) >= 3, seen  # head, workers, submitter


def test_every_ray_node_mounts_the_shared_storage_docl_train_uses() -> None:
    """Ray Train's storage is one ReadWriteMany claim, mounted at DOCL_STORAGE on
    the head and on every worker group: nodes do not share a disk, and a path only
    the head has makes a multi-node run fail (at start, by docl's own check)."""
    cluster = next(d for d in DOCS if d["kind"] == "RayCluster")
    spec = cluster["spec"]
    templates = [("head", spec["headGroupSpec"]["template"])]
    templates += [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
    claims = set()
    for where, tpl in templates:
        (c,) = [c for c in tpl["spec"]["containers"] if c["name"].startswith("ray-")]
        path = _env_value(c, "DOCL_STORAGE")
        assert path, f"{where}: no DOCL_STORAGE"
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        assert path in mounts, f"{where}: DOCL_STORAGE={path} is not a mount"
        volume = next(v for v in tpl["spec"]["volumes"] if v["name"] == mounts[path])
        assert "persistentVolumeClaim" in volume, f"{where}: {volume} is not the shared claim"
        claims.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, f"one claim on every node, got {claims}"
    pvc = manifest("PersistentVolumeClaim", claims.pop())
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "mounted by many nodes at once"
    # The job's driver writes under --out on the head, and its checkpoints under
    # DOCL_STORAGE: no --storage in the entrypoint overrides it.
    rayjob = next(d for d in DOCS if d["kind"] == "RayJob")
    assert "--storage" not in rayjob["spec"]["entrypoint"]


def test_the_dockerfile_installs_wget_for_kuberays_probes() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"apt-get install[^\n]*\bwget\b", text), "KubeRay's Ray probes run wget"


def test_docs_name_every_manifest() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text()
    for p in k8s_files():
        assert p.name in docs, f"docs/deploy.md never mentions deploy/k8s/{p.name}"
    assert str(K8S_DIR.relative_to(REPO)) in docs
