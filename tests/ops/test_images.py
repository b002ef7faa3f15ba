"""Dockerfiles and docker-compose.yaml, checked without a container engine."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import jsonschema
import pytest
import yaml

from tests.ops.manifests import ROOT, is_relaygate_command

DOCKERFILES = [
    "Dockerfile.api",
    "Dockerfile.worker",
    "compose/images/postgres.Dockerfile",
    "compose/images/valkey.Dockerfile",
]
COMPOSE_FILES = ["docker-compose.yaml", "compose/smoke.override.yaml"]


def instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / path).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_cmd(path: str) -> list[str]:
    cmd: list[str] = json.loads([rest for word, rest in instructions(path) if word == "CMD"][-1])
    return cmd


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    return data


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema (draft 7), vendored with its version."""
    schema: dict[str, Any] = json.loads((ROOT / "compose" / "schema" / "compose-spec.json").read_text())
    return schema


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_file_validates_against_the_compose_spec(path: str) -> None:
    jsonschema.Draft7Validator(compose_schema()).validate(yaml.safe_load((ROOT / path).read_text()))


def test_compose_spec_schema_rejects_a_broken_file() -> None:
    broken = compose()
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(compose_schema()).validate(broken)


def test_every_compose_command_is_a_relaygate_entry_point() -> None:
    services = compose()["services"]
    assert {"postgres", "valkey", "migrate", "api", "worker"} <= set(services)
    ours = {name: s for name, s in services.items() if str(s.get("image", "")).find("RELAYGATE_") != -1}
    assert set(ours) >= {"migrate", "api", "worker"}
    for name, service in ours.items():
        command = service.get("command") or dockerfile_cmd("Dockerfile.api" if name == "api" else "Dockerfile.worker")
        if command[0] != "uvicorn":
            assert is_relaygate_command(command), name
    assert dockerfile_cmd("Dockerfile.worker") == ["relaygate", "worker"]


def test_compose_scales_workers_without_port_clashes() -> None:
    services = compose()["services"]
    assert "ports" not in services["worker"] and "container_name" not in services["worker"]
    published = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published))
    for name in ("api", "worker", "migrate"):
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert set(conditions.values()) <= {"service_healthy", "service_completed_successfully"}
    prom = yaml.safe_load((ROOT / "compose" / "prometheus.yml").read_text())
    worker_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "relaygate-worker")
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "compose/.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    sd = worker_job["dns_sd_configs"][0]
    assert (sd["names"], sd["type"], sd["port"]) == (["worker"], "A", int(env["WORKER_METRICS_PORT"]))


@pytest.mark.parametrize("path", DOCKERFILES)
def test_every_file_a_dockerfile_copies_exists(path: str) -> None:
    context = ROOT if path.startswith("Dockerfile") else (ROOT / path).parent
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()} if context == ROOT else set()
    copies = [shlex.split(rest) for word, rest in instructions(path) if word == "COPY"]
    sources = [
        src
        for args in copies
        if not any(a.startswith("--from") for a in args)
        for src in [a for a in args if not a.startswith("--")][:-1]
    ]
    assert sources or path.endswith("valkey.Dockerfile")
    for src in sources:
        assert (context / src).exists(), src
        assert src.split("/")[0] not in ignored, f"{src} is excluded by .dockerignore"


@pytest.mark.parametrize("path", ["Dockerfile.api", "Dockerfile.worker"])
def test_images_are_production_images(path: str) -> None:
    steps = instructions(path)
    text = (ROOT / path).read_text()
    assert [w for w, _ in steps].count("FROM") >= 3 and "ARG BASE_IMAGE=" in text
    syncs = [rest for word, rest in steps if word == "RUN" and "uv sync" in rest]
    assert syncs and all("--frozen" in s and "--no-dev" in s and "--extra dev" not in s for s in syncs)
    assert all(("--extra worker" in s) == (path == "Dockerfile.worker") for s in syncs)
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    assert ("USER", "10001") in final
    assert any(w == "HEALTHCHECK" for w, _ in final)
    assert not any(w == "RUN" for w, _ in final), "the final stage installs nothing"
    assert dockerfile_cmd(path)[0] in {"relaygate", "uvicorn"}
