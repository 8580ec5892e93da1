"""Inputs nobody here wrote, recognised or refused (issue 12, "Why"): recorded Compute API responses, gcloud's
YAML of assets and of security policies, Forseti dumps with comment lines, Config Validator's `ancestry_path`,
concatenated JSON, kinds no reader knows, and the daemon's own configuration given as a source.

Each test reads the real samples in tests/data (or their shape, rewritten as gcloud prints it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from auditor.collect import SourceOptions
from auditor.collect.files import FileSource, iter_file_assets
from auditor.collect.shapes import READERS, SECURITY_POLICY, ancestors_of_path
from auditor.errors import SourceError
from auditor.evaluate.rulebook import load_rules
from auditor.scan import run_scan

REPO = Path(__file__).resolve().parent.parent.parent
ARMOR = REPO / "tests" / "data" / "cloud-armor"
CAI = REPO / "tests" / "data" / "cai"


def body(name: str) -> dict:
    """The Compute API response a custodian recording holds."""
    return json.loads((ARMOR / name).read_text())["body"]


def auditor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_readers_register_in_one_registry() -> None:
    assert [r.name for r in READERS.values()] == [  # tried in this order
        "cai-asset", "cai-listing", "compute-security-policy", "compute-security-policy-list", "kubernetes-list",
        "kubernetes-object",
    ]


@pytest.mark.parametrize(
    ("recording", "name", "rules"),
    [
        ("c7n_securityPolicies-list_default-deny-403.json",
         "//compute.googleapis.com/projects/mitrop-custodian/global/securityPolicies/test-policy", 1),
        ("c7n_securityPolicies-list_basic-cloud-armor-policy_10-rules-waf.json",
         "//compute.googleapis.com/projects/cloud-custodian/global/securityPolicies/basic-cloud-armor-policy", 10),
    ],
)
def test_a_compute_list_response_is_the_cai_security_policy(
    tmp_path: Path, recording: str, name: str, rules: int
) -> None:
    f = tmp_path / "securityPolicies.json"
    f.write_text(json.dumps(body(recording), indent=2))
    [asset] = list(iter_file_assets(f))
    assert (asset.name, asset.asset_type) == (name, SECURITY_POLICY)
    assert asset.ancestors == (f"projects/{name.split('/')[4]}",)
    assert len(asset.resource["rules"]) == rules and asset.resource["fingerprint"]
    # before: "0 assets ... 0 findings", complete, exit 0
    proc = auditor("scan", "--source", str(f), "--format", "json", "--fail-on", "never")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["assets"] == 1 and report["complete"] is True


def test_gcloud_describe_yaml_of_a_security_policy(tmp_path: Path) -> None:
    policy = body("c7n_securityPolicies-get_c7n-armor-default-7f0d.json")
    f = tmp_path / "describe.yaml"
    f.write_text(yaml.safe_dump(policy))  # `gcloud compute security-policies describe` prints YAML
    [asset] = list(iter_file_assets(f))
    assert asset.name == (
        "//compute.googleapis.com/projects/cloud-custodian/global/securityPolicies/c7n-armor-default-7f0d"
    )
    report = json.loads(auditor("scan", "--source", str(f), "--format", "json", "--fail-on", "never").stdout)
    # the default rule allows everyone: the Cloud Armor rules have something to say about this policy
    assert report["summary"]["assets"] == 1 and report["findings"]
    assert all(x["asset"] == asset.name for x in report["findings"])


def test_concatenated_pretty_printed_policies(tmp_path: Path) -> None:
    one = body("c7n_securityPolicies-get_c7n-armor-default-7f0d.json")
    two = body("c7n_securityPolicies-list_default-deny-403.json")["items"][0]
    f = tmp_path / "policies.json"
    f.write_text(json.dumps(one, indent=2) + "\n" + json.dumps(two, indent=4) + "\n")
    assert [a.name.rsplit("/", 1)[1] for a in iter_file_assets(f)] == ["c7n-armor-default-7f0d", "test-policy"]


def _camel(line: dict) -> dict:
    """A CAI export line as `gcloud asset list --format=yaml` prints it (the API's camelCase)."""
    spelled = {"asset_type": "assetType", "iam_policy": "iamPolicy", "update_time": "updateTime"}
    return {spelled.get(k, k): v for k, v in line.items()}


def test_gcloud_asset_list_yaml_reads_as_the_export(tmp_path: Path) -> None:
    export = CAI / "forseti_mock_cai_iam_policies.dump"
    lines = [json.loads(x) for x in export.read_text().splitlines() if x.strip()]
    f = tmp_path / "assets.yaml"
    f.write_text(yaml.safe_dump_all([_camel(x) for x in lines]))
    from_yaml = [(a.name, a.asset_type, a.iam_policy) for a in iter_file_assets(f)]
    from_export = [(a.name, a.asset_type, a.iam_policy) for a in iter_file_assets(export)]
    assert from_yaml == from_export and len(from_yaml) == 22
    rules = load_rules()
    assert {x.id for x in run_scan([str(f)], rules).findings} == {x.id for x in run_scan([str(export)], rules).findings}


def test_a_forseti_dump_with_comment_lines(tmp_path: Path) -> None:
    export = CAI / "forseti_mock_cai_resources.dump"
    f = tmp_path / "resources.dump"
    f.write_text("# Forseti inventory dump\n#   organizations/111222333\n\n" + export.read_text())
    source = FileSource(str(f), SourceOptions())
    assets = list(source.assets())
    assert len(assets) == 133 and source.status.complete and not source.status.errors
    assert assets[0].origin == f"{f}:4"


def test_the_daemon_configuration_is_refused_with_its_shape() -> None:
    proc = auditor("scan", "--source", "examples/config.yaml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "examples/config.yaml: no asset read" in proc.stderr
    assert "a mapping with keys cluster, history_days, listen" in proc.stderr


@pytest.mark.parametrize(
    ("path", "ancestors"),
    [
        ("organizations/1/folders/2/projects/3", ("projects/3", "folders/2", "organizations/1")),
        ("organization/1/folder/2/project/3", ("projects/3", "folders/2", "organizations/1")),
        ("organizations/1", ("organizations/1",)),
    ],
)
def test_ancestry_path_in_both_spellings(path: str, ancestors: tuple[str, ...]) -> None:
    assert ancestors_of_path(path) == ancestors


def test_config_validator_assets_are_scoped_by_their_ancestry_path(tmp_path: Path) -> None:
    """Config Validator's own asset format carries `ancestry_path`, not `ancestors`: a rule scoped with
    `ancestries` must still match (before, it silently matched nothing)."""
    lines = [json.loads(x) for x in (CAI / "forseti_mock_cai_iam_policies.dump").read_text().splitlines()]
    public = [x for x in lines if "allAuthenticatedUsers" in json.dumps(x)]
    assert public
    f = tmp_path / "cv-assets.json"
    f.write_text(json.dumps([{**x, "ancestry_path": "organization/111222333/folder/1031/project/1042"}
                             for x in public]))
    rules = tmp_path / "scoped.yaml"
    rules.write_text(
        "rules:\n  - id: no-public-in-org\n    check: iam.forbidden_members\n    severity: high\n"
        "    match: {ancestries: ['organizations/111222333/**']}\n"
        "    params: {members: [allAuthenticatedUsers]}\n"
    )
    result = run_scan([str(f)], load_rules([str(rules)]))
    assert {x.asset for x in result.findings} == {x["name"] for x in public}
    assert all(a.startswith("organizations/111222333/folders/1031/projects/1042") for a in
               (a.ancestry_path for a in iter_file_assets(f)))


def test_kinds_no_reader_knows_are_counted_and_shown(tmp_path: Path, public_data: Path) -> None:
    roles = yaml.safe_load((public_data / "k8s-bootstrap-rbac" / "namespace-roles.yaml").read_text())
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}}
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    roles["items"] += [pod, pod, deploy]
    f = tmp_path / "cluster.yaml"
    f.write_text(yaml.safe_dump(roles))
    source = FileSource(str(f), SourceOptions())
    assert len(list(source.assets())) == 7
    assert source.status.unknown == {"v1/Pod": 2, "apps/v1/Deployment": 1}
    proc = auditor("scan", "--source", str(f), "--fail-on", "never", "--format", "json")
    assert json.loads(proc.stdout)["sources"][0]["unknown"] == {"apps/v1/Deployment": 1, "v1/Pod": 2}


def test_a_folder_of_nothing_known_is_an_error_naming_each_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("listen: 127.0.0.1:9477\n")
    (tmp_path / "b.json").write_text(json.dumps({"kind": "compute#instance", "name": "vm"}) + "\n")
    with pytest.raises(SourceError) as err:
        list(FileSource(str(tmp_path), SourceOptions()).assets())
    assert f"{tmp_path / 'a.yaml'}: objects of a kind no reader knows (a mapping with keys listen)" in str(err.value)
    assert f"{tmp_path / 'b.json'}: NDJSON" in str(err.value) and "compute#instance" in str(err.value)
