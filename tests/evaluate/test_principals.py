"""The member predicates against their reference forms (one regular expression at a time, a member parsed for each
question), on members of every shape (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.evaluate.principals import (
    _DEFAULT_SA_PATTERNS,
    _POOL_PRINCIPAL,
    _SERVICE_AGENT_PATTERNS,
    _WORKLOAD_IDENTITY_KSA,
    SA_DOMAIN_SUFFIX,
    default_service_account_kind,
    google_managed_member,
    is_google_managed,
    is_service_agent,
    parse_member,
    service_account_project,
    service_account_project_of,
)

_LOCAL = st.sampled_from(["service-123", "service-org-4", "p12-34", "123", "123-compute", "my-app", "ci", "A-b", ""])
_DOMAIN = st.sampled_from([
    "gcp-sa-logging.iam.gserviceaccount.com", "compute-system.iam.gserviceaccount.com",
    "container-engine-robot.iam.gserviceaccount.com", "proj-1.iam.gserviceaccount.com",
    "cloudservices.gserviceaccount.com",
    "developer.gserviceaccount.com", "appspot.gserviceaccount.com", "cloudbuild.gserviceaccount.com",
    "system.gserviceaccount.com", "example.com", "Example.COM", "gserviceaccount.com", "xgserviceaccount.com",
    "proj.svc.id.goog[ns/ksa]",
])
_EMAIL = st.builds(lambda local, domain: f"{local}@{domain}", _LOCAL, _DOMAIN) | st.text(max_size=12)
MEMBERS = (
    st.builds(lambda kind, email, deleted: f"{'deleted:' if deleted else ''}{kind}:{email}",
              st.sampled_from(["serviceAccount", "user", "group", "domain", "projectOwner"]), _EMAIL, st.booleans())
    | st.sampled_from([
        "allUsers", "serviceAccount:proj-1.svc.id.goog[ns/ksa]", "deleted:serviceAccount:a@b.com?uid=1",
        "principal://iam.googleapis.com/projects/12/locations/global/workloadIdentityPools/p/subject/s",
        "principalSet://iam.googleapis.com/projects/9/locations/global/workloadIdentityPools/p/*",
    ])
    | st.text(max_size=20)
)


def _email(member: str) -> str | None:
    m = parse_member(member)
    return None if m.deleted or m.type != "serviceAccount" else m.value.lower()


@settings(max_examples=500)
@given(MEMBERS)
def test_google_managed_as_each_pattern_says(member: str) -> None:
    email = _email(member)
    agent = email is not None and any(p.fullmatch(email) for p in _SERVICE_AGENT_PATTERNS)
    kind = None if email is None else next((k for p, k, _ in _DEFAULT_SA_PATTERNS if p.fullmatch(email)), None)
    assert is_service_agent(member) is agent
    assert default_service_account_kind(member) == kind
    assert is_google_managed(member) is (agent or kind is not None)
    assert google_managed_member(parse_member(member)) is (agent or kind is not None)


def _project(member: str) -> str | None:
    """The reference: a member parsed for each question, service agents told by each pattern."""
    pool = _POOL_PRINCIPAL.match(member)
    if pool:
        return pool.group(1)
    m = parse_member(member)
    if m.deleted or m.type != "serviceAccount":
        return None
    ksa = _WORKLOAD_IDENTITY_KSA.fullmatch(m.value)
    if ksa:
        return ksa.group(1)
    email = m.value.lower()
    agent = any(p.fullmatch(email) for p in _SERVICE_AGENT_PATTERNS)
    if not email.endswith(SA_DOMAIN_SUFFIX) or agent:
        return None
    return email.rsplit("@", 1)[1][: -len(SA_DOMAIN_SUFFIX)] or None


@settings(max_examples=500)
@given(MEMBERS)
def test_project_of_a_member(member: str) -> None:
    assert service_account_project(member) == _project(member)
    assert service_account_project_of(member, parse_member(member)) == _project(member)
