"""The Kubernetes manifests: every overlay renders, validates against the API schemas, and keeps
the invariants an SRE relies on (probes, limits, security, drain, network isolation, settings)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import OVERLAYS, ROOT, TIERS, Manifest, find, one, render

from services.common.settings import Settings

K8S_VERSIONS = ("1.31", kubernetes_validate.utils.latest_version())
# Custom resources have no schema in kubernetes-validate: their fields are checked below.
CRDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("dragonflydb.io/v1alpha1", "Dragonfly")}


def deployments(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {t: one(manifests, "Deployment", t) for t in TIERS}


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Manifest) -> dict[str, Any]:
    (c,) = pod_spec(workload)["containers"]
    return dict(c)


def configmap(manifests: list[Manifest]) -> dict[str, str]:
    (cm,) = [m for m in find(manifests, "ConfigMap") if m["metadata"]["name"].startswith("switchboard-config")]
    data: dict[str, str] = cm["data"]
    return data


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "only matchLabels selectors are used"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# ---- rendering and schemas -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_built_in_object_validates_strictly(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    checked = 0
    for m in rendered[overlay]:
        if (m["apiVersion"], m["kind"]) in CRDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(m, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{overlay}: {m['kind']}/{m['metadata']['name']} invalid for {version}: {e.message}")
        checked += 1
    assert checked >= 20


def test_the_base_and_each_component_render_on_their_own() -> None:
    base = render(ROOT / "k8s" / "base")
    assert {m["kind"] for m in base} >= {"Deployment", "StatefulSet", "Service", "ConfigMap",
                                         "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress",
                                         "NetworkPolicy", "ServiceAccount"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_one_restricted_namespace(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    (ns,) = find(rendered[overlay], "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for m in rendered[overlay]:
        if m["kind"] != "Namespace":
            assert m["metadata"].get("namespace") == ns["metadata"]["name"], m["metadata"]["name"]


# ---- custom resources ------------------------------------------------------------------------


def test_pod_monitors_scrape_every_tier_on_its_metrics_port_with_a_tier_label(
        rendered: dict[str, list[Manifest]]) -> None:
    prod = rendered["prod"]
    monitors = find(prod, "PodMonitor")
    covered = set()
    for pm in monitors:
        assert pm["apiVersion"] == "monitoring.coreos.com/v1"
        spec = pm["spec"]
        assert spec["selector"]["matchLabels"], "a PodMonitor must select pods"
        for tier, dep in deployments(prod).items():
            if not labels_match(spec["selector"], dep["spec"]["template"]["metadata"]["labels"]):
                continue
            covered.add(tier)
            ports = {p["name"] for p in container(dep)["ports"]}
            (endpoint,) = spec["podMetricsEndpoints"]
            assert endpoint["port"] in ports, (tier, endpoint["port"])
            assert endpoint["port"] == ("http" if tier == "edge" else "metrics")
            assert endpoint["path"] == "/metrics"
            relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
            assert relabel["tier"]["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
            assert relabel["pod"]["sourceLabels"] == ["__meta_kubernetes_pod_name"]
    assert covered == set(TIERS)


def test_the_prometheus_rule_resource_carries_the_rules_file(rendered: dict[str, list[Manifest]]) -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "switchboard.rules.yml").read_text())
    (pr,) = find(rendered["prod"], "PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert pr["spec"]["groups"] == rules["groups"]


def test_the_committed_prometheus_rule_is_what_the_script_generates() -> None:
    import importlib.util

    script = ROOT / "deploy" / "prometheus" / "prometheusrule.py"
    spec = importlib.util.spec_from_file_location("prometheusrule", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "k8s" / "components" / "monitoring" / "prometheusrule.yaml").read_text()
    assert committed == module.render(), "run: python deploy/prometheus/prometheusrule.py"


def test_the_operator_component_replaces_the_statefulset_with_a_dragonfly_resource(
        rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["prod-dragonfly-operator"]
    assert not find(manifests, "StatefulSet")
    assert not find(manifests, "Service", "dragonfly"), "the operator owns the Service named after the resource"
    df = one(manifests, "Dragonfly", "dragonfly")
    assert df["apiVersion"] == "dragonflydb.io/v1alpha1"
    spec = df["spec"]
    # Fields and types of DragonflySpec (dragonfly-operator api/v1alpha1/dragonfly_types.go).
    known = {"replicas", "image", "imagePullPolicy", "imagePullSecrets", "args", "aclFromSecret", "annotations",
             "labels", "podMetadata", "env", "additionalContainers", "additionalVolumes", "resources",
             "affinity", "nodeSelector", "memcachedPort", "tolerations", "topologySpreadConstraints",
             "authentication", "containerSecurityContext", "podSecurityContext", "serviceAccountName",
             "priorityClassName", "tlsSecretRef", "tiering", "snapshot", "skipFSGroup", "serviceSpec",
             "initContainers", "ownedObjectsMetadata", "enableReplicationReadinessGate",
             "networkPolicyEnabled", "pdb", "customLivenessProbeConfigMap", "customReadinessProbeConfigMap",
             "customStartupProbeConfigMap"}
    assert set(spec) <= known, set(spec) - known
    assert isinstance(spec["replicas"], int) and spec["replicas"] >= 2
    assert re.fullmatch(r"docker\.dragonflydb\.io/dragonflydb/dragonfly:v\d+\.\d+\.\d+", spec["image"])
    assert set(spec["snapshot"]) <= {"dir", "cron", "enableOnMasterOnly", "persistentVolumeClaimSpec",
                                     "existingPersistentVolumeClaimName"}
    assert spec["snapshot"]["cron"]
    assert spec["snapshot"]["persistentVolumeClaimSpec"]["resources"]["requests"]["storage"]
    assert not any(a.startswith("--cluster_mode") for a in spec.get("args", []))
    assert set(spec["pdb"]) <= {"minAvailable", "maxUnavailable"}
    assert spec["podMetadata"]["labels"]["app.kubernetes.io/component"] == "store"
    assert spec["networkPolicyEnabled"] is False
    assert spec["serviceAccountName"] == one(manifests, "ServiceAccount", "dragonfly")["metadata"]["name"]
    # The pods the operator creates still match our store NetworkPolicy.
    operator_pod_labels = {"app": "dragonfly", "app.kubernetes.io/name": "dragonfly",
                           "app.kubernetes.io/part-of": "dragonfly", **spec["podMetadata"]["labels"]}
    assert labels_match(one(manifests, "NetworkPolicy", "dragonfly")["spec"]["podSelector"], operator_pod_labels)
    for key in ("runAsNonRoot", "seccompProfile"):
        assert spec["podSecurityContext"][key]
    assert spec["containerSecurityContext"]["allowPrivilegeEscalation"] is False


# ---- tiers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_tier_has_its_deployment_service_autoscaler_budget_and_account(
        rendered: dict[str, list[Manifest]], overlay: str) -> None:
    manifests = rendered[overlay]
    for tier, dep in deployments(manifests).items():
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["app.kubernetes.io/component"] == tier
        assert labels_match(dep["spec"]["selector"], pod_labels)
        assert labels_match(one(manifests, "Service", tier)["spec"], pod_labels) or \
            all(pod_labels.get(k) == v for k, v in one(manifests, "Service", tier)["spec"]["selector"].items())
        hpa = one(manifests, "HorizontalPodAutoscaler", tier)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": tier}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert hpa["spec"]["metrics"], "an autoscaler needs a metric"
        pdb = one(manifests, "PodDisruptionBudget", tier)
        assert labels_match(pdb["spec"]["selector"], pod_labels)
        sa = one(manifests, "ServiceAccount", tier)
        assert sa["automountServiceAccountToken"] is False
        spec = pod_spec(dep)
        assert spec["serviceAccountName"] == tier
        assert spec["automountServiceAccountToken"] is False
        assert spec["topologySpreadConstraints"]
        for c in spec["topologySpreadConstraints"]:
            assert labels_match(c["labelSelector"], pod_labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_http_for_the_edge_grpc_for_router_and_history(
        rendered: dict[str, list[Manifest]], overlay: str) -> None:
    for tier, dep in deployments(rendered[overlay]).items():
        c = container(dep)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in c, (tier, probe)
            if tier == "edge":
                http = c[probe]["httpGet"]
                assert http["path"] == ("/readyz" if probe == "readinessProbe" else "/healthz")
                assert http["port"] in ports
            elif tier == "router" or probe == "readinessProbe":
                assert c[probe]["grpc"]["port"] == ports["grpc"], (tier, probe)
            else:
                # history's gRPC health follows the store: liveness must not restart it for that
                assert c[probe]["tcpSocket"]["port"] == "grpc", (tier, probe)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_security_and_drain(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    manifests = rendered[overlay]
    settings = configmap(manifests)
    drain_s = float(settings.get("SWITCHBOARD_DRAIN_GRACE_S", Settings.model_fields["drain_grace_s"].default))
    workloads = [*deployments(manifests).values(), *find(manifests, "StatefulSet")]
    for w in workloads:
        name = w["metadata"]["name"]
        spec, c = pod_spec(w), container(w)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        pod_sc, sc = spec["securityContext"], c["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        # /tmp is the only writable path the image needs
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], name
        if w["kind"] == "StatefulSet":
            assert sc["readOnlyRootFilesystem"] is True
            continue
        # Tilt's live_update writes into the dev containers; everywhere else the root is read-only.
        assert sc["readOnlyRootFilesystem"] is (overlay != "dev"), name
        pause = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pause[:2] == ["python", "-c"], "the image guarantees python, not a shell"
        (pause_s,) = (float(x) for x in re.findall(r"time\.sleep\(([\d.]+)\)", pause[2]))
        assert spec["terminationGracePeriodSeconds"] > pause_s + drain_s, name


def test_prod_is_bigger_than_dev_and_scales_wider(rendered: dict[str, list[Manifest]]) -> None:
    def cpu(q: str) -> float:
        return float(q[:-1]) / 1000 if q.endswith("m") else float(q)

    dev, prod = deployments(rendered["dev"]), deployments(rendered["prod"])
    for tier in TIERS:
        assert dev[tier]["spec"]["replicas"] == 1
        assert one(rendered["dev"], "HorizontalPodAutoscaler", tier)["spec"]["minReplicas"] == 1
        assert "replicas" not in prod[tier]["spec"], "in prod the autoscaler owns the replica count"
        assert one(rendered["prod"], "HorizontalPodAutoscaler", tier)["spec"]["minReplicas"] >= 2
        assert cpu(container(prod[tier])["resources"]["requests"]["cpu"]) > cpu(
            container(dev[tier])["resources"]["requests"]["cpu"])
        image = container(prod[tier])["image"]
        assert re.fullmatch(r"[\w.\-/]+/switchboard:[\w.\-]+", image), image
        assert container(dev[tier])["image"] == "switchboard"
    assert configmap(rendered["dev"])["SWITCHBOARD_LOG_JSON"] == "false"
    assert configmap(rendered["prod"])["SWITCHBOARD_LOG_JSON"] == "true"


def test_routers_and_history_advertise_their_pod_ip_and_listen_on_all_addresses(
        rendered: dict[str, list[Manifest]]) -> None:
    for overlay in OVERLAYS:
        manifests = rendered[overlay]
        assert configmap(manifests)["SWITCHBOARD_HOST"] == "0.0.0.0"
        for tier in ("router", "history"):
            env = {e["name"]: e for e in container(one(manifests, "Deployment", tier))["env"]}
            assert env["SWITCHBOARD_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            assert env["SWITCHBOARD_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


# ---- settings, secrets and ports -------------------------------------------------------------


def _env_names(manifests: list[Manifest]) -> set[str]:
    names = set()
    for m in manifests:
        if m["kind"] == "ConfigMap":
            names |= set(m.get("data", {}))
        if m["kind"] in ("Deployment", "StatefulSet"):
            for c in pod_spec(m)["containers"]:
                names |= {e["name"] for e in c.get("env", [])}
    return {n for n in names if n.startswith("SWITCHBOARD_")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_switchboard_variable_is_a_setting(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    fields = {f"SWITCHBOARD_{name.upper()}" for name in Settings.model_fields}
    names = _env_names(rendered[overlay])
    assert names - fields == set(), "not settings: " + ", ".join(sorted(names - fields))
    assert {"SWITCHBOARD_JWT_SECRET", "SWITCHBOARD_SERVICE_TOKEN", "SWITCHBOARD_STORE_URL"} <= names


def test_the_configmap_values_parse_as_settings(rendered: dict[str, list[Manifest]]) -> None:
    for overlay in OVERLAYS:
        data = configmap(rendered[overlay])
        kwargs = {k.removeprefix("SWITCHBOARD_").lower(): v for k, v in data.items()}
        settings = Settings(**kwargs)
        assert settings.store_url == "redis://dragonfly:6379/0"


def test_secrets_are_generated_in_dev_and_only_referenced_in_prod(rendered: dict[str, list[Manifest]]) -> None:
    for overlay in OVERLAYS:
        manifests = rendered[overlay]
        refs = set()
        for dep in deployments(manifests).values():
            env = {e["name"]: e for e in container(dep)["env"]}
            for name, key in (("SWITCHBOARD_JWT_SECRET", "jwt-secret"), ("SWITCHBOARD_SERVICE_TOKEN", "service-token")):
                ref = env[name]["valueFrom"]["secretKeyRef"]
                assert ref["key"] == key
                refs.add(ref["name"])
        secrets = find(manifests, "Secret")
        if overlay == "dev":
            (secret,) = secrets
            assert refs == {secret["metadata"]["name"]}
            assert set(secret["data"]) == {"jwt-secret", "service-token"}
        else:
            assert secrets == [], "the prod overlay must never contain the Secret"
            assert refs == {"switchboard-secrets"}


def _exposed_ports() -> set[int]:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    return {int(p) for line in text.splitlines() if line.startswith("EXPOSE") for p in line.split()[1:]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_agree_with_the_settings_and_the_image(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    manifests = rendered[overlay]
    data = configmap(manifests)
    app_port, metrics_port = int(data["SWITCHBOARD_PORT"]), int(data["SWITCHBOARD_METRICS_PORT"])
    link_port = int(data["SWITCHBOARD_LINK_PORT"])
    assert {app_port, link_port, metrics_port} == _exposed_ports()
    for tier, dep in deployments(manifests).items():
        c = container(dep)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        expected = {"http": app_port} if tier == "edge" else {"grpc": app_port, "metrics": metrics_port}
        if tier == "router":
            expected["link"] = link_port  # the edges' stream links
        assert ports == expected, tier
        svc = one(manifests, "Service", tier)
        for sp in svc["spec"]["ports"]:
            assert sp["targetPort"] in ports and sp["port"] == ports[sp["targetPort"]], (tier, sp)
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            handler = c[probe].get("httpGet") or c[probe].get("grpc") or c[probe].get("tcpSocket")
            port = handler["port"]
            assert (ports[port] if isinstance(port, str) else port) == app_port, (tier, probe)
        assert c["args"] == [tier]


def test_the_store_url_points_at_the_store_service(rendered: dict[str, list[Manifest]]) -> None:
    for overlay in ("dev", "prod"):
        manifests = rendered[overlay]
        url = configmap(manifests)["SWITCHBOARD_STORE_URL"]
        m = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", url)
        assert m
        svc = one(manifests, "Service", m.group(1))
        sts = one(manifests, "StatefulSet", "dragonfly")
        assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == m.group(1)
        assert int(m.group(2)) in {p["port"] for p in svc["spec"]["ports"]}
        args = container(sts)["args"]
        assert "--dir=/data" in args and any(a.startswith("--snapshot_cron=") for a in args)
        # the overlays patch the threads by position: the patched slot must be that flag
        assert sum(a.startswith("--proactor_threads=") for a in args) == 1 and len(args) == 6
        assert not any(a.startswith("--cluster_mode") for a in args)
        assert re.fullmatch(r"docker\.dragonflydb\.io/dragonflydb/dragonfly:v\d+\.\d+\.\d+", container(sts)["image"])
        assert {"readinessProbe", "livenessProbe"} <= set(container(sts))
        assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {
            m["name"] for m in container(sts)["volumeMounts"] if m["mountPath"] == "/data"}


# ---- network -------------------------------------------------------------------------------


def _allowed_sources(manifests: list[Manifest], target_labels: dict[str, str], port: int) -> list[dict[str, Any]]:
    """The `from` peers of every policy that selects these pods and opens this port."""
    peers = []
    for np in find(manifests, "NetworkPolicy"):
        if not labels_match(np["spec"]["podSelector"], target_labels):
            continue
        for rule in np["spec"].get("ingress", []):
            if any(p["port"] == port for p in rule.get("ports", [])):
                peers += rule["from"]
    return peers


def _pod_labels(manifests: list[Manifest], kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = one(manifests, kind, name)["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("overlay", ("dev", "prod"))
def test_network_policies_isolate_every_tier(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    manifests = rendered[overlay]
    (deny,) = [np for np in find(manifests, "NetworkPolicy") if np["spec"]["podSelector"] == {}]
    assert deny["spec"]["policyTypes"] == ["Ingress"] and not deny["spec"].get("ingress")
    tier_labels = {t: _pod_labels(manifests, "Deployment", t) for t in TIERS}
    store_labels = _pod_labels(manifests, "StatefulSet", "dragonfly")

    def pod_peers(peers: list[dict[str, Any]]) -> set[str]:
        found = set()
        for peer in peers:
            assert "ipBlock" not in peer
            if "namespaceSelector" in peer:
                continue
            found |= {t for t, labels in tier_labels.items() if labels_match(peer["podSelector"], labels)}
        return found

    def namespaces(peers: list[dict[str, Any]]) -> set[str]:
        return {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers
                if "namespaceSelector" in p}

    edge = _allowed_sources(manifests, tier_labels["edge"], 8000)
    assert pod_peers(edge) == set() and namespaces(edge) == {"ingress-nginx", "monitoring"}
    assert pod_peers(_allowed_sources(manifests, tier_labels["router"], 8000)) == {"edge", "router"}
    assert pod_peers(_allowed_sources(manifests, tier_labels["router"], 8001)) == {"edge"}  # links
    assert pod_peers(_allowed_sources(manifests, tier_labels["history"], 8001)) == set()
    assert pod_peers(_allowed_sources(manifests, tier_labels["history"], 8000)) == {"edge", "router"}
    assert pod_peers(_allowed_sources(manifests, store_labels, 6379)) == {"edge", "router", "history"}
    assert namespaces(_allowed_sources(manifests, store_labels, 6379)) == set()
    for tier in ("router", "history"):
        metrics = _allowed_sources(manifests, tier_labels[tier], 9100)
        assert namespaces(metrics) == {"monitoring"}
        assert all(p["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"} for p in metrics)
    # nothing reaches the metrics port of a tier from another tier
    for tier in ("router", "history"):
        assert pod_peers(_allowed_sources(manifests, tier_labels[tier], 9100)) == set()


def test_the_ingress_serves_websockets_over_tls_to_the_edge(rendered: dict[str, list[Manifest]]) -> None:
    ing = one(rendered["prod"], "Ingress", "switchboard")
    annotations = ing["metadata"]["annotations"]
    ping_s = Settings.model_fields["ping_interval_s"].default
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) >= 10 * ping_s
    assert ing["spec"]["tls"][0]["secretName"]
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] in ing["spec"]["tls"][0]["hosts"]
    paths = {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
    assert set(paths) == {"/api/ws", "/ws", "/api/v1", "/"}
    assert all(s == {"name": "edge", "port": {"name": "http"}} for s in paths.values())
    assert not find(rendered["dev"], "Ingress"), "dev uses Tilt's port-forward"


def test_kustomize_files_parse() -> None:
    """Every YAML file under k8s/ parses (a broken file in an unused component would go unseen)."""
    for path in (ROOT / "k8s").rglob("*.yaml"):
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs, path


# ---- session affinity (k8s/components/session-affinity) ---------------------------------------

HASH_BY = "nginx.ingress.kubernetes.io/upstream-hash-by"


def _paths(ingress: Manifest) -> dict[str, str]:
    (rule,) = ingress["spec"]["rules"]
    return {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}


def test_session_affinity_hashes_the_websocket_paths_alone_on_a_service_of_their_own(
        rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["prod-session-affinity"]
    main, hashed = one(manifests, "Ingress", "switchboard"), one(manifests, "Ingress", "switchboard-ws")
    # /ws/chat/{session_id} (and /api/ws/chat/...): one session, one URI, one edge pod; the
    # publish API is not hashed
    assert _paths(hashed) == {"/api/ws": "edge-ws", "/ws": "edge-ws"}
    assert hashed["metadata"]["annotations"][HASH_BY] == "$uri"
    assert HASH_BY not in main["metadata"]["annotations"]
    assert _paths(main) == {"/api/v1": "edge", "/": "edge"}
    assert set(_paths(main)) | set(_paths(hashed)) == set(_paths(one(rendered["prod"], "Ingress", "switchboard")))
    # the same timeouts, body limit and TLS redirect as every other path
    assert {k: v for k, v in hashed["metadata"]["annotations"].items() if k != HASH_BY} == \
        main["metadata"]["annotations"]
    assert hashed["spec"]["ingressClassName"] == main["spec"]["ingressClassName"]
    # ingress-nginx keeps the hash per Service and port: edge-ws must be the edges, and only the
    # hashed Ingress may use it (and it nothing else)
    edge, edge_ws = one(manifests, "Service", "edge"), one(manifests, "Service", "edge-ws")
    assert edge_ws["spec"]["selector"] == edge["spec"]["selector"]
    assert edge_ws["spec"]["ports"] == edge["spec"]["ports"]
    users = [i["metadata"]["name"] for i in find(manifests, "Ingress") if "edge-ws" in _paths(i).values()]
    assert users == ["switchboard-ws"]


def test_session_affinity_copies_the_host_and_tls_secret_an_overlay_sets(tmp_path: Path) -> None:
    # kustomize takes relative paths only; the overlay patches the main Ingress, the component
    # must copy what it set.
    mine, hashed = tmp_path / "mine", tmp_path / "hashed"
    mine.mkdir()
    hashed.mkdir()
    (mine / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {os.path.relpath(ROOT / "k8s" / "overlays" / "prod", mine)}
patches:
  - target: {{kind: Ingress, name: switchboard}}
    patch: |-
      - op: replace
        path: /spec/rules/0/host
        value: chat.test.example
      - op: replace
        path: /spec/tls/0
        value: {{hosts: [chat.test.example], secretName: chat-test-tls}}
""")
    (hashed / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../mine
components:
  - {os.path.relpath(ROOT / "k8s" / "components" / "session-affinity", hashed)}
""")
    ws = one(render(hashed), "Ingress", "switchboard-ws")
    assert ws["spec"]["rules"][0]["host"] == "chat.test.example"
    assert ws["spec"]["tls"] == [{"hosts": ["chat.test.example"], "secretName": "chat-test-tls"}]
