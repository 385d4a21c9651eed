"""The deploy files (deploy/) start exactly the Procfile's processes, the same way everywhere."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "Procfile"
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S_FILES = sorted([*(DEPLOY / "k8s").glob("*.yaml"), *(DEPLOY / "k8s").glob("*.yml")])
PROCESSES = ("release", "api", "worker", "beat", "flower")
SLIM_PYTHON = re.compile(r"^(docker\.io/)?(library/)?python:3\.(1[1-9]|[2-9]\d)(\.\d+)?-slim\b")

Doc = dict[str, Any]


def read_procfile(path: Path) -> dict[str, str]:
    """{process name: command} from a Procfile, whitespace in commands normalized."""
    processes: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, command = line.partition(":")
        assert colon and name.strip() and command.strip(), (
            f"{path.name}:{number} is not 'name: command': {line!r}"
        )
        assert name.strip() not in processes, f"{path.name}:{number} repeats {name.strip()!r}"
        processes[name.strip()] = " ".join(command.split())
    return processes


def load_k8s(paths: list[Path]) -> list[tuple[str, Doc]]:
    """(file name, document) for every non-empty YAML document in the manifests."""
    return [
        (path.name, doc)
        for path in paths
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def pod_specs(node: Any) -> Iterator[Doc]:
    """Every pod spec (a mapping with `containers`) anywhere inside a manifest."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
            return
        for value in node.values():
            yield from pod_specs(value)
    elif isinstance(node, list):
        for item in node:
            yield from pod_specs(item)


def containers(doc: Doc) -> Iterator[Doc]:
    for spec in pod_specs(doc):
        yield from spec.get("initContainers") or []
        yield from spec["containers"]


def command_line(container: Doc) -> str:
    return " ".join(
        str(part) for part in [*container.get("command", []), *container.get("args", [])]
    )


def find(docs: list[tuple[str, Doc]], kind: str, name: str) -> Doc:
    matches = [
        doc for _, doc in docs if doc.get("kind") == kind and doc["metadata"]["name"] == name
    ]
    found = sorted(f"{doc.get('kind')}/{doc['metadata']['name']}" for _, doc in docs)
    assert len(matches) == 1, f"expected one {kind}/{name} in deploy/k8s, found: {found}"
    return matches[0]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


@pytest.fixture(scope="module")
def procfile() -> dict[str, str]:
    return read_procfile(PROCFILE)


@pytest.fixture(scope="module")
def compose() -> Doc:
    loaded: Doc = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def k8s() -> list[tuple[str, Doc]]:
    return load_k8s(K8S_FILES)


def test_the_procfile_names_every_process(procfile: dict[str, str]) -> None:
    missing = [name for name in PROCESSES if name not in procfile]
    assert not missing, f"Procfile lacks {missing}; it has {procfile}"
    for name, command in procfile.items():
        assert command.startswith("chainline "), f"Procfile {name}: {command!r} is not chainline"


@pytest.mark.parametrize("path", [COMPOSE, *K8S_FILES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_deploy_file_parses(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path.relative_to(ROOT)} has no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path.relative_to(ROOT)}: a document is not a mapping"
        if path.parent.name == "k8s":
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), (
                f"{path.name}: a document lacks apiVersion/kind/metadata: {sorted(doc)}"
            )


def test_there_are_kubernetes_manifests() -> None:
    assert K8S_FILES, "no deploy/k8s/*.yaml"


def builds_the_image(service: Doc) -> bool:
    build = service.get("build")
    if not isinstance(build, dict):
        return False
    context = (COMPOSE.parent / str(build.get("context", "."))).resolve()
    return context == ROOT and context / str(build.get("dockerfile", "Dockerfile")) == DOCKERFILE


def chainline_services(compose: Doc) -> dict[str, Doc]:
    """The compose services that run the image built from deploy/Dockerfile."""
    services: dict[str, Doc] = compose["services"]
    built = {name: service for name, service in services.items() if builds_the_image(service)}
    images = {service.get("image") for service in built.values()} - {None}
    return {
        name: service
        for name, service in services.items()
        if name in built or service.get("image") in images
    }


def test_compose_runs_exactly_the_procfile(compose: Doc, procfile: dict[str, str]) -> None:
    services = chainline_services(compose)
    assert services, "no compose service builds deploy/Dockerfile with context .."
    for name, service in services.items():
        command = service.get("command")
        assert isinstance(command, str), f"compose {name}: command must be a string, is {command!r}"
        assert command in procfile.values(), (
            f"compose {name}: {command!r} is not a Procfile command {sorted(procfile.values())}"
        )
    assert {s["command"] for s in services.values()} == set(procfile.values()), (
        f"compose runs {sorted(s['command'] for s in services.values())}, "
        f"the Procfile {sorted(procfile.values())}"
    )
    others = set(compose["services"]) - set(services)
    assert others == {"postgres", "redis"}, f"unexpected non-chainline services: {others}"


def test_compose_starts_processes_after_the_release(compose: Doc, procfile: dict[str, str]) -> None:
    release = compose["services"]["release"]
    assert release["command"] == procfile["release"]
    assert release.get("restart") == "no", "the release must run once, not restart"
    assert release["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in set(PROCESSES) - {"release"}:
        depends_on = compose["services"][name]["depends_on"]
        conditions = {dep: spec["condition"] for dep, spec in depends_on.items()}
        assert conditions == {
            "release": "service_completed_successfully",
            "postgres": "service_healthy",
            "redis": "service_healthy",
        }, f"compose {name} depends_on {conditions}"


def test_kubernetes_runs_exactly_the_procfile(
    k8s: list[tuple[str, Doc]], procfile: dict[str, str]
) -> None:
    seen: set[str] = set()
    for file_name, doc in k8s:
        for container in containers(doc):
            line = command_line(container)
            if not line.startswith("chainline"):
                continue
            where = f"{file_name} {doc['kind']}/{doc['metadata']['name']} {container['name']}"
            assert line in procfile.values(), (
                f"{where} runs {line!r}, not a Procfile command {sorted(procfile.values())}"
            )
            seen.add(line)
    missing = {name: procfile[name] for name in PROCESSES if procfile[name] not in seen}
    assert not missing, f"no Kubernetes container runs {missing}"


def test_kubernetes_containers_have_resources(k8s: list[tuple[str, Doc]]) -> None:
    for file_name, doc in k8s:
        for spec in pod_specs(doc):
            where = f"{file_name} {doc['kind']}/{doc['metadata']['name']}"
            # Service links would inject CHAINLINE_FLOWER_PORT=tcp://... into every pod.
            assert spec.get("enableServiceLinks") is False, f"{where}: enableServiceLinks: false"
            for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
                resources = container.get("resources", {})
                assert resources.get("requests") and resources.get("limits"), (
                    f"{where} {container['name']}: needs resources.requests and .limits"
                )


def test_kubernetes_probes(k8s: list[tuple[str, Doc]]) -> None:
    api = next(containers(find(k8s, "Deployment", "chainline-api")))
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    flower = next(containers(find(k8s, "Deployment", "chainline-flower")))
    assert flower["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert flower["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    for name in ("chainline-api", "chainline-flower"):
        find(k8s, "Service", name)
    find(k8s, "Job", "chainline-migrate")


def test_the_hpa_scales_the_worker_deployment(k8s: list[tuple[str, Doc]]) -> None:
    hpas = [doc for _, doc in k8s if doc.get("kind") == "HorizontalPodAutoscaler"]
    assert len(hpas) == 1, f"expected one HorizontalPodAutoscaler, found {len(hpas)}"
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    worker = find(k8s, "Deployment", target["name"])
    assert target["kind"] == "Deployment"
    assert command_line(next(containers(worker))) == "chainline worker", (
        f"the HPA scales Deployment/{target['name']}, which does not run the worker"
    )


def test_beat_runs_exactly_once(k8s: list[tuple[str, Doc]]) -> None:
    beats = [
        doc for _, doc in k8s if any(command_line(c) == "chainline beat" for c in containers(doc))
    ]
    assert len(beats) == 1, f"expected one workload running beat, found {len(beats)}"
    beat = beats[0]
    assert beat["kind"] == "Deployment"
    assert beat["spec"].get("replicas") == 1, "beat must have replicas: 1 (one scheduler)"
    assert beat["spec"].get("strategy", {}).get("type") == "Recreate", (
        "beat needs strategy Recreate: a rolling update would run two schedulers"
    )


def test_the_image_is_slim_python_and_not_root() -> None:
    instructions = dockerfile_instructions(DOCKERFILE)
    stages: list[str] = []
    for keyword, arguments in instructions:
        if keyword != "FROM":
            continue
        words = [w for w in arguments.split() if not w.startswith("--platform")]
        image = words[0]
        if image not in stages:
            assert SLIM_PYTHON.match(image), f"base image {image!r} is not python:3.11+-slim"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.append(words[2])
    froms = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert froms, "deploy/Dockerfile has no FROM"
    last_from = froms[-1]
    users = [args for keyword, args in instructions[last_from:] if keyword == "USER"]
    assert users, "the final stage has no USER line: the processes would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the final stage runs as {users[-1]!r}"
