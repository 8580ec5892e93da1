"""`auditor token ensure`: the report token (/report, /findings.json) kept in a Kubernetes Secret, made once.

Kustomize cannot make a random value, so the pod makes it: this command runs as the StatefulSet's init container.
It reads the Secret; when it is absent it creates it with a new random token; either way it writes the token to a
file on an in-memory volume that the daemon reads through `report_token_file`. A Secret that exists is never
overwritten (an operator's own token, or the one the first replica made, is what every replica uses); when two
replicas create it at the same moment the API server lets one win (409 AlreadyExists for the other), and the loser
reads the winner's. The Secret is immutable: rotating the token is deleting it and restarting the pods.

This is a bootstrap step in the pod, before the daemon starts: the one command that writes to the Kubernetes API
besides the remediations. It needs `get` on that one Secret and `create` on Secrets in its namespace
(deploy/kubernetes/cluster/role-report-token.yaml), nothing else. The token is never printed nor logged.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import click

from auditor.errors import AuditorError

KEY = "token"
MIN_LENGTH = 16  # an operator's own token shorter than this is refused: it would guard a list of the org's weak spots
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_ATTEMPTS = 3  # 404 -> create -> 409 -> read -> 404 again means it was deleted in between: start over, a few times


def new_token() -> str:
    """32 random bytes, URL-safe (it travels in an Authorization header and in a Basic password)."""
    return secrets.token_urlsafe(32)


def _decode(secret: Any, where: str, key: str) -> str:
    # Only a plain Secret holds a token someone chose: one of type kubernetes.io/service-account-token under this
    # name would hand the auditor a Kubernetes credential (filled in by the token controller) as its report token.
    if (secret.type or "Opaque") != "Opaque":
        raise AuditorError(f"secret {where} is of type {secret.type}, not Opaque: it is left as it is (delete it to "
                           "let a new token be made)")
    data = secret.data or {}
    if key not in data:
        raise AuditorError(f"secret {where} exists but has no key {key!r}: it is left as it is (delete it to let a "
                           f"new token be made, or add the key: kubectl create secret generic ... "
                           f"--from-literal={key}=...)")
    try:
        value = base64.b64decode(data[key], validate=True).decode("utf-8").strip()
    except (binascii.Error, ValueError) as exc:
        raise AuditorError(f"secret {where}: key {key!r} is not base64-encoded UTF-8 text ({exc})") from None
    if len(value) < MIN_LENGTH or any(c.isspace() or not c.isprintable() for c in value):
        raise AuditorError(f"secret {where}: the token in key {key!r} must be at least {MIN_LENGTH} printable "
                           "characters with no spaces (delete the Secret to let a random one be made)")
    return value


def _api_error(exc: Any, what: str, where: str) -> AuditorError:
    status = getattr(exc, "status", None)
    hint = ""
    if status in (401, 403):
        hint = (": the service account needs `get` on this Secret (resourceNames) and `create` on secrets in "
                "the namespace (deploy/kubernetes/cluster/role-report-token.yaml)")
    return AuditorError(f"cannot {what} secret {where}: HTTP {status} {getattr(exc, 'reason', '')}".rstrip() + hint)


def ensure_secret(api_client: Any, namespace: str, name: str, key: str = KEY,
                  labels: dict[str, str] | None = None) -> tuple[str, bool]:
    """The token in Secret `namespace/name`, creating the Secret when it is absent: (token, created).

    Read first; create only on 404; on 409 (another replica created it meanwhile) read the one that won."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from auditor.collect.retry import RetryPolicy

    core = client.CoreV1Api(api_client)
    retry = RetryPolicy(attempts=4, initial=0.5, maximum=5.0)
    where = f"{namespace}/{name}"
    for _ in range(_ATTEMPTS):
        try:
            return _decode(retry.call(lambda: core.read_namespaced_secret(name, namespace)), where, key), False
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(exc, "read", where) from None
        token = new_token()
        body = client.V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=namespace,
                labels=labels or {"app.kubernetes.io/name": "drift-auditor"},
                annotations={"drift-auditor/purpose": "report token for /report and /findings.json; delete the "
                             "Secret and restart the pods to rotate it"},
            ),
            type="Opaque",
            immutable=True,
            data={key: base64.b64encode(token.encode()).decode()},
        )
        try:
            retry.call(lambda body=body: core.create_namespaced_secret(namespace, body))  # type: ignore[misc]
            return token, True
        except ApiException as exc:
            if exc.status != 409:
                raise _api_error(exc, "create", where) from None
            # Another replica created it between our read and our create: read the one that won (next round).
    raise AuditorError(f"secret {where} kept appearing and disappearing ({_ATTEMPTS} tries): is something deleting it?")


def write_private(path: Path, text: str) -> None:
    """Write `text` so that no reader ever sees half of it, readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _api_client(context: str | None, kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            # Read at each call: the library's own default was fixed when it was imported.
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            config.load_kube_config(config_file=os.path.expanduser(where), context=context,
                                    client_configuration=cfg)
    except (config.ConfigException, OSError) as exc:
        raise AuditorError(f"cannot reach the Kubernetes API: {exc}") from None
    cfg.retries = False  # one retry policy: ours
    return client.ApiClient(configuration=cfg)


def _namespace(given: str | None) -> str:
    if given:
        return given
    with contextlib.suppress(OSError):
        ns = _NAMESPACE_FILE.read_text(encoding="utf-8").strip()
        if ns:
            return ns
    raise AuditorError("no namespace: give --namespace (or POD_NAMESPACE); outside a pod there is no default")


@click.group("token")
def token() -> None:
    """The report token (/report and /findings.json) in a Kubernetes Secret."""


@token.command("ensure")
@click.option("--secret", "secret", required=True, help="The Secret holding the token (created when absent).")
@click.option("--namespace", envvar="POD_NAMESPACE", help="Its namespace (default: the pod's own).")
@click.option("--key", default=KEY, show_default=True, help="The Secret's key holding the token.")
@click.option("--write", "write", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the token here (mode 0600): the daemon's report_token_file.")
@click.option("--context", default=None, help="kubeconfig context (default: in-cluster in a pod, else the current).")
@click.option("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).")
def ensure(secret: str, namespace: str | None, key: str, write: Path, context: str | None,
           kubeconfig: str | None) -> None:
    """Read the report token from a Secret, creating the Secret with a random token when it is absent, and write
    the token to a file. An existing Secret is never changed. Exit 0 when the file is written, 2 otherwise."""
    import sys

    from auditor.logs import configure, get_logger

    # As the daemon logs: JSON lines on stdout in a pod (Cloud Logging reads `severity`; a plain line on stderr
    # would show as an error), readable text on a terminal. Errors still end as one `error:` line on stderr.
    configure("auto", "info", stream=sys.stdout)
    ns = _namespace(namespace)
    value, created = ensure_secret(_api_client(context, kubeconfig), ns, secret, key)
    try:
        write_private(write, value)
    except OSError as exc:
        raise AuditorError(f"cannot write the token to {write}: {exc.strerror or exc}") from None
    # Keys naming a secret or a token are masked by the log processor: this one names where it is, not what.
    get_logger("auditor.token").info("report_token", resource=f"namespaces/{ns}/secrets/{secret}", file=str(write),
                                     action="created" if created else "reused")


command = token
