"""Deploy: the Kubernetes manifests build (real kustomize, from kubectl) into valid objects that agree with the code.

Each build (base, remediation overlay, sharded overlay) is turned into the `kubernetes` client's models and back:
a misspelt field would be dropped on the way and the round trip would differ. The Deployment is checked against
the daemon's settings (port, probes, configuration it would load), the rule files against the rulebook, and the
RBAC against what the Kubernetes collector and the RBAC applier call.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
NAMESPACE = "drift-auditor"
BUILDS = {
    "base": KUBE,
    "remediation": KUBE / "overlays" / "remediation",
    "sharded": KUBE / "overlays" / "sharded",
    "gmp": KUBE / "overlays" / "gmp",
    "ha": KUBE / "overlays" / "ha",
}
# How each build is monitored: (scrape config kind, alert rules kind).
MONITORING = {"gmp": ("PodMonitoring", "Rules")}
PROMETHEUS_OPERATOR = ("ServiceMonitor", "PrometheusRule")
# Kinds the manifests may contain: the `kubernetes` model for built-in ones, None for the Prometheus Operator CRDs.
MODELS: dict[tuple[str, str], str | None] = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): None,
    ("monitoring.coreos.com/v1", "PrometheusRule"): None,
    ("monitoring.googleapis.com/v1", "PodMonitoring"): None,
    ("monitoring.googleapis.com/v1", "Rules"): None,
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
READ_VERBS = {"get", "list", "watch"}


# -- helpers (also used by the other tests of this package) ------------------------------------------------------
def tool(name: str) -> str:
    """A command-line tool installed with the dev dependencies (the venv's bin first, then PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: it comes with the dev dependencies (pip install -e '.[dev]')")
    return found


@functools.cache
def build(name: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize` renders for one of BUILDS."""
    proc = subprocess.run(
        [tool("kubectl"), "kustomize", str(BUILDS[name])], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"kustomize build of {BUILDS[name]} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def of_kind(objs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def workloads(objs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """The auditor's pods' owners: StatefulSets (the base, shards, HA), or Deployments."""
    return [o for o in objs if o["kind"] in ("StatefulSet", "Deployment")]


def named(objs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
    return found[0]


def to_model(obj: dict[str, Any]) -> Any:
    """The `kubernetes` client model of a built-in object (raises on a missing required field)."""
    model = MODELS[(obj["apiVersion"], obj["kind"])]
    assert model is not None
    return k8s.ApiClient().deserialize(json.dumps(obj), model, "application/json")


def container(deployment: dict[str, Any], name: str = "auditor") -> dict[str, Any]:
    found = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"{deployment['metadata']['name']} has no single container {name!r}"
    return found[0]


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the pod would see it (field references resolved)."""
    out: dict[str, str] = {}
    for e in container(deployment).get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        else:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            out[e["name"]] = {"metadata.namespace": deployment["metadata"]["namespace"], "metadata.name": "pod-0"}[path]
    return out


def volume_for_mount(deployment: dict[str, Any], mount_path: str) -> dict[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
    assert mount_path in mounts, f"nothing is mounted at {mount_path}"
    vols = {v["name"]: v for v in spec["volumes"]}
    return vols[mounts[mount_path]["name"]]


def mount_covering(deployment: dict[str, Any], path: str) -> dict[str, Any] | None:
    for m in container(deployment)["volumeMounts"]:
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
            return m
    return None


def config_text(objs: tuple[dict[str, Any], ...], deployment: dict[str, Any]) -> tuple[str, str]:
    """(path of the config in the container, the text the pod reads there) from `--config` and the ConfigMap."""
    args = container(deployment)["args"]
    path = args[args.index("--config") + 1]
    mount = mount_covering(deployment, path)
    assert mount is not None, f"--config {path} is on no volume"
    vol = volume_for_mount(deployment, mount["mountPath"])
    cm = named(objs, "ConfigMap", vol["configMap"]["name"])
    key = path[len(mount["mountPath"]) :].lstrip("/")
    assert key in cm["data"], f"ConfigMap {cm['metadata']['name']} has no key {key!r} (for {path})"
    return path, cm["data"][key]


def init_container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in deployment["spec"]["template"]["spec"].get("initContainers", []) if c["name"] == name]
    assert len(found) == 1, f"{deployment['metadata']['name']} has no single init container {name!r}"
    return found[0]


TOKEN_FILE_ENV = "AUDITOR_REPORT_TOKEN_FILE"
A_TOKEN = "made-by-the-report-token-init-container"


@pytest.fixture
def pod_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Load the daemon's settings exactly as a pod of a Deployment would: its config file and its environment.

    The report token file the init container writes in the pod is read from `token_dir` (default: a file holding
    A_TOKEN is laid out there); `token_dir=None` loads the settings as a pod whose token file is missing."""
    from auditor.settings import load_settings

    def load(objs: tuple[dict[str, Any], ...], deployment: dict[str, Any],
             token_dir: Path | str | None = "default") -> Any:
        for k in list(os.environ):
            if k.upper().startswith("AUDITOR_"):
                monkeypatch.delenv(k)
        for k, v in container_env(deployment).items():
            if k == TOKEN_FILE_ENV:
                if token_dir == "default":
                    (tmp_path / "run").mkdir(exist_ok=True)
                    (tmp_path / "run" / Path(v).name).write_text(A_TOKEN + "\n", encoding="utf-8")
                    token_dir = tmp_path / "run"
                v = str(Path(str(token_dir or tmp_path / "no-token")) / Path(v).name)
            monkeypatch.setenv(k, v)
        _, text = config_text(objs, deployment)
        cfg = tmp_path / f"{deployment['metadata']['name']}.yaml"
        cfg.write_text(text, encoding="utf-8")
        return load_settings(cfg)

    return load


def alert_jobs() -> set[str]:
    """The `job` values the alert expressions select on (deploy/prometheus/alerts.yaml)."""
    text = (REPO / "deploy" / "prometheus" / "alerts.yaml").read_text(encoding="utf-8")
    return set(re.findall(r'job="([^"]+)"', text)) or {"drift-auditor"}


def kustomizations() -> Iterator[Path]:
    yield from sorted(KUBE.rglob("kustomization.yaml"))


# -- the files ------------------------------------------------------------------------------------------------------
def test_kustomizations_name_existing_files_and_no_manifest_is_orphaned() -> None:
    referenced: set[Path] = set()
    for kfile in kustomizations():
        k = yaml.safe_load(kfile.read_text(encoding="utf-8"))
        here = kfile.parent
        for res in k.get("resources", []):
            p = (here / res).resolve()
            assert p.is_file() or (p / "kustomization.yaml").is_file(), f"{kfile}: resource {res} does not exist"
            referenced.add(p)
        for patch in k.get("patches", []):
            if "path" in patch:
                p = (here / patch["path"]).resolve()
                assert p.is_file(), f"{kfile}: patch {patch['path']} does not exist"
                referenced.add(p)
        for gen in k.get("configMapGenerator", []):
            for f in gen.get("files", []):
                p = (here / f.split("=", 1)[-1]).resolve()
                assert p.is_file(), f"{kfile}: configMapGenerator file {f} does not exist"
                referenced.add(p)
    manifests = {p.resolve() for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml"}
    orphans = sorted(str(p.relative_to(KUBE)) for p in manifests - referenced)
    assert not orphans, f"files no kustomization uses: {orphans}"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_build_gives_valid_kubernetes_objects(name: str) -> None:
    objs = build(name)
    api = k8s.ApiClient()
    for obj in objs:
        key = (obj["apiVersion"], obj["kind"])
        assert key in MODELS, f"{name}: unexpected {key} ({obj['metadata'].get('name')})"
        where = f"{name}: {obj['kind']} {obj['metadata'].get('name')}"
        if MODELS[key] is None:
            continue  # the CRDs are checked field by field below
        # The round trip drops any field the model does not know: a typo shows up as a difference.
        assert api.sanitize_for_serialization(to_model(obj)) == obj, f"{where}: fields lost in the model round trip"
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{where}: not in namespace {NAMESPACE}"
    kinds = {o["kind"] for o in objs}
    monitoring = set(MONITORING.get(name, PROMETHEUS_OPERATOR))
    assert {"Namespace", "ServiceAccount", "StatefulSet", "Service", *monitoring} <= kinds
    # One way of monitoring per build: the other's CRDs may not exist in the cluster.
    assert not ({*PROMETHEUS_OPERATOR, *MONITORING["gmp"]} - monitoring) & kinds


def test_pod_monitoring_scrapes_the_metrics_port_of_the_auditor_pods() -> None:
    objs = build("gmp")
    (pm,) = of_kind(objs, "PodMonitoring")
    (dep,) = workloads(objs)
    assert pm["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"] for p in container(dep)["ports"]}
    assert [(e["port"], e["path"]) for e in pm["spec"]["endpoints"]] == [("http", "/metrics")] and "http" in ports
    # Managed collection names the job after the PodMonitoring: the job the alerts select.
    assert pm["metadata"]["name"] in alert_jobs()


@pytest.mark.parametrize("name", sorted(set(BUILDS) - set(MONITORING)))
def test_service_monitor_scrapes_the_metrics_port_of_its_own_service(name: str) -> None:
    objs = build(name)
    monitors = of_kind(objs, "ServiceMonitor")
    services = of_kind(objs, "Service")
    assert len(monitors) == len(services) == len(workloads(objs))
    for sm in monitors:
        sel = sm["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services if sel.items() <= s["metadata"]["labels"].items()]
        assert len(chosen) == 1, f"ServiceMonitor {sm['metadata']['name']} selects {len(chosen)} Services"
        # Prometheus Operator names the job after the Service label `jobLabel`: the job the alerts select.
        assert chosen[0]["metadata"]["labels"][sm["spec"]["jobLabel"]] in alert_jobs()
        ports = {p["name"] for p in chosen[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in ports and ep["path"] == "/metrics"
            assert {r["targetLabel"] for r in ep.get("relabelings", [])} >= {"scope"}


# -- the Deployment against the image and the daemon ----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BUILDS))
def test_deployment_runs_locked_down(name: str) -> None:
    for dep in workloads(build(name)):
        spec = dep["spec"]["template"]["spec"]
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
        sc = container(dep)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert sc.get("privileged", False) is False
        res = container(dep)["resources"]
        assert {"cpu", "memory"} <= res["requests"].keys() and "memory" in res["limits"]
        # One replica on SQLite (one writer), its state on a claim per pod; HA: two replicas kept apart, a node (or
        # zone) going away leaves one auditor running, on the shared PostgreSQL state.
        ha = "AUDITOR_STATE_URL" in container_env(dep)
        assert dep["spec"]["replicas"] == (2 if ha else 1)
        assert dep["spec"]["updateStrategy"]["type"] == "RollingUpdate"
        claims = {c["metadata"]["name"] for c in dep["spec"].get("volumeClaimTemplates", [])}
        assert claims == (set() if ha else {"state"})
        anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert any(
            t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
            and t["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()
            for t in anti
        )
        assert {c["topologyKey"] for c in spec["topologySpreadConstraints"]} >= {"topology.kubernetes.io/zone"}
        # Every writable path is a scratch volume or the state claim; the configuration and rules are read-only, and
        # so is the report token the init container wrote.
        for m in container(dep)["volumeMounts"]:
            writable = m["name"] in claims or "emptyDir" in volume_for_mount(dep, m["mountPath"])
            assert writable or m.get("readOnly"), f"{m['mountPath']}: writable only if scratch or state"
            assert bool(m.get("readOnly")) is (not writable or m["name"] == "report-token"), m["mountPath"]
        # The init containers (the report token, the Cloud SQL proxy) are as locked down as the auditor.
        for c in spec.get("initContainers", []):
            isc = c["securityContext"]
            assert isc["readOnlyRootFilesystem"] is True and isc["allowPrivilegeEscalation"] is False, c["name"]
            assert isc["runAsNonRoot"] is True and isc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]
        assert "emptyDir" in volume_for_mount(dep, "/tmp")
        pdbs = [p for p in of_kind(build(name), "PodDisruptionBudget")
                if p["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()]
        # A drain may take the single replica (it returns on its volume); of two it leaves one.
        assert len(pdbs) == 1 and pdbs[0]["spec"] == {"selector": pdbs[0]["spec"]["selector"],
                                                      **({"minAvailable": 1} if ha else {"maxUnavailable": 1})}


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_probes_and_port_agree_with_the_daemon(name: str, pod_settings: Any) -> None:
    from auditor.settings import Settings, parse_listen

    default_port = parse_listen(Settings.model_fields["listen"].default)[1]
    objs = build(name)
    for dep in workloads(objs):
        c = container(dep)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        settings = pod_settings(objs, dep)
        host, port = settings.listen_address
        # The pod listens on every interface, on the port the daemon uses by default and the container declares.
        assert host in ("0.0.0.0", "::") and port == ports["http"] == default_port
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        svc = [s for s in of_kind(objs, "Service")
               if s["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()]
        assert len(svc) == 1 and svc[0]["spec"]["ports"][0]["targetPort"] == "http"


def test_the_daemon_serves_the_probed_paths() -> None:
    # The paths the probes call are the daemon's own routes (auditor/daemon.py).
    source = (REPO / "auditor" / "daemon.py").read_text(encoding="utf-8")
    consts = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert {"/healthz", "/readyz", "/metrics"} <= consts


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_configuration_loads_as_each_pod_sees_it(name: str, pod_settings: Any) -> None:
    objs = build(name)
    for dep in workloads(objs):
        s = pod_settings(objs, dep)
        # State lives on the pod's state claim (SQLite), or in the shared PostgreSQL database (HA).
        if s.state_url:
            assert s.state_url.startswith("postgresql://") and "@127.0.0.1:5432/" in s.state_url  # the proxy
            assert s.ha.enabled and dep["spec"]["replicas"] == 2
        else:
            mount = mount_covering(dep, str(s.state_path))
            assert mount is not None and mount["name"] in {
                c["metadata"]["name"] for c in dep["spec"]["volumeClaimTemplates"]}
        le = s.remediation.leader_election
        assert le.lease_name and le.lease_namespace == dep["metadata"]["namespace"]
        assert s.remediation.enabled is (name == "remediation")
        assert s.log_format == "json"
        # Timing: a rollout waits for the first cycle; SIGTERM lets a cycle finish (or be abandoned) before SIGKILL.
        from auditor.daemon import ABANDON_WAIT_SECONDS

        grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > s.schedule.shutdown_grace_seconds + ABANDON_WAIT_SECONDS


def _kubelet_configmap_volume(root: Path, data: dict[str, str]) -> None:
    """Lay out files as the kubelet does for a ConfigMap volume: hidden ..data copies and symlinks to them."""
    stamp = root / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for key, text in data.items():
        (stamp / key).write_text(text, encoding="utf-8")
    (root / "..data").symlink_to(stamp.name)
    for key in data:
        (root / key).symlink_to(f"..data/{key}")


def test_rule_files_load_from_the_mounted_configmap_with_the_baseline(tmp_path: Path, pod_settings: Any) -> None:
    from auditor.evaluate.rulebook import load_rules, shipped_rules_dir

    objs = build("base")
    dep = named(objs, "StatefulSet", "drift-auditor")
    s = pod_settings(objs, dep)
    # Map each configured rule path to where this test lays out the same thing.
    rules_mount = "/etc/drift-auditor-rules"
    cm = named(objs, "ConfigMap", volume_for_mount(dep, rules_mount)["configMap"]["name"])
    _kubelet_configmap_volume(tmp_path / "rules", cm["data"])
    paths: list[Path] = []
    for p in s.rules:
        if p == "/usr/share/drift-auditor/baseline":  # the image links the installed baseline there (Dockerfile)
            paths.append(shipped_rules_dir())
        else:
            assert p.startswith(rules_mount + "/"), f"rule path {p} is neither the baseline nor the ConfigMap"
            paths.append(tmp_path / "rules" / p[len(rules_mount) + 1 :])
    loaded = load_rules(paths)
    ids = [r.id for r in loaded]
    assert len(ids) == len(set(ids))
    baseline = {r.id for r in load_rules(None)}
    own = {r.id for r in load_rules([tmp_path / "rules" / k for k in cm["data"]])}
    assert baseline and own and set(ids) == baseline | own and not baseline & own


def test_dockerfile_links_the_baseline_where_the_configuration_expects_it() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert "/usr/share/drift-auditor/baseline" in text and "shipped_rules_dir()" in text


# -- RBAC ------------------------------------------------------------------------------------------------------
def _grants(objs: tuple[dict[str, Any], ...], kind: str) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, over every role of `kind` bound to the auditor's service account."""
    bindings = of_kind(objs, "ClusterRoleBinding" if kind == "ClusterRole" else "RoleBinding")
    bound = {
        b["roleRef"]["name"]
        for b in bindings
        if b["roleRef"]["kind"] == kind
        and {"kind": "ServiceAccount", "name": "drift-auditor", "namespace": NAMESPACE} in b["subjects"]
    }
    out: dict[tuple[str, str], set[str]] = {}
    for role in of_kind(objs, kind):
        if role["metadata"]["name"] not in bound:
            continue
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], f"wildcard in {role}"
            assert "resourceNames" not in rule or kind == "Role"
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    out.setdefault((g, r), set()).update(rule["verbs"])
    return out


def _collected_resources() -> set[tuple[str, str]]:
    """(apiGroup, plural) of every Kubernetes kind the collector turns into assets (auditor/collect/k8s_objects.py)."""
    from auditor.collect.k8s_objects import KINDS

    out = set()
    for _, segment, _ in KINDS.values():
        group, _, plural = segment.rpartition("/")
        out.add((group, plural))
    return out


@pytest.mark.parametrize("name", ["base", "sharded"])
def test_audit_rbac_reads_what_the_collector_reads_and_nothing_else(name: str) -> None:
    objs = build(name)
    grants = _grants(objs, "ClusterRole")
    assert set(grants) == _collected_resources()
    for res, verbs in grants.items():
        assert {"get", "list"} <= verbs <= READ_VERBS, f"{res}: {sorted(verbs)}"
    for dep in workloads(objs):
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "drift-auditor"
    sa = named(objs, "ServiceAccount", "drift-auditor")
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")


def _leader_lease_verbs() -> set[str] | None:
    """The Kubernetes verbs remediations/leader.py uses on Leases (None while that module is not there)."""
    path = REPO / "remediations" / "leader.py"
    if not path.is_file():
        return None
    verb_of = {"read": "get", "create": "create", "replace": "update", "patch": "patch", "delete": "delete",
               "list": "list"}
    verbs = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr.endswith("_namespaced_lease"):
            verbs.add(verb_of[node.attr.removesuffix("_namespaced_lease")])
    return verbs


def test_lease_role_is_namespaced_and_matches_the_leader_election_code() -> None:
    objs = build("base")
    grants = _grants(objs, "Role")
    # Leases for leader election; the report token's Secret (test_the_report_token_* below).
    assert set(grants) == {("coordination.k8s.io", "leases"), ("", "secrets")}
    role = named(objs, "Role", "drift-auditor-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    verbs = grants[("coordination.k8s.io", "leases")]
    used = _leader_lease_verbs()
    if used is None:
        # Read, create when absent, take over or renew with a merge patch carrying the resourceVersion.
        assert verbs == {"get", "create", "patch"}
        return
    assert used, "remediations/leader.py makes no Lease call"
    assert used == verbs, f"remediations/leader.py uses {sorted(used)}, the Role grants {sorted(verbs)}"
    # The Lease holder is named after the pod (POD_NAME), so a takeover in the logs says which replica it was.
    source = (REPO / "remediations" / "leader.py").read_text(encoding="utf-8")
    if '"POD_NAME"' in source or "'POD_NAME'" in source:
        for name in BUILDS:
            for dep in workloads(build(name)):
                assert container_env(dep)["POD_NAME"] == "pod-0"  # resolved from metadata.name


def _rbac_writer_verbs() -> set[str]:
    """The Kubernetes verbs the RBAC writer (remediations/families/rbac.py) calls through `_call(target, "verb")`."""
    tree = ast.parse((REPO / "remediations" / "families" / "rbac.py").read_text(encoding="utf-8"))
    verb_of = {"read": "get", "create": "create", "replace": "update", "patch": "patch", "delete": "delete"}
    verbs = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_call"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
        ):
            verbs.add(verb_of[node.args[1].value])
    return verbs


def test_remediation_overlay_adds_exactly_the_writes_the_rbac_applier_makes() -> None:
    base, rem = _grants(build("base"), "ClusterRole"), _grants(build("remediation"), "ClusterRole")
    writes = _rbac_writer_verbs() - READ_VERBS
    assert writes, "remediations/families/rbac.py makes no write call any more?"
    added = {res: verbs - base.get(res, set()) for res, verbs in rem.items()}
    added = {res: v for res, v in added.items() if v}
    rbac = "rbac.authorization.k8s.io"
    bindings = {(rbac, "rolebindings"), (rbac, "clusterrolebindings")}
    roles = {(rbac, "roles"), (rbac, "clusterroles")}
    assert set(added) == bindings | roles
    for res in bindings:
        # Subjects are patched, bindings deleted, and a rollback recreates a deleted binding.
        assert added[res] == writes, f"{res}: overlay grants {sorted(added[res])}, the applier uses {sorted(writes)}"
    for res in roles:
        # A Role's rules are replaced by patch; `escalate` and `bind` get past the API server's escalation check.
        assert added[res] == {"patch", "escalate", "bind"}, f"{res}: {sorted(added[res])}"
    dep = named(build("remediation"), "StatefulSet", "drift-auditor")
    assert container_env(dep)["AUDITOR_REMEDIATION__ENABLED"] == "true"
    # Nothing else changes: the same objects as the base, plus the remediation role and its binding.
    names = {(o["kind"], o["metadata"]["name"]) for o in build("base")}
    assert {(o["kind"], o["metadata"]["name"]) for o in build("remediation")} - names == {
        ("ClusterRole", "drift-auditor-remediate"),
        ("ClusterRoleBinding", "drift-auditor-remediate"),
    }


# -- alerts --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kind", "path"), [
    ("base", "PrometheusRule", "cluster/prometheusrule.yaml"),
    ("gmp", "Rules", "overlays/gmp/rules.yaml"),
])
def test_alert_rule_objects_carry_the_promtool_tested_alerts(name: str, kind: str, path: str) -> None:
    alerts = REPO / "deploy" / "prometheus" / "alerts.yaml"
    groups = yaml.safe_load(alerts.read_text(encoding="utf-8"))["groups"]
    assert groups, f"{alerts} has no rule groups"
    rule = named(build(name), kind, "drift-auditor")
    assert rule["spec"]["groups"] == groups, (
        f"deploy/kubernetes/{path} differs from deploy/prometheus/alerts.yaml; "
        "run: .venv/bin/python deploy/kubernetes/sync_prometheusrule.py"
    )
    # The generator writes exactly the committed file.
    sys.path.insert(0, str(KUBE))
    try:
        import sync_prometheusrule
    finally:
        sys.path.remove(str(KUBE))
    api_version, generated_kind = sync_prometheusrule.TARGETS[KUBE / path]
    assert generated_kind == kind
    committed = (KUBE / path).read_text(encoding="utf-8")
    assert sync_prometheusrule.render(sync_prometheusrule.alert_groups(alerts), api_version, kind) == committed


# -- sharding ------------------------------------------------------------------------------------------------------
def test_shards_split_the_scope_and_keep_to_their_own_pods(pod_settings: Any) -> None:
    objs = build("sharded")
    deps = workloads(objs)
    assert len(deps) >= 2
    seen_sources: set[str] = set()
    leases, scopes = set(), set()
    in_cluster = 0
    for dep in deps:
        s = pod_settings(objs, dep)
        assert not seen_sources & set(s.sources), f"{dep['metadata']['name']}: a source is audited twice"
        seen_sources |= set(s.sources)
        in_cluster += "k8s://in-cluster" in s.sources
        leases.add(s.remediation.leader_election.lease_name)
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        # The Service, the disruption budget and the ServiceMonitor of a shard pick its pods only.
        for other in deps:
            if other is dep:
                continue
            other_labels = other["spec"]["template"]["metadata"]["labels"]
            assert not dep["spec"]["selector"]["matchLabels"].items() <= other_labels.items()
        svc = [x for x in of_kind(objs, "Service") if x["spec"]["selector"].items() <= pod_labels.items()]
        assert len(svc) == 1
        scopes.add(svc[0]["metadata"]["labels"]["drift-auditor/scope"])
        # The daemon labels its own series with the same scope (the ServiceMonitor honours it).
        assert s.scope == svc[0]["metadata"]["labels"]["drift-auditor/scope"]
    # Exactly one shard reads this cluster; each shard elects its own leader; each has its own scope label.
    assert in_cluster == 1
    assert len(leases) == len(scopes) == len(deps)
    # The cluster-wide objects exist once.
    for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "PrometheusRule"):
        assert len(of_kind(objs, kind)) == len(of_kind(build("base"), kind)), kind


# -- the auditor against its own baseline ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_auditor_deployment_passes_its_own_baseline(name: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from auditor.cli import cli

    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump_all(build(name)), encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        ["scan", "--source", str(manifest), "--cluster", "projects/p/locations/l/clusters/c", "--format", "json",
         "--fail-on", "info"],
    )
    report = json.loads(result.output)
    # The RBAC objects and the namespace are read as assets, and the shipped rules find nothing wrong with them.
    assert report["summary"]["assets"] >= 5
    assert report["findings"] == [] and result.exit_code == 0, report["findings"]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_only_the_prometheus_namespace_reaches_the_auditor_and_only_its_port(name: str) -> None:
    """Secure by default: a NetworkPolicy per auditor admits the namespace Prometheus scrapes from, to the metrics
    port; the reports answer loopback (port-forward) unless a token is configured (tests/daemon/test_access.py)."""
    objs = build(name)
    policies = of_kind(objs, "NetworkPolicy")
    prometheus_ns = "gmp-system" if name == "gmp" else "monitoring"
    for dep in workloads(objs):
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()]
        assert len(mine) == 1, f"{dep['metadata']['name']}: {len(mine)} NetworkPolicies select it"
        spec = mine[0]["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": prometheus_ns}}}]
        ports = {p["name"]: p["containerPort"] for p in container(dep)["ports"]}
        assert [p["port"] for p in rule["ports"]] == ["http"] and set(ports) == {"http"}


def test_ha_overlay_reaches_cloud_sql_through_the_proxy_with_workload_identity(pod_settings: Any) -> None:
    objs = build("ha")
    (sts,) = workloads(objs)
    pod = sts["spec"]["template"]["spec"]
    proxy = init_container(sts, "cloud-sql-proxy")
    # The proxy starts first; the report token's init container follows (it needs the API server, not the database).
    assert [c["name"] for c in pod["initContainers"]] == ["cloud-sql-proxy", "report-token"]
    # A native sidecar: started before the auditor and kept running beside it.
    assert proxy["name"] == "cloud-sql-proxy" and proxy["restartPolicy"] == "Always"
    assert "--auto-iam-authn" in proxy["args"] and proxy["securityContext"]["runAsNonRoot"] is True
    port = next(a.split("=", 1)[1] for a in proxy["args"] if a.startswith("--port="))
    s = pod_settings(objs, sts)
    assert s.state_url is not None and f"@127.0.0.1:{port}/" in s.state_url
    assert s.state_password_file is None and ":" not in s.state_url.split("://", 1)[1].split("@", 1)[0]  # IAM auth
    sa = named(objs, "ServiceAccount", pod["serviceAccountName"])
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


# -- the report token ------------------------------------------------------------------------------------------------
def _token_init(dep: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(the Secret's name, the file the init container writes, the volume it writes on)."""
    init = init_container(dep, "report-token")
    cmd = init["command"]
    assert cmd[:3] == ["auditor", "token", "ensure"] and "args" not in init
    secret, path = cmd[cmd.index("--secret") + 1], cmd[cmd.index("--write") + 1]
    mounts = [m for m in init["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mounts) == 1 and not mounts[0].get("readOnly"), f"{path} is on no writable volume of the init container"
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    return secret, path, vols[mounts[0]["name"]]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_report_token_is_made_into_a_secret_by_an_init_container_and_mounted(name: str) -> None:
    objs = build(name)
    secret_names = set()
    for dep in workloads(objs):
        secret, path, vol = _token_init(dep)
        secret_names.add(secret)
        # Same image as the auditor (the command is in it); the namespace from the pod's own metadata.
        init = init_container(dep, "report-token")
        assert init["image"] == container(dep)["image"]
        assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in init["env"]
        # The token lives in memory, and the auditor reads the very file, read-only, through report_token_file.
        assert vol["emptyDir"]["medium"] == "Memory"
        assert container_env(dep)[TOKEN_FILE_ENV] == path
        mount = mount_covering(dep, path)
        assert mount is not None and mount["name"] == vol["name"] and mount["readOnly"] is True
    # Shards and replicas share one token: one Secret, which the Role lets the pods read and nothing else.
    (secret,) = secret_names
    grants = [
        (rule["verbs"], rule.get("resourceNames"))
        for role in of_kind(objs, "Role")
        for rule in role["rules"]
        if rule["resources"] == ["secrets"] and rule["apiGroups"] == [""]
    ]
    assert sorted(grants, key=str) == sorted([(["get"], [secret]), (["create"], None)], key=str)
    role = next(r for r in of_kind(objs, "Role") if any(x["resources"] == ["secrets"] for x in r["rules"]))
    binding = [b for b in of_kind(objs, "RoleBinding") if b["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}]
    assert len(binding) == 1
    assert binding[0]["subjects"] == [{"kind": "ServiceAccount", "name": "drift-auditor", "namespace": NAMESPACE}]
    # The Secret is made by the pods, never shipped: a manifest holding a token would publish it.
    assert not [o for o in objs if o["kind"] == "Secret"]


@pytest.mark.parametrize("name", ["base", "ha"])
def test_the_pod_reads_the_token_its_init_container_made_and_refuses_to_start_without_it(
    name: str, pod_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64
    import types

    from click.testing import CliRunner
    from kubernetes import client as k8s

    from auditor.cli import cli
    from auditor.daemon import Daemon
    from auditor.errors import AuditorError
    from tests.fakes.kube import KubeServer

    objs = build(name)
    (dep,) = workloads(objs)
    secret, path, _ = _token_init(dep)
    # Without the file (the init container did not run, or failed), the auditor does not start at all.
    with pytest.raises(AuditorError, match="report_token_file"):
        pod_settings(objs, dep, token_dir=None)
    # The init container's own command, against a Kubernetes API: the volume is a folder here.
    server = KubeServer().start()
    try:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("POD_NAMESPACE", dep["metadata"]["namespace"])
        volume = tmp_path / "volume"
        cmd = init_container(dep, "report-token")["command"]
        args = [str(volume / Path(a).name) if a == path else a for a in cmd[1:]]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        stored = k8s.CoreV1Api(server.api_client()).read_namespaced_secret(secret, NAMESPACE)
        token = base64.b64decode(stored.data["token"]).decode()
    finally:
        server.stop()
        from auditor.logs import configure

        configure("console", "warning")  # the command logged to the stdout CliRunner captured
    s = pod_settings(objs, dep, token_dir=volume)
    assert s.report_token is not None and s.report_token.get_secret_value() == token
    # The daemon asks every caller, loopback included, for that token (tests/daemon/test_access.py serves it).
    daemon = types.SimpleNamespace(settings=s)
    for client_ip in ("10.8.0.12", "127.0.0.1"):
        assert Daemon.authorized(daemon, "", client_ip) is False  # type: ignore[arg-type]
        assert Daemon.authorized(daemon, "Bearer not-the-token", client_ip) is False  # type: ignore[arg-type]
        assert Daemon.authorized(daemon, f"Bearer {token}", client_ip) is True  # type: ignore[arg-type]


# -- the install guide against the manifests ------------------------------------------------------------------------
_KUBECTL_REF = re.compile(r"kubectl\b[^`\n]*?\b(?:rollout \w+|logs|exec|port-forward|get|describe|delete|scale)"
                          r"\s+(?:-\S+\s+)*(deploy|deployment|statefulset|sts|svc|service|secret)/([a-z0-9-]+)")
_REF_KINDS = {"deploy": "Deployment", "deployment": "Deployment", "statefulset": "StatefulSet", "sts": "StatefulSet",
              "svc": "Service", "service": "Service"}


def test_kubectl_commands_in_the_docs_name_objects_the_manifests_make() -> None:
    """`kubectl rollout status deploy/drift-auditor` against a StatefulSet is NotFound: the guide must follow the
    manifests."""
    made = {(o["kind"], o["metadata"]["name"]) for name in BUILDS for o in build(name)}
    docs = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "deploy").rglob("*.md"))]
    refs = 0
    for doc in docs:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for short, obj in _KUBECTL_REF.findall(line):
                refs += 1
                if short == "secret":  # made by the pod, not by the manifests
                    assert obj == "drift-auditor-report-token", f"{doc.name}:{n}: secret/{obj}"
                    continue
                assert (_REF_KINDS[short], obj) in made, f"{doc.relative_to(REPO)}:{n}: {short}/{obj} does not exist"
    assert refs >= 3


@pytest.mark.parametrize("name", sorted(set(BUILDS) - set(MONITORING)))
def test_each_alert_links_the_report_of_the_service_it_was_scraped_through(name: str) -> None:
    """The Prometheus Operator labels each series with the `service` and `namespace` it was scraped through; the
    alerts' report_url renders from them (a shard's alert links that shard's Service), with the base's names as the
    fallback when they are absent (Managed Prometheus, absent())."""
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yaml").read_text(encoding="utf-8"))
    urls = {r["annotations"]["report_url"] for g in alerts["groups"] for r in g["rules"]}
    (template,) = urls
    objs = build(name)
    for svc in of_kind(objs, "Service"):
        port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
        rendered = (template.replace('{{ or $labels.service "drift-auditor" }}', svc["metadata"]["name"])
                    .replace('{{ or $labels.namespace "drift-auditor" }}', svc["metadata"]["namespace"]))
        assert rendered == f"http://{svc['metadata']['name']}.{NAMESPACE}.svc:{port}/report", template
    for sm in of_kind(objs, "ServiceMonitor"):
        for ep in sm["spec"]["endpoints"]:
            dropped = {r.get("targetLabel") for r in ep.get("relabelings", []) + ep.get("metricRelabelings", [])}
            assert not {"service", "namespace"} & dropped
            assert all(r.get("action") not in ("labeldrop", "labelkeep") for r in ep.get("relabelings", []))
    # The fallback is the base's own Service.
    base = named(build("base"), "Service", "drift-auditor")
    assert '"drift-auditor" }}.{{ or' in template and base["metadata"]["namespace"] == "drift-auditor"


def test_the_commented_notifications_example_loads_and_queues_on_the_state_volume(tmp_path: Path,
                                                                                  pod_settings: Any) -> None:
    objs = build("base")
    dep = named(objs, "StatefulSet", "drift-auditor")
    _, text = config_text(objs, dep)
    lines = text.splitlines()
    start = lines.index("# notifications:")
    block = [lines[start][2:]] + [ln[2:] for ln in lines[start + 1 :] if ln.startswith("#   ")]
    uncommented = "\n".join([*lines[:start], *block, *lines[start + len(block) :]]) + "\n"
    cm = dict(named(objs, "ConfigMap", volume_for_mount(dep, "/etc/drift-auditor")["configMap"]["name"]))
    cm["data"] = {**cm["data"], "config.yaml": uncommented}
    s = pod_settings(tuple(o if o["kind"] != "ConfigMap" or o["metadata"]["name"] != cm["metadata"]["name"] else cm
                           for o in objs), dep)
    assert s.notifications.enabled and len(block) > 3
    mount = mount_covering(dep, str(s.notifications.queue_dir))
    assert mount is not None and mount["name"] == "state"
