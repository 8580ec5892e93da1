"""Bad input, read by the real command line: every case ends in a clear message naming the file (and the line
where there is one) and the exit status of the contract (2 bad input, 3 partial), never in a traceback.

Each case writes a file (or a folder) and runs `auditor scan --fail-on never`, so that the status says only how
the input was read: 2 when nothing usable was read, 3 when some records or files were skipped.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from auditor.cli import cli

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLES = REPO / "examples"
GOOD = json.loads((EXAMPLES / "org" / "iam-policies.ndjson").read_text().splitlines()[0])
GOOD_LINE = json.dumps(GOOD)
BUCKET = {
    "name": "//storage.googleapis.com/hostile-bucket",
    "asset_type": "storage.googleapis.com/Bucket",
    "ancestors": ["projects/1", "organizations/583920174615"],
}


def cai(**fields: object) -> str:
    """A bucket line with `fields` replaced (None removes a field)."""
    rec = {**BUCKET, **fields}
    return json.dumps({k: v for k, v in rec.items() if v is not None})


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def nested_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


EXPORT = (EXAMPLES / "org" / "iam-policies.ndjson").read_bytes()
ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
BINDING = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
           "metadata": {"name": "b", "namespace": "ns"}, "roleRef": {"kind": "ClusterRole", "name": "r"},
           "subjects": [{"kind": "User", "name": "alice"}]}
POLICY = json.loads((REPO / "tests/data/cloud-armor/c7n_securityPolicies-get_c7n-armor-default-7f0d.json").read_text())[
    "body"
]


def k8s(obj: dict[str, object], **fields: object) -> str:
    return json.dumps({**obj, **fields})


def corrupt_gzip() -> bytes:
    data = bytearray(gz(EXPORT))
    for i in range(40, len(data) - 40, 97):  # flipped bytes in the deflate stream: zlib.error or a CRC error
        data[i] ^= 0xFF
    return bytes(data)


def garbage() -> bytes:
    return random.Random(7).randbytes(50_000)


@dataclass(frozen=True)
class Case:
    id: str
    name: str  # the file's name (a folder when `files` is given)
    content: bytes | Callable[[], bytes] = b""
    status: int = 2
    says: tuple[str, ...] = ()  # fragments of the message
    line: int | None = None  # the line the message must name (as FILE:LINE)
    files: tuple[tuple[str, bytes | None], ...] = ()  # a folder: (name, content; None: a dangling link)
    env: tuple[tuple[str, str], ...] = ()

    def bytes(self) -> bytes:
        return self.content() if callable(self.content) else self.content


def lines(*parts: str) -> bytes:
    return ("\n".join(parts) + "\n").encode()


CASES = [
    # -- files of no known shape, or with nothing in them: refused (2), naming what was seen -------------------
    Case("empty-file", "empty.json", b"", 2, ("no asset read", "an empty file")),
    Case("only-blank-lines", "blank.ndjson", b"\n\n  \n", 2, ("no asset read",)),
    Case("only-comments", "comments.dump", b"# Forseti dump\n# nothing else\n", 2, ("only comment lines",)),
    Case("daemon-config", "config.yaml", (EXAMPLES / "config.yaml").read_bytes(), 2,
         ("no asset read", "a mapping with keys", "listen")),
    Case("plain-text-json", "notes.json", b"hello world\nsecond line\n", 2, ("neither JSON nor NDJSON", "hello")),
    Case("plain-text-yaml", "notes.yaml", b"just a sentence\n", 2, ("no asset read", "a str value")),
    Case("json-scalar", "n.json", b"42\n", 2, ("neither JSON nor NDJSON",)),
    Case("json-null", "null.json", b"null", 2, ("neither JSON nor NDJSON",)),
    Case("array-of-numbers", "nums.json", b"[1, 2, 3]", 2,
         ("no asset read", "malformed asset (Expected `object`, got `int`)")),
    Case("unknown-kind-only", "deploy.yaml",
         b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n", 2, ("apps/v1/Deployment",)),
    Case("random-bytes", "random.json", garbage, 2, ("random.json",)),
    Case("nul-bytes", "zeros.json", b"\x00" * 4096, 2, ("zeros.json",)),
    Case("binary-yaml", "bin.yaml", garbage, 2, ("bin.yaml",)),
    # -- broken documents: refused with the line ------------------------------------------------------------------
    Case("truncated-array", "arr.json", b'[\n {"name": "//a", "asset_type": "t"},\n {"na', 2,
         ("not a valid JSON array",)),
    Case("truncated-pretty-object", "obj.json", b'{\n  "kind": "compute#securityPolicy",\n  "name": \n', 2,
         ("not valid JSON",), line=4),
    Case("yaml-syntax-error", "bad.yaml", b"kind: List\nitems:\n  - a: [1, 2\n  - b\n", 2, ("not valid YAML",)),
    Case("listing-assets-not-a-list", "listing.json", b'{"assets": {"a": 1}}', 2, ("'assets' is not a list",)),
    Case("k8s-list-items-mapping", "list.yaml", b"apiVersion: v1\nkind: List\nitems: {a: 1}\n", 2,
         ("'items' of a Kubernetes List is not a list",)),
    Case("policy-without-selflink", "policy.json",
         json.dumps({k: v for k, v in POLICY.items() if k != "selfLink"}).encode(), 2, ("has no 'selfLink'",)),
    Case("policy-list-items-string", "pl.json", b'{"kind": "compute#securityPolicyList", "items": "x"}', 2,
         ("'items' is not a list",)),
    Case("policy-rules-mapping", "p.json", json.dumps({**POLICY, "rules": {"a": 1}}).encode(), 2,
         ("'rules' is not a list",)),
    # -- nesting and size limits: the limit named -----------------------------------------------------------------
    Case("deep-array-document", "deep.json", nested(100_000).encode(), 2, ("nested deeper",)),
    Case("deep-object-document", "deepobj.json", nested_object(300).encode(), 2,
         ("nested deeper than 200 levels", "AUDITOR_MAX_DEPTH")),
    Case("deep-ndjson-line", "deep.ndjson", lines(GOOD_LINE, cai(resource={"data": {"x": json.loads(nested(150))}}),
                                                  '{"name": "//b", "asset_type": "t", "resource": {"data": '
                                                  + nested(50_000) + "}}"), 3, ("nested deeper",), line=3),
    Case("deep-yaml-flow", "deep.yaml", nested(20_000).encode(), 2, ("deep.yaml",)),
    Case("deep-yaml-block", "block.yaml", "".join(" " * i + "a:\n" for i in range(3000)).encode() + b" " * 3000
         + b"1\n", 2, ("block.yaml",)),
    Case("yaml-alias-bomb", "bomb.yaml",
         ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
             f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
         )).encode(), 2, ("the value limit", "AUDITOR_MAX_VALUES")),
    Case("line-over-limit", "long.ndjson", lines(GOOD_LINE, cai(resource={"data": {"pad": "x" * 50_000}})), 2,
         ("a line longer than", "AUDITOR_MAX_LINE_BYTES"), line=2, env=(("AUDITOR_MAX_LINE_BYTES", "20000"),)),
    Case("document-over-limit", "big.json", json.dumps([GOOD] * 50, indent=2).encode(), 2,
         ("document-size limit", "AUDITOR_MAX_DOCUMENT_BYTES"), env=(("AUDITOR_MAX_DOCUMENT_BYTES", "10000"),)),
    Case("depth-limit-configurable", "d.json", nested_object(30).encode(), 2,
         ("nested deeper than 20 levels",), env=(("AUDITOR_MAX_DEPTH", "20"),)),
    # -- compressed files --------------------------------------------------------------------------------------
    Case("truncated-gzip", "export.ndjson.gz", lambda: gz(EXPORT * 20)[: len(gz(EXPORT * 20)) // 2], 3,
         ("cannot read", "the lines before were read")),
    Case("truncated-gzip-header", "head.ndjson.gz", lambda: gz(EXPORT)[:12], 2, ("cannot read",)),
    Case("corrupt-gzip", "corrupt.ndjson.gz", corrupt_gzip, 2, ("cannot read",)),
    Case("gzip-magic-only", "magic.json.gz", b"\x1f\x8b", 2, ("cannot read",)),
    Case("gzip-of-garbage", "g.json.gz", lambda: gz(garbage()), 2, ("g.json.gz",)),
    # -- wrong-typed fields: malformed records, counted and named (partial, 3) ---------------------------------
    Case("iam-policy-string", "x.ndjson", lines(GOOD_LINE, cai(iam_policy="allUsers")), 3,
         ("'iam_policy' is not an object",), line=2),
    Case("bindings-mapping", "x.ndjson", lines(GOOD_LINE, cai(iam_policy={"bindings": {"role": "roles/owner",
                                                                                       "members": ["allUsers"]}})),
         3, ("'iam_policy' has a field of the wrong type",), line=2),
    Case("members-string", "x.ndjson", lines(GOOD_LINE, cai(iam_policy={"bindings": [
        {"role": "roles/owner", "members": "allUsers"}]})), 3, ("wrong type", "members"), line=2),
    Case("member-number", "x.ndjson", lines(GOOD_LINE, cai(iam_policy={"bindings": [
        {"role": "roles/owner", "members": ["allUsers", 5]}]})), 3, ("wrong type",), line=2),
    Case("role-number", "x.ndjson", lines(GOOD_LINE, cai(iam_policy={"bindings": [{"role": 7, "members": []}]})),
         3, ("wrong type", "role"), line=2),
    Case("iam-policy-api-spelling-list", "x.ndjson", lines(GOOD_LINE, json.dumps(
        {"name": "//b", "assetType": "t", "iamPolicy": [1]})), 3, ("'iam_policy' is not an object",), line=2),
    Case("resource-string", "x.ndjson", lines(GOOD_LINE, cai(resource="data")), 3, ("malformed asset line",), 2),
    Case("resource-data-list", "x.ndjson", lines(GOOD_LINE, cai(resource={"data": [1, 2]})), 3,
         ("'resource.data' is not an object",), line=2),
    Case("ancestors-string", "x.ndjson", lines(GOOD_LINE, cai(ancestors="projects/1")), 3,
         ("malformed asset line",), line=2),
    Case("name-number", "x.ndjson", lines(GOOD_LINE, cai(name=12)), 3, ("malformed asset line",), line=2),
    Case("update-time-number", "x.ndjson", lines(GOOD_LINE, cai(update_time=5)), 3, ("malformed",), line=2),
    Case("ancestry-path-odd", "x.ndjson", lines(GOOD_LINE, cai(ancestors=None, ancestry_path="organizations/1/x")),
         3, ("ancestry_path",), line=2),
    Case("ancestry-path-wrong-kind", "x.ndjson", lines(GOOD_LINE, cai(ancestors=None, ancestry_path="buckets/1")),
         3, ("not organizations, folders or projects",), line=2),
    Case("line-a-string", "x.ndjson", lines(GOOD_LINE, '"just a string"'), 3, ("malformed",), line=2),
    Case("invalid-utf8-line", "x.ndjson", GOOD_LINE.encode() + b'\n{"name": "\xff\xfe", "asset_type": "t"}\n', 3,
         ("malformed",), line=2),
    Case("missing-asset-type", "x.ndjson", lines(GOOD_LINE, json.dumps({"name": "//b", "type": "t"})), 3,
         ("has no 'asset_type'",), line=2),
    Case("metadata-list", "k.yaml", lines(k8s(ROLE), k8s(BINDING, metadata=["b"])).replace(b"\n", b"\n---\n", 1), 3,
         ("'metadata' is not a mapping",)),
    Case("metadata-string", "k.ndjson", lines(k8s(ROLE), k8s(BINDING, metadata="b")), 3,
         ("'metadata' is not a mapping",), line=2),
    Case("metadata-name-number", "k.ndjson", lines(k8s(ROLE), k8s(BINDING, metadata={"name": 5})), 3,
         ("metadata.name is not a string",), line=2),
    Case("subjects-mapping", "k.ndjson", lines(k8s(ROLE), k8s(BINDING, subjects={"kind": "User"})), 3,
         ("'subjects' is not a list",), line=2),
    Case("role-ref-string", "k.ndjson", lines(k8s(ROLE), k8s(BINDING, roleRef="r")), 3,
         ("'roleRef' is not a mapping",), line=2),
    Case("verbs-string", "k.ndjson", lines(k8s(BINDING), k8s(ROLE, rules=[{"verbs": "*", "resources": ["*"]}])), 3,
         ("'verbs' is not a list of strings",), line=2),
    Case("rules-mapping", "k.ndjson", lines(k8s(BINDING), k8s(ROLE, rules={"verbs": ["*"]})), 3,
         ("'rules' is not a list",), line=2),
    # -- folders ----------------------------------------------------------------------------------------------
    Case("dangling-link-in-folder", "org", status=3, says=("missing.ndjson", "cannot read"),
         files=(("a.ndjson", EXPORT), ("missing.ndjson", None))),
    Case("folder-of-unknown-files", "misc", status=2, says=("no asset read", "a.yaml", "b.json"),
         files=(("a.yaml", b"listen: 1\n"), ("b.json", b'{"x": 1}\n'))),
]


def _write(case: Case, tmp: Path) -> Path:
    if not case.files:
        path = tmp / case.name
        path.write_bytes(case.bytes())
        return path
    folder = tmp / case.name
    folder.mkdir()
    for name, content in case.files:
        if content is None:
            (folder / name).symlink_to(tmp / "nowhere" / name)
        else:
            (folder / name).write_bytes(content)
    return folder


def _assert_clean(output: str, status: int, case: Case, path: Path, exit_code: int) -> None:
    assert "Traceback" not in output, output
    assert "Aborted!" not in output, output
    assert exit_code == case.status, f"exit {exit_code}, wanted {case.status}: {output}"
    for fragment in case.says:
        assert fragment in output, f"{fragment!r} not in: {output}"
    assert str(path) in output, f"the message does not name {path}: {output}"
    if case.line is not None:
        assert f"{path}:{case.line}" in output, f"{path}:{case.line} not in: {output}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_a_clear_message_and_the_contract_status(case: Case, tmp_path: Path) -> None:
    path = _write(case, tmp_path)
    result = CliRunner().invoke(
        cli, ["scan", "--source", str(path), "--fail-on", "never", "--format", "json"], env=dict(case.env)
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    _assert_clean(result.output, case.status, case, path, result.exit_code)


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 45
    assert len({c.id for c in CASES}) == len(CASES)


def _auditor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditor", *args], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_dev_zero_is_refused_at_the_line_limit() -> None:
    proc = _auditor("scan", "--source", "/dev/zero", "--fail-on", "never")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "/dev/zero:1: a line longer than 64 MiB (the line-size limit" in proc.stderr


def test_a_deep_line_in_an_export_read_by_several_processes(tmp_path: Path) -> None:
    """--jobs: the range holding the deep line is read in a worker; the line is reported with its number."""
    from bench.generate import generate

    export = tmp_path / "org.ndjson"
    generate(11_000, export, seed=4)  # over 16 MiB: split into ranges read by the workers
    data = export.read_bytes().splitlines(keepends=True)
    at = len(data) - 5
    deep = '{"name": "//deep", "asset_type": "t", "resource": {"data": ' + nested(100_000) + "}}\n"
    data.insert(at, deep.encode())
    export.write_bytes(b"".join(data))
    assert export.stat().st_size > 16 << 20
    outs = []
    for jobs in ("1", "2"):
        proc = _auditor("scan", "--source", str(export), "--jobs", jobs, "--fail-on", "never", "--format", "json")
        assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{export}:{at + 1}: " in proc.stderr and "nested deeper" in proc.stderr
        outs.append(json.loads(proc.stdout)["summary"])
    assert outs[0] == outs[1]


def test_a_corrupt_gzip_is_never_aborted_with_exit_1(tmp_path: Path) -> None:
    """click turns an EOFError that escapes into "Aborted!" and exit 1, which would read as "findings"."""
    f = tmp_path / "export.ndjson.gz"
    f.write_bytes(gz(EXPORT * 20)[:-30])
    proc = _auditor("scan", "--source", str(f), "--fail-on", "never")
    assert proc.returncode == 3, proc.stderr
    assert "Aborted" not in proc.stderr and "Traceback" not in proc.stderr
    assert f"{f}:" in proc.stderr and "EOFError" in proc.stderr
