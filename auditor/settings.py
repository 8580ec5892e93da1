"""The daemon's one validated configuration: a YAML file plus AUDITOR_* environment overrides.

Read once at start by `auditor serve` (and by `auditor history/findings` to find the state file); every stage of
a cycle (collect -> evaluate -> record -> metrics/report -> plan) takes its settings from here.

Precedence: environment > file > defaults. Every key can be set from the environment: `AUDITOR_LISTEN`,
`AUDITOR_STATE_PATH`, nested keys with `__` (`AUDITOR_SCHEDULE__INTERVAL_SECONDS=300`), lists as JSON
(`AUDITOR_SOURCES='["cai://organizations/123"]'`). Relative paths in the file are relative to the file's folder,
so a configuration works from any working directory; relative paths from the environment are relative to the
working directory, as a shell user expects.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from auditor.collect import SourceOptions
from auditor.errors import AuditorError
from auditor.evaluate.principals import member_pattern_problem
from auditor.sinks.config import Notifications, Scc
from auditor.vocabulary import DEFAULT_MAX_MEMBER_SHARE, DEFAULT_PROTECTED_ROLES

ENV_PREFIX = "AUDITOR_"


class ConfigError(AuditorError):
    """A configuration that cannot be used: the message names the file, line or variable, the key and the reason."""


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_seconds: int = Field(900, ge=1, description="Seconds between cycles (when no cron is given).")
    cron: str | None = Field(None, description="A five-field crontab expression; wins over interval_seconds.")
    timezone: str = Field("UTC", description="Time zone of the cron expression.")
    jitter_seconds: int = Field(30, ge=0, description="Random delay added to each run, so replicas do not align.")
    cycle_timeout_seconds: int = Field(
        3600, ge=30, description="A cycle running longer than this makes /healthz fail (the process is stuck)."
    )
    shutdown_grace_seconds: float = Field(
        20, ge=0, description="On SIGTERM, how long to let a running cycle finish before abandoning it."
    )
    finish_deadline_seconds: int | None = Field(
        None, ge=1,
        description="/healthz fails when no cycle has finished (any outcome) for this long, counted from the start "
        "or the last finished cycle: the scheduler stopped scheduling. Default: twice the time between two runs "
        "plus cycle_timeout_seconds.",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"not a valid crontab expression ({exc})") from None
        return v.strip()

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _jitter(self) -> Schedule:
        if self.cron is None and self.jitter_seconds >= self.interval_seconds:
            raise ValueError("jitter_seconds must be smaller than interval_seconds")
        return self


class HighAvailability(BaseModel):
    """Replicas sharing a PostgreSQL state database: one records cycles (the holder of an advisory lock)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Elect a leader on a PostgreSQL state (SQLite has one writer anyway).")
    lease_seconds: float = Field(
        15.0, gt=0, le=3600, description="How often a follower tries to take over: the longest a takeover waits."
    )


class Staleness(BaseModel):
    """When the data counts as stale: shown on /report and /findings.json; alert thresholds live in deploy/."""

    model_config = ConfigDict(extra="forbid")

    snapshot_max_age_seconds: int = Field(3600, ge=1, description="Data older than this is stale.")
    success_max_age_seconds: int = Field(7200, ge=1, description="No successful cycle for this long is an outage.")


class Http(BaseModel):
    """The HTTP server's limits (see auditor/http_server.py)."""

    model_config = ConfigDict(extra="forbid")

    backlog: int = Field(1024, ge=16, le=65535, description="Connections the kernel queues before they are accepted.")
    max_connections: int = Field(1000, ge=16, description="Open connections (and requests) at once; more get 503.")
    workers: int = Field(4, ge=1, le=64, description="Threads answering /metrics, /report and /findings.json.")
    keep_alive_seconds: float = Field(15, gt=0, le=3600, description="An idle kept-alive connection is closed then.")
    header_timeout_seconds: float = Field(
        10, gt=0, le=300, description="A request's headers must be complete this long after its first byte."
    )


class SourceShrink(BaseModel):
    """A source that suddenly reads far fewer assets (a half-written export, an API that lost a permission) is
    treated as partial for that cycle, so that the findings it no longer shows are not resolved."""

    model_config = ConfigDict(extra="forbid")

    max_drop_fraction: float = Field(
        0.5, ge=0, le=1,
        description="A source whose asset count fell by more than this share since its last complete read is "
        "partial (1: never).",
    )
    accept_after_cycles: int = Field(
        3, ge=0,
        description="A shrink seen in this many cycles in a row is taken as real (deleted resources) and the next "
        "read counts as complete again (0: never; the operator raises max_drop_fraction instead).",
    )


class LeaderElection(BaseModel):
    """Only one replica may write: a Kubernetes Lease (name and namespace) or a lock file on a shared volume."""

    model_config = ConfigDict(extra="forbid")

    lease_name: str | None = None
    lease_namespace: str | None = None
    lock_file: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> LeaderElection:
        if (self.lease_name is None) != (self.lease_namespace is None):
            raise ValueError("lease_name and lease_namespace go together")
        if self.lease_name is not None and self.lock_file is not None:
            raise ValueError("choose a Kubernetes lease or a lock_file, not both")
        return self


class Feed(BaseModel):
    """Cloud Asset Inventory feed messages pushed by Pub/Sub to POST /v1/cai-feed, or pulled from a subscription."""

    model_config = ConfigDict(extra="forbid")
    audience: str | None = Field(
        None, description="The push subscription's OIDC audience; unset: only loopback callers may push."
    )
    service_account: str | None = Field(None, description="The push subscription's service account (token email).")
    certs_url: str = Field("https://www.googleapis.com/oauth2/v1/certs",
                           description="Where the token signing certificates are read (kid -> PEM).")
    pull_subscription: str | None = Field(
        None, pattern=r"^projects/[^/]+/subscriptions/[^/]+$",
        description="Pull feed messages from this Pub/Sub subscription (projects/P/subscriptions/S) instead of "
                    "receiving pushes (both work at once).",
    )
    pull_max_messages: int = Field(100, ge=1, le=1000, description="Messages asked for by each pull.")
    pull_backoff_initial_seconds: float = Field(1.0, gt=0, description="The first wait after a failed pull (full "
                                                "jitter).")
    pull_backoff_max_seconds: float = Field(60.0, gt=0, description="The longest wait between pulls after errors.")
    pull_down_after_seconds: float = Field(
        300.0, gt=0, description="/readyz fails while the leader's pull has gone this long without a successful pull."
    )


class Watch(BaseModel):
    """Kubernetes watches (auditor/collect/kube_watch.py): changes to RBAC, Namespaces, ResourceQuotas and
    NetworkPolicies handed to the daemon as they happen, between cycles; the cycle stays the reconciler."""

    model_config = ConfigDict(extra="forbid")
    sources: list[str] = Field(
        default_factory=list,
        description="The k8s:// sources to watch, each written as in `sources` (the switch is per cluster source).",
    )
    timeout_seconds: int = Field(
        300, ge=10, le=3600, description="Each watch request is ended by the server after this long and re-opened "
        "from the last resourceVersion seen.",
    )
    backoff_initial_seconds: float = Field(1.0, gt=0, description="The first wait after an error (full jitter).")
    backoff_max_seconds: float = Field(60.0, gt=0, description="The longest wait between tries after errors.")
    down_after_seconds: float = Field(
        300.0, gt=0, description="/readyz fails while a watch of the leader has been down (not connected) this long."
    )


class Remediation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Plan (and, for rules in enforce mode, apply) fixes after each cycle.")
    max_changes_per_cycle: int = Field(10, ge=0)
    max_changes_per_apply: int = Field(50, ge=0)
    protected_principals: list[str] = Field(
        default_factory=list, description="Member globs whose access is never removed (the auditor, break-glass)."
    )
    plan_max_age_seconds: int = Field(3600, ge=1, description="A plan older than this is refused at apply.")
    protected_roles: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROTECTED_ROLES),
        description="Role globs never removed from an organization or folder (see allow_protected_roles_on).",
    )
    allow_protected_roles_on: list[str] = Field(
        default_factory=list, description="Organizations and folders (globs) where protected roles may be removed."
    )
    max_member_share_per_apply: float | None = Field(
        DEFAULT_MAX_MEMBER_SHARE, gt=0, le=1,
        description="The largest share of a resource's member grants one apply may remove (null: no cap).",
    )
    leader_election: LeaderElection = Field(default_factory=LeaderElection)

    @field_validator("protected_principals")
    @classmethod
    def _member_globs(cls, v: list[str]) -> list[str]:
        problems = [p for p in (member_pattern_problem(x) for x in v) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return v


_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[::1]:port` or `:port` (all interfaces) -> (host, port)."""
    m = _LISTEN.match(value.strip())
    if not m or int(m["port"]) > 65535:
        raise ValueError(f"expected host:port (e.g. 0.0.0.0:9477 or [::1]:9477), got {value!r}")
    host = m["v6"] or m["host"] or "0.0.0.0"
    return host, int(m["port"])


_file_data: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("auditor_file", default=None)


class _FileSettings(PydanticBaseSettingsSource):
    """The YAML file's values, below the environment in precedence."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_file_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_data.get() or {})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    sources: list[str] = Field(min_length=1, description="CAI export files/folders, cai://..., k8s://... sources.")
    rules: list[str] = Field(default_factory=list, description="Rule files or folders; empty: the shipped baseline.")
    cluster: str = Field("local", description="Cluster name for Kubernetes objects read from files.")
    strict: bool = Field(False, description="A malformed record fails the source instead of being skipped.")
    jobs: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        1,
        description="Processes reading a large uncompressed NDJSON export (as `auditor scan --jobs`); `auto`: one "
        "per core the daemon may use (its CPU affinity, and its container's CPU limit).",
    )
    schedule: Schedule = Field(default_factory=Schedule)  # type: ignore[arg-type]
    state_path: Path = Field(Path("drift-auditor.db"), description="The SQLite state file (when no state_url).")
    state_url: str | None = Field(
        None,
        pattern=r"^(postgresql|postgres|postgresql\+psycopg)://",
        description="A PostgreSQL URL (postgresql://user@host:5432/db): the state database replicas share. Wins "
        "over state_path. Also AUDITOR_STATE_URL.",
    )
    state_password_file: Path | None = Field(
        None, description="The PostgreSQL password, read from this file (a mounted secret), not written in the URL."
    )
    listen: str = Field("127.0.0.1:9477", description="host:port of the HTTP server (/metrics, /report, ...).")
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    scope: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._:/-]*$",
        description="What this replica audits when the organization is sharded (e.g. folders/123): a constant "
        "`scope` label on every metric, and a key of /findings.json and of each cycle log event.",
    )
    gcp_endpoint: str | None = Field(None, description="Google API endpoint override (tests, private endpoints).")
    source_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options for live sources (cai_requests_per_minute, cai_page_size, retry_attempts, ...).",
    )
    history_days: int = Field(90, ge=1, description="Cycles, drift events and resolved findings kept this long.")
    report_token: SecretStr | None = Field(
        None, description="When set, /report and /findings.json require it (Bearer, or Basic with it as password)."
    )
    report_token_file: Path | None = Field(None, description="Read report_token from this file (a mounted secret).")
    staleness: Staleness = Field(default_factory=Staleness)  # type: ignore[arg-type]
    ha: HighAvailability = Field(default_factory=HighAvailability)  # type: ignore[arg-type]
    source_shrink: SourceShrink = Field(default_factory=SourceShrink)  # type: ignore[arg-type]
    http: Http = Field(default_factory=Http)  # type: ignore[arg-type]
    remediation: Remediation = Field(default_factory=Remediation)  # type: ignore[arg-type]
    feed: Feed = Field(default_factory=Feed)  # type: ignore[arg-type]
    watch: Watch = Field(default_factory=Watch)  # type: ignore[arg-type]
    scc: Scc = Field(default_factory=Scc)  # type: ignore[arg-type]
    notifications: Notifications = Field(default_factory=Notifications)  # type: ignore[arg-type]

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v.strip()

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        if any(not s.strip() for s in v):
            raise ValueError("a source is empty")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSettings(settings_cls))

    @model_validator(mode="after")
    def _watched_sources(self) -> Settings:
        for src in self.watch.sources:
            if not src.startswith("k8s://"):
                raise ValueError(f"watch.sources: {src} is not a Kubernetes source (k8s://CONTEXT or k8s://in-cluster)")
            if src not in self.sources:
                raise ValueError(f"watch.sources: {src} is not one of `sources` (write it as it is written there)")
        return self

    @model_validator(mode="after")
    def _token_file(self) -> Settings:
        if self.report_token_file is not None:
            if self.report_token is not None:
                raise ValueError("report_token and report_token_file: set one, not both")
            try:
                token = self.report_token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"report_token_file {self.report_token_file}: {exc.strerror or exc}") from None
            if not token:
                raise ValueError(f"report_token_file {self.report_token_file} is empty")
            self.report_token = SecretStr(token)
        return self

    @property
    def state_target(self) -> str:
        """Where the state lives: the PostgreSQL URL, else the SQLite file."""
        return self.state_url or str(self.state_path)

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    def sources_options(self) -> SourceOptions:
        extra: dict[str, object] = dict(self.source_options)
        if self.gcp_endpoint:
            extra["gcp_endpoint"] = self.gcp_endpoint
        return SourceOptions(cluster=self.cluster, strict=self.strict, extra=extra)


# -- loading ---------------------------------------------------------------------------------------------------------
_PATH_KEYS = ("rules", "state_path")


def _resolve_relative(data: dict[str, Any], base: Path) -> None:
    """Paths written in the file are relative to the file, not to wherever the daemon was started."""

    def fix(p: Any) -> Any:
        if isinstance(p, str) and p and "://" not in p and not os.path.isabs(os.path.expanduser(p)):
            return os.path.normpath(base / os.path.expanduser(p))
        return p

    for key in ("sources", "rules"):
        if isinstance(data.get(key), list):
            data[key] = [fix(p) for p in data[key]]
    for key in ("state_path", "report_token_file", "state_password_file"):
        if key in data:
            data[key] = fix(data[key])
    notes = data.get("notifications")
    if isinstance(notes, dict) and "queue_dir" in notes:
        notes["queue_dir"] = fix(notes["queue_dir"])
    rem = data.get("remediation")
    if isinstance(rem, dict) and isinstance(rem.get("leader_election"), dict) and "lock_file" in rem["leader_election"]:
        rem["leader_election"]["lock_file"] = fix(rem["leader_election"]["lock_file"])


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next(((k, v) for k, v in node.value if k.value == key), None)
            if nxt is None:
                break
            line, node = nxt[0].start_mark.line + 1, nxt[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _env_name(loc: Sequence[int | str]) -> str | None:
    """The AUDITOR_* variable that set this key, if one did."""
    parts = [str(p) for p in loc if isinstance(p, str)]
    for n in range(len(parts), 0, -1):
        name = ENV_PREFIX + "__".join(parts[:n]).upper()
        if any(k.upper() == name for k in os.environ):
            return name
    return None


def _key(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_settings(path: str | Path | None = None) -> Settings:
    """The settings from `path` (optional: everything can come from the environment), validated.

    Raises ConfigError with one line per problem: where (file:line or the variable), the key, and the reason.
    """
    data: dict[str, Any] = {}
    node: yaml.Node | None = None
    where = "configuration"
    if path is not None:
        p = Path(path)
        where = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read the configuration ({exc.strerror or exc})") from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}:1: expected a mapping of settings (sources, rules, schedule, ...)")
        data = loaded
        _resolve_relative(data, p.resolve().parent)
    token = _file_data.set(data)
    try:
        return Settings()  # type: ignore[call-arg]  # values come from the environment and the file
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            env = _env_name(loc)
            if env:
                src = f"environment {env}"
            else:
                lineno = _line_of(node, loc)
                src = f"{where}:{lineno}" if lineno else where
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(f"{src}: {_key(loc)}: {msg}")
        raise ConfigError("\n".join(problems)) from None
    except SettingsError as exc:
        m = re.search(r'field "([^"]+)"', str(exc))
        var = ENV_PREFIX + m[1].upper() if m else ENV_PREFIX + "*"
        raise ConfigError(
            f"environment {var}: not valid JSON (lists and mappings are given as JSON): {exc.__cause__}"
        ) from None
    finally:
        _file_data.reset(token)
