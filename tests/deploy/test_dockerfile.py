"""Deploy: the container image definition (deploy/Dockerfile), linted with hadolint and checked for its key properties.

No container engine runs here, so the image is not built: the Dockerfile is parsed (dockerfile-parse) and its
stages, user, entrypoint, ports and paths are checked against pyproject.toml, the daemon's settings and the
Kubernetes StatefulSet that runs it.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.test_manifests import build, container, named, tool, volume_for_mount

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"


def stages() -> list[list[dict[str, Any]]]:
    """The instructions of each stage (comments dropped), in order."""
    out: list[list[dict[str, Any]]] = []
    for ins in DockerfileParser(str(DOCKERFILE)).structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out and ins["instruction"] != "COMMENT":
            out[-1].append(ins)
    return out


def instructions(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"{value} is not in exec (JSON array) form"
    return parsed


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_stages_on_slim_python_311() -> None:
    parser = DockerfileParser(str(DOCKERFILE))
    assert parser.is_multistage and len(stages()) == 2
    for image in parser.parent_images:
        assert image.startswith("python:3.11-slim"), image


def test_build_stage_copies_exactly_what_the_wheel_is_made_of() -> None:
    build_stage = stages()[0]
    copied: set[str] = set()
    for value in instructions(build_stage, "COPY"):
        *sources, _dest = shlex.split(value)
        copied.update(s.rstrip("/") for s in sources if not s.startswith("--"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", project["project"]["readme"], *wheel["packages"], *wheel.get("force-include", {}),
              "deploy/requirements.lock"}
    assert copied == needed
    for path in copied:
        assert (REPO / path).exists(), f"COPY {path}: not in the repository"
    runs = " ".join(instructions(build_stage, "RUN"))
    assert "build --wheel" in runs and "pip wheel" in runs
    assert "--require-hashes" in runs and "-r deploy/requirements.lock" in runs


def test_runtime_stage_installs_only_wheels_and_no_source() -> None:
    runtime = stages()[1]
    # Nothing from the build context reaches the runtime stage.
    assert instructions(runtime, "COPY") == [] and instructions(runtime, "ADD") == []
    installs = [r for r in instructions(runtime, "RUN") if "pip install" in r]
    assert len(installs) == 1
    install = installs[0]
    assert "--mount=type=bind,from=build" in install
    assert "--no-index" in install and ".whl" in install and "--no-cache-dir" in install
    assert "--require-hashes -r /wheels/requirements.lock" in install and "--no-deps" in install


def test_base_image_is_pinned_by_digest() -> None:
    for image in DockerfileParser(str(DOCKERFILE)).parent_images:
        name, _, digest = image.partition("@")
        assert name == "python:3.11-slim-bookworm" and re.fullmatch(r"sha256:[0-9a-f]{64}", digest), image


LOCK = REPO / "deploy" / "requirements.lock"


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of deploy/requirements.lock."""
    out: dict[str, tuple[str, list[str]]] = {}
    text = LOCK.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req, *opts = line.split()
        name, _, version = req.partition("==")
        assert version, f"{req}: not pinned with =="
        out[canonicalize_name(name.split("[")[0])] = (version, [o.split("=", 1)[1] for o in opts
                                                               if o.startswith("--hash=")])
    return out


def _brought_by(package: str, extra: str) -> list[str]:
    """The names of the requirements that `package[extra]` adds, from the installed package's own metadata."""
    out = []
    for line in metadata.requires(package) or []:
        r = Requirement(line)
        if r.marker is not None and "extra" in str(r.marker) and r.marker.evaluate({"extra": extra}):
            out.append(r.name)
    assert out, f"{package}[{extra}] brings nothing: is the extra's name right?"
    return out


def test_every_dependency_is_locked_at_a_version_pyproject_allows_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    locked = _locked()
    for dep in project["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in pyproject.toml but not in {LOCK.name}: regenerate the lock"
        assert req.specifier.contains(locked[name][0], prereleases=True), (
            f"{req.name}=={locked[name][0]} in {LOCK.name} is outside {req.specifier}: regenerate the lock")
        for extra in req.extras:  # what an extra brings (psycopg[binary]: psycopg-binary) is locked too
            for brought in _brought_by(req.name, extra):
                assert canonicalize_name(brought) in locked, f"{dep}: {brought}, of its extra {extra}, is not locked"
    for name, (version, hashes) in locked.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), f"{name}=={version}"



def test_no_healthcheck_and_serve_is_the_entrypoint() -> None:
    runtime = stages()[1]
    assert not any(i["instruction"] == "HEALTHCHECK" for s in stages() for i in s)
    assert exec_form(instructions(runtime, "ENTRYPOINT")[-1]) == ["auditor", "serve"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "auditor" in project["project"]["scripts"]
    from auditor.cli import cli

    assert "serve" in cli.list_commands(click.Context(cli))


def test_default_config_path_is_the_one_the_deployment_mounts() -> None:
    cmd = exec_form(instructions(stages()[1], "CMD")[-1])
    assert cmd[0] == "--config"
    dep = named(build("base"), "StatefulSet", "drift-auditor")
    c = container(dep)
    assert "command" not in c, "the StatefulSet must keep the image's entrypoint"
    assert c["args"] == cmd
    config = Path(cmd[1])
    vol = volume_for_mount(dep, str(config.parent))
    assert "configMap" in vol


def test_runs_as_a_fixed_non_root_user_the_deployment_agrees_with() -> None:
    runtime = stages()[1]
    user = instructions(runtime, "USER")[-1]
    uid, _, gid = user.partition(":")
    # Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and gid.isdigit() and int(uid) >= 10000
    runs = " ".join(instructions(runtime, "RUN"))
    assert f"--uid {uid}" in runs and f"--gid {gid}" in runs
    dep = named(build("base"), "StatefulSet", "drift-auditor")
    sc = dep["spec"]["template"]["spec"]["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (int(uid), int(gid), int(gid))


def test_read_only_root_filesystem_friendly() -> None:
    parser = DockerfileParser(str(DOCKERFILE))
    runtime = stages()[1]
    env = parser.envs
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["TMPDIR"] == "/tmp" and env["HOME"] == "/var/lib/drift-auditor"
    # No AUDITOR_* default in the image: the environment would silently win over the mounted configuration.
    assert not [k for k in env if k.startswith("AUDITOR_")]
    volumes = set(exec_form(instructions(runtime, "VOLUME")[-1]))
    assert volumes == {"/var/lib/drift-auditor", "/tmp"}
    assert instructions(runtime, "WORKDIR")[-1] == "/var/lib/drift-auditor"
    # The StatefulSet mounts a writable volume at each of them: scratch for /tmp, its state claim for the state.
    dep = named(build("base"), "StatefulSet", "drift-auditor")
    claims = {c["metadata"]["name"] for c in dep["spec"]["volumeClaimTemplates"]}
    for path in volumes:
        mount = next(m for m in container(dep)["volumeMounts"] if m["mountPath"] == path)
        assert mount["name"] in claims or "emptyDir" in volume_for_mount(dep, path), path
    # The state directory belongs to the user the image runs as.
    uid = instructions(runtime, "USER")[-1].split(":")[0]
    assert f"install -d -o {uid} -g {uid} -m 0750 /var/lib/drift-auditor" in " ".join(instructions(runtime, "RUN"))


def test_exposes_the_daemon_port() -> None:
    from auditor.settings import Settings, parse_listen

    exposed = {int(p.split("/")[0]) for v in instructions(stages()[1], "EXPOSE") for p in v.split()}
    assert exposed == {parse_listen(Settings.model_fields["listen"].default)[1]}


@pytest.mark.parametrize("pattern", ["**/__pycache__", ".venv", ".git"])
def test_build_context_ignores_local_clutter(pattern: str) -> None:
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    assert pattern in ignore
