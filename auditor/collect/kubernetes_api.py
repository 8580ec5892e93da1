"""Stage 1, collect: the Kubernetes API as a source (`k8s://CONTEXT` from kubeconfig, `k8s://in-cluster`).

Reads Namespaces, Roles, RoleBindings, ClusterRoles, ClusterRoleBindings, NetworkPolicies and ResourceQuotas (only
the kinds whose asset types the loaded rules need), page by page (`limit`/`continue`, 500 a page by default), and
turns each object into the asset CAI gives for it (auditor/collect/k8s_objects.py), named after the cluster, so a
live scan and a scan of `kubectl get -o yaml` files give the same assets.

Objects are taken from the API's JSON as it is sent (the client's `_preload_content=False`), with `kind` and
`apiVersion` set on each item: exactly what `kubectl get -o json` prints. Going through the client's models and
`sanitize_for_serialization` would give the same shape for the fields the models know, but drops fields newer than
the client and rewrites timestamps.

The cluster the assets are named after, first found of:
`k8s://CONTEXT?cluster=projects/P/locations/L/clusters/C`; `--cluster` (SourceOptions.cluster) when not `local`;
a GKE context name `gke_P_L_C` (what `gcloud container clusters get-credentials` writes), read as
`projects/P/locations/L/clusters/C`; in a pod (`k8s://in-cluster`) on GKE, the metadata server's project,
cluster-location and cluster-name; else the context name itself.

Options (query string): `cluster`, `page_size` (1-5000), `kubeconfig` (a path; default $KUBECONFIG or
~/.kube/config), `timeout` (seconds a page may take, default 120). Transient errors (429 honouring Retry-After,
5xx, connection resets, timeouts) are retried per page with the shared policy (auditor/collect/retry.py); the
client's own urllib3 retries are turned off so there is one policy. A page that keeps failing, a 403 (naming the
verb and resource the auditor's RBAC lacks) or a continue token that expires twice marks that kind incomplete in
the source status; the other kinds are still read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from auditor.collect import SourceOptions, register_scheme, skip_record
from auditor.collect.k8s_objects import KINDS as ASSET_KINDS
from auditor.collect.k8s_objects import object_asset
from auditor.collect.retry import RetryPolicy, status_of
from auditor.errors import SourceError
from auditor.evaluate.globs import any_match
from auditor.model import Asset, SourceStatus
from auditor.permissions import declare

SCHEME = "k8s"
IN_CLUSTER = "in-cluster"
DEFAULT_PAGE_SIZE = 500
DEFAULT_TIMEOUT = 120.0  # seconds a page may take before it is retried

log = logging.getLogger(__name__)  # the daemon routes it through structlog; the CLI prints warnings on stderr


@dataclass(frozen=True)
class Kind:
    """One kind the source reads: the client API class and cluster-wide list method that serve it."""

    kind: str
    api_version: str
    api_class: str
    method: str
    resource: str  # `plural.group`, as RBAC names it in a 403

    @property
    def asset_type(self) -> str:
        return ASSET_KINDS[self.kind][0]

    @property
    def gke_permission(self) -> str:
        """The GKE IAM permission that lets a Google identity list this kind, e.g. `container.roleBindings.list`."""
        return f"container.{self.kind[0].lower()}{self.kind[1:]}s.list".replace("Policys", "Policies")


KINDS: tuple[Kind, ...] = (
    Kind("Namespace", "v1", "CoreV1Api", "list_namespace", "namespaces"),
    Kind("ClusterRole", "rbac.authorization.k8s.io/v1", "RbacAuthorizationV1Api", "list_cluster_role",
         "clusterroles.rbac.authorization.k8s.io"),
    Kind("ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "RbacAuthorizationV1Api", "list_cluster_role_binding",
         "clusterrolebindings.rbac.authorization.k8s.io"),
    Kind("Role", "rbac.authorization.k8s.io/v1", "RbacAuthorizationV1Api", "list_role_for_all_namespaces",
         "roles.rbac.authorization.k8s.io"),
    Kind("RoleBinding", "rbac.authorization.k8s.io/v1", "RbacAuthorizationV1Api",
         "list_role_binding_for_all_namespaces", "rolebindings.rbac.authorization.k8s.io"),
    Kind("NetworkPolicy", "networking.k8s.io/v1", "NetworkingV1Api", "list_network_policy_for_all_namespaces",
         "networkpolicies.networking.k8s.io"),
    Kind("ResourceQuota", "v1", "CoreV1Api", "list_resource_quota_for_all_namespaces", "resourcequotas"),
)  # fmt: skip


declare(
    "collect.kubernetes_api",
    ["container.clusters.get", *(k.gke_permission for k in KINDS)],
    why="read RBAC, namespaces, network policies and quotas from GKE clusters (k8s:// sources); outside GKE the "
    "same reads need a ClusterRole with list on these resources",
)


def kinds_for(globs: frozenset[str] | None) -> list[Kind]:
    """The kinds whose asset types match the rules' asset type globs (all of them when there are no globs)."""
    if globs is None:
        return list(KINDS)
    return [k for k in KINDS if any_match(globs, k.asset_type)]


def item_asset(obj: dict[str, Any], kind: Kind, cluster: str, origin: str) -> Asset | None:
    """The asset for one object of `kind` as the API sent it (a list item or a watch event's object): `kind` and
    `apiVersion` set, as `kubectl get -o json` prints them. The one conversion of the list and the watch."""
    obj["kind"] = kind.kind
    obj["apiVersion"] = kind.api_version
    return object_asset(obj, cluster, origin=origin)


def cluster_from_context(context: str) -> str:
    """`projects/P/locations/L/clusters/C` for a GKE context `gke_P_L_C`, else the context name."""
    parts = context.split("_")
    if len(parts) >= 4 and parts[0] == "gke":
        return f"projects/{parts[1]}/locations/{parts[2]}/clusters/{'_'.join(parts[3:])}"
    return context


def gke_cluster_from_metadata(timeout: float = 2.0) -> str | None:
    """`projects/P/locations/L/clusters/C` of the GKE cluster this pod runs in, from the metadata server
    (`GCE_METADATA_HOST` overrides its address, as for google-auth), or None off GKE."""
    import requests

    host = os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_IP") or "metadata.google.internal"
    base = f"http://{host}/computeMetadata/v1"
    values: list[str] = []
    try:
        for path in ("project/project-id", "instance/attributes/cluster-location", "instance/attributes/cluster-name"):
            resp = requests.get(f"{base}/{path}", headers={"Metadata-Flavor": "Google"}, timeout=timeout)
            if resp.status_code != 200 or not resp.text.strip():
                return None
            values.append(resp.text.strip())
    except requests.RequestException:
        return None
    project, location, name = values
    return f"projects/{project}/locations/{location}/clusters/{name}"


def describe_error(exc: BaseException, kind: Kind, where: str) -> str:
    status = status_of(exc)
    reason = getattr(exc, "reason", None)
    body = getattr(exc, "body", None)
    message = ""
    if isinstance(body, str | bytes) and body:
        try:
            message = str(json.loads(body).get("message") or "")
        except (ValueError, AttributeError):
            message = body.decode(errors="replace") if isinstance(body, bytes) else body
    message = message or str(reason or exc)
    if status == 401:
        return (
            f"401 listing {kind.kind} objects from {where}: the credentials were refused (an expired token, or a "
            f"kubeconfig for another cluster); the API said: {message}"
        )
    if status == 403:
        return (
            f"{status} listing {kind.kind} objects from {where}: the auditor's account lacks `list` on "
            f"{kind.resource} (cluster-wide; on GKE also the IAM permission {kind.gke_permission}); "
            f"the API said: {message}"
        )
    if status == 410:
        return f"listing {kind.kind} objects from {where}: the continue token expired twice (410 Gone): {message}"
    if status:
        return f"{status} listing {kind.kind} objects from {where}: {message}"
    return f"{type(exc).__name__} listing {kind.kind} objects from {where}: {exc}"


class KubernetesApiSource:
    """`k8s://CONTEXT[?cluster=...&page_size=...&kubeconfig=...]` or `k8s://in-cluster`."""

    def __init__(self, uri: str, options: SourceOptions) -> None:
        self.uri = uri
        self.options = options
        self.status = SourceStatus(source=uri)
        parsed = urllib.parse.urlsplit(uri)
        self.context = urllib.parse.unquote(parsed.netloc + parsed.path).strip("/")
        if not self.context:
            raise SourceError(f"source {uri}: expected k8s://CONTEXT (a kubeconfig context) or k8s://in-cluster")
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        known = {"cluster", "page_size", "kubeconfig", "timeout"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise SourceError(
                f"source {uri}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        try:
            self.page_size = int(str(query.get("page_size") or options.extra.get("k8s_page_size") or DEFAULT_PAGE_SIZE))
        except (TypeError, ValueError) as exc:
            raise SourceError(f"source {uri}: page_size must be a number ({exc})") from exc
        if not 1 <= self.page_size <= 5000:
            raise SourceError(f"source {uri}: page_size must be between 1 and 5000")
        self.kubeconfig = query.get("kubeconfig") or os.environ.get("KUBECONFIG") or None
        try:
            self.timeout = float(str(query.get("timeout") or options.extra.get("k8s_timeout") or DEFAULT_TIMEOUT))
        except ValueError as exc:
            raise SourceError(f"source {uri}: timeout must be a number of seconds ({exc})") from exc
        if query.get("cluster"):
            self.cluster = query["cluster"]
        elif options.cluster and options.cluster != "local":
            self.cluster = options.cluster
        else:
            self.cluster = cluster_from_context(self.context)
        # In a pod with no cluster given, the GKE metadata server names the cluster when the reading starts.
        self._detect_cluster = self.context == IN_CLUSTER and self.cluster == IN_CLUSTER
        self.kinds = kinds_for(options.asset_types)
        self.retry = RetryPolicy.from_settings(options.extra)
        self._api_client: Any = None

    def select(self, wanted: Callable[[str, bool], bool], skipped: Counter[str]) -> None:
        """Called by the scan with `Engine.wants` before reading: list only the kinds some rule reads."""
        self.kinds = [k for k in self.kinds if wanted(k.asset_type, False)]

    # -- connection -------------------------------------------------------------------------------------------------
    def api_client(self) -> Any:
        """A kubernetes ApiClient for the context, with urllib3's own retries off (one retry policy: ours)."""
        if self._api_client is not None:
            return self._api_client
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            if self.context == IN_CLUSTER:
                config.load_incluster_config(client_configuration=cfg)
            else:
                config_file = os.path.expanduser(self.kubeconfig or "~/.kube/config")
                config.load_kube_config(config_file=config_file, context=self.context, client_configuration=cfg)
        except config.ConfigException as exc:
            raise SourceError(f"source {self.uri}: {self._config_problem(exc)}") from exc
        except OSError as exc:
            raise SourceError(f"source {self.uri}: cannot read the kubeconfig ({exc})") from exc
        cfg.retries = False
        self._api_client = client.ApiClient(configuration=cfg)
        return self._api_client

    def _config_problem(self, exc: Exception) -> str:
        if self.context == IN_CLUSTER:
            return f"not running in a Kubernetes pod, or its service account token is missing ({exc})"
        where = self.kubeconfig or "~/.kube/config"
        try:
            from kubernetes import config

            contexts, _ = config.list_kube_config_contexts(config_file=os.path.expanduser(where))
            names = ", ".join(sorted(c["name"] for c in contexts)) or "none"
        except Exception:  # the kubeconfig itself is unreadable: say so
            return f"cannot load kubeconfig {where} ({exc})"
        return f"no context {self.context!r} in kubeconfig {where} (contexts: {names})"

    # -- reading ----------------------------------------------------------------------------------------------------
    def resolve_cluster(self) -> str:
        """The cluster the assets are named after; in a GKE pod without one given, asked of the metadata server."""
        if self._detect_cluster:
            self._detect_cluster = False
            found = gke_cluster_from_metadata()
            if found is not None:
                self.cluster = found
            else:
                log.warning(
                    "%s: not on GKE (no metadata server) and no cluster given: assets are named after cluster %r; "
                    "set --cluster or ?cluster=projects/P/locations/L/clusters/C",
                    self.uri,
                    self.cluster,
                )
        return self.cluster

    @property
    def requests(self) -> int:
        """API requests made so far (also in the status, for reports)."""
        return self.status.requests

    def assets(self) -> Iterator[Asset]:
        if not self.kinds:
            return
        api_client = self.api_client()  # first: outside a pod this fails before the metadata server is asked
        self.resolve_cluster()
        from kubernetes import client

        for kind in self.kinds:
            api = getattr(client, kind.api_class)(api_client)
            yield from self._read_kind(kind, getattr(api, kind.method))
        with contextlib.suppress(Exception):  # closing a pool must not fail a scan that has read everything
            api_client.close()
        self._api_client = None
        if self.status.skipped:
            self.status.fail("*", f"{self.status.skipped} malformed object(s) skipped; first: {self.status.errors[0]}")

    def _read_kind(self, kind: Kind, list_fn: Callable[..., Any]) -> Iterator[Asset]:
        seen: set[str] = set()
        restarts = 0
        token: str | None = None
        page_no = 0
        while True:
            try:
                doc = self._page(list_fn, token)
            except Exception as exc:
                if status_of(exc) == 410 and restarts == 0:
                    # The continue token expired (the server compacted past it): list again from the start,
                    # skipping what was already read.
                    restarts += 1
                    token, page_no = None, 0
                    continue
                reason = describe_error(exc, kind, self._where())
                log.warning("%s: %s not read completely: %s", self.uri, kind.kind, reason)
                self.status.fail(kind.asset_type, reason)
                return
            page_no += 1
            origin = f"{self.uri} {kind.kind} page {page_no}"
            for obj in doc.get("items") or ():
                if not isinstance(obj, dict):
                    continue
                try:
                    asset = item_asset(obj, kind, self.cluster, origin)
                except ValueError as exc:
                    self._problem(origin, str(exc))
                    continue
                if asset is None or asset.name in seen:
                    continue
                seen.add(asset.name)
                self.status.assets += 1
                yield asset
            token = (doc.get("metadata") or {}).get("continue") or None
            if not token:
                return

    def _page(self, list_fn: Callable[..., Any], token: str | None) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            self.status.requests += 1
            kwargs: dict[str, Any] = {
                "limit": self.page_size,
                "_preload_content": False,
                "_request_timeout": (min(10.0, self.timeout), self.timeout),
            }
            if token:
                kwargs["_continue"] = token
            resp = list_fn(**kwargs)
            try:
                doc = json.loads(resp.data)
            finally:
                resp.release_conn()
            if not isinstance(doc, dict):
                raise ValueError("the API answered a list with something that is not a JSON object")
            return doc

        def log_retry(attempt: int, exc: BaseException, wait: float) -> None:
            log.warning(
                "%s: listing failed (%s), attempt %d of %d; retrying in %.1f s",
                self.uri, status_of(exc) or type(exc).__name__, attempt, self.retry.attempts, wait,
            )

        return self.retry.call(call, on_retry=log_retry)

    def _where(self) -> str:
        return "the in-cluster API server" if self.context == IN_CLUSTER else f"context {self.context}"

    def _problem(self, where: str, reason: str) -> None:
        skip_record(self.status, self.options, where, reason)


def open_kubernetes_api(uri: str, options: SourceOptions) -> KubernetesApiSource:
    return KubernetesApiSource(uri, options)


register_scheme(SCHEME, open_kubernetes_api)
