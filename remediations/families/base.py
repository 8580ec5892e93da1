"""What every remediation family provides (the `Remediator` protocol) and the types its writer speaks.

A family owns one kind of resource a fix writes (IAM policies, Cloud Armor security policies, Kubernetes RBAC
objects): the remediation kinds a rule may name, how an asset becomes the API object to write and which concurrency
token it carries, the pure edit of its state and the diff a reviewer reads, the writer that re-reads, writes and
reads back through the resource's own API, its guards, and the permissions it declares. The shared stages (plan,
apply, guards, journal) ask the family; none of them knows a family by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from auditor.collect.retry import RetryPolicy
from auditor.model import Asset, Finding

if TYPE_CHECKING:
    from auditor.evaluate.rulebook import Rule
    from remediations.edits import Edit
    from remediations.guards import GuardConfig, Refusal
    from remediations.manual import ManualStep
    from remediations.targets import Target


@dataclass(frozen=True)
class Kind:
    name: str  # what a rule's `remediation:` names: family.verb
    family: str
    summary: str
    # A manual step in the plan (command, API call, impact) that apply never runs: cluster settings whose fix
    # recreates nodes.
    planned_only: bool = False


@dataclass
class Live:
    """A resource as its API returns it: the state (None when it does not exist) and its concurrency token."""

    state: dict[str, Any] | None
    token: str | None


class WriteConflict(Exception):
    """The API refused the write because the token is stale (409 ABORTED, 412, Kubernetes 409 Conflict)."""


def token_moved(token_field: str, planned: str | None, before: Any, live_token: str | None, live_section: Any
                ) -> str | None:
    """The concurrency check of apply: the live token is the one planned against; a change planned without a
    token (a source that carries none) compares the live state with the planned before-state instead."""
    if planned is not None and live_token != planned:
        return f"{token_field} is {live_token}, planned against {planned}: changed since the plan"
    if planned is None and live_section != before:
        return "the live state differs from the planned before-state: changed since the plan"
    return None


class ApiObjectState:
    """What a family whose state is the API object itself (the asset's resource: a security policy, a cluster),
    with its token at the top (`fingerprint`, `etag`), shares: the state, the asset, the token and the check of
    the token."""

    token_field: str

    def section(self, state: dict[str, Any] | None) -> Any:
        raise NotImplementedError

    def state_of(self, asset: Asset) -> dict[str, Any] | None:
        return asset.resource or None

    def asset_of(self, name: str, asset_type: str, state: dict[str, Any]) -> Asset:
        return Asset(name, asset_type, resource=state)

    def token_of(self, state: dict[str, Any] | None) -> str | None:
        value = (state or {}).get(self.token_field)
        return str(value) if value not in (None, "") else None

    def moved(self, target: Target, planned: str | None, before: Any, live: Live) -> str | None:
        return token_moved(self.token_field, planned, before, live.token, self.section(live.state))


# Transient API errors (429, 5xx, timeouts) are retried per API call by each writer, honouring Retry-After.
DEFAULT_RETRY = RetryPolicy(attempts=4, initial=0.5, maximum=10.0)


class Writer(Protocol):
    family: str

    def read(self, target: Target) -> Live: ...

    def write(self, target: Target, live: Live, new: dict[str, Any] | None) -> None: ...


@dataclass(frozen=True)
class WriterContext:
    """Where writers reach their APIs: Google Cloud at `gcp_endpoint` (None: AUDITOR_GCP_ENDPOINT or Google's),
    each cluster through its kubeconfig context or the given ApiClient factory."""

    gcp_endpoint: str | None = None
    kube_contexts: Mapping[str, str] | None = None
    kube_client_factory: Any = None
    retry: RetryPolicy | None = None


class Remediator(Protocol):
    """One family of remediations (modelled on gatekeeper's mutators and Custodian's resource-attached actions)."""

    name: str
    token_field: str  # etag | fingerprint | resourceVersion
    kinds: tuple[Kind, ...]

    def target_for(self, asset_name: str, asset_type: str) -> Target:
        """The API object for an asset; UnsupportedTarget names what cannot be written and why."""
        ...

    def state_of(self, asset: Asset) -> dict[str, Any] | None:
        """The part of a snapshot's asset this family edits (an IAM policy, a security policy, an object)."""
        ...

    def asset_of(self, name: str, asset_type: str, state: dict[str, Any]) -> Asset:
        """An asset holding a state read from the live API (so that the planner can read it like a snapshot's)."""
        ...

    def token_of(self, state: dict[str, Any] | None) -> str | None: ...

    def moved(self, target: Target, planned: str | None, before: Any, live: Live) -> str | None:
        """Why the live resource is not the one a change was planned against (None: it is); see `token_moved`."""
        ...

    def edits_for(self, finding: Finding, rule: Rule, asset: Asset) -> list[Edit]:
        """The edits a finding asks for; EditError says why it cannot be planned."""
        ...

    def apply(self, state: dict[str, Any] | None, edit: Edit) -> dict[str, Any] | None:
        """The state after one edit (it may change `state` in place: callers pass a copy)."""
        ...

    def section(self, state: dict[str, Any] | None) -> Any:
        """The part of the state a change is about, in a canonical form (compared and diffed)."""
        ...

    def state_from_section(self, section: Any) -> dict[str, Any] | None: ...

    def diff(self, before: Any, after: Any) -> list[dict[str, Any]]:
        """Item-level differences between two sections: [{item, before, after}]."""
        ...

    def describe(self, edit: Edit) -> str: ...

    def principals(self, edits: Iterable[Edit], diff: Iterable[dict[str, Any]]) -> set[str]:
        """The members or subjects a change adds or removes (the plan's blast radius)."""
        ...

    def contradictions(self, edits: list[Edit]) -> tuple[list[Edit], list[str]]:
        """Edits that cancel out (a rule adds what another removes) are dropped, each with a reason."""
        ...

    def guard(self, target: Target, before: dict[str, Any] | None, after: dict[str, Any] | None, cfg: GuardConfig,
              *, restoring: bool, origin: dict[str, Any] | None) -> list[Refusal]:
        """The family's guards on a write from `before` to `after` (live states)."""
        ...

    def writer(self, ctx: WriterContext) -> Writer: ...


class ManualPlanner(Protocol):
    """A family whose kinds are planned only: each finding becomes manual steps in the plan, never a write."""

    name: str
    kinds: tuple[Kind, ...]

    def manual_steps(self, kind: str, finding: Finding) -> list[ManualStep]:
        """The steps the finding's typed remedies ask for; ManualStepError says why there are none."""
        ...
