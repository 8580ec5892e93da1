"""`auditor token ensure` against kmock through the real `kubernetes` client: a Secret that is absent is created with
a random token, one that exists is reused and never changed, and two replicas racing to create it end with one
token (the loser's 409 is resolved by reading the winner's)."""

from __future__ import annotations

import base64
import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import pytest
from click.testing import CliRunner
from kubernetes import client as k8s

from auditor.cli import cli
from auditor.cli.token import MIN_LENGTH, ensure_secret
from tests.fakes.kube import KubeApi, KubeServer, kube_api, kubeconfig  # noqa: F401 - fixtures

NS, NAME = "drift-auditor", "drift-auditor-report-token"
SECRETS = "v1/secrets"


class Secrets(KubeApi):
    """kmock with a hook before each Secret request: counts them, and can play another replica or a Role."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.seen: list[str] = []  # "GET name", "POST", ...
        self.before_create: dict[str, Any] | None = None  # stored just before the first create is handled
        self.forbid: set[str] = set()  # methods answered 403

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is not None and res.plural == "secrets":
            method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
            self.seen.append(f"{method} {request.name or ''}".strip())
            if method in self.forbid:
                return aiohttp.web.json_response(
                    {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403, "reason": "Forbidden",
                     "message": f'secrets "{request.name}" is forbidden'}, status=403)
            if request.action == kmock.action.CREATE and self.before_create is not None:
                other, self.before_create = self.before_create, None
                self.objects[SECRETS, other["metadata"]["namespace"], other["metadata"]["name"]] = other
        return await super()._handle(request)


@pytest.fixture(autouse=True)
def _logging_back() -> Iterator[None]:
    """The command sets up logging on the stdout CliRunner captured: set it back for the tests that follow."""
    yield
    from auditor.logs import configure

    configure("console", "warning")


@pytest.fixture
def secrets_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[KubeServer]:
    server = KubeServer(emulator=Secrets).start()
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield server
    finally:
        server.stop()


def _secret(token: str | None, **data: str) -> dict[str, Any]:
    body = {"token": token} if token is not None else {}
    body.update(data)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": NAME, "namespace": NS, "resourceVersion": "7"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in body.items()}}


def _stored(server: KubeServer) -> dict[str, Any] | None:
    core = k8s.CoreV1Api(server.api_client())
    try:
        return server.api_client().sanitize_for_serialization(core.read_namespaced_secret(NAME, NS))  # type: ignore[no-any-return]
    except k8s.exceptions.ApiException as exc:
        assert exc.status == 404
        return None


def _ensure(out: Path, *extra: str) -> Any:
    return CliRunner().invoke(cli, ["token", "ensure", "--secret", NAME, "--namespace", NS, "--write", str(out),
                                    *extra])


def _event(result: Any) -> dict[str, Any]:
    """The command's one `report_token` event; every line on stdout is JSON, as Cloud Logging reads it (the fake
    API server's access log shares this process's logging here)."""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    (event,) = [e for e in lines if e.get("message") == "report_token"]
    return event  # type: ignore[no-any-return]


def _token_of(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"]["token"]).decode()


def test_an_absent_secret_is_created_with_a_random_token_written_to_the_file(secrets_api: KubeServer,
                                                                             tmp_path: Path) -> None:
    out = tmp_path / "run" / "report-token"
    result = _ensure(out)
    assert result.exit_code == 0, result.output
    token = out.read_text(encoding="utf-8").strip()
    assert len(token) >= 40 and token not in result.output  # 32 random bytes; never printed
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    event = _event(result)
    assert event["severity"] == "INFO" and str(event["time"]).endswith("Z")
    assert {k: event[k] for k in ("resource", "file", "action")} == {
        "resource": f"namespaces/{NS}/secrets/{NAME}", "file": str(out), "action": "created"}
    secret = _stored(secrets_api)
    assert secret is not None and _token_of(secret) == token
    assert secret["immutable"] is True and secret["type"] == "Opaque"
    assert secret["metadata"]["labels"]["app.kubernetes.io/name"] == "drift-auditor"
    # Two pods never make the same token.
    other = tmp_path / "other"
    secrets_api.call(lambda: secrets_api.handler.objects.clear())
    assert _ensure(other).exit_code == 0 and other.read_text().strip() != token


def test_a_secret_that_exists_is_reused_and_never_written(secrets_api: KubeServer, tmp_path: Path) -> None:
    mine = "operator-chosen-token-0123456789"
    secrets_api.call(lambda: secrets_api.handler.objects.__setitem__((SECRETS, NS, NAME), _secret(mine)))
    for i in range(2):  # a restart reads the same token again
        out = tmp_path / f"token-{i}"
        result = _ensure(out)
        assert result.exit_code == 0, result.output
        assert out.read_text(encoding="utf-8") == mine + "\n" and _event(result)["action"] == "reused"
    assert secrets_api.handler.seen == [f"GET {NAME}", f"GET {NAME}"]  # read, nothing else
    assert _stored(secrets_api) == {**_secret(mine), "kind": "Secret", "apiVersion": "v1"}


def test_the_token_made_by_the_first_pod_is_the_one_the_next_pod_reads(secrets_api: KubeServer,
                                                                        tmp_path: Path) -> None:
    assert _ensure(tmp_path / "a").exit_code == 0
    assert _ensure(tmp_path / "b").exit_code == 0
    assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text()
    assert [s.split()[0] for s in secrets_api.handler.seen] == ["GET", "POST", "GET"]


@pytest.mark.parametrize(("secret", "why"), [
    (_secret(None, other="x" * 40), "has no key 'token'"),
    (_secret("short"), f"at least {MIN_LENGTH} printable"),
    (_secret("has a space in the middle of it"), "no spaces"),
    ({**_secret(None), "data": {"token": "%%% not base64"}}, "not base64"),
    # Made under this name by someone with `create` on secrets: the token controller would fill in a credential.
    ({**_secret("eyJhbGciOiJSUzI1NiJ9.a-service-account-jwt"), "type": "kubernetes.io/service-account-token",
      "metadata": {"name": NAME, "namespace": NS, "annotations": {"kubernetes.io/service-account.name": "default"}}},
     "not Opaque"),
])
def test_a_secret_that_is_not_a_usable_token_is_refused_and_left_alone(secrets_api: KubeServer, tmp_path: Path,
                                                                        secret: dict[str, Any], why: str) -> None:
    secrets_api.call(lambda: secrets_api.handler.objects.__setitem__((SECRETS, NS, NAME), secret))
    out = tmp_path / "token"
    result = _ensure(out)
    assert result.exit_code == 2 and why in result.output and f"secret {NS}/{NAME}" in result.output
    assert not out.exists()  # the daemon will refuse to start (report_token_file missing), not serve openly
    assert secrets_api.handler.seen == [f"GET {NAME}"]
    stored = _stored(secrets_api)
    assert stored is not None and stored["data"] == secret["data"]


def test_a_create_that_loses_the_race_reads_the_winners_token(secrets_api: KubeServer, tmp_path: Path) -> None:
    # Another replica creates the Secret between this one's read (404) and its create (409 AlreadyExists).
    winner = "token-of-the-other-replica-42-abcdef"
    secrets_api.call(lambda: setattr(secrets_api.handler, "before_create", _secret(winner)))
    out = tmp_path / "token"
    result = _ensure(out)
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").strip() == winner and _event(result)["action"] == "reused"
    assert secrets_api.handler.seen == [f"GET {NAME}", "POST", f"GET {NAME}"]
    stored = _stored(secrets_api)
    assert stored is not None and _token_of(stored) == winner


def test_replicas_starting_together_share_one_token(secrets_api: KubeServer) -> None:
    results: list[tuple[str, bool]] = []
    start = threading.Barrier(6)
    lock = threading.Lock()

    def replica() -> None:
        api = secrets_api.api_client()
        start.wait()
        got = ensure_secret(api, NS, NAME)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=replica) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 6
    assert len({token for token, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    stored = _stored(secrets_api)
    assert stored is not None and _token_of(stored) == results[0][0]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_missing_permission_is_named(secrets_api: KubeServer, tmp_path: Path, method: str) -> None:
    secrets_api.call(lambda: secrets_api.handler.forbid.add(method))
    out = tmp_path / "token"
    result = _ensure(out)
    assert result.exit_code == 2 and "HTTP 403" in result.output and "role-report-token.yaml" in result.output
    assert not out.exists()


def test_without_a_namespace_outside_a_pod_it_says_so(secrets_api: KubeServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr("auditor.cli.token._NAMESPACE_FILE", tmp_path / "no-such-file")
    result = CliRunner().invoke(cli, ["token", "ensure", "--secret", NAME, "--write", str(tmp_path / "t")])
    assert result.exit_code == 2 and "no namespace" in result.output
    monkeypatch.setenv("POD_NAMESPACE", NS)  # as the StatefulSet sets it from metadata.namespace
    result = CliRunner().invoke(cli, ["token", "ensure", "--secret", NAME, "--write", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert _stored(secrets_api) is not None
