"""Screens and prefilters: the engine skips work that cannot give a finding, without changing any finding.

Screens let checks with context forget assets as they stream by; prefilters skip every rule of a check at once
when none of their globs matches the asset's members, roles or subjects.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from auditor.collect.files import iter_file_assets
from auditor.evaluate.engine import Engine, _skipped
from auditor.evaluate.rulebook import load_file, load_rules
from auditor.model import Asset
from bench.generate import generate

NOW = datetime(2026, 11, 26, tzinfo=UTC)
ORG = "cloudresourcemanager.googleapis.com/Organization"
PROJECT = "cloudresourcemanager.googleapis.com/Project"
BUCKET = "storage.googleapis.com/Bucket"
ROLE = "rbac.authorization.k8s.io/Role"
ROLE_BINDING = "rbac.authorization.k8s.io/RoleBinding"
CLUSTER = "//container.googleapis.com/projects/p/locations/l/clusters/c/k8s"


def _json(obj: Any) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(obj))


def _findings(engine: Engine, assets: list[Asset]) -> tuple[list[dict[str, Any]], int]:
    """The findings (as reported), then the rules not evaluated, and how many assets were kept for the end."""
    run = engine.start()
    run.feed(assets)
    kept = len(run.deferred)
    result = run.finish()
    assert not result.errors
    unevaluated = sorted((n.rule_id, n.reason) for n in result.not_evaluated)
    return [f.to_dict() for f in result.findings] + [{"not_evaluated": n} for n in unevaluated], kept


EXAMPLE = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_CLUSTER = "projects/ml-platform-prod/locations/us-central1/clusters/training"


@pytest.fixture(scope="module")
def organization(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("org") / "org.ndjson"
    generate(6000, path, seed=5)
    return path


def test_screens_never_change_the_findings_of_the_example() -> None:
    """The bundled example triggers every shipped rule, tenancy and external members included."""
    assets = [*iter_file_assets(EXAMPLE / "org"), *iter_file_assets(EXAMPLE / "k8s", cluster=EXAMPLE_CLUSTER)]
    rules = load_rules()
    for arranged in (assets, assets[::-1]):
        screened, _ = _findings(Engine(rules, now=NOW), arranged)
        everything, _ = _findings(Engine(rules, now=NOW, shortcuts=False), arranged)
        assert {f["rule"] for f in screened} == {r.id for r in rules}
        assert screened == everything


def test_screens_never_change_which_rules_could_not_be_evaluated() -> None:
    """The example without its Organization asset nor the Namespaces of its cluster: the external members and
    tenant rules cannot be judged, and say so alike with and without the screens."""
    assets = [
        a
        for a in [*iter_file_assets(EXAMPLE / "org"), *iter_file_assets(EXAMPLE / "k8s", cluster=EXAMPLE_CLUSTER)]
        if a.asset_type not in (ORG, "k8s.io/Namespace")
    ]
    rules = load_rules()
    for arranged in (assets, assets[::-1]):
        screened, _ = _findings(Engine(rules, now=NOW), arranged)
        everything, _ = _findings(Engine(rules, now=NOW, shortcuts=False), arranged)
        assert screened == everything
        unevaluated = {f["not_evaluated"][0] for f in screened if "not_evaluated" in f}
        assert {"iam-no-external-members", "rbac-tenant-isolation"} <= unevaluated


@pytest.mark.parametrize("order", ["as exported", "reversed", "shuffled"])
def test_screens_never_change_findings(organization: Path, order: str) -> None:
    """Whatever order the context arrives in (before or after what it judges), the findings are the same."""
    assets = list(iter_file_assets(organization))
    if order == "reversed":
        assets.reverse()
    elif order == "shuffled":
        random.Random(3).shuffle(assets)
    rules = load_rules()
    screened, kept_screened = _findings(Engine(rules, now=NOW), assets)
    everything, kept_all = _findings(Engine(rules, now=NOW, shortcuts=False), assets)
    assert screened, "the generated organization violates the baseline"
    assert screened == everything
    assert kept_screened <= kept_all
    if order == "as exported":  # the organization and projects come first: most assets are let go at once
        assert kept_screened < kept_all / 2


def _org(domain: str) -> Asset:
    return Asset("//cloudresourcemanager.googleapis.com/organizations/1", ORG, _json({"displayName": domain}))


def _project(pid: str) -> Asset:
    return Asset(
        f"//cloudresourcemanager.googleapis.com/projects/{pid}-number",
        PROJECT,
        _json({"projectId": pid, "projectNumber": f"{pid}-number"}),
        ancestors=(f"projects/{pid}-number", "organizations/1"),
    )


def _bucket(name: str, members: Any) -> Asset:
    return Asset(
        f"//storage.googleapis.com/{name}",
        BUCKET,
        iam_policy=_json({"bindings": [{"role": "roles/storage.objectViewer", "members": members}]}),
        ancestors=("projects/ml-number", "organizations/1"),
    )


def _engine(tmp_path: Path, rules_yaml: str, shortcuts: bool = True) -> Engine:
    p = tmp_path / "r.yaml"
    p.write_text(rules_yaml)
    return Engine(load_file(p), now=NOW, shortcuts=shortcuts)


def _external_rules(tmp_path: Path) -> Engine:
    return _engine(tmp_path, "rules:\n  - {id: external, check: iam.external_members, severity: high}\n")


def test_external_members_are_judged_against_the_organization_seen_so_far(tmp_path: Path) -> None:
    insiders = ["user:ana@example.com", "serviceAccount:trainer@ml.iam.gserviceaccount.com"]
    inside = _bucket("inside", insiders)
    outside = _bucket("outside", ["user:ana@example.com", "user:bob@gmail.com"])
    engine = _external_rules(tmp_path)

    run = engine.start()
    run.feed([_org("example.com"), _project("ml"), inside, outside])
    assert [a.name for a, _ in run.deferred] == [outside.name]  # only a policy with an outsider waits for the end
    result = run.finish()
    assert [(f.asset, f.details["member"]) for f in result.findings] == [(outside.name, "user:bob@gmail.com")]

    # The organization and the project read last: nothing could be decided early, the findings are the same.
    late = engine.start()
    late.feed([_bucket("inside", insiders), outside, _project("ml"), _org("example.com")])
    assert len(late.deferred) == 2
    assert [(f.asset, f.details["member"]) for f in late.finish().findings] == [(outside.name, "user:bob@gmail.com")]


def test_a_screen_that_fails_keeps_the_asset_and_the_check_reports_the_error(tmp_path: Path) -> None:
    broken = Asset("//storage.googleapis.com/broken", BUCKET, iam_policy=_json({"bindings": 5}))
    run = _external_rules(tmp_path).start()
    run.feed([_org("example.com"), broken])
    assert [a.name for a, _ in run.deferred] == [broken.name]
    result = run.finish()
    assert [(e.rule, e.asset) for e in result.errors] == [("external", broken.name)]
    assert "TypeError" in result.errors[0].error


def _k8s(asset_type: str, ns: str, name: str, body: dict[str, Any]) -> Asset:
    plural = {ROLE: "roles", ROLE_BINDING: "rolebindings"}[asset_type]
    body = {"metadata": {"name": name, "namespace": ns}, **body}
    return Asset(f"{CLUSTER}/namespaces/{ns}/rbac.authorization.k8s.io/{plural}/{name}", asset_type, _json(body))


def test_roles_are_kept_as_names_when_only_their_names_are_read(tmp_path: Path) -> None:
    """Tenancy by namespace name reads the names of Roles and RoleBindings: a harmless Role is kept as a stub."""
    rules = (
        "rules:\n"
        "  - id: isolation\n"
        "    check: rbac.tenant_isolation\n"
        "    severity: high\n"
        "    params: {tenant_namespaces: ['team-*']}\n"
        "  - id: dangerous\n"
        "    check: rbac.tenant_role_dangerous_rules\n"
        "    severity: high\n"
        "    params: {tenant_namespaces: ['team-*']}\n"
    )
    engine = _engine(tmp_path, rules)
    harmless = _k8s(ROLE, "team-a", "reader", {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    exec_rule = {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["*"]}
    dangerous = _k8s(ROLE, "team-a", "exec", {"rules": [exec_rule]})
    crossing = _k8s(
        ROLE_BINDING,
        "team-a",
        "borrowed",
        {
            "roleRef": {"kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": "team-b"}],
        },
    )
    own = _k8s(
        ROLE_BINDING,
        "team-b",
        "system-only",
        {"roleRef": {"kind": "Role", "name": "reader"}, "subjects": [{"kind": "Group", "name": "system:masters"}]},
    )
    run = engine.start()
    run.feed([harmless, dangerous, crossing, own])
    roles = run.ctx.by_type[ROLE]
    assert [r.name for r in roles] == [harmless.name, dangerous.name]
    assert roles[0] is not harmless and roles[0]._res_raw is None and roles[0]._res is None  # a stub
    assert roles[1] is dangerous  # kept whole: a deferred rule still reads it
    assert [a.name for a, _ in run.deferred] == [dangerous.name, crossing.name]
    result = run.finish()
    assert sorted((f.rule, f.asset) for f in result.findings) == [
        ("dangerous", dangerous.name),
        ("isolation", crossing.name),
    ]


def test_a_prefilter_skips_only_the_rules_that_cannot_report(tmp_path: Path) -> None:
    rules = (
        "rules:\n"
        + "".join(
            f"  - {{id: deny-{i}, check: iam.forbidden_members, severity: high, params: {{members: ['{m}']}}}}\n"
            for i, m in enumerate(["allUsers", "user:*@example.com", "user:**@gmail.com", "group:ml-?@example.com"])
        )
        + "  - {id: banned, check: iam.banned_roles, severity: high, params: {roles: ['roles/owner']}}\n"
    )
    engine = _engine(tmp_path, rules)
    policy = _bucket("b", ["user:ana@example.com", "group:ml-7@example.com", "user:bob@mail.example.org"])
    plan = engine._plan(BUCKET).streamed_iam
    skipped = {r.id for r in plan.rules if id(r) in _skipped(policy, plan.filters)}
    assert skipped == {"deny-0", "deny-2", "banned"}
    result = engine.evaluate([policy])
    assert sorted((f.rule, f.details["member"]) for f in result.findings) == [
        ("deny-1", "user:ana@example.com"),
        ("deny-3", "group:ml-7@example.com"),
    ]
    # a policy the prefilter cannot read is judged rule by rule, and each rule reports the problem
    broken = Asset("//storage.googleapis.com/broken", BUCKET, iam_policy=_json({"bindings": 5}))
    assert sorted(e.rule for e in engine.evaluate([broken]).errors) == ["banned", *(f"deny-{i}" for i in range(4))]


def _namespace(name: str, tenant: str | None) -> Asset:
    labels = {"tenant": tenant} if tenant else {}
    body = {"metadata": {"name": name, "labels": labels}}
    return Asset(f"{CLUSTER}/namespaces/{name}", "k8s.io/Namespace", _json(body))


def _binding(ns: str, name: str, *subjects: dict[str, str]) -> Asset:
    return _k8s(ROLE_BINDING, ns, name, {"roleRef": {"kind": "Role", "name": "trainer"}, "subjects": list(subjects)})


def test_tenant_bindings_are_judged_against_the_namespaces_read_so_far(tmp_path: Path) -> None:
    rules = (
        "rules:\n"
        "  - id: isolation\n"
        "    check: rbac.tenant_isolation\n"
        "    severity: high\n"
        "    params: {tenant_labels: [tenant], tenant_subjects: ['Group:ml-{tenant}@example.com']}\n"
    )
    engine = _engine(tmp_path, rules)
    own = _binding("vision-dev", "own", {"kind": "Group", "name": "ml-vision@example.com"},
                   {"kind": "ServiceAccount", "name": "trainer", "namespace": "vision-dev"})
    crossing = _binding("vision-dev", "crossing", {"kind": "Group", "name": "ml-speech@example.com"})
    other_sa = _binding("vision-dev", "other-sa", {"kind": "ServiceAccount", "name": "x", "namespace": "speech-dev"})
    unread = _binding("nlp-dev", "unread", {"kind": "Group", "name": "ml-nlp@example.com"})
    namespaces = [_namespace("vision-dev", "vision"), _namespace("speech-dev", "speech"), _namespace("nlp-dev", "nlp")]

    run = engine.start()
    run.feed([namespaces[0], own, crossing, other_sa, unread, *namespaces[1:]])
    # `own` belongs for sure; `crossing` may not; `other_sa`'s namespace and `unread`'s own were not read yet
    assert [a.name for a, _ in run.deferred] == [crossing.name, other_sa.name, unread.name]
    found = sorted((f.asset.rsplit("/", 1)[1], f.details["subject"]) for f in run.finish().findings)
    assert found == [("crossing", "Group:ml-speech@example.com"), ("other-sa", "ServiceAccount:speech-dev/x")]
    unscreened = _engine(tmp_path, rules, shortcuts=False)
    everything = unscreened.evaluate([namespaces[0], own, crossing, other_sa, unread, *namespaces[1:]])
    assert sorted((f.asset.rsplit("/", 1)[1], f.details["subject"]) for f in everything.findings) == found


def test_context_arrived_gives_each_kept_asset_once_per_reader() -> None:
    from auditor.evaluate.registry import Context

    ctx = Context(now=NOW)
    assert list(ctx.arrived(ORG, "a")) == []
    first = Asset("//cloudresourcemanager.googleapis.com/organizations/1", ORG, _json({"displayName": "x.example"}))
    second = Asset("//cloudresourcemanager.googleapis.com/organizations/2", ORG, _json({"displayName": "y.example"}))
    ctx.by_type[ORG].append(first)
    assert [a.name for a in ctx.arrived(ORG, "a")] == [first.name]
    assert list(ctx.arrived(ORG, "a")) == []  # asked again, nothing new
    ctx.by_type[ORG].append(second)
    assert [a.name for a in ctx.arrived(ORG, "a")] == [second.name]
    assert [a.name for a in ctx.arrived(ORG, "b")] == [first.name, second.name]  # another reader reads from the start
    assert list(ctx.arrived(PROJECT, "a")) == []
